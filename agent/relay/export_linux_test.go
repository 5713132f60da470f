//go:build linux

package relay

func init() {
	Impls = append(Impls, Impl{Name: "epoll", New: NewEpoll}, Impl{Name: "epoll-splice", New: newEpollSplice})
}

// newEpollSplice returns an epoll engine that splices bulk transfers.
func newEpollSplice(cfg Config) (*Engine, error) {
	cfg.Splice = true
	return NewEpoll(cfg)
}

// NewEpoll returns an engine backed by the epoll implementation.
func NewEpoll(cfg Config) (*Engine, error) {
	return newEngine(cfg, newEpollBackend)
}

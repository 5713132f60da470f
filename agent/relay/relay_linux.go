//go:build linux

package relay

// newPlatformBackend returns the epoll engine.
func newPlatformBackend(e *Engine, cfg Config) (backend, error) {
	return newEpollBackend(e, cfg)
}

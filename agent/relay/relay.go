// Package relay does the agent's socket work: it accepts clients on the
// listeners it is given, connects each to an upstream, and moves bytes both
// ways between the two sockets.
//
// Engine.Serve accepts on a listener and connects every client upstream, to
// the endpoints a Handler's Setup names in turn (the next one after a
// failed connect), then relays the pair. Engine.Relay relays a pair the
// caller connected itself. Either way the engine owns both *net.TCPConn and
// copies client→upstream ("up") and upstream→client ("down") until both
// directions reach EOF, one side fails, the pair sits idle for too long, the
// caller aborts it, or the engine stops. Half-close is propagated: when one
// side sends FIN and everything read from it was written, the other side's
// write half is shut down and the opposite direction keeps flowing.
//
// On Linux the engine is event driven: a few event loops (one goroutine and
// one epoll instance each) accept, connect and serve every pair, so a new
// connection costs no goroutine, and an idle pair holds no goroutine, no
// buffer and no pipe, only a small struct and its two sockets.
// Bytes move with read/write through one per-loop buffer, or optionally
// (Config.Splice) with splice through a pooled kernel pipe for bulk
// transfers. A pair whose destination is backed up keeps the unwritten bytes
// in a pooled buffer (or pipe) and stops reading its source. Elsewhere
// goroutines do the same job with the same semantics: one per listener
// accepts, one per new client connects it, and a pair per connection copies
// the bytes.
//
// Relay may be called any time after New. Pairs handed over before Run starts
// are queued and served once Run runs; after Run returned, Relay closes both
// sockets and returns ErrClosed.
package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"time"
)

// ErrClosed is returned by Relay after the engine stopped, and by Run when it
// is called a second time.
var ErrClosed = errors.New("relay: engine closed")

// Reasons reported in Stats.Reason (errors are reported as "error: ...").
const (
	ReasonEOF    = "eof"    // both directions reached EOF
	ReasonIdle   = "idle"   // no byte moved for Options.IdleTimeout
	ReasonClosed = "closed" // Pair.Close was called or the engine stopped
)

// Config configures an Engine.
type Config struct {
	// Logger receives per-pair debug events and loop errors. nil discards.
	Logger *slog.Logger
	// Loops is the number of event loops of the Linux engine; 0 means
	// GOMAXPROCS. The portable engine ignores it.
	Loops int
	// Splice makes the Linux engine move bulk transfers (reads that fill
	// its 64 KiB buffer) with splice through a pooled kernel pipe instead of
	// read/write. That halves the relay's CPU per byte, but over loopback
	// the receiving process pays about as much more, and a backed-up pair
	// holds a pipe (two descriptors) instead of a buffer. Small transfers
	// always use read/write. The portable engine ignores it.
	Splice bool
}

// Validate reports the first invalid field of c.
func (c Config) Validate() error {
	if c.Loops < 0 {
		return fmt.Errorf("relay: config: Loops %d is negative", c.Loops)
	}
	return nil
}

// Counter is what byte counts are added to (a prometheus.Counter satisfies it).
type Counter interface{ Add(float64) }

// Options configure one pair.
type Options struct {
	// IdleTimeout closes both sockets when no byte moved either way for this
	// long; 0 (or negative) means never. It is coarse: pairs are swept about
	// once a second.
	IdleTimeout time.Duration
	// Up and Down receive the bytes moved client→upstream and
	// upstream→client as they move. Either may be nil.
	Up, Down Counter
	// OnDone is called exactly once, after both sockets were closed. It runs
	// on an engine goroutine and must not block. It may be nil.
	OnDone func(Stats)
}

// Stats describe a finished pair.
type Stats struct {
	Up, Down int64 // bytes moved client→upstream and upstream→client
	Reason   string
}

// backend is one implementation of the engine.
type backend interface {
	run(ctx context.Context) error
	relay(client, upstream *net.TCPConn, o Options) (*Pair, error)
	serve(ln *net.TCPListener, ka net.KeepAliveConfig, h Handler) (stop func(), err error)
}

// Engine accepts clients (Serve), connects them upstream and relays bytes
// between each pair of TCP sockets. Create it with New and run it with Run.
type Engine struct {
	log     *slog.Logger
	b       backend
	active  atomic.Int64
	started atomic.Bool
}

// New validates cfg and returns an engine. It starts nothing: call Run.
func New(cfg Config) (*Engine, error) {
	return newEngine(cfg, newPlatformBackend)
}

// newBackendFunc builds a backend for an engine.
type newBackendFunc func(e *Engine, cfg Config) (backend, error)

func newEngine(cfg Config, nb newBackendFunc) (*Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	e := &Engine{log: log}
	b, err := nb(e, cfg)
	if err != nil {
		return nil, fmt.Errorf("relay: new: %w", err)
	}
	e.b = b
	return e, nil
}

// Run serves pairs until ctx is done. Then it closes every pair still open
// (calling their OnDone with Reason "closed") and returns nil once all its
// goroutines have stopped. It returns the first fatal error otherwise. Run may
// be called only once.
func (e *Engine) Run(ctx context.Context) error {
	if !e.started.CompareAndSwap(false, true) {
		return fmt.Errorf("relay: run twice: %w", ErrClosed)
	}
	return e.b.run(ctx)
}

// Relay takes ownership of client and upstream and copies bytes between them
// until the pair ends. It closes both sockets in every case, also when it
// returns an error. It never blocks on I/O.
func (e *Engine) Relay(client, upstream *net.TCPConn, o Options) (*Pair, error) {
	if client == nil || upstream == nil {
		closeTCP(client)
		closeTCP(upstream)
		return nil, errors.New("relay: nil connection")
	}
	return e.b.relay(client, upstream, o)
}

// Active returns the number of open pairs.
func (e *Engine) Active() int { return int(e.active.Load()) }

// aborter is implemented by each backend's pair.
type aborter interface{ abort() }

// Pair is one relayed client/upstream connection.
type Pair struct{ a aborter }

// Close aborts the pair: both sockets are closed (possibly with RST) without
// waiting for pending data. It returns at once; OnDone reports when the
// sockets are closed. It is safe to call many times, concurrently, and after
// the pair ended.
func (p *Pair) Close() {
	if p != nil && p.a != nil {
		p.a.abort()
	}
}

// closeTCP closes c if it is not nil.
func closeTCP(c *net.TCPConn) {
	if c != nil {
		_ = c.Close()
	}
}

// addCount adds n to c if c is not nil.
func addCount(c Counter, n int) {
	if c != nil && n > 0 {
		c.Add(float64(n))
	}
}

// callDone calls o.OnDone if set.
func callDone(o *Options, s Stats) {
	if o.OnDone != nil {
		o.OnDone(s)
	}
}

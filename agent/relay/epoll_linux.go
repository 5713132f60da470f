//go:build linux

package relay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync/atomic"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

// epollBackend is the Linux engine: a few event loops, each one goroutine
// with its own epoll instance, serve all pairs.
type epollBackend struct {
	e      *Engine
	splice bool
	loops  []*loop
	next   atomic.Uint32 // round-robin loop choice
}

func newEpollBackend(e *Engine, cfg Config) (backend, error) {
	n := cfg.Loops
	if n == 0 {
		n = runtime.GOMAXPROCS(0)
	}
	b := &epollBackend{e: e, splice: cfg.Splice, loops: make([]*loop, n)}
	for i := range b.loops {
		b.loops[i] = newLoop(b, i)
	}
	return b, nil
}

func (b *epollBackend) run(ctx context.Context) error {
	for i, l := range b.loops {
		if err := l.open(); err != nil {
			for _, l := range b.loops {
				l.finish() // closes queued pairs and what open created
			}
			return fmt.Errorf("relay: loop %d: %w", i, err)
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	for _, l := range b.loops {
		g.Go(l.run)
	}
	g.Go(func() error { return b.stopOnDone(gctx) })
	return g.Wait()
}

// stopOnDone waits for ctx and then asks every loop to stop.
func (b *epollBackend) stopOnDone(ctx context.Context) error {
	<-ctx.Done()
	for _, l := range b.loops {
		l.stop()
	}
	return nil
}

func (b *epollBackend) relay(client, upstream *net.TCPConn, o Options) (*Pair, error) {
	cfd, err := detach(client)
	if err != nil {
		closeTCP(upstream)
		return nil, fmt.Errorf("relay: client: %w", err)
	}
	ufd, err := detach(upstream)
	if err != nil {
		_ = unix.Close(cfd)
		return nil, fmt.Errorf("relay: upstream: %w", err)
	}
	l := b.loops[int(b.next.Add(1))%len(b.loops)]
	p := newEpair(l, cfd, ufd, o)
	if !l.enqueue(p) {
		_ = unix.Close(cfd)
		_ = unix.Close(ufd)
		return nil, ErrClosed
	}
	return &Pair{a: p}, nil
}

// detach takes the socket out of c: it duplicates the descriptor (the copy
// shares the non-blocking open file description) and closes c, which removes
// the socket from Go's netpoller. c is closed in every case.
func detach(c *net.TCPConn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		_ = c.Close()
		return -1, fmt.Errorf("syscall conn: %w", err)
	}
	fd, derr := -1, error(nil)
	cerr := rc.Control(func(s uintptr) {
		fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	})
	_ = c.Close()
	if err := errors.Join(cerr, derr); err != nil {
		if fd >= 0 {
			_ = unix.Close(fd)
		}
		return -1, fmt.Errorf("dup: %w", err)
	}
	return fd, nil
}

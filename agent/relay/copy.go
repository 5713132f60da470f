package relay

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
)

// copyBufSize is the buffer each direction of the portable engine uses.
const copyBufSize = 32 << 10

// sweepInterval is how often idle pairs are looked for.
const sweepInterval = time.Second

// copyBufPool holds the portable engine's copy buffers.
var copyBufPool = sync.Pool{New: newCopyBuf}

func newCopyBuf() any {
	b := make([]byte, copyBufSize)
	return &b
}

// Engine states shared by the backends.
const (
	stateNew = iota
	stateRunning
	stateStopped
)

// copyBackend is the portable engine: one goroutine per direction per pair.
type copyBackend struct {
	e *Engine

	mu      sync.Mutex
	state   int
	pending []*copyPair
	pairs   map[*copyPair]struct{}
	wg      sync.WaitGroup // counts copy goroutines
}

func newCopyBackend(e *Engine, _ Config) (backend, error) {
	return &copyBackend{e: e, pairs: make(map[*copyPair]struct{})}, nil
}

func (b *copyBackend) run(ctx context.Context) error {
	b.mu.Lock()
	b.state = stateRunning
	pending := b.pending
	b.pending = nil
	b.wg.Add(2 * len(pending))
	b.mu.Unlock()
	for _, p := range pending {
		p.start()
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return b.sweepIdle(ctx) })
	err := g.Wait()
	b.stop()
	return err
}

// stop closes every pair and waits for their goroutines.
func (b *copyBackend) stop() {
	b.mu.Lock()
	b.state = stateStopped
	open := make([]*copyPair, 0, len(b.pairs))
	for p := range b.pairs {
		open = append(open, p)
	}
	b.mu.Unlock()
	for _, p := range open {
		p.fail(ReasonClosed)
	}
	b.wg.Wait()
}

// sweepIdle closes idle pairs about once a second until ctx is done.
func (b *copyBackend) sweepIdle(ctx context.Context) error {
	t := time.NewTimer(sweepInterval)
	defer t.Stop()
	var idle []*copyPair
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			idle = b.idlePairs(now.UnixNano(), idle[:0])
			for _, p := range idle {
				p.fail(ReasonIdle)
			}
			t.Reset(sweepInterval)
		}
	}
}

// idlePairs appends the pairs idle at now to dst.
func (b *copyBackend) idlePairs(now int64, dst []*copyPair) []*copyPair {
	b.mu.Lock()
	defer b.mu.Unlock()
	for p := range b.pairs {
		if p.idle > 0 && now-p.last.Load() >= p.idle {
			dst = append(dst, p)
		}
	}
	return dst
}

func (b *copyBackend) relay(client, upstream *net.TCPConn, o Options) (*Pair, error) {
	p := &copyPair{b: b, client: client, upstream: upstream, o: o, idle: int64(o.IdleTimeout)}
	p.last.Store(time.Now().UnixNano())
	b.mu.Lock()
	switch b.state {
	case stateStopped:
		b.mu.Unlock()
		closeTCP(client)
		closeTCP(upstream)
		return nil, ErrClosed
	case stateNew:
		b.pending = append(b.pending, p)
	case stateRunning:
		b.wg.Add(2) // under mu, so stop cannot miss these goroutines
		defer p.start()
	}
	b.pairs[p] = struct{}{}
	b.e.active.Add(1)
	b.mu.Unlock()
	return &Pair{a: p}, nil
}

func (b *copyBackend) serve(ln *net.TCPListener, ka net.KeepAliveConfig, h Handler) (func(), error) {
	return serveGoroutines(b.e, ln, ka, h)
}

// copyPair is one pair of the portable engine.
type copyPair struct {
	b                *copyBackend
	client, upstream *net.TCPConn
	o                Options
	idle             int64 // IdleTimeout in ns
	last             atomic.Int64
	up, down         atomic.Int64
	left             atomic.Int32 // directions still running
	mu               sync.Mutex
	reason           string
	aborted          bool
	doneOnce         sync.Once
}

// start runs both directions; the caller added them to b.wg.
func (p *copyPair) start() {
	p.left.Store(2)
	go copyDirection(p, p.client, p.upstream, &p.up, p.o.Up)
	go copyDirection(p, p.upstream, p.client, &p.down, p.o.Down)
}

// copyDirection copies src to dst until EOF or error, then half-closes.
func copyDirection(p *copyPair, src, dst *net.TCPConn, total *atomic.Int64, c Counter) {
	defer p.b.wg.Done()
	bp := copyBufPool.Get().(*[]byte)
	err := p.copyLoop(src, dst, *bp, total, c)
	copyBufPool.Put(bp)
	if err != nil {
		p.fail("error: " + err.Error())
	} else {
		_ = dst.CloseWrite()
		_ = src.CloseRead()
	}
	if p.left.Add(-1) == 0 {
		p.finish()
	}
}

// copyLoop moves bytes from src to dst; it returns nil on EOF.
func (p *copyPair) copyLoop(src, dst *net.TCPConn, buf []byte, total *atomic.Int64, c Counter) error {
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
			total.Add(int64(n))
			addCount(c, n)
			p.last.Store(time.Now().UnixNano())
		}
		if errors.Is(rerr, io.EOF) {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// fail aborts the pair with reason unless it already ended or was aborted.
func (p *copyPair) fail(reason string) {
	p.mu.Lock()
	if p.aborted {
		p.mu.Unlock()
		return
	}
	p.aborted = true
	p.reason = reason
	p.mu.Unlock()
	_ = p.client.SetLinger(0)
	_ = p.upstream.SetLinger(0)
	_ = p.client.Close()
	_ = p.upstream.Close()
}

func (p *copyPair) abort() { p.fail(ReasonClosed) }

// finish closes both sockets and reports the pair, once.
func (p *copyPair) finish() {
	p.doneOnce.Do(p.report)
}

func (p *copyPair) report() {
	p.mu.Lock()
	reason := p.reason
	if !p.aborted {
		p.aborted = true
		reason = ReasonEOF
	}
	p.mu.Unlock()
	_ = p.client.Close()
	_ = p.upstream.Close()
	p.b.mu.Lock()
	delete(p.b.pairs, p)
	p.b.mu.Unlock()
	p.b.e.active.Add(-1)
	p.b.e.log.Debug("relay pair done", "reason", reason, "up_bytes", p.up.Load(), "down_bytes", p.down.Load())
	callDone(&p.o, Stats{Up: p.up.Load(), Down: p.down.Load(), Reason: reason})
}

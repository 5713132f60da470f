package relay_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/halolb/halo/agent/relay"
	"github.com/halolb/halo/internal/waitfor"
)

// waitTimeout bounds every wait in the tests. It bounds a stall (a time
// in which nothing happens), never a whole transfer: a test that moves
// many bytes sets its socket deadlines again after every read or write
// that made progress, so a slow machine (2 cores, -race) only makes it
// slower, not fail.
const waitTimeout = 10 * time.Second

// startEngine runs a new engine until the test ends.
func startEngine(t testing.TB, impl relay.Impl, cfg relay.Config) *relay.Engine {
	t.Helper()
	e, err := impl.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	runEngine(t, e)
	return e
}

// runEngine runs e until the test ends and checks Run's result.
func runEngine(t testing.TB, e *relay.Engine) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- e.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-errc:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(waitTimeout):
				t.Errorf("Run did not return after cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// newListener listens on a loopback port until the test ends.
func newListener(t testing.TB) *net.TCPListener {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	return ln
}

// connPair returns both ends of a new loopback TCP connection.
func connPair(t testing.TB, ln *net.TCPListener) (dialed, accepted *net.TCPConn) {
	t.Helper()
	c, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	a, err := ln.AcceptTCP()
	if err != nil {
		_ = c.Close()
		t.Fatalf("accept: %v", err)
	}
	return c, a
}

// fixture holds listeners for the proxy front and the backend.
type fixture struct {
	front, back *net.TCPListener
}

func newFixture(t testing.TB) *fixture {
	return &fixture{front: newListener(t), back: newListener(t)}
}

// proxied is one relayed connection: the test holds client and backend.
type proxied struct {
	client, backend *net.TCPConn
	pair            *relay.Pair
	done            *doneRecorder
}

// relayed connects a client through e to a backend and returns both ends.
func (f *fixture) relayed(t testing.TB, e *relay.Engine, o relay.Options) *proxied {
	t.Helper()
	client, proxyIn := connPair(t, f.front)
	proxyOut, backend := connPair(t, f.back)
	t.Cleanup(func() { _ = client.Close(); _ = backend.Close() })
	d := newDoneRecorder()
	if o.OnDone == nil {
		o.OnDone = d.onDone
	}
	p, err := e.Relay(proxyIn, proxyOut, o)
	if err != nil {
		t.Fatalf("Relay: %v", err)
	}
	return &proxied{client: client, backend: backend, pair: p, done: d}
}

// doneRecorder records OnDone calls.
type doneRecorder struct {
	calls atomic.Int32
	ch    chan relay.Stats
}

func newDoneRecorder() *doneRecorder { return &doneRecorder{ch: make(chan relay.Stats, 1)} }

func (d *doneRecorder) onDone(s relay.Stats) {
	if d.calls.Add(1) == 1 {
		d.ch <- s
	}
}

// wait returns the Stats of the first OnDone call.
func (d *doneRecorder) wait(t testing.TB) relay.Stats {
	t.Helper()
	select {
	case s := <-d.ch:
		return s
	case <-time.After(waitTimeout):
		t.Fatalf("OnDone not called")
		return relay.Stats{}
	}
}

// countCounter is a Counter for tests.
type countCounter struct{ n atomic.Int64 }

func (c *countCounter) Add(v float64) { c.n.Add(int64(v)) }

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	waitfor.True(t, waitTimeout, what, cond)
}

// expectClosed reads from c until it reports EOF or an error; it fails
// the test when c is still open after waitTimeout.
func expectClosed(t testing.TB, c *net.TCPConn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(waitTimeout))
	buf := make([]byte, 1024)
	for {
		_, err := c.Read(buf)
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("connection not closed: %v", err)
		}
		return
	}
}

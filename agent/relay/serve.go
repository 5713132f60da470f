package relay

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Target is an endpoint a new connection tries.
type Target struct {
	// Addr is where to connect.
	Addr netip.AddrPort
	// Timeout bounds the connect; 0 means the system's limit.
	Timeout time.Duration
	// Keepalive is TCP keepalive on the upstream socket; the zero value
	// means Go's default (idle and interval 15 s, 9 probes).
	Keepalive net.KeepAliveConfig
}

// Setup decides where one accepted client goes. The engine calls Next for
// the endpoint to connect to; after a failed connect it calls Failed and
// then Next again, until Next reports false (the client is then reset) or
// a connect succeeds (then Connected). The methods of one Setup are called
// one at a time, on an engine goroutine, and must not block.
type Setup interface {
	// Next returns the endpoint to try next; false gives the client up.
	Next() (Target, bool)
	// Failed reports that the connect to t failed (refused, timed out).
	Failed(t Target, err error)
	// Connected reports that the connect to t succeeded: p relays the
	// client to it with the returned options. p may be closed at once.
	// Options.OnDone is called exactly once afterwards.
	Connected(t Target, p *Pair) Options
}

// Handler returns the Setup of a client accepted from remote. It runs on
// an engine goroutine and must not block.
type Handler func(remote netip.AddrPort) Setup

// Serve accepts connections on ln, sets TCP keepalive ka on them and
// connects each to an upstream as h decides, then relays it like Relay.
// On Linux this all happens in the event loops: a new connection costs no
// goroutine and never enters Go's netpoller. ln stays the caller's: stop
// makes the engine stop accepting on it and returns once it did (open
// connections go on); the caller then closes ln. Connections being set up
// when stop is called are closed.
func (e *Engine) Serve(ln *net.TCPListener, ka net.KeepAliveConfig, h Handler) (stop func(), err error) {
	if ln == nil || h == nil {
		return nil, errors.New("relay: serve: nil listener or handler")
	}
	return e.b.serve(ln, ka, h)
}

// goServer is Serve with a goroutine per accepted connection, for the
// portable engine.
type goServer struct {
	e      *Engine
	ln     *net.TCPListener
	ka     net.KeepAliveConfig
	h      Handler
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func serveGoroutines(e *Engine, ln *net.TCPListener, ka net.KeepAliveConfig, h Handler) (func(), error) {
	ctx, cancel := context.WithCancel(context.Background())
	s := &goServer{e: e, ln: ln, ka: ka, h: h, ctx: ctx, cancel: cancel}
	s.wg.Add(1)
	go s.acceptLoop()
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			_ = ln.SetDeadline(time.Unix(1, 0)) // wakes Accept
			s.wg.Wait()
			_ = ln.SetDeadline(time.Time{})
		})
	}, nil
}

func (s *goServer) acceptLoop() {
	defer s.wg.Done()
	var delay time.Duration
	for {
		c, err := s.ln.AcceptTCP()
		if s.ctx.Err() != nil {
			if c != nil {
				_ = c.Close()
			}
			return
		}
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors or the like: wait a little, as
			// net/http does, instead of spinning.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.e.log.Warn("accept failed", "error", err, "retry_in", delay)
			t := time.NewTimer(delay)
			select {
			case <-s.ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		delay = 0
		s.wg.Add(1)
		go s.setUp(c)
	}
}

// setUp connects one accepted client and hands the pair to the engine.
func (s *goServer) setUp(client *net.TCPConn) {
	defer s.wg.Done()
	_ = client.SetKeepAliveConfig(s.ka)
	var remote netip.AddrPort
	if a, ok := client.RemoteAddr().(*net.TCPAddr); ok {
		remote = a.AddrPort()
	}
	st := s.h(remote)
	for {
		t, ok := st.Next()
		if !ok {
			_ = client.SetLinger(0)
			_ = client.Close()
			return
		}
		d := net.Dialer{Timeout: t.Timeout, KeepAliveConfig: t.Keepalive}
		c, err := d.DialContext(s.ctx, "tcp", t.Addr.String())
		if err != nil {
			if s.ctx.Err() != nil {
				_ = client.Close()
				return
			}
			st.Failed(t, err)
			continue
		}
		lp := &latePair{}
		o := st.Connected(t, &Pair{a: lp})
		pair, err := s.e.Relay(client, c.(*net.TCPConn), o)
		if err != nil {
			callDone(&o, Stats{Reason: ReasonClosed})
			return
		}
		lp.set(pair)
		return
	}
}

// latePair is a Pair handed out before the engine's pair exists.
type latePair struct {
	mu     sync.Mutex
	p      *Pair
	closed bool
}

func (lp *latePair) abort() {
	lp.mu.Lock()
	lp.closed = true
	p := lp.p
	lp.mu.Unlock()
	p.Close()
}

func (lp *latePair) set(p *Pair) {
	lp.mu.Lock()
	lp.p = p
	closed := lp.closed
	lp.mu.Unlock()
	if closed {
		p.Close()
	}
}

package relay_test

import (
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/halolb/halo/agent/relay"
)

// scriptSetup tries its targets in order and records what the engine
// reports.
type scriptSetup struct {
	mu        sync.Mutex
	targets   []relay.Target
	failed    []netip.AddrPort
	connected []netip.AddrPort
	gaveUp    bool
	done      *doneRecorder
}

func (s *scriptSetup) Next() (relay.Target, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.targets) == 0 {
		s.gaveUp = true
		return relay.Target{}, false
	}
	t := s.targets[0]
	s.targets = s.targets[1:]
	return t, true
}

func (s *scriptSetup) Failed(t relay.Target, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failed = append(s.failed, t.Addr)
}

func (s *scriptSetup) Connected(t relay.Target, _ *relay.Pair) relay.Options {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.connected = append(s.connected, t.Addr)
	return relay.Options{OnDone: s.done.onDone}
}

func (s *scriptSetup) result() (failed, connected []netip.AddrPort, gaveUp bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]netip.AddrPort(nil), s.failed...), append([]netip.AddrPort(nil), s.connected...), s.gaveUp
}

// serve makes e serve a new front listener with setup s for every client.
func serve(t *testing.T, e *relay.Engine, s *scriptSetup) *net.TCPListener {
	t.Helper()
	ln := newListener(t)
	stop, err := e.Serve(ln, net.KeepAliveConfig{Enable: true, Idle: 30 * time.Second}, func(netip.AddrPort) relay.Setup { return s })
	if err != nil {
		t.Fatalf("Serve: %v", err)
	}
	t.Cleanup(stop)
	return ln
}

// refusedAddr is a loopback address where nothing listens.
func refusedAddr(t *testing.T) netip.AddrPort {
	ln := newListener(t)
	a := ln.Addr().(*net.TCPAddr).AddrPort()
	_ = ln.Close()
	return a
}

// echoBackend echoes what each connection sends.
func echoBackend(t *testing.T) netip.AddrPort {
	ln := newListener(t)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// TestServeMovesOnAfterFailedConnects checks that a refused and a timed
// out connect are reported and the next target is tried, and that bytes
// the client sent meanwhile arrive.
func TestServeMovesOnAfterFailedConnects(t *testing.T) {
	hole := blackHole(t)
	forEachImpl(t, func(t *testing.T, impl relay.Impl) {
		e := startEngine(t, impl, relay.Config{})
		refused, good := refusedAddr(t), echoBackend(t)
		s := &scriptSetup{done: newDoneRecorder(), targets: []relay.Target{
			{Addr: refused, Timeout: waitTimeout},
			{Addr: hole, Timeout: 100 * time.Millisecond},
			{Addr: good, Timeout: waitTimeout},
		}}
		ln := serve(t, e, s)
		c, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		start := time.Now()
		if _, err := c.Write([]byte("early bytes\n")); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(waitTimeout))
		buf := make([]byte, len("early bytes\n"))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "early bytes\n" {
			t.Fatalf("echo: %q, %v", buf, err)
		}
		// The black hole's connect was given up at its 100ms timeout, not
		// before. Without that timeout it would hang for the system's limit
		// (minutes), which the read deadline above catches.
		if d := time.Since(start); d < 90*time.Millisecond {
			t.Errorf("set-up took %v, less than the black hole's 100ms connect timeout", d)
		}
		failed, connected, _ := s.result()
		if len(failed) != 2 || failed[0] != refused || failed[1] != hole {
			t.Errorf("failed = %v, want [%v %v]", failed, refused, hole)
		}
		if len(connected) != 1 || connected[0] != good {
			t.Errorf("connected = %v, want [%v]", connected, good)
		}
		_ = c.CloseWrite()
		if _, err := io.ReadAll(c); err != nil {
			t.Errorf("read to EOF: %v", err)
		}
		if st := s.done.wait(t); st.Reason != relay.ReasonEOF || st.Up != 12 || st.Down != 12 {
			t.Errorf("stats = %+v", st)
		}
	})
}

// TestServeGivesUp checks that the client is reset when Next has nothing.
func TestServeGivesUp(t *testing.T) {
	forEachImpl(t, func(t *testing.T, impl relay.Impl) {
		e := startEngine(t, impl, relay.Config{})
		s := &scriptSetup{done: newDoneRecorder(), targets: []relay.Target{{Addr: refusedAddr(t)}}}
		ln := serve(t, e, s)
		// The reset may come before the dial returns.
		if c, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr)); err == nil {
			defer c.Close()
			expectClosed(t, c)
		}
		eventually(t, "given up", func() bool { _, _, g := s.result(); return g })
		failed, connected, gaveUp := s.result()
		if len(failed) != 1 || len(connected) != 0 || !gaveUp {
			t.Errorf("failed %v connected %v gave up %v", failed, connected, gaveUp)
		}
	})
}

// TestServeStop checks that stop ends accepting while open pairs go on.
func TestServeStop(t *testing.T) {
	forEachImpl(t, func(t *testing.T, impl relay.Impl) {
		e := startEngine(t, impl, relay.Config{})
		s := &scriptSetup{done: newDoneRecorder(), targets: []relay.Target{{Addr: echoBackend(t)}}}
		ln := newListener(t)
		stop, err := e.Serve(ln, net.KeepAliveConfig{}, func(netip.AddrPort) relay.Setup { return s })
		if err != nil {
			t.Fatal(err)
		}
		c, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		eventually(t, "connected", func() bool { _, conn, _ := s.result(); return len(conn) == 1 })
		stop()
		_ = ln.Close()
		if _, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
			t.Errorf("dial after stop and close succeeded")
		}
		_ = c.SetDeadline(time.Now().Add(waitTimeout))
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 1)
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatalf("pair after stop: %v", err)
		}
	})
}

package relay_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/halolb/halo/agent/relay"
)

// forEachImpl runs test against every engine implementation.
func forEachImpl(t *testing.T, test func(t *testing.T, impl relay.Impl)) {
	for _, impl := range relay.Impls {
		t.Run(impl.Name, func(t *testing.T) {
			t.Parallel()
			test(t, impl)
		})
	}
}

// randomBytes returns n bytes that depend only on seed. ChaCha8 fills
// them in bulk: a byte-at-a-time loop takes most of a second per 16 MiB
// under the race detector.
func randomBytes(n int, seed uint64) []byte {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(key).Read(b)
	return b
}

// timedOut says whether err is a deadline passing.
func timedOut(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// writeAll writes data to c. It fails only when no byte is taken for
// waitTimeout: a write that times out having made progress goes on.
func writeAll(c *net.TCPConn, data []byte) error {
	for {
		_ = c.SetWriteDeadline(time.Now().Add(waitTimeout))
		n, err := c.Write(data)
		data = data[n:]
		if err == nil || !timedOut(err) || n == 0 {
			return err
		}
	}
}

// writeAndClose writes data to c, then closes its write half.
func writeAndClose(c *net.TCPConn, data []byte, errc chan<- error) {
	if err := writeAll(c, data); err != nil {
		errc <- err
		return
	}
	errc <- c.CloseWrite()
}

// readAll reads c to EOF, slowly when chunk is small. It fails only when
// no byte comes for waitTimeout, however long the whole takes.
func readAll(c *net.TCPConn, chunk int) ([]byte, error) {
	var out bytes.Buffer
	buf := make([]byte, chunk)
	for {
		_ = c.SetReadDeadline(time.Now().Add(waitTimeout))
		n, err := c.Read(buf)
		out.Write(buf[:n])
		if errors.Is(err, io.EOF) {
			return out.Bytes(), nil
		}
		if err != nil {
			return out.Bytes(), err
		}
	}
}

func TestBothWays(t *testing.T) {
	forEachImpl(t, func(t *testing.T, impl relay.Impl) {
		for _, tc := range []struct {
			name  string
			size  int
			chunk int
		}{
			{"small", 100, 64 << 10},
			{"bulk", 16 << 20, 256 << 10},
			{"slowReader", 4 << 20, 512},
		} {
			t.Run(tc.name, func(t *testing.T) {
				e := startEngine(t, impl, relay.Config{})
				f := newFixture(t)
				var up, down countCounter
				c := f.relayed(t, e, relay.Options{Up: &up, Down: &down})
				upData, downData := randomBytes(tc.size, 1), randomBytes(tc.size+7, 2)
				errc := make(chan error, 2)
				go writeAndClose(c.client, upData, errc)
				go writeAndClose(c.backend, downData, errc)
				var wg sync.WaitGroup
				var gotUp, gotDown []byte
				var errUp, errDown error
				wg.Add(2)
				go func() { defer wg.Done(); gotUp, errUp = readAll(c.backend, tc.chunk) }()
				go func() { defer wg.Done(); gotDown, errDown = readAll(c.client, tc.chunk) }()
				wg.Wait()
				for range 2 {
					if err := <-errc; err != nil {
						t.Fatalf("write: %v", err)
					}
				}
				if errUp != nil || errDown != nil {
					t.Fatalf("read: up %v, down %v", errUp, errDown)
				}
				if !bytes.Equal(gotUp, upData) || !bytes.Equal(gotDown, downData) {
					t.Fatalf("data mismatch: up %d/%d bytes, down %d/%d", len(gotUp), len(upData), len(gotDown), len(downData))
				}
				s := c.done.wait(t)
				want := relay.Stats{Up: int64(len(upData)), Down: int64(len(downData)), Reason: relay.ReasonEOF}
				if s != want {
					t.Fatalf("stats = %+v, want %+v", s, want)
				}
				if up.n.Load() != s.Up || down.n.Load() != s.Down {
					t.Fatalf("counters up %d down %d, want %d %d", up.n.Load(), down.n.Load(), s.Up, s.Down)
				}
				eventually(t, "no active pairs", func() bool { return e.Active() == 0 })
			})
		}
	})
}

// TestRequestThenFIN: the client writes a request and half-closes, the
// backend reads to EOF and answers; the client still gets the answer.
func TestRequestThenFIN(t *testing.T) {
	forEachImpl(t, func(t *testing.T, impl relay.Impl) {
		e := startEngine(t, impl, relay.Config{})
		c := newFixture(t).relayed(t, e, relay.Options{})
		req, resp := []byte("GET / HTTP/1.0\r\n\r\n"), randomBytes(1<<20, 3)
		if _, err := c.client.Write(req); err != nil {
			t.Fatal(err)
		}
		if err := c.client.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		got, err := readAll(c.backend, 4096)
		if err != nil || !bytes.Equal(got, req) {
			t.Fatalf("backend got %q, %v", got, err)
		}
		if _, err := c.backend.Write(resp); err != nil {
			t.Fatal(err)
		}
		if err := c.backend.Close(); err != nil {
			t.Fatal(err)
		}
		got, err = readAll(c.client, 64<<10)
		if err != nil || !bytes.Equal(got, resp) {
			t.Fatalf("client got %d bytes, %v", len(got), err)
		}
		if s := c.done.wait(t); s.Reason != relay.ReasonEOF || s.Up != int64(len(req)) || s.Down != int64(len(resp)) {
			t.Fatalf("stats = %+v", s)
		}
	})
}

// TestServerFINFirst: the backend half-closes first and the client keeps
// sending afterwards.
func TestServerFINFirst(t *testing.T) {
	forEachImpl(t, func(t *testing.T, impl relay.Impl) {
		e := startEngine(t, impl, relay.Config{})
		c := newFixture(t).relayed(t, e, relay.Options{})
		if _, err := c.backend.Write([]byte("banner")); err != nil {
			t.Fatal(err)
		}
		if err := c.backend.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		got, err := readAll(c.client, 16)
		if err != nil || string(got) != "banner" {
			t.Fatalf("client got %q, %v", got, err)
		}
		if e.Active() != 1 {
			t.Fatalf("Active = %d after one half-close, want 1", e.Active())
		}
		data := randomBytes(2<<20, 4)
		errc := make(chan error, 1)
		go writeAndClose(c.client, data, errc)
		got, err = readAll(c.backend, 32<<10)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("backend got %d bytes, %v", len(got), err)
		}
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		if s := c.done.wait(t); s.Reason != relay.ReasonEOF || s.Down != 6 || s.Up != int64(len(data)) {
			t.Fatalf("stats = %+v", s)
		}
	})
}

// TestReset: an RST from one side closes both.
func TestReset(t *testing.T) {
	forEachImpl(t, func(t *testing.T, impl relay.Impl) {
		for _, side := range []string{"backend", "client"} {
			t.Run(side, func(t *testing.T) {
				e := startEngine(t, impl, relay.Config{})
				c := newFixture(t).relayed(t, e, relay.Options{})
				rst, other := c.backend, c.client
				if side == "client" {
					rst, other = c.client, c.backend
				}
				if _, err := rst.Write([]byte("x")); err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, 1)
				_ = other.SetReadDeadline(time.Now().Add(waitTimeout))
				if _, err := io.ReadFull(other, buf); err != nil {
					t.Fatal(err)
				}
				_ = rst.SetLinger(0)
				_ = rst.Close()
				expectClosed(t, other)
				if s := c.done.wait(t); !strings.HasPrefix(s.Reason, "error") {
					t.Fatalf("reason = %q, want error", s.Reason)
				}
				eventually(t, "no active pairs", func() bool { return e.Active() == 0 })
			})
		}
	})
}

// TestIdleTimeout: a pair with no traffic is closed once its idle timeout
// has passed, never before, and a pair with a long timeout stays open.
// How soon after the timeout the close comes depends on the once-a-second
// sweep and on the machine, so the test bounds it only by waitTimeout
// (expectClosed): a pair that is never closed fails. The timeout is over
// the sweep interval, so a sweep that closed pairs early is seen.
func TestIdleTimeout(t *testing.T) {
	forEachImpl(t, func(t *testing.T, impl relay.Impl) {
		const idleTimeout = 1500 * time.Millisecond
		e := startEngine(t, impl, relay.Config{})
		f := newFixture(t)
		start := time.Now()
		idle := f.relayed(t, e, relay.Options{IdleTimeout: idleTimeout})
		busy := f.relayed(t, e, relay.Options{IdleTimeout: time.Hour})
		expectClosed(t, idle.client)
		if d := time.Since(start); d < idleTimeout {
			t.Fatalf("idle pair closed after %v, before its %v idle timeout", d, idleTimeout)
		}
		expectClosed(t, idle.backend)
		if s := idle.done.wait(t); s.Reason != relay.ReasonIdle {
			t.Fatalf("reason = %q, want idle", s.Reason)
		}
		if e.Active() != 1 {
			t.Fatalf("Active = %d, want 1", e.Active())
		}
		busy.pair.Close()
		busy.done.wait(t)
	})
}

func TestPairClose(t *testing.T) {
	forEachImpl(t, func(t *testing.T, impl relay.Impl) {
		e := startEngine(t, impl, relay.Config{})
		c := newFixture(t).relayed(t, e, relay.Options{})
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() { defer wg.Done(); c.pair.Close() }()
		}
		wg.Wait()
		expectClosed(t, c.client)
		expectClosed(t, c.backend)
		if s := c.done.wait(t); s.Reason != relay.ReasonClosed {
			t.Fatalf("reason = %q, want closed", s.Reason)
		}
		c.pair.Close()
		eventually(t, "no active pairs", func() bool { return e.Active() == 0 })
		if n := c.done.calls.Load(); n != 1 {
			t.Fatalf("OnDone called %d times", n)
		}
	})
}

func TestShutdown(t *testing.T) {
	forEachImpl(t, func(t *testing.T, impl relay.Impl) {
		e, err := impl.New(relay.Config{Loops: 2})
		if err != nil {
			t.Fatal(err)
		}
		stop := runEngine(t, e)
		f := newFixture(t)
		var ps []*proxied
		for range 10 {
			ps = append(ps, f.relayed(t, e, relay.Options{}))
		}
		eventually(t, "10 active pairs", func() bool { return e.Active() == 10 })
		stop()
		for _, c := range ps {
			select {
			case s := <-c.done.ch:
				if s.Reason != relay.ReasonClosed {
					t.Fatalf("reason = %q", s.Reason)
				}
			default:
				t.Fatalf("OnDone not called before Run returned")
			}
			expectClosed(t, c.client)
		}
		if e.Active() != 0 {
			t.Fatalf("Active = %d after Run", e.Active())
		}
		// After Run returned Relay refuses and closes both sockets.
		client, in := connPair(t, f.front)
		out, backend := connPair(t, f.back)
		defer client.Close()
		defer backend.Close()
		if _, err := e.Relay(in, out, relay.Options{}); !errors.Is(err, relay.ErrClosed) {
			t.Fatalf("Relay after stop: %v, want ErrClosed", err)
		}
		expectClosed(t, client)
		expectClosed(t, backend)
	})
}

func TestRelayBeforeRun(t *testing.T) {
	forEachImpl(t, func(t *testing.T, impl relay.Impl) {
		e, err := impl.New(relay.Config{})
		if err != nil {
			t.Fatal(err)
		}
		c := newFixture(t).relayed(t, e, relay.Options{})
		if _, err := c.client.Write([]byte("early")); err != nil {
			t.Fatal(err)
		}
		runEngine(t, e)
		buf := make([]byte, 5)
		_ = c.backend.SetReadDeadline(time.Now().Add(waitTimeout))
		if _, err := io.ReadFull(c.backend, buf); err != nil || string(buf) != "early" {
			t.Fatalf("got %q, %v", buf, err)
		}
		c.pair.Close()
		c.done.wait(t)
	})
}

func TestRunTwice(t *testing.T) {
	forEachImpl(t, func(t *testing.T, impl relay.Impl) {
		e, err := impl.New(relay.Config{})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := e.Run(ctx); err != nil {
			t.Fatalf("first Run: %v", err)
		}
		if err := e.Run(context.Background()); !errors.Is(err, relay.ErrClosed) {
			t.Fatalf("second Run: %v", err)
		}
	})
}

func TestConfigValidate(t *testing.T) {
	if _, err := relay.New(relay.Config{Loops: -1}); err == nil {
		t.Fatal("New accepted Loops -1")
	}
}

// TestManyPairs runs many concurrent request/response exchanges.
func TestManyPairs(t *testing.T) {
	forEachImpl(t, func(t *testing.T, impl relay.Impl) {
		e := startEngine(t, impl, relay.Config{Loops: 2})
		f := newFixture(t)
		const pairs, rounds = 50, 50
		var wg sync.WaitGroup
		errc := make(chan error, pairs)
		for i := range pairs {
			c := f.relayed(t, e, relay.Options{})
			wg.Add(1)
			go pingPong(&wg, c, rounds, 100+i*37, errc)
		}
		wg.Wait()
		close(errc)
		for err := range errc {
			t.Fatal(err)
		}
	})
}

// pingPong sends rounds requests of size n through c and echoes them back.
// Each round has waitTimeout: the deadline bounds a stalled exchange, not
// the time all rounds of all pairs take together.
func pingPong(wg *sync.WaitGroup, c *proxied, rounds, n int, errc chan<- error) {
	defer wg.Done()
	req := randomBytes(n, uint64(n))
	buf := make([]byte, n)
	for range rounds {
		_ = c.client.SetDeadline(time.Now().Add(waitTimeout))
		_ = c.backend.SetDeadline(time.Now().Add(waitTimeout))
		if _, err := c.client.Write(req); err != nil {
			errc <- err
			return
		}
		if _, err := io.ReadFull(c.backend, buf); err != nil {
			errc <- err
			return
		}
		if _, err := c.backend.Write(buf); err != nil {
			errc <- err
			return
		}
		if _, err := io.ReadFull(c.client, buf); err != nil {
			errc <- err
			return
		}
		if !bytes.Equal(buf, req) {
			errc <- errors.New("echo mismatch")
			return
		}
	}
	c.pair.Close()
}

// TestBackpressure: the relay stops reading while the destination does not
// drain, so a writer far ahead of its reader blocks instead of the relay
// buffering without bound, and nothing is lost afterwards.
func TestBackpressure(t *testing.T) {
	forEachImpl(t, func(t *testing.T, impl relay.Impl) {
		e := startEngine(t, impl, relay.Config{})
		c := newFixture(t).relayed(t, e, relay.Options{})
		data := randomBytes(64<<20, 5)
		_ = c.client.SetWriteDeadline(time.Now().Add(time.Second))
		n, err := c.client.Write(data)
		if !timedOut(err) {
			t.Fatalf("write of %d bytes to a stalled reader: n %d, err %v; want a timeout", len(data), n, err)
		}
		t.Logf("%d MiB in flight when the writer blocked", n>>20)
		if err := c.client.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		got, err := readAll(c.backend, 64<<10)
		if err != nil || !bytes.Equal(got, data[:n]) {
			t.Fatalf("backend got %d of %d bytes, %v", len(got), n, err)
		}
		c.pair.Close()
		c.done.wait(t)
	})
}

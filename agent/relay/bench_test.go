package relay_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/halolb/halo/agent/relay"
)

// forEachImplB runs bench against every engine implementation.
func forEachImplB(b *testing.B, bench func(b *testing.B, impl relay.Impl)) {
	for _, impl := range relay.Impls {
		b.Run(impl.Name, func(b *testing.B) { bench(b, impl) })
	}
}

// cpuTime returns the process's user+system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// sink reads c until EOF and sends the byte count.
func sink(c *net.TCPConn, total chan<- int64) {
	n, _ := io.Copy(io.Discard, struct{ io.Reader }{c})
	total <- n
}

func BenchmarkBulk(b *testing.B) {
	forEachImplB(b, func(b *testing.B, impl relay.Impl) {
		e := startEngine(b, impl, relay.Config{})
		c := newFixture(b).relayed(b, e, relay.Options{})
		total := make(chan int64, 1)
		go sink(c.backend, total)
		chunk := make([]byte, 1<<20)
		b.SetBytes(int64(len(chunk)))
		b.ResetTimer()
		for range b.N {
			if _, err := c.client.Write(chunk); err != nil {
				b.Fatal(err)
			}
		}
		_ = c.client.CloseWrite()
		if n := <-total; n != int64(b.N*len(chunk)) {
			b.Fatalf("sink got %d bytes, want %d", n, b.N*len(chunk))
		}
		b.StopTimer()
		c.pair.Close()
	})
}

// echo answers every read on c with the same bytes until c fails.
func echo(c *net.TCPConn) {
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// requester sends fixed-size requests through c until left runs out.
func requester(wg *sync.WaitGroup, c *net.TCPConn, size int, left *atomic.Int64, errc chan<- error) {
	defer wg.Done()
	req, resp := make([]byte, size), make([]byte, size)
	for left.Add(-1) >= 0 {
		if _, err := c.Write(req); err != nil {
			errc <- err
			return
		}
		if _, err := io.ReadFull(c, resp); err != nil {
			errc <- err
			return
		}
	}
}

func BenchmarkRequestResponse(b *testing.B) {
	forEachImplB(b, func(b *testing.B, impl relay.Impl) {
		const conns, size = 16, 100
		e := startEngine(b, impl, relay.Config{})
		f := newFixture(b)
		clients := make([]*net.TCPConn, conns)
		var echoes sync.WaitGroup
		for i := range clients {
			c := f.relayed(b, e, relay.Options{})
			clients[i] = c.client
			echoes.Add(1)
			go func() { defer echoes.Done(); echo(c.backend) }()
		}
		var left atomic.Int64
		left.Store(int64(b.N))
		errc := make(chan error, conns)
		var wg sync.WaitGroup
		cpu0 := cpuTime()
		b.ResetTimer()
		start := time.Now()
		for _, c := range clients {
			wg.Add(1)
			go requester(&wg, c, size, &left, errc)
		}
		wg.Wait()
		elapsed := time.Since(start)
		b.StopTimer()
		cpu := cpuTime() - cpu0
		close(errc)
		for err := range errc {
			b.Fatal(err)
		}
		b.ReportMetric(float64(b.N)/elapsed.Seconds(), "req/s")
		b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/req")
		for _, c := range clients {
			_ = c.Close()
		}
		echoes.Wait()
	})
}

func BenchmarkNewConn(b *testing.B) {
	forEachImplB(b, func(b *testing.B, impl relay.Impl) {
		e := startEngine(b, impl, relay.Config{})
		f := newFixture(b)
		msg, buf := []byte("hello"), make([]byte, 5)
		cpu0 := cpuTime()
		b.ResetTimer()
		for range b.N {
			c := f.relayed(b, e, relay.Options{})
			if err := exchange(c, msg, buf); err != nil {
				b.Fatal(err)
			}
			_ = c.client.Close()
			_ = c.backend.Close()
			c.done.wait(b)
		}
		b.StopTimer()
		b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/conn")
	})
}

// exchange sends msg through c one way and back.
func exchange(c *proxied, msg, buf []byte) error {
	if _, err := c.client.Write(msg); err != nil {
		return err
	}
	if _, err := io.ReadFull(c.backend, buf); err != nil {
		return err
	}
	if _, err := c.backend.Write(buf); err != nil {
		return err
	}
	_, err := io.ReadFull(c.client, buf)
	return err
}

// idlePairs is how many idle pairs BenchmarkIdle holds.
const idlePairs = 2000

// BenchmarkIdle holds idlePairs idle relayed connections and reports what
// each costs in resident memory, Go heap and descriptors, net of what the
// test's own client and backend ends cost (measured with as many direct
// connections). Run it with -benchtime=1x.
func BenchmarkIdle(b *testing.B) {
	forEachImplB(b, func(b *testing.B, impl relay.Impl) {
		for range b.N {
			direct := measureHeld(b, idlePairs, nil)
			relayed := measureHeld(b, idlePairs, &impl)
			b.ReportMetric(float64(relayed.rss-direct.rss)/idlePairs, "rss-B/pair")
			b.ReportMetric(float64(relayed.heap-direct.heap)/idlePairs, "heap-B/pair")
			b.ReportMetric(float64(relayed.fds-direct.fds)/idlePairs, "fds/pair")
			b.ReportMetric(float64(relayed.goroutines-direct.goroutines)/idlePairs, "goroutines/pair")
		}
	})
}

// held is what holding some connections costs.
type held struct{ rss, heap, fds, goroutines int64 }

// measureHeld opens n connections, relayed through a new engine of impl
// (or direct when impl is nil), and returns their cost.
func measureHeld(b *testing.B, n int, impl *relay.Impl) held {
	b.Helper()
	f := newFixture(b)
	var e *relay.Engine
	var stop func()
	if impl != nil {
		var err error
		if e, err = impl.New(relay.Config{}); err != nil {
			b.Fatal(err)
		}
		stop = runEngine(b, e)
	}
	before := snapshot(b)
	conns := make([]*net.TCPConn, 0, 2*n)
	for range n {
		if e == nil {
			c, a := connPair(b, f.front)
			conns = append(conns, c, a)
			continue // the test's two ends, as for a relayed pair
		}
		client, in := connPair(b, f.front)
		out, backend := connPair(b, f.back)
		if _, err := e.Relay(in, out, relay.Options{IdleTimeout: time.Hour}); err != nil {
			b.Fatal(err)
		}
		conns = append(conns, client, backend)
	}
	if e != nil {
		eventually(b, "pairs registered", func() bool { return e.Active() == n })
	}
	after := snapshot(b)
	for _, c := range conns {
		_ = c.Close()
	}
	if stop != nil {
		stop()
	}
	runtime.KeepAlive(conns)
	return held{rss: after.rss - before.rss, heap: after.heap - before.heap, fds: after.fds - before.fds, goroutines: after.goroutines - before.goroutines}
}

// snapshot measures the process after a full GC.
func snapshot(b *testing.B) held {
	b.Helper()
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		b.Skipf("no /proc: %v", err)
	}
	return held{rss: vmRSS(b), heap: int64(ms.HeapInuse + ms.StackInuse), fds: int64(len(ents)), goroutines: int64(runtime.NumGoroutine())}
}

// vmRSS reads VmRSS from /proc/self/status in bytes.
func vmRSS(b *testing.B) int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Skipf("no /proc: %v", err)
	}
	for line := range strings.Lines(string(data)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				b.Fatal(fmt.Errorf("parse VmRSS %q: %w", rest, err))
			}
			return kb << 10
		}
	}
	b.Fatal(errors.New("no VmRSS"))
	return 0
}

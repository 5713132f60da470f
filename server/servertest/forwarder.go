package servertest

import (
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"sync"
	"testing"
	"time"
)

// Forwarder accepts TCP connections on 127.0.0.1 and relays each to its
// target (TCP or a unix socket). Without a target (not set yet, or Cut),
// it closes them at once: a link that a test can cut, like a network
// partition, and restore with SetTarget.
type Forwarder struct {
	ln      net.Listener
	mu      sync.Mutex
	network string
	target  string
	conns   map[net.Conn]bool
	wg      sync.WaitGroup
}

// NewForwarder starts a Forwarder with no target, closed when the test ends.
func NewForwarder(t testing.TB) *Forwarder {
	t.Helper()
	f, err := newForwarder()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.close)
	return f
}

func newForwarder() (*Forwarder, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("forwarder: %w", err)
	}
	f := &Forwarder{ln: ln, conns: map[net.Conn]bool{}}
	f.wg.Go(f.serve)
	return f, nil
}

// Addr is where the Forwarder listens (host:port).
func (f *Forwarder) Addr() string { return f.ln.Addr().String() }

// URL is http://Addr, an etcd client or peer URL.
func (f *Forwarder) URL() string { return "http://" + f.Addr() }

// SetTarget makes new connections go to addr on network ("tcp", "unix").
func (f *Forwarder) SetTarget(network, addr string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.network, f.target = network, addr
}

func (f *Forwarder) serve() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		network, target := f.network, f.target
		f.mu.Unlock()
		if target == "" {
			c.Close()
			continue
		}
		up, err := net.DialTimeout(network, target, 5*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		f.mu.Lock()
		if f.target != target {
			f.mu.Unlock()
			c.Close()
			up.Close()
			continue
		}
		f.conns[c], f.conns[up] = true, true
		f.mu.Unlock()
		relay := func(dst, src net.Conn) {
			_, _ = io.Copy(dst, src) // ends when either side closes or is cut
			dst.Close()
			src.Close()
			f.mu.Lock()
			delete(f.conns, dst)
			delete(f.conns, src)
			f.mu.Unlock()
		}
		f.wg.Go(func() { relay(up, c) })
		f.wg.Go(func() { relay(c, up) })
	}
}

// Cut closes every relayed connection, and every new one until SetTarget.
func (f *Forwarder) Cut() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.target = ""
	for _, c := range slices.Collect(maps.Keys(f.conns)) {
		c.Close()
	}
}

// close cuts and stops accepting, and waits for its goroutines.
func (f *Forwarder) close() {
	f.ln.Close()
	f.Cut()
	f.wg.Wait()
}

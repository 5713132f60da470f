//go:build !linux

package relay_test

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

// blackHole returns a loopback address whose connects hang: a listener
// whose accept queue is full and never drained drops new SYNs. Here the
// queue counts as full once a dial takes longer than 50ms, which a very
// slow machine could mistake; serve_linux_test.go's version asks the
// kernel instead.
func blackHole(t *testing.T) netip.AddrPort {
	ln := newListener(t)
	a := ln.Addr().(*net.TCPAddr).AddrPort()
	var held []net.Conn
	t.Cleanup(func() {
		for _, c := range held {
			_ = c.Close()
		}
	})
	for range 100_000 {
		c, err := net.DialTimeout("tcp", a.String(), 50*time.Millisecond)
		if err != nil {
			return a
		}
		held = append(held, c)
	}
	t.Skip("could not fill an accept queue")
	return a
}

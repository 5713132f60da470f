package servertest

import (
	"net"
	"sync"
	"testing"
)

// Hung listens on addr (host:port; port 0 picks one), accepts TCP
// connections and never answers on them: a hung apiserver or etcd member,
// whose kernel still completes handshakes. It returns the address it
// listens on; everything closes when the test ends.
func Hung(t testing.TB, addr string) string {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

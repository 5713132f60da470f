package relay_test

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/halolb/halo/agent/relay"
)

// TestServeKeepalive: the epoll engine sets TCP keepalive and TCP_NODELAY
// on the listening socket, once; Linux copies them to every socket
// accepted from it, so the engine does not set them per connection.
func TestServeKeepalive(t *testing.T) {
	e := startEngine(t, relay.Impl{Name: "epoll", New: relay.NewEpoll}, relay.Config{})
	ln := newListener(t)
	ka := net.KeepAliveConfig{Enable: true, Idle: 31 * time.Second, Interval: 11 * time.Second, Count: 4}
	stop, err := e.Serve(ln, ka, func(netip.AddrPort) relay.Setup { return &scriptSetup{done: newDoneRecorder()} })
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	rc, err := ln.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	want := map[[2]int]int{
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE}:   1,
		{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE}:  31,
		{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL}: 11,
		{unix.IPPROTO_TCP, unix.TCP_KEEPCNT}:   4,
		{unix.IPPROTO_TCP, unix.TCP_NODELAY}:   1,
	}
	if err := rc.Control(func(fd uintptr) {
		for o, v := range want {
			if got, err := unix.GetsockoptInt(int(fd), o[0], o[1]); err != nil || got != v {
				t.Errorf("listener option %v = %d (%v), want %d", o, got, err, v)
			}
		}
	}); err != nil {
		t.Fatal(err)
	}
}

// blackHole returns a loopback address whose connects hang: a listener
// whose accept queue is full and never drained drops new SYNs. The queue
// is shrunk to one connection (listen(2) again on a listening socket sets
// its backlog) and filled, and the kernel is asked (TCP_INFO on a
// listener reports the queue's length and limit) when it is full, so no
// dial timeout has to guess it: a slow machine cannot mistake a slow
// connect for a full queue.
func blackHole(t *testing.T) netip.AddrPort {
	ln := newListener(t)
	a := ln.Addr().(*net.TCPAddr).AddrPort()
	rc, err := ln.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var lerr error
	if err := rc.Control(func(fd uintptr) { lerr = unix.Listen(int(fd), 0) }); err != nil || lerr != nil {
		t.Fatalf("listen again with backlog 0: %v %v", err, lerr)
	}
	// queue returns the accept queue's length and limit.
	queue := func() (n, limit uint32) {
		if err := rc.Control(func(fd uintptr) {
			info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
			if err != nil {
				t.Fatalf("TCP_INFO: %v", err)
			}
			n, limit = info.Unacked, info.Sacked
		}); err != nil {
			t.Fatal(err)
		}
		return n, limit
	}
	var held []net.Conn
	t.Cleanup(func() {
		for _, c := range held {
			_ = c.Close()
		}
	})
	// The kernel drops a SYN once the queue holds more than its limit.
	for n, limit := queue(); n <= limit; n, limit = queue() {
		c, err := net.DialTimeout("tcp", a.String(), waitTimeout)
		if err != nil {
			t.Fatalf("filling the accept queue (%d of %d): %v", n, limit, err)
		}
		held = append(held, c)
		eventually(t, "the connection queued", func() bool { q, _ := queue(); return q >= uint32(len(held)) })
	}
	t.Logf("black hole %v: %d connections queued", a, len(held))
	return a
}

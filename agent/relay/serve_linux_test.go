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

package main

import (
	"errors"
	"math"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/halolb/halo/bench/internal/summary"
)

func TestSeedHAProxyConfig(t *testing.T) {
	c := seedHAProxyConfig("127.0.0.1:6443", "/tmp/x.sock", []string{"127.0.1.1:443", "127.0.1.2:443"})
	for _, want := range []string{
		"  server master1 127.0.1.1:443 check check-ssl verify none inter 10000\n",
		"  server master2 127.0.1.2:443 check check-ssl verify none inter 10000\n",
		"  balance roundrobin\n", "  timeout client 3h\n", "  timeout server 3h\n", "  bind 127.0.0.1:6443\n",
	} {
		if !strings.Contains(c, want) {
			t.Errorf("config lacks %q:\n%s", want, c)
		}
	}
}

func TestSummarizeInf(t *testing.T) {
	med, lo, hi, ok := summary.Of([]float64{math.Inf(1), 2, 3})
	if !ok || med != 3 || lo != 2 || !math.IsInf(hi, 1) {
		t.Fatalf("summarize = %v %v %v %v", med, lo, hi, ok)
	}
	if got := fmtVal(hi, 1, time.Minute); got != "> 60" {
		t.Errorf("fmtVal(Inf) = %q", got)
	}
	if _, _, _, ok := summary.Of(nil); ok {
		t.Error("summary.Of(nil) ok")
	}
}

func TestLastBadStart(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	recs := []reqRecord{
		{at: at(0), dur: 5 * time.Millisecond, master: "m2", done: true},
		{at: at(1), dur: 1500 * time.Millisecond, master: "m2", done: true},       // stalled, answered
		{at: at(2), dur: 10 * time.Millisecond, err: errors.New("x"), done: true}, // failed
		{at: at(3), dur: 5 * time.Millisecond, master: "m3", done: true},
		{at: at(3.5)}, // in flight for 0.5s: not (yet) stalled
	}
	if got := lastBadStart(recs, at(4), time.Second); !got.Equal(at(2)) {
		t.Errorf("lastBadStart = %v, want %v", got.Sub(t0), 2*time.Second)
	}
	if got := lastBadStart(recs, at(4.6), time.Second); !got.Equal(at(3.5)) {
		t.Errorf("lastBadStart later = %v, want 3.5s", got.Sub(t0))
	}
}

func TestHeldTo(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if n, err := heldTo(syscall.Getpgrp(), l.Addr().String()); err != nil || n != 1 {
		t.Fatalf("heldTo with one connection = %d, %v", n, err)
	}
	c.Close()
	if n, err := heldTo(syscall.Getpgrp(), l.Addr().String()); err != nil || n != 0 {
		t.Fatalf("heldTo after close = %d, %v", n, err)
	}
	if _, err := heldTo(1, "[::1]:80"); err == nil {
		t.Error("heldTo accepted an IPv6 address")
	}
}

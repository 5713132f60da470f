package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/halolb/halo/bench/internal/proxyproc"
)

// A master is a fake kube-apiserver in a process of its own (this binary
// re-executed with masterEnv set), so that it can be hung with SIGSTOP: the
// kernel still completes TCP handshakes on its listening socket, but
// nothing answers, as with a hung or overloaded apiserver. It serves TLS
// with the bench's certificate:
//
//	/readyz  "ok", counted (the probes; HAProxy's check-ssl only does a TLS
//	         handshake, counted as a connection that made no request)
//	/whoami  its name (the clients' requests)
//	/watch   a stream: a line "<name> <seq>" at once and then every
//	         --tick, until the client goes (the long-lived watches)
//	/stats   the counters, as JSON
const masterEnv = "HALO_BENCH_FAILOVER_MASTER" // name,host:port,certdir

// masterStats are a master's counters since it started.
type masterStats struct {
	Readyz    int64 // /readyz requests
	Handshake int64 // connections closed without a request (TLS-only checks)
	Whoami    int64
	Watches   int64
}

// runMaster is the child's main; it serves until its standard input closes.
func runMaster(spec string) error {
	parts := strings.Split(spec, ",")
	if len(parts) != 4 {
		return fmt.Errorf("%s: want name,host:port,certdir,tick, got %q", masterEnv, spec)
	}
	name, addr, dir := parts[0], parts[1], parts[2]
	tick, err := time.ParseDuration(parts[3])
	if err != nil {
		return err
	}
	if _, err := proxyproc.RaiseNoFile(); err != nil {
		return err
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "master.crt"), filepath.Join(dir, "master.key"))
	if err != nil {
		return fmt.Errorf("master certificate: %w", err)
	}
	var st masterStats
	var active sync.Map // connections that made a request
	mux := http.NewServeMux()
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		atomic.AddInt64(&st.Readyz, 1)
		_, _ = io.WriteString(w, "ok")
	})
	mux.HandleFunc("/whoami", func(w http.ResponseWriter, r *http.Request) {
		atomic.AddInt64(&st.Whoami, 1)
		_, _ = io.WriteString(w, name)
	})
	mux.HandleFunc("/watch", func(w http.ResponseWriter, r *http.Request) {
		atomic.AddInt64(&st.Watches, 1)
		f := w.(http.Flusher)
		t := time.NewTicker(tick)
		defer t.Stop()
		for seq := 0; ; seq++ {
			if _, err := fmt.Fprintf(w, "%s %d\n", name, seq); err != nil {
				return
			}
			f.Flush()
			select {
			case <-r.Context().Done():
				return
			case <-t.C:
			}
		}
	})
	mux.HandleFunc("/stats", func(w http.ResponseWriter, r *http.Request) {
		s := masterStats{Readyz: atomic.LoadInt64(&st.Readyz), Handshake: atomic.LoadInt64(&st.Handshake),
			Whoami: atomic.LoadInt64(&st.Whoami), Watches: atomic.LoadInt64(&st.Watches)}
		_ = json.NewEncoder(w).Encode(s)
	})
	srv := &http.Server{Handler: mux, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}},
		ReadHeaderTimeout: 10 * time.Second, ErrorLog: log.New(io.Discard, "", 0),
		ConnState: func(c net.Conn, s http.ConnState) {
			switch s {
			case http.StateActive:
				active.Store(c, struct{}{})
			case http.StateClosed, http.StateHijacked:
				if _, ok := active.LoadAndDelete(c); !ok {
					atomic.AddInt64(&st.Handshake, 1)
				}
			}
		}}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("master %s: %w", name, err)
	}
	go func() { _ = srv.ServeTLS(l, "", "") }()
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = srv.Shutdown(ctx)
	return nil
}

// master is a running master child.
type master struct {
	name string
	addr string // ip:port
	proc *proxyproc.Child
}

// startMasters starts the three masters on ips (one each) sharing port.
func startMasters(exe, certDir string, ips []string, port int, tick time.Duration) ([]*master, error) {
	var ms []*master
	for i, ip := range ips {
		name, addr := fmt.Sprintf("master-%d", i+1), net.JoinHostPort(ip, fmt.Sprint(port))
		env := masterEnv + "=" + strings.Join([]string{name, addr, certDir, tick.String()}, ",")
		c, line, err := proxyproc.StartChild(name, []string{exe}, []string{env}, 10*time.Second)
		if err == nil && line != "ready" {
			c.Stop()
			err = fmt.Errorf("%s: %s", name, line)
		}
		if err != nil {
			stopMasters(ms)
			return nil, err
		}
		ms = append(ms, &master{name: name, addr: addr, proc: c})
	}
	return ms, nil
}

func stopMasters(ms []*master) {
	for _, m := range ms {
		m.proc.Stop()
	}
}

// stats reads the master's counters.
func (m *master) stats(c *http.Client) (masterStats, error) {
	var s masterStats
	resp, err := c.Get("https://" + m.addr + "/stats")
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return s, errors.New(resp.Status)
	}
	return s, json.NewDecoder(resp.Body).Decode(&s)
}

package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/halolb/halo/bench/internal/proxyproc"
)

// The proxies under test, in the order of the table's columns.
const (
	direct  = "direct"
	agent   = "halo-agent"
	haproxy = proxyproc.HAProxy
	nginx   = proxyproc.Nginx
)

var allProxies = []string{direct, agent, haproxy, nginx}

// proxyEnv is what starting a proxy needs.
type proxyEnv struct {
	dir         string   // temporary directory for configs, caches and pid files
	agentBin    string   // built halo-agent; empty when agentErr is set
	backends    []string // 127.0.0.1:port of the three backends
	maxConns    int      // the most proxied connections the bench holds at once
	noFile      uint64   // the open-files limit every proxy stays within
	haproxyChk  bool     // seed-style TLS health checks in HAProxy
	unavailable map[string]string
}

// proxyProc is a running proxy and where clients connect to it.
type proxyProc struct {
	*proxyproc.Proc
	addr string
}

func (p *proxyProc) pid() int { return p.Pid() }
func (p *proxyProc) stop()    { p.Stop() }

// startProxy starts the named proxy in front of env.backends, pinned to cpus
// when cpus is non-nil (started under taskset, so that HAProxy's thread
// count and Go's GOMAXPROCS follow the pinning as they would in a pod with
// a CPU set), and waits until it relays an echo round trip.
func startProxy(ctx context.Context, name string, env *proxyEnv, cpus []int) (*proxyProc, error) {
	listen, err := proxyproc.FreePort()
	if err != nil {
		return nil, err
	}
	var wrap []string
	if cpus != nil {
		wrap = []string{"taskset", "-c", cpuList(cpus)}
	}
	var p *proxyproc.Proc
	var ready func(context.Context) error
	switch name {
	case agent:
		admin, aerr := proxyproc.FreePort()
		if aerr != nil {
			return nil, aerr
		}
		cache := filepath.Join(env.dir, fmt.Sprintf("agent-cache-%d", time.Now().UnixNano()))
		p, err = proxyproc.Start(agent, append(wrap, env.agentBin, "--fallback-backends", strings.Join(env.backends, ","), "--fallback-listen", listen,
			"--admin-listen", admin, "--cache-dir", cache, "--log-level", "warn"), nil)
		ready = func(ctx context.Context) error { return proxyproc.WaitHTTP200(ctx, "http://"+admin+"/readyz") }
	case haproxy:
		p, err = proxyproc.StartHAProxy(env.dir, haproxyConfig(listen, env.backends, env.maxConns, env.noFile, env.haproxyChk), wrap)
	case nginx:
		p, err = proxyproc.StartNginx(proxyproc.NginxOptions{Listen: listen, Backends: env.backends, MaxConns: env.maxConns,
			NoFile: env.noFile, Prefix: filepath.Join(env.dir, "nginx")}, wrap)
	default:
		return nil, fmt.Errorf("no proxy %q", name)
	}
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	err = func() error {
		if ready != nil {
			if err := ready(rctx); err != nil {
				return err
			}
		}
		return p.WaitUntil(rctx, func() error { return echoOnce(listen) })
	}()
	if err != nil {
		p.Stop()
		return nil, fmt.Errorf("%s not ready: %w; its output: %s", name, err, p.Output())
	}
	return &proxyProc{Proc: p, addr: listen}, nil
}

// haproxyConfig is the seed's HAProxy listen section (mode tcp, timeout
// client/server 3h) with Kubespray's leastconn balance and 5s connect
// timeout, sized for maxConns connections within noFile open files. No
// logging (Kubespray's tcplog goes to a syslog on 127.0.0.1 that usually
// does not exist; the other proxies log nothing per connection either). The
// seed's health checks (check check-ssl verify none inter 10000) only with
// checks: halo-agent's static fallback backends and nginx-proxy have none.
func haproxyConfig(listen string, backends []string, maxConns int, noFile uint64, checks bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, `global
    maxconn %d
    ulimit-n %d

defaults
    mode tcp
    timeout connect 5s
    timeout client 3h
    timeout server 3h
    timeout check 5s
    maxconn %d

listen kubernetes-apiserver-https
    bind %s
    mode tcp
    balance leastconn
`, maxConns+100, noFile, maxConns+100, listen)
	for i, be := range backends {
		chk := ""
		if checks {
			chk = " check check-ssl verify none inter 10000"
		}
		fmt.Fprintf(&b, "    server master%d %s%s\n", i+1, be, chk)
	}
	return b.String()
}

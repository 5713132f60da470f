package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The proxies under test, in the order of the table's columns.
const (
	direct  = "direct"
	agent   = "halo-agent"
	haproxy = "HAProxy"
	nginx   = "nginx"
)

var allProxies = []string{direct, agent, haproxy, nginx}

// nginxStreamModule is Debian's dynamic stream module (libnginx-mod-stream).
const nginxStreamModule = "/usr/lib/nginx/modules/ngx_stream_module.so"

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

// proxyProc is a running proxy: a process group whose leader is pid.
type proxyProc struct {
	name string
	addr string // where clients connect
	cmd  *exec.Cmd
	out  *tailBuffer
	done chan struct{}
}

func (p *proxyProc) pid() int { return p.cmd.Process.Pid }

// startProxy starts the named proxy in front of env.backends, pinned to cpus
// when cpus is non-nil (started under taskset, so that HAProxy's thread
// count and Go's GOMAXPROCS follow the pinning as they would in a pod with
// a CPU set), and waits until it relays an echo round trip.
func startProxy(ctx context.Context, name string, env *proxyEnv, cpus []int) (*proxyProc, error) {
	listen, err := freePort()
	if err != nil {
		return nil, err
	}
	var argv []string
	var ready func(context.Context) error
	switch name {
	case agent:
		admin, err := freePort()
		if err != nil {
			return nil, err
		}
		cache := filepath.Join(env.dir, fmt.Sprintf("agent-cache-%d", time.Now().UnixNano()))
		argv = []string{env.agentBin, "--bootstrap-backends", strings.Join(env.backends, ","), "--bootstrap-listen", listen,
			"--admin-listen", admin, "--cache-dir", cache, "--log-level", "warn"}
		ready = func(ctx context.Context) error { return waitHTTP200(ctx, "http://"+admin+"/readyz") }
	case haproxy:
		cfg := filepath.Join(env.dir, "haproxy.cfg")
		if err := os.WriteFile(cfg, []byte(haproxyConfig(listen, env.backends, env.maxConns, env.noFile, env.haproxyChk)), 0o644); err != nil {
			return nil, fmt.Errorf("haproxy config: %w", err)
		}
		argv = []string{"haproxy", "-db", "-f", cfg}
	case nginx:
		prefix := filepath.Join(env.dir, "nginx")
		if err := os.MkdirAll(prefix, 0o755); err != nil {
			return nil, fmt.Errorf("nginx prefix: %w", err)
		}
		cfg := filepath.Join(prefix, "nginx.conf")
		if err := os.WriteFile(cfg, []byte(nginxConfig(listen, env.backends, env.maxConns, env.noFile, prefix)), 0o644); err != nil {
			return nil, fmt.Errorf("nginx config: %w", err)
		}
		argv = []string{"nginx", "-p", prefix + "/", "-e", "stderr", "-c", cfg, "-g", "daemon off;"}
	default:
		return nil, fmt.Errorf("no proxy %q", name)
	}
	if cpus != nil {
		argv = append([]string{"taskset", "-c", cpuList(cpus)}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	out := &tailBuffer{max: 4096}
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group, so that stop reaches nginx's workers too; and
	// killed with this process if it dies without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proxyProc{name: name, addr: listen, cmd: cmd, out: out, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	err = func() error {
		if ready != nil {
			if err := ready(rctx); err != nil {
				return err
			}
		}
		return waitEcho(rctx, listen, p.done)
	}()
	if err != nil {
		p.stop()
		return nil, fmt.Errorf("%s not ready: %w; its output: %s", name, err, strings.TrimSpace(out.String()))
	}
	return p, nil
}

// stop ends the proxy: SIGTERM to its process group, SIGKILL after 3s, and
// SIGKILL to the group once more for any worker left behind.
func (p *proxyProc) stop() {
	pgid := p.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(3 * time.Second):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
}

// haproxyConfig is the seed's HAProxy listen section (mode tcp, timeout
// client/server 3h) with Kubespray's leastconn balance and 5s connect
// timeout, sized for maxConns connections within noFile open files. No
// logging (Kubespray's tcplog goes to a syslog on 127.0.0.1 that usually
// does not exist; the other proxies log nothing per connection either). The
// seed's health checks (check check-ssl verify none inter 10000) only with
// checks: halo-agent's static bootstrap backends and nginx-proxy have none.
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

// nginxConfig is Kubespray's nginx-proxy (roles/kubernetes/node/templates/
// loadbalancer/nginx.conf.j2): 2 workers, multi_accept, epoll, least_conn,
// proxy_timeout 10m, proxy_connect_timeout 1s. Two changes to fit this
// machine: worker_rlimit_nofile is the 20,000-file limit instead of 130048,
// and worker_connections is raised from 16384 to what one worker needs to
// hold every held connection (2 per proxied connection) when that is more. Its http block
// (the /healthz port) is left out; the stream module is Debian's dynamic one.
func nginxConfig(listen string, backends []string, maxConns int, noFile uint64, prefix string) string {
	workerConns := min(max(16384, 2*maxConns+200), int(noFile)-50)
	var b strings.Builder
	fmt.Fprintf(&b, `load_module %s;
pid %s/nginx.pid;
error_log stderr warn;

worker_processes 2;
worker_rlimit_nofile %d;
worker_shutdown_timeout 10s;

events {
  multi_accept on;
  use epoll;
  worker_connections %d;
}

stream {
  upstream kube_apiserver {
    least_conn;
`, nginxStreamModule, prefix, noFile, workerConns)
	for _, be := range backends {
		fmt.Fprintf(&b, "    server %s;\n", be)
	}
	fmt.Fprintf(&b, `  }

  server {
    listen        %s;
    proxy_pass    kube_apiserver;
    proxy_timeout 10m;
    proxy_connect_timeout 1s;
  }
}
`, listen)
	return b.String()
}

// freePort returns a 127.0.0.1:port that was free a moment ago.
func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// waitHTTP200 polls url until it answers 200.
func waitHTTP200(ctx context.Context, url string) error {
	c := &http.Client{Timeout: time.Second}
	var last error
	for ctx.Err() == nil {
		resp, err := c.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("%s: %s", url, resp.Status)
		}
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%w (last: %v)", ctx.Err(), last)
}

// waitEcho retries an echo round trip through addr until one succeeds.
func waitEcho(ctx context.Context, addr string, exited <-chan struct{}) error {
	var last error
	for ctx.Err() == nil {
		select {
		case <-exited:
			return errors.New("exited")
		default:
		}
		if last = echoOnce(addr); last == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%w (last: %v)", ctx.Err(), last)
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(bytes.ToValidUTF8(t.b, nil))
}

// ensureTools installs HAProxy and nginx's stream module with apt-get when
// one is missing and this runs as root (unless skipMissing), and returns
// the proxies that still cannot run, with why.
func ensureTools(skipMissing bool) map[string]string {
	missing := func() map[string]string {
		m := map[string]string{}
		if _, err := exec.LookPath("haproxy"); err != nil {
			m[haproxy] = "haproxy not installed"
		}
		if _, err := exec.LookPath("nginx"); err != nil {
			m[nginx] = "nginx not installed"
		} else if _, err := os.Stat(nginxStreamModule); err != nil {
			m[nginx] = "nginx stream module not installed (" + nginxStreamModule + ")"
		}
		return m
	}
	m := missing()
	if len(m) == 0 || skipMissing || os.Geteuid() != 0 {
		return m
	}
	fmt.Fprintln(os.Stderr, "installing haproxy nginx libnginx-mod-stream with apt-get")
	for _, args := range [][]string{{"update", "-qq"}, {"install", "-y", "-qq", "haproxy", "nginx", "libnginx-mod-stream"}} {
		cmd := exec.Command("apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "apt-get %s: %v\n", args[0], err)
		}
	}
	return missing()
}

// buildAgent builds halo-agent into dir (from the repository root).
func buildAgent(dir string) (string, error) {
	bin := filepath.Join(dir, "halo-agent")
	cmd := exec.Command("go", "build", "-o", bin, "./agent/cmd/halo-agent")
	out, err := cmd.CombinedOutput()
	if err != nil {
		msg := strings.Join(strings.Fields(string(out)), " ")
		if len(msg) > 300 {
			msg = msg[:300] + "…"
		}
		return "", fmt.Errorf("go build ./agent/cmd/halo-agent: %v: %s", err, msg)
	}
	return bin, nil
}

// versionOf runs a tool's version flag and returns its first line.
func versionOf(name string, args ...string) string {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil && len(out) == 0 {
		return "unavailable"
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line
}

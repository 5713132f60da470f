// Package proxyproc runs the proxies halo's benchmarks compare, each as a
// child process in a process group of its own: halo's binaries built from
// this repository, HAProxy, and nginx's stream module configured as
// Kubespray's nginx-proxy. It installs HAProxy and nginx with apt-get when
// they are missing.
package proxyproc

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// NginxStreamModule is Debian's dynamic stream module (libnginx-mod-stream).
const NginxStreamModule = "/usr/lib/nginx/modules/ngx_stream_module.so"

// Names of the peer proxies, as the benchmarks' tables show them.
const (
	HAProxy = "HAProxy"
	Nginx   = "nginx"
)

// Select returns the names in the comma-separated list (of proxies, or of
// a benchmark's layouts or scenarios), each spelled as in all (matched
// without regard to case), in the list's order.
func Select(list string, all []string) ([]string, error) {
	var out []string
	for _, p := range strings.Split(list, ",") {
		i := slices.IndexFunc(all, func(n string) bool { return strings.EqualFold(n, strings.TrimSpace(p)) })
		if i < 0 {
			return nil, fmt.Errorf("no %q (have %s)", strings.TrimSpace(p), strings.Join(all, ", "))
		}
		out = append(out, all[i])
	}
	return out, nil
}

// Proc is a running child process, the leader of its own process group.
type Proc struct {
	Name string
	cmd  *exec.Cmd
	out  *tailBuffer
	done chan struct{}
}

// Start starts argv as name in a process group of its own (so that Stop
// reaches nginx's workers too), killed with this process if it dies
// without cleaning up. Its output is kept (the last 4 KiB) for errors.
func Start(name string, argv []string, env []string) (*Proc, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	out := &tailBuffer{max: 4096}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, cmd: cmd, out: out, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	return p, nil
}

// Child is a child process that serves until its standard input closes:
// this benchmark's own binary re-executed in another role (backends,
// masters).
type Child struct {
	*Proc
	stdin io.Closer
}

// StartChild starts argv with env added, its standard input a pipe, and
// returns the first line it prints on its standard output (say, its
// ports) once it does, within wait. Its standard error is kept like
// Start's output.
func StartChild(name string, argv, env []string, wait time.Duration) (*Child, string, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	out := &tailBuffer{max: 4096}
	cmd.Stderr = out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", name, err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", name, err)
	}
	if err := cmd.Start(); err != nil {
		return nil, "", fmt.Errorf("start %s: %w", name, err)
	}
	c := &Child{Proc: &Proc{Name: name, cmd: cmd, out: out, done: make(chan struct{})}, stdin: stdin}
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			line <- sc.Text()
		}
		close(line)
		_, _ = io.Copy(io.Discard, stdout)
		_ = cmd.Wait() // after the last read from stdout, as Wait requires
		close(c.done)
	}()
	select {
	case l, ok := <-line:
		if ok {
			return c, l, nil
		}
		c.Stop()
		return nil, "", fmt.Errorf("%s exited: %s", name, c.Output())
	case <-time.After(wait):
		c.Stop()
		return nil, "", fmt.Errorf("%s: no first line within %v: %s", name, wait, c.Output())
	}
}

// Stop closes the child's standard input, lets it exit for a second, then
// stops it as Proc.Stop does (SIGCONT first, should it be stopped).
func (c *Child) Stop() {
	_ = c.Signal(syscall.SIGCONT)
	_ = c.stdin.Close()
	select {
	case <-c.done:
	case <-time.After(time.Second):
	}
	c.Proc.Stop()
}

// Pid is the process's (and its group's) id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Output is the tail of what the process wrote to stdout and stderr.
func (p *Proc) Output() string { return strings.TrimSpace(p.out.String()) }

// Signal sends sig to the process group.
func (p *Proc) Signal(sig syscall.Signal) error { return syscall.Kill(-p.Pid(), sig) }

// Stop ends the process: SIGCONT and SIGTERM to its group, SIGKILL after
// 3s, and SIGKILL to the group once more for any worker left behind.
func (p *Proc) Stop() {
	_ = p.Signal(syscall.SIGCONT)
	_ = p.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(3 * time.Second):
		_ = p.Signal(syscall.SIGKILL)
		<-p.done
	}
	_ = p.Signal(syscall.SIGKILL)
}

// NginxOptions is a Kubespray nginx-proxy configuration.
type NginxOptions struct {
	Listen   string   // host:port clients connect to
	Backends []string // host:port of the masters
	MaxConns int      // the most proxied connections held at once
	NoFile   uint64   // the open-files limit nginx must stay within
	Prefix   string   // nginx's prefix directory (pid file)
}

// NginxConfig is Kubespray's nginx-proxy (roles/kubernetes/node/templates/
// loadbalancer/nginx.conf.j2): 2 workers, multi_accept, epoll, least_conn,
// proxy_timeout 10m, proxy_connect_timeout 1s, no active health checks
// (nginx's open-source stream module has none; a failed connect moves on to
// the next server, proxy_next_upstream's default). Two changes to fit this
// machine: worker_rlimit_nofile is the open-files limit instead of 130048,
// and worker_connections is raised from 16384 to what one worker needs to
// hold every connection (2 per proxied connection) when that is more. Its
// http block (the /healthz port) is left out; the stream module is Debian's
// dynamic one.
func NginxConfig(o NginxOptions) string {
	workerConns := min(max(16384, 2*o.MaxConns+200), int(o.NoFile)-50)
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
`, NginxStreamModule, o.Prefix, o.NoFile, workerConns)
	for _, be := range o.Backends {
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
`, o.Listen)
	return b.String()
}

// StartNginx writes o's configuration under o.Prefix and starts nginx in
// the foreground with it.
func StartNginx(o NginxOptions, wrap []string) (*Proc, error) {
	if err := os.MkdirAll(o.Prefix, 0o755); err != nil {
		return nil, fmt.Errorf("nginx prefix: %w", err)
	}
	cfg := filepath.Join(o.Prefix, "nginx.conf")
	if err := os.WriteFile(cfg, []byte(NginxConfig(o)), 0o644); err != nil {
		return nil, fmt.Errorf("nginx config: %w", err)
	}
	return Start(Nginx, append(wrap, "nginx", "-p", o.Prefix+"/", "-e", "stderr", "-c", cfg, "-g", "daemon off;"), nil)
}

// StartHAProxy writes config to dir/haproxy.cfg and starts HAProxy in the
// foreground with it.
func StartHAProxy(dir, config string, wrap []string) (*Proc, error) {
	cfg := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(config), 0o644); err != nil {
		return nil, fmt.Errorf("haproxy config: %w", err)
	}
	return Start(HAProxy, append(wrap, "haproxy", "-db", "-f", cfg), nil)
}

// EnsureInstalled installs HAProxy and nginx's stream module with apt-get
// when one is missing and this runs as root (unless skipMissing), and
// returns the proxies that still cannot run, with why.
func EnsureInstalled(skipMissing bool) map[string]string {
	missing := func() map[string]string {
		m := map[string]string{}
		if _, err := exec.LookPath("haproxy"); err != nil {
			m[HAProxy] = "haproxy not installed"
		}
		if _, err := exec.LookPath("nginx"); err != nil {
			m[Nginx] = "nginx not installed"
		} else if _, err := os.Stat(NginxStreamModule); err != nil {
			m[Nginx] = "nginx stream module not installed (" + NginxStreamModule + ")"
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

// Build builds the command package pkg (say ./agent/cmd/halo-agent, from
// the repository root) into dir and returns the binary's path.
func Build(dir, pkg string) (string, error) {
	bin := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", bin, pkg)
	out, err := cmd.CombinedOutput()
	if err != nil {
		msg := strings.Join(strings.Fields(string(out)), " ")
		if len(msg) > 300 {
			msg = msg[:300] + "…"
		}
		return "", fmt.Errorf("go build %s: %v: %s", pkg, err, msg)
	}
	return bin, nil
}

// Version runs a tool's version flag and returns its first line.
func Version(name string, args ...string) string {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil && len(out) == 0 {
		return "unavailable"
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line
}

// FreePort returns a 127.0.0.1:port that was free a moment ago.
func FreePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// WaitHTTP200 polls url until it answers 200, or ctx ends.
func WaitHTTP200(ctx context.Context, url string) error {
	c := &http.Client{Timeout: time.Second}
	defer c.CloseIdleConnections()
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

// RaiseNoFile raises this process's soft open-files limit to the hard one
// (never the hard one itself) and returns the hard limit.
func RaiseNoFile() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, fmt.Errorf("getrlimit: %w", err)
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			return 0, fmt.Errorf("setrlimit: %w", err)
		}
	}
	return rl.Max, nil
}

// ErrExited is returned by WaitUntil when the process exits first.
var ErrExited = errors.New("exited")

// WaitUntil retries ok every 50ms until it succeeds, ctx ends or p exits.
func (p *Proc) WaitUntil(ctx context.Context, ok func() error) error {
	var last error
	for ctx.Err() == nil {
		select {
		case <-p.done:
			return ErrExited
		default:
		}
		if last = ok(); last == nil {
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

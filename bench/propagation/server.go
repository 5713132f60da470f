package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/halolb/halo/bench/internal/proxyproc"
)

// buildServer builds halo-server into a temporary directory.
func buildServer() (string, func(), error) {
	dir, err := os.MkdirTemp("", "halo-bench-")
	if err != nil {
		return "", nil, err
	}
	bin, err := proxyproc.Build(dir, "./server/cmd/halo-server")
	if err != nil {
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("%w (run from the repository root)", err)
	}
	return bin, func() { os.RemoveAll(dir) }, nil
}

// How long a halo-server may take to start serving, and to stop after
// SIGINT (its --shutdown-timeout is 10s) before it is killed.
const (
	startTimeout = 2 * time.Minute
	stopTimeout  = 30 * time.Second
)

// serverOptions are a halo-server process's settings beyond the bench's
// defaults.
type serverOptions struct {
	// name is --replica-name.
	name string
	// etcd is --etcd-endpoints: another replica's embedded etcd. Empty: the
	// server runs its own.
	etcd string
	// pki turns production mode on with these certificates; nil: plaintext.
	pki *bundle
}

// server is a halo-server process.
type server struct {
	cmd     *exec.Cmd
	name    string
	addr    string
	metrics string
	etcd    string // the etcd client URL it uses
	dir     string

	exited   chan struct{} // closed once the process is reaped
	exitErr  error         // cmd.Wait's, once exited is closed
	stopOnce sync.Once

	mu   sync.Mutex
	tail []string // its last log lines, for errors
}

// startServer starts halo-server and waits until it serves.
func startServer(bin string, o serverOptions) (*server, error) {
	dir, err := os.MkdirTemp("", "halo-bench-data-")
	if err != nil {
		return nil, err
	}
	args := []string{"--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--data-dir", dir, "--log-format", "json", "--pprof",
		"--replica-name", o.name}
	if o.etcd != "" {
		args = append(args, "--etcd-endpoints", o.etcd)
	}
	if b := o.pki; b != nil {
		f, ok := b.replicas[o.name]
		if !ok {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("no certificate for replica %q", o.name)
		}
		args = append(args, "--tls-cert", f.cert, "--tls-key", f.key, "--client-ca", b.caFile, "--peer-ca", b.caFile,
			"--policy", b.policyFile, "--trust-domain", trustDomain)
	}
	cmd := exec.Command(bin, args...)
	// Should the bench die, its servers die with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start halo-server: %w", err)
	}
	s := &server{cmd: cmd, name: o.name, dir: dir, exited: make(chan struct{})}
	serving := make(chan map[string]any, 1)
	go func() {
		found := false
		lines := bufio.NewScanner(stderr)
		lines.Buffer(make([]byte, 64<<10), 1<<20)
		for lines.Scan() {
			s.mu.Lock()
			s.tail = append(s.tail, lines.Text())
			if len(s.tail) > 20 {
				s.tail = s.tail[len(s.tail)-20:]
			}
			s.mu.Unlock()
			var m map[string]any
			if !found && json.Unmarshal(lines.Bytes(), &m) == nil && m["msg"] == "serving" {
				serving <- m
				found = true
			}
		}
		// Every line is read before Wait closes the pipe.
		s.exitErr = cmd.Wait()
		close(s.exited)
	}()
	timer := time.NewTimer(startTimeout)
	defer timer.Stop()
	select {
	case m := <-serving:
		s.addr, _ = m["address"].(string)
		s.metrics, _ = m["metrics"].(string)
		if eps, ok := m["etcd"].([]any); ok && len(eps) > 0 {
			s.etcd, _ = eps[0].(string)
		}
	case <-s.exited:
	case <-timer.C:
	}
	if s.addr == "" {
		s.stop()
		return nil, fmt.Errorf("halo-server %s did not start (%v): %s", o.name, s.exitErr, s.logTail())
	}
	return s, nil
}

// logTail is the server's last log lines.
func (s *server) logTail() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.tail, "\n")
}

// kill sends SIGKILL: the replica dies without a word. stop reaps it.
func (s *server) kill() error {
	if err := s.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill halo-server %s: %w", s.name, err)
	}
	return nil
}

// stop stops the server (SIGINT, SIGKILL after stopTimeout), waits until
// it is reaped and removes its data directory. Idempotent.
func (s *server) stop() {
	s.stopOnce.Do(func() {
		select {
		case <-s.exited:
		default:
			_ = s.cmd.Process.Signal(os.Interrupt)
		}
		timer := time.NewTimer(stopTimeout)
		defer timer.Stop()
		select {
		case <-s.exited:
		case <-timer.C:
			fmt.Fprintf(os.Stderr, "bench: halo-server %s did not stop within %v; killing it\n", s.name, stopTimeout)
			_ = s.cmd.Process.Kill()
			<-s.exited
		}
		os.RemoveAll(s.dir)
	})
}

// cpu is the server's CPU time so far.
func (s *server) cpu() (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond, nil // USER_HZ = 100
}

// selfCPU is this process's CPU time so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// rss is the server's resident memory in bytes.
func (s *server) rss() (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseFloat(f[1], 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no VmRSS")
}

// heapInuse reads go_memstats_heap_inuse_bytes from the server's metrics.
func heapInuse(addr string) (float64, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_memstats_heap_inuse_bytes "); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	return 0, fmt.Errorf("no go_memstats_heap_inuse_bytes in %s/metrics", addr)
}

package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/halolb/halo/internal/waitfor"
)

// The test binary doubles as halo-agent: with this variable set it runs
// main() instead of the tests, so the tests exercise the real process.
const asAgent = "HALO_TEST_RUN_AS_HALO_AGENT"

func TestMain(m *testing.M) {
	if os.Getenv(asAgent) != "" {
		main()
		return
	}
	goleak.VerifyTestMain(m)
}

func repoFile(t *testing.T, rel string) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	b, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "..", "..", rel))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestDocumentedFlagsExist: every halo-agent flag that the deploy files and
// the READMEs name is a real flag.
func TestDocumentedFlagsExist(t *testing.T) {
	var o options
	fs := newFlagSet(&o, &bytes.Buffer{})
	flagRE := regexp.MustCompile("(?:^|[\\s\"'(`\\[])--([a-z][a-z0-9-]+)")
	for _, doc := range []string{"deploy/systemd/halo-agent.service", "deploy/systemd/halo-agent.default", "deploy/kubernetes/halo-agent.yaml", "deploy/README.md", "README.md"} {
		text := repoFile(t, doc)
		whole := strings.HasPrefix(doc, "deploy/systemd") || strings.HasPrefix(doc, "deploy/kubernetes")
		// The flag tables of the agent's sections.
		section := text
		if i := strings.Index(text, "\n## halo-agent"); i >= 0 {
			section = text[i+1:]
			if j := strings.Index(section, "\n## "); j >= 0 {
				section = section[:j]
			}
		}
		var keep []string
		for _, l := range strings.Split(text, "\n") {
			if whole || strings.Contains(l, "halo-agent") && !strings.Contains(l, "halo-server") && !strings.Contains(l, "./bench/") {
				keep = append(keep, l)
			}
		}
		for _, l := range strings.Split(section, "\n") {
			if strings.HasPrefix(l, "| `--") {
				keep = append(keep, l)
			}
		}
		for _, m := range flagRE.FindAllStringSubmatch(strings.Join(keep, "\n"), -1) {
			f := m[1]
			if fs.Lookup(f) == nil && f != "help" && !otherTools[f] {
				t.Errorf("%s names --%s, which halo-agent does not have", doc, f)
			}
		}
	}
}

// otherTools are flags of other commands that appear on lines about
// halo-agent (podman, systemctl, curl, kubectl...).
var otherTools = map[string]bool{"build-arg": true, "now": true, "max-time": true, "fail": true, "silent": true, "show-error": true, "tag": true, "file": true, "platform": true, "from-literal": true}

func TestHelpListsEveryFlag(t *testing.T) {
	var out bytes.Buffer
	if code := run([]string{"--help"}, &out); code != 0 {
		t.Fatalf("--help exit %d", code)
	}
	var o options
	newFlagSet(&o, io.Discard).VisitAll(func(f *flag.Flag) {
		if !strings.Contains(out.String(), "-"+f.Name) || f.Usage == "" {
			t.Errorf("--help does not explain --%s", f.Name)
		}
	})
}

func TestBadFlagsExitTwo(t *testing.T) {
	for _, args := range [][]string{
		{"--no-such-flag"},
		{"--fallback-backends", "not-an-address"},
		{"--fallback-backends", "127.0.0.1:1", "--fallback-listen", "nowhere"},
		{"--server", "10.0.0.1:18000", "--cluster", "c"}, // plaintext off loopback
		{"--server", "127.0.0.1:18000"},                  // no --cluster
		{"--tls-cert", "x"},
		{"--log-level", "loud"},
		{"extra"},
	} {
		var out bytes.Buffer
		if code := run(append(args, "--cache-dir", t.TempDir(), "--admin-listen", "127.0.0.1:0"), &out); code != 2 {
			t.Errorf("%v: exit %d, want 2\n%s", args, code, out.String())
		}
	}
}

// proc is a halo-agent process started by a test.
type proc struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	output bytes.Buffer
	admin  chan string // the admin address, from the logs
	done   chan struct{}
}

func start(t *testing.T, args ...string) *proc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, append(args, "--log-format", "text")...)
	cmd.Env = append(os.Environ(), asAgent+"=1")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, admin: make(chan string, 1), done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	adminRE := regexp.MustCompile(`msg="admin endpoint" address=(\S+)`)
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.mu.Lock()
			p.output.Write(sc.Bytes())
			p.output.WriteByte('\n')
			p.mu.Unlock()
			if m := adminRE.FindStringSubmatch(sc.Text()); m != nil {
				p.admin <- m[1]
			}
		}
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill() // it may have exited already
		<-p.done
		_ = p.cmd.Wait() // killed: the exit status says nothing
	})
	return p
}

func (p *proc) logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.output.String()
}

func get(url string) (int, string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// TestFallbackProcess runs the real process on --fallback-backends with
// no server: it proxies, is ready, serves metrics, and exits 0 on SIGTERM.
// Its listener address is first held by someone else (nginx-proxy during
// a migration): not ready, then ready once the address is free.
func TestFallbackProcess(t *testing.T) {
	backend, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer backend.Close()
	go func() {
		for {
			c, err := backend.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c) // an echo: ends when the client goes
			}()
		}
	}()
	occupant, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	listen := occupant.Addr().String()
	p := start(t, "--fallback-backends", backend.Addr().String(), "--fallback-listen", listen,
		"--admin-listen", "127.0.0.1:0", "--cache-dir", t.TempDir())
	var admin string
	select {
	case admin = <-p.admin:
	case <-time.After(30 * time.Second):
		t.Fatalf("no admin address logged:\n%s", p.logs())
	}
	pollHTTP(t, "http://"+admin+"/healthz", http.StatusOK)
	code, body, err := get("http://" + admin + "/readyz")
	if err != nil || code != http.StatusServiceUnavailable || !strings.Contains(body, listen) {
		t.Fatalf("/readyz with the address busy: %d %q %v", code, body, err)
	}
	occupant.Close()
	pollHTTP(t, "http://"+admin+"/readyz", http.StatusOK)

	c, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(c, "ping")
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo through the agent: %q %v", buf, err)
	}
	c.Close()
	_, metrics, err := get("http://" + admin + "/metrics")
	if err != nil || !strings.Contains(metrics, `halo_agent_connections_total{backend="`+backend.Addr().String()+`",listener="fallback-apiserver"} 1`) ||
		!strings.Contains(metrics, `halo_agent_config_source{source="fallback"} 1`) {
		t.Errorf("metrics: %v\n%s", err, metrics)
	}

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-p.done
	var exit *exec.ExitError
	if err := p.cmd.Wait(); err != nil && !errors.As(err, &exit) {
		t.Fatal(err)
	} else if err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, p.logs())
	}
}

func pollHTTP(t *testing.T, url string, want int) {
	t.Helper()
	waitfor.Nil(t, 20*time.Second, url, func() error {
		code, body, err := get(url)
		if err == nil && code == want {
			return nil
		}
		return fmt.Errorf("%d %q %v, want %d", code, body, err, want)
	})
}

// TestDeprecatedFlagNames: units written for an earlier release name the
// fallback flags --bootstrap-backends and --bootstrap-listen; they still
// set the fallback backends and their listener.
func TestDeprecatedFlagNames(t *testing.T) {
	var o options
	fs := newFlagSet(&o, io.Discard)
	if err := fs.Parse([]string{"--bootstrap-backends", "127.0.0.1:1,127.0.0.2:2", "--bootstrap-listen", "127.0.0.9:6443", "--cache-dir", ""}); err != nil {
		t.Fatal(err)
	}
	cfg, err := o.config(slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:1"), netip.MustParseAddrPort("127.0.0.2:2")}
	if !slices.Equal(cfg.FallbackBackends, want) || cfg.FallbackListen != netip.MustParseAddrPort("127.0.0.9:6443") {
		t.Errorf("fallback backends %v on %v, want %v on 127.0.0.9:6443", cfg.FallbackBackends, cfg.FallbackListen, want)
	}
}

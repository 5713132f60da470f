package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/internal/pki"
)

// The test binary doubles as halo-server: with this variable set it runs
// main() instead of the tests, so the tests exercise the real process
// (flags, signals, exit codes) without a separate build.
const asServer = "HALO_TEST_RUN_AS_HALO_SERVER"

func TestMain(m *testing.M) {
	if os.Getenv(asServer) != "" {
		main()
		return
	}
	goleak.VerifyTestMain(m)
}

// proc is a halo-server process started by a test.
type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	logs   chan map[string]any // every JSON log line
	mu     sync.Mutex
	output bytes.Buffer // everything it wrote
	done   chan struct{}
}

// start runs halo-server with args in dir.
func start(t *testing.T, dir string, args ...string) *proc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), asServer+"=1")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, cmd: cmd, logs: make(chan map[string]any, 1000), done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(p.done)
		defer close(p.logs)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.mu.Lock()
			p.output.Write(sc.Bytes())
			p.output.WriteByte('\n')
			p.mu.Unlock()
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				select {
				case p.logs <- m:
				default:
				}
			}
		}
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			p.wait()
		}
	})
	return p
}

// addr waits for the "serving" log line and returns the address in it.
func (p *proc) addr() string {
	p.t.Helper()
	timer := time.NewTimer(60 * time.Second)
	defer timer.Stop()
	for {
		select {
		case m, ok := <-p.logs:
			if !ok {
				p.t.Fatalf("halo-server exited before serving:\n%s", p.out())
			}
			if m["msg"] == "serving" {
				return m["address"].(string)
			}
		case <-timer.C:
			p.t.Fatalf("halo-server not serving after 60s:\n%s", p.out())
		}
	}
}

func (p *proc) out() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.output.String()
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait() int {
	<-p.done
	err := p.cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		p.t.Fatal(err)
	}
	return 0
}

func dial(t *testing.T, addr string, opt grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func waitServing(t *testing.T, conn *grpc.ClientConn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("health: %v", err)
		}
		if resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return
		}
	}
}

// TestDefaultsSIGTERMAndRestart runs halo-server with only a free port
// instead of 18000: it keeps its embedded etcd in ./halo-data, serves, stops
// cleanly on SIGTERM (exit 0), and a restart finds the topology again.
func TestDefaultsSIGTERMAndRestart(t *testing.T) {
	dir := t.TempDir()
	args := []string{"--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--log-format", "json"}
	p := start(t, dir, args...)
	conn := dial(t, p.addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	waitServing(t, conn)
	tc := halov1.NewTopologyServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	put, err := tc.PutCluster(ctx, &halov1.PutClusterRequest{Cluster: &halov1.Cluster{Name: "prod"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "halo-data", "etcd.sock")); err != nil {
		t.Errorf("the embedded etcd is not in ./halo-data: %v", err)
	}

	// An open watch must not hold the shutdown up.
	stream, err := tc.Watch(ctx, &halov1.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(); code != 0 {
		t.Fatalf("exit code %d after SIGTERM:\n%s", code, p.out())
	}
	if !strings.Contains(p.out(), `"msg":"stopped","error":null`) {
		t.Errorf("no clean stop in the log:\n%s", p.out())
	}
	conn.Close()

	p = start(t, dir, args...)
	conn = dial(t, p.addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	got, err := halov1.NewTopologyServiceClient(conn).GetCluster(ctx, &halov1.GetClusterRequest{Name: "prod"})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetRevision() != put.GetRevision() {
		t.Errorf("after restart: revision %d, want %d", got.GetRevision(), put.GetRevision())
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

// TestPlaintextOnlyOnLoopback: a non-loopback listen address without TLS is
// refused before anything starts, with a message that says what to do.
func TestPlaintextOnlyOnLoopback(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:18000", ":18000", "[::]:18000", "192.0.2.10:18000"} {
		t.Run(addr, func(t *testing.T) {
			dir := t.TempDir()
			p := start(t, dir, "--listen", addr)
			if code := p.wait(); code != 2 {
				t.Fatalf("exit code %d, want 2:\n%s", code, p.out())
			}
			out := p.out()
			if !strings.Contains(out, "not a loopback address") || !strings.Contains(out, "--tls-cert") {
				t.Errorf("message does not explain:\n%s", out)
			}
			if _, err := os.Stat(filepath.Join(dir, "halo-data")); err == nil {
				t.Error("it started etcd before refusing")
			}
		})
	}
}

// TestTLSOnAllInterfaces serves TLS on 0.0.0.0 and is reached (on loopback)
// by a client that verifies the certificate.
func TestTLSOnAllInterfaces(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, pool := writeCert(t, dir)
	p := start(t, dir, "--listen", "0.0.0.0:0", "--tls-cert", certFile, "--tls-key", keyFile, "--metrics-listen", "", "--log-format", "json")
	_, port, err := net.SplitHostPort(p.addr())
	if err != nil {
		t.Fatal(err)
	}
	conn := dial(t, net.JoinHostPort("127.0.0.1", port), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})))
	waitServing(t, conn)
	// A plaintext client gets nowhere.
	plain := dial(t, net.JoinHostPort("127.0.0.1", port), grpc.WithTransportCredentials(insecure.NewCredentials()))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := healthpb.NewHealthClient(plain).Check(ctx, &healthpb.HealthCheckRequest{}); err == nil {
		t.Error("a plaintext client was served on the TLS port")
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

// writeCert writes a CA-signed server certificate for 127.0.0.1 and its key,
// and returns the CA's pool to verify it.
func writeCert(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	ca, err := pki.NewCA("halo-test-ca", 0)
	if err != nil {
		t.Fatal(err)
	}
	iss, err := ca.Issue(pki.Request{CommonName: "halo-server", IPs: []net.IP{net.ParseIP("127.0.0.1")}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	if certFile, keyFile, err = iss.WriteFiles(dir, "server"); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, ca.Pool()
}

func TestFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--tls-cert", "/x.crt"}, "--tls-cert and --tls-key go together"},
		{[]string{"--tls-cert", "/nonexistent.crt", "--tls-key", "/nonexistent.key"}, "--tls-cert/--tls-key"},
		{[]string{"--log-level", "loud"}, "--log-level"},
		{[]string{"--log-format", "xml"}, "--log-format"},
		{[]string{"--etcd-prefix", "/halo"}, "must end in /"},
		{[]string{"--etcd-cert", "/c.crt", "--etcd-key", "/c.key"}, "give --etcd-endpoints too"},
		{[]string{"--no-such-flag"}, "flag provided but not defined"},
		{[]string{"serve"}, "unexpected arguments"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var out bytes.Buffer
			if code := run(tc.args, &out); code != 2 {
				t.Errorf("exit code %d, want 2", code)
			}
			if !strings.Contains(out.String(), tc.want) {
				t.Errorf("output does not say %q:\n%s", tc.want, out.String())
			}
		})
	}
}

// TestHelp: --help explains every flag and exits 0.
func TestHelp(t *testing.T) {
	var out bytes.Buffer
	if code := run([]string{"--help"}, &out); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	help := out.String()
	for _, flag := range []string{"listen", "tls-cert", "tls-key", "peer-ca", "replica-name", "advertise-address", "replica-ttl", "pprof", "data-dir", "etcd-endpoints", "etcd-cacert", "etcd-cert", "etcd-key",
		"etcd-prefix", "etcd-dial-timeout", "etcd-request-timeout", "metrics-listen", "reflection", "shutdown-timeout", "log-level", "log-format", "version"} {
		if !strings.Contains(help, "-"+flag+" ") && !strings.Contains(help, "-"+flag+"\n") {
			t.Errorf("--help does not list --%s", flag)
		}
	}
	if !strings.Contains(help, "127.0.0.1:18000") || !strings.Contains(help, "halo-data") {
		t.Errorf("--help does not give the defaults:\n%s", help)
	}
	out.Reset()
	if code := run([]string{"--version"}, &out); code != 0 || !strings.HasPrefix(out.String(), "halo-server ") {
		t.Errorf("--version: %d %q", code, out.String())
	}
}

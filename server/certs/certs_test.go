package certs_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/halolb/halo/internal/identity"
	"github.com/halolb/halo/server/certs"
)

// run runs `halo-server certs` with args.
func run(args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = certs.Main(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// mustRun runs `halo-server certs` with args and fails unless it succeeds.
func mustRun(t *testing.T, args ...string) (stdout, stderr string) {
	t.Helper()
	code, stdout, stderr := run(args...)
	if code != 0 {
		t.Fatalf("certs %q: exit %d, stderr %q", args, code, stderr)
	}
	return stdout, stderr
}

// newCA makes a CA in a new directory and returns the directory.
func newCA(t *testing.T, args ...string) string {
	t.Helper()
	dir := t.TempDir()
	mustRun(t, append([]string{"ca", "--dir", dir}, args...)...)
	return dir
}

// readCert parses the certificate in file.
func readCert(t *testing.T, file string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "CERTIFICATE" {
		t.Fatalf("%s holds no certificate", file)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// roots returns a pool of the CA certificate in dir.
func roots(t *testing.T, dir string) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	p.AddCert(readCert(t, filepath.Join(dir, "ca.crt")))
	return p
}

// verify verifies c against the CA in dir for usage.
func verify(t *testing.T, c *x509.Certificate, dir string, usage x509.ExtKeyUsage) error {
	t.Helper()
	_, err := c.Verify(x509.VerifyOptions{Roots: roots(t, dir), KeyUsages: []x509.ExtKeyUsage{usage}})
	return err
}

// checkMode fails unless file has mode perm.
func checkMode(t *testing.T, file string, perm os.FileMode) {
	t.Helper()
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != perm {
		t.Errorf("%s: mode %v, want %v", file, got, perm)
	}
}

// list returns the names in dir.
func list(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// wrote returns the paths of stdout's "wrote <path>" lines.
func wrote(t *testing.T, stdout string) []string {
	t.Helper()
	var paths []string
	for line := range strings.Lines(stdout) {
		p, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), "wrote ")
		if !ok {
			t.Errorf("stdout line %q", line)
		}
		paths = append(paths, p)
	}
	return paths
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"--help"}, {"help"}} {
		code, stdout, stderr := run(args...)
		if code != 0 || stderr != "" {
			t.Errorf("certs %q: exit %d, stderr %q", args, code, stderr)
		}
		for _, want := range []string{"Usage:", "certs ca ", "certs server ", "certs user ", "certs node ", "halo.local", "0600", "127.0.0.1"} {
			if !strings.Contains(stdout, want) {
				t.Errorf("certs %q does not say %q:\n%s", args, want, stdout)
			}
		}
	}
	for sub, flags := range map[string][]string{
		"ca":     {"-dir", "-name", "-validity", "-force"},
		"server": {"-dir", "-name", "-trust-domain", "-dns", "-ip", "-validity", "-force", "localhost"},
		"user":   {"-dir", "-name", "-trust-domain", "-validity", "-force"},
		"node":   {"-dir", "-cluster", "-node", "-trust-domain", "-validity", "-force"},
	} {
		for _, args := range [][]string{{sub, "-h"}, {sub, "--help"}, {"help", sub}} {
			code, stdout, stderr := run(args...)
			if code != 0 || stderr != "" {
				t.Errorf("certs %q: exit %d, stderr %q", args, code, stderr)
			}
			for _, want := range append(flags, "Usage: halo-server certs "+sub) {
				if !strings.Contains(stdout, want) {
					t.Errorf("certs %q does not say %q:\n%s", args, want, stdout)
				}
			}
		}
	}
}

func TestUsageErrors(t *testing.T) {
	dir := newCA(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "Usage:"},
		{[]string{"bogus"}, `unknown subcommand "bogus"`},
		{[]string{"--dir", dir, "ca"}, "--dir comes before a subcommand"},
		{[]string{"ca", "--dir", dir, "--bogus"}, "-bogus"},
		{[]string{"ca", "--dir", dir, "--validity", "soon"}, "-validity"},
		{[]string{"ca", "--dir", dir, "--validity", "-1h"}, "--validity"},
		{[]string{"ca"}, "missing --dir"},
		{[]string{"ca", "--dir", dir, "--name", ""}, "missing --name"},
		{[]string{"user", "--dir", dir}, "missing --name"},
		{[]string{"user", "--name", "alice"}, "missing --dir"},
		{[]string{"node", "--dir", dir}, "missing --cluster, --node"},
		{[]string{"server", "--dir", dir, "--name", "r1", "extra"}, `unexpected arguments ["extra"]`},
	} {
		code, stdout, stderr := run(tc.args...)
		if code != 2 || stdout != "" || !strings.Contains(stderr, tc.want) {
			t.Errorf("certs %q: exit %d, stdout %q, stderr %q; want exit 2 and %q", tc.args, code, stdout, stderr, tc.want)
		}
	}
	if got := list(t, dir); !slices.Equal(got, []string{"ca.crt", "ca.key"}) {
		t.Errorf("dir holds %q", got)
	}
}

func TestCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new", "pki")
	before := time.Now()
	stdout, _ := mustRun(t, "ca", "--dir", dir)
	certFile, keyFile := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	if got := wrote(t, stdout); !slices.Equal(got, []string{certFile, keyFile}) {
		t.Errorf("wrote %q", got)
	}
	checkMode(t, certFile, 0o644)
	checkMode(t, keyFile, 0o600)
	checkMode(t, dir, 0o700)
	if got := list(t, dir); !slices.Equal(got, []string{"ca.crt", "ca.key"}) {
		t.Errorf("dir holds %q", got) // no temporary file left behind
	}
	if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
		t.Errorf("key pair: %v", err)
	}
	c := readCert(t, certFile)
	if !c.IsCA || c.Subject.CommonName != certs.DefaultCAName {
		t.Errorf("IsCA %v, CN %q", c.IsCA, c.Subject.CommonName)
	}
	if !c.NotBefore.Before(before) {
		t.Errorf("NotBefore %v is not before %v", c.NotBefore, before)
	}
	if want := before.Add(certs.DefaultCAValidity); c.NotAfter.Before(want.Add(-time.Second)) || c.NotAfter.After(want.Add(time.Minute)) {
		t.Errorf("NotAfter %v, want about %v", c.NotAfter, want)
	}

	other := t.TempDir()
	mustRun(t, "ca", "--dir", other, "--name", "ops CA", "--validity", "48h")
	c = readCert(t, filepath.Join(other, "ca.crt"))
	if c.Subject.CommonName != "ops CA" || c.NotAfter.After(time.Now().Add(48*time.Hour)) || c.NotAfter.Before(before.Add(47*time.Hour)) {
		t.Errorf("CN %q, NotAfter %v", c.Subject.CommonName, c.NotAfter)
	}
}

func TestLeaves(t *testing.T) {
	dir := newCA(t)
	for _, tc := range []struct {
		args       []string
		base, cn   string
		id         identity.ID
		serverAuth bool
	}{
		{[]string{"server", "--name", "r1"}, "server-r1", "r1", identity.ReplicaID(certs.DefaultTrustDomain, "r1"), true},
		{[]string{"user", "--name", "alice", "--trust-domain", "example.org"}, "user-alice", "alice", identity.UserID("example.org", "alice"), false},
		{[]string{"node", "--cluster", "prod", "--node", "worker-1.example.com"}, "node-prod-worker-1.example.com", "prod/worker-1.example.com",
			identity.NodeID(certs.DefaultTrustDomain, "prod", "worker-1.example.com"), false},
	} {
		t.Run(tc.args[0], func(t *testing.T) {
			before := time.Now()
			stdout, stderr := mustRun(t, append(tc.args, "--dir", dir)...)
			if stderr != "" {
				t.Errorf("stderr %q", stderr)
			}
			certFile, keyFile := filepath.Join(dir, tc.base+".crt"), filepath.Join(dir, tc.base+".key")
			if got := wrote(t, stdout); !slices.Equal(got, []string{certFile, keyFile}) {
				t.Errorf("wrote %q", got)
			}
			checkMode(t, certFile, 0o644)
			checkMode(t, keyFile, 0o600)
			if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
				t.Errorf("key pair: %v", err)
			}
			c := readCert(t, certFile)
			if err := verify(t, c, dir, x509.ExtKeyUsageClientAuth); err != nil {
				t.Errorf("verify as a client: %v", err)
			}
			if err := verify(t, c, dir, x509.ExtKeyUsageServerAuth); (err == nil) != tc.serverAuth {
				t.Errorf("verify as a server: %v; want it to succeed: %v", err, tc.serverAuth)
			}
			if got, err := identity.FromCertificate(c); err != nil || got != tc.id {
				t.Errorf("identity %v, %v; want %v", got, err, tc.id)
			}
			if c.Subject.CommonName != tc.cn || c.IsCA {
				t.Errorf("CN %q, IsCA %v", c.Subject.CommonName, c.IsCA)
			}
			if !c.NotBefore.Before(before) {
				t.Errorf("NotBefore %v is not before %v", c.NotBefore, before)
			}
			if want := before.Add(certs.DefaultValidity); c.NotAfter.Before(want.Add(-time.Second)) || c.NotAfter.After(want.Add(time.Minute)) {
				t.Errorf("NotAfter %v, want about %v", c.NotAfter, want)
			}
		})
	}
	if got, want := list(t, dir), []string{"ca.crt", "ca.key", "node-prod-worker-1.example.com.crt", "node-prod-worker-1.example.com.key",
		"server-r1.crt", "server-r1.key", "user-alice.crt", "user-alice.key"}; !slices.Equal(got, want) {
		t.Errorf("dir holds %q, want %q", got, want)
	}
}

func TestServerSANs(t *testing.T) {
	dir := newCA(t)
	for _, tc := range []struct {
		name     string
		args     []string
		dnsNames []string
		ips      []string
	}{
		{"default", nil, []string{"localhost"}, []string{"127.0.0.1", "::1"}},
		{"dns and ip", []string{"--dns", "halo.example.com,*.halo.example.com", "--ip", "10.0.0.5", "--ip", "fd00::5,127.0.0.1", "--dns", "localhost"},
			[]string{"halo.example.com", "*.halo.example.com", "localhost"}, []string{"10.0.0.5", "fd00::5", "127.0.0.1"}},
		{"dns only", []string{"--dns", "halo.example.com"}, []string{"halo.example.com"}, nil},
		{"ip only", []string{"--ip", "10.0.0.5"}, nil, []string{"10.0.0.5"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := strings.ReplaceAll(tc.name, " ", "-")
			mustRun(t, append([]string{"server", "--dir", dir, "--name", name}, tc.args...)...)
			c := readCert(t, filepath.Join(dir, "server-"+name+".crt"))
			var ips []string
			for _, ip := range c.IPAddresses {
				ips = append(ips, ip.String())
			}
			if !slices.Equal(c.DNSNames, tc.dnsNames) || !slices.Equal(ips, tc.ips) {
				t.Errorf("DNS %q, IPs %q; want %q, %q", c.DNSNames, ips, tc.dnsNames, tc.ips)
			}
			for _, host := range append(tc.dnsNames, tc.ips...) {
				host = strings.Replace(host, "*", "any", 1)
				if _, err := c.Verify(x509.VerifyOptions{Roots: roots(t, dir), DNSName: host}); err != nil {
					t.Errorf("verify for %s: %v", host, err)
				}
			}
		})
	}
}

func TestRefusesOverwrite(t *testing.T) {
	dir := newCA(t)
	caCert, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	code, stdout, stderr := run("ca", "--dir", dir)
	if code != 1 || stdout != "" || !strings.Contains(stderr, "already exist") || !strings.Contains(stderr, "--force") {
		t.Errorf("ca again: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if again, _ := os.ReadFile(filepath.Join(dir, "ca.crt")); !bytes.Equal(again, caCert) {
		t.Error("ca.crt changed")
	}

	mustRun(t, "user", "--dir", dir, "--name", "alice")
	certFile, keyFile := filepath.Join(dir, "user-alice.crt"), filepath.Join(dir, "user-alice.key")
	cert, _ := os.ReadFile(certFile)
	code, _, stderr = run("user", "--dir", dir, "--name", "alice")
	if code != 1 || !strings.Contains(stderr, certFile) || !strings.Contains(stderr, keyFile) {
		t.Errorf("user again: exit %d, stderr %q", code, stderr)
	}
	if again, _ := os.ReadFile(certFile); !bytes.Equal(again, cert) {
		t.Error("the user's certificate changed")
	}

	// Only the key left: still refused, and the certificate is not written.
	if err := os.Remove(certFile); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := run("user", "--dir", dir, "--name", "alice"); code != 1 || !strings.Contains(stderr, keyFile) {
		t.Errorf("user with its key left: exit %d, stderr %q", code, stderr)
	}
	if _, err := os.Stat(certFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the certificate was written: %v", err)
	}

	// --force replaces, and a key made readable meanwhile is 0600 again.
	if err := os.Chmod(keyFile, 0o644); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "user", "--dir", dir, "--name", "alice", "--force")
	checkMode(t, keyFile, 0o600)
	if err := verify(t, readCert(t, certFile), dir, x509.ExtKeyUsageClientAuth); err != nil {
		t.Error(err)
	}
	if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
		t.Errorf("key pair: %v", err)
	}
	mustRun(t, "ca", "--dir", dir, "--force")
	if again, _ := os.ReadFile(filepath.Join(dir, "ca.crt")); bytes.Equal(again, caCert) {
		t.Error("ca --force did not replace ca.crt")
	}
	checkMode(t, filepath.Join(dir, "ca.key"), 0o600)
}

func TestBadInputWritesNothing(t *testing.T) {
	dir := newCA(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"user", "--name", "Alice"}, "--name"},
		{[]string{"user", "--name", "a/b"}, "--name"},
		{[]string{"user", "--name", "-alice"}, "--name"},
		{[]string{"user", "--name", "alice", "--trust-domain", "Halo.Local"}, "--trust-domain"},
		{[]string{"user", "--name", "alice", "--trust-domain", ""}, "--trust-domain"},
		{[]string{"server", "--name", "r_1_"}, "--name"},
		{[]string{"server", "--name", "r1", "--trust-domain", "halo local"}, "--trust-domain"},
		{[]string{"server", "--name", "r1", "--ip", "300.1.1.1"}, "-ip"},
		{[]string{"server", "--name", "r1", "--ip", "10.0.0.1,"}, "-ip"},
		{[]string{"server", "--name", "r1", "--ip", "fe80::1%eth0"}, "-ip"},
		{[]string{"server", "--name", "r1", "--dns", "halo example"}, "-dns"},
		{[]string{"server", "--name", "r1", "--dns", "a,,b"}, "-dns"},
		{[]string{"server", "--name", "r1", "--dns", "-a.example.com"}, "-dns"},
		{[]string{"server", "--name", "r1", "--validity", "0s"}, "--validity"},
		{[]string{"node", "--cluster", "Prod", "--node", "w1"}, "--cluster"},
		{[]string{"node", "--cluster", "prod", "--node", "w1/x"}, "--node"},
		{[]string{"node", "--cluster", "prod", "--node", "w1", "--trust-domain", "x:1"}, "--trust-domain"},
	} {
		code, stdout, stderr := run(append(tc.args, "--dir", dir)...)
		if code != 2 || stdout != "" || !strings.Contains(stderr, tc.want) {
			t.Errorf("certs %q: exit %d, stdout %q, stderr %q; want exit 2 naming %s", tc.args, code, stdout, stderr, tc.want)
		}
	}
	if got := list(t, dir); !slices.Equal(got, []string{"ca.crt", "ca.key"}) {
		t.Errorf("dir holds %q", got)
	}
}

func TestMissingOrBadCA(t *testing.T) {
	dir := t.TempDir()
	code, stdout, stderr := run("user", "--dir", dir, "--name", "alice")
	if code != 1 || stdout != "" || !strings.Contains(stderr, "no CA in "+dir) || !strings.Contains(stderr, "certs ca --dir") {
		t.Errorf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if got := list(t, dir); len(got) != 0 {
		t.Errorf("dir holds %q", got)
	}

	ca := newCA(t)
	if err := os.WriteFile(filepath.Join(ca, "ca.key"), []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = run("node", "--dir", ca, "--cluster", "c", "--node", "n")
	if code != 1 || !strings.Contains(stderr, "load the CA") {
		t.Errorf("bad ca.key: exit %d, stderr %q", code, stderr)
	}

	// NotAfter is whole seconds: a CA valid for 1ns has expired already.
	expired := newCA(t, "--validity", "1ns")
	code, _, stderr = run("server", "--dir", expired, "--name", "r1")
	if code != 1 || !strings.Contains(stderr, "expired") {
		t.Errorf("expired CA: exit %d, stderr %q", code, stderr)
	}
	if got := list(t, expired); !slices.Equal(got, []string{"ca.crt", "ca.key"}) {
		t.Errorf("dir holds %q", got)
	}
}

func TestValidityCutToCA(t *testing.T) {
	dir := newCA(t, "--validity", "2h")
	_, stderr := mustRun(t, "user", "--dir", dir, "--name", "alice")
	if !strings.Contains(stderr, "warning") {
		t.Errorf("stderr %q", stderr)
	}
	if c, ca := readCert(t, filepath.Join(dir, "user-alice.crt")), readCert(t, filepath.Join(dir, "ca.crt")); !c.NotAfter.Equal(ca.NotAfter) {
		t.Errorf("NotAfter %v, the CA's %v", c.NotAfter, ca.NotAfter)
	}
}

// keyPair loads dir/base.crt and .key.
func keyPair(t *testing.T, dir, base string) tls.Certificate {
	t.Helper()
	c, err := tls.LoadX509KeyPair(filepath.Join(dir, base+".crt"), filepath.Join(dir, base+".key"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// handshake serves one mutual-TLS connection with the server certificate
// and CA of dir, dials it with client, and returns the identity the server
// saw, or the server's and the client's errors.
func handshake(t *testing.T, dir string, client tls.Certificate) (id string, serverErr, clientErr error) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{keyPair(t, dir, "server-r1")},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    roots(t, dir),
		MinVersion:   tls.VersionTLS12,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	served := make(chan error, 1)
	go func() { served <- serveOne(ln) }()
	conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{
		Certificates: []tls.Certificate{client},
		RootCAs:      roots(t, dir),
		MinVersion:   tls.VersionTLS12,
	})
	var got []byte
	if err == nil {
		if err = conn.SetDeadline(time.Now().Add(30 * time.Second)); err == nil {
			got, err = io.ReadAll(conn)
		}
		conn.Close()
	}
	return string(got), <-served, err
}

// serveOne accepts one connection on ln, completes its handshake and
// writes the client's identity to it.
func serveOne(ln net.Listener) error {
	c, err := ln.Accept()
	if err != nil {
		return err
	}
	defer c.Close()
	conn := c.(*tls.Conn)
	if err := conn.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		return err
	}
	if err := conn.Handshake(); err != nil {
		return err
	}
	id, err := identity.FromCertificate(conn.ConnectionState().PeerCertificates[0])
	if err != nil {
		return err
	}
	_, err = io.WriteString(conn, id.String())
	return err
}

func TestMutualTLS(t *testing.T) {
	dir := newCA(t)
	mustRun(t, "server", "--dir", dir, "--name", "r1")
	mustRun(t, "server", "--dir", dir, "--name", "r2")
	mustRun(t, "user", "--dir", dir, "--name", "alice")
	mustRun(t, "node", "--dir", dir, "--cluster", "prod", "--node", "w1")
	for base, want := range map[string]identity.ID{
		"user-alice":   identity.UserID(certs.DefaultTrustDomain, "alice"),
		"node-prod-w1": identity.NodeID(certs.DefaultTrustDomain, "prod", "w1"),
		"server-r2":    identity.ReplicaID(certs.DefaultTrustDomain, "r2"), // replicas call each other
	} {
		id, serverErr, clientErr := handshake(t, dir, keyPair(t, dir, base))
		if serverErr != nil || clientErr != nil || id != want.String() {
			t.Errorf("%s: server saw %q (%v), client: %v; want %v", base, id, serverErr, clientErr, want)
		}
	}

	// A client certificate from another CA is refused.
	other := newCA(t)
	mustRun(t, "user", "--dir", other, "--name", "alice")
	id, serverErr, clientErr := handshake(t, dir, keyPair(t, other, "user-alice"))
	if serverErr == nil || clientErr == nil || id != "" {
		t.Errorf("another CA's client: server saw %q (%v), client: %v; want both to fail", id, serverErr, clientErr)
	}
}

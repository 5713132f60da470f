package certfile_test

import (
	"crypto/tls"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/halolb/halo/internal/certfile"
	"github.com/halolb/halo/internal/pki"
	"github.com/halolb/halo/internal/waitfor"
)

func issue(t *testing.T, ca *pki.CA, dir, name string, server bool) {
	t.Helper()
	u, _ := url.Parse("spiffe://td/user/" + name)
	c, err := ca.Issue(pki.Request{CommonName: name, DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)},
		URIs: []*url.URL{u}, Server: server, Client: !server})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.WriteFiles(dir, name); err != nil {
		t.Fatal(err)
	}
}

// replace writes the named files' new contents and moves them over the
// old ones (as a secret update does), bumping their modification time.
func replace(t *testing.T, dir, from, to string) {
	t.Helper()
	for _, ext := range []string{".crt", ".key"} {
		if err := os.Rename(filepath.Join(dir, from+ext), filepath.Join(dir, to+ext)); err != nil {
			t.Fatal(err)
		}
	}
}

// handshake runs one mutual TLS handshake and returns the common names the
// two sides saw.
func handshake(t *testing.T, srv, cli *tls.Config) (serverSaw, clientSaw string, err error) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srv)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- ""
			return
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		if tc.Handshake() != nil || len(tc.ConnectionState().PeerCertificates) == 0 {
			got <- ""
			return
		}
		got <- tc.ConnectionState().PeerCertificates[0].Subject.CommonName
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), cli)
	if err != nil {
		<-got
		return "", "", err
	}
	defer c.Close()
	clientSaw = c.ConnectionState().PeerCertificates[0].Subject.CommonName
	return <-got, clientSaw, nil
}

func TestRotationWithoutRestart(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.NewCA("ca-1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.WriteCertFile(dir, "ca"); err != nil {
		t.Fatal(err)
	}
	issue(t, ca, dir, "server", true)
	issue(t, ca, dir, "client", false)
	srv, err := certfile.New(certfile.Options{CertFile: filepath.Join(dir, "server.crt"), KeyFile: filepath.Join(dir, "server.key"),
		CAFile: filepath.Join(dir, "ca.crt"), MinInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	cli, err := certfile.New(certfile.Options{CertFile: filepath.Join(dir, "client.crt"), KeyFile: filepath.Join(dir, "client.key"),
		CAFile: filepath.Join(dir, "ca.crt"), MinInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	s, c, err := handshake(t, srv.ServerConfig(), cli.ClientConfig("localhost"))
	if err != nil || s != "client" || c != "server" {
		t.Fatalf("first handshake: server saw %q, client saw %q, %v", s, c, err)
	}

	// New certificates from the same CA, under the same file names.
	issue(t, ca, dir, "server-2", true)
	issue(t, ca, dir, "client-2", false)
	replace(t, dir, "server-2", "server")
	replace(t, dir, "client-2", "client")
	waitfor.Nil(t, 10*time.Second, "rotated certificates used", func() error {
		s, c, err := handshake(t, srv.ServerConfig(), cli.ClientConfig("localhost"))
		if err != nil {
			return err
		}
		if s != "client-2" || c != "server-2" {
			t.Logf("server saw %q, client saw %q", s, c)
			return os.ErrNotExist
		}
		return nil
	})

	// A new CA: the old certificates are refused once the bundle changes.
	ca2, err := pki.NewCA("ca-2", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca2.WriteCertFile(dir, "ca-next"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "ca-next.crt"), filepath.Join(dir, "ca.crt")); err != nil {
		t.Fatal(err)
	}
	waitfor.Nil(t, 10*time.Second, "old CA's certificates refused", func() error {
		if _, _, err := handshake(t, srv.ServerConfig(), cli.ClientConfig("localhost")); err == nil {
			return os.ErrExist
		}
		return nil
	})
}

func TestHalfWrittenRotationKeepsThePrevious(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.NewCA("ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	issue(t, ca, dir, "server", true)
	logs := &syncBuffer{}
	src, err := certfile.New(certfile.Options{CertFile: filepath.Join(dir, "server.crt"), KeyFile: filepath.Join(dir, "server.key"),
		MinInterval: time.Millisecond, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	before := src.Certificate()
	if err := os.WriteFile(filepath.Join(dir, "server.crt"), []byte("-----BEGIN CERTIFICATE-----\ntrunc"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitfor.True(t, 5*time.Second, "the failed reload logged", func() bool {
		src.Certificate()
		return strings.Contains(logs.String(), "previous one stays in use")
	})
	if src.Certificate() != before {
		t.Fatal("a truncated certificate replaced a good one")
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestNewNamesTheBadFile(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(bad, []byte("not pem"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := certfile.New(certfile.Options{CAFile: bad}); err == nil || !contains(err.Error(), bad) {
		t.Fatalf("New with a bad CA file: %v", err)
	}
	if _, err := certfile.New(certfile.Options{CertFile: "x"}); err == nil {
		t.Fatal("a certificate without its key accepted")
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

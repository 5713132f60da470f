package server_test

import (
	"context"
	"errors"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/halolb/halo/internal/identity"
	"github.com/halolb/halo/internal/pki"
	"github.com/halolb/halo/server"
	"github.com/halolb/halo/server/servertest"
)

// TestFailedStartReleasesEverything: a start that fails after the
// embedded etcd is up (here: a policy file that does not parse) returns
// the error and leaves nothing behind: the listener is closed, etcd has
// let go of its data directory (a new server starts on it), and no
// goroutine is left (goleak in TestMain).
func TestFailedStartReleasesEverything(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.NewCA("halo test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caFile, err := ca.WriteCertFile(dir, "ca")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Issue(pki.Request{CommonName: "replica-1", IPs: []net.IP{net.IPv4(127, 0, 0, 1)},
		URIs: []*url.URL{identity.ReplicaID(td, "replica-1").URL()}, Server: true, Client: true})
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, err := cert.WriteFiles(dir, "server")
	if err != nil {
		t.Fatal(err)
	}
	policy := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policy, []byte("admin: [alice\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	data := t.TempDir()
	lis := servertest.Listen(t)
	srv, err := server.New(server.Config{Listener: lis, DataDir: data, EtcdUnsafeNoFsync: true, Logger: servertest.Logger(t),
		TLSCertFile: certFile, TLSKeyFile: keyFile, ClientCAFile: caFile, PolicyFile: policy, TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Run(ctxT(t)); err == nil || !strings.Contains(err.Error(), "--policy") {
		t.Fatalf("Run: %v, want the policy file's error", err)
	}
	// A closed listener fails Accept at once; an open one times out.
	if err := lis.(*net.TCPListener).SetDeadline(time.Now().Add(time.Second)); err != nil && !errors.Is(err, net.ErrClosed) {
		t.Fatal(err)
	}
	if _, err := lis.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("the listener after a failed start: Accept: %v, want closed", err)
	}

	// The same data directory serves again: the first etcd is closed.
	again, err := server.New(server.Config{Listener: servertest.Listen(t), DataDir: data, EtcdUnsafeNoFsync: true, Logger: servertest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- again.Run(ctx) }()
	select {
	case <-again.Ready():
	case err := <-done:
		cancel()
		t.Fatalf("a server on the same data directory: %v", err)
	case <-time.After(30 * time.Second):
		cancel() // Run may stay blocked on etcd's lock: not waited for
		t.Fatal("a server on the same data directory is not ready after 30 s: the failed start still holds etcd")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}

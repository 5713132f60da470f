package agent_test

import (
	"crypto/tls"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/halolb/halo/agent"
	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/internal/certfile"
	"github.com/halolb/halo/internal/identity"
	"github.com/halolb/halo/internal/pki"
	"github.com/halolb/halo/server/servertest"
	"github.com/halolb/halo/server/snapshot"
)

// TestProductionModeAgent: an agent with its node certificate gets its
// configuration from a halo-server that requires client certificates, and
// after its certificate and the server's client CA are rotated (a new CA),
// it connects again with the new certificate, without a restart.
func TestProductionModeAgent(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	const td = "e2e.test"
	dir := t.TempDir()
	write := func(ca *pki.CA, name string, r pki.Request) {
		t.Helper()
		c, err := ca.Issue(r)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := c.WriteFiles(dir, name); err != nil {
			t.Fatal(err)
		}
	}
	ca, err := pki.NewCA("ca-1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.WriteCertFile(dir, "ca"); err != nil {
		t.Fatal(err)
	}
	write(ca, "server", pki.Request{CommonName: "halo-1", DNSNames: []string{"halo.example"},
		URIs: []*url.URL{identity.ReplicaID(td, "halo-1").URL()}, Server: true, Client: true})
	write(ca, "alice", pki.Request{CommonName: "alice", URIs: []*url.URL{identity.UserID(td, "alice").URL()}, Client: true})
	write(ca, "node", pki.Request{CommonName: "w", URIs: []*url.URL{identity.NodeID(td, "prod", "w").URL()}, Client: true})
	policy := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policy, []byte("admin: [alice]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := servertest.NewUnstarted(t)
	s.Config.TLSCertFile, s.Config.TLSKeyFile = filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	s.Config.ClientCAFile, s.Config.PolicyFile, s.Config.TrustDomain = filepath.Join(dir, "ca.crt"), policy, td
	s.Start()

	admin, err := tls.LoadX509KeyPair(filepath.Join(dir, "alice.crt"), filepath.Join(dir, "alice.key"))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(s.Addr, grpc.WithTransportCredentials(credentials.NewTLS(
		&tls.Config{Certificates: []tls.Certificate{admin}, RootCAs: ca.Pool(), ServerName: "halo.example"})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := ctxT(t)
	nsp := freePort(t, "127.0.0.1")
	putMasterAndWorker(t, halov1.NewTopologyServiceClient(conn), "prod", nsp, 41)

	// What halo-agent --tls-ca --tls-cert --tls-key --tls-server-name builds.
	src, err := certfile.New(certfile.Options{CAFile: filepath.Join(dir, "ca.crt"), CertFile: filepath.Join(dir, "node.crt"),
		KeyFile: filepath.Join(dir, "node.key"), MinInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, agent.Config{Servers: []string{s.Addr}, Cluster: "prod", Node: "w", TLS: src.ClientConfig("halo.example")})
	poll(t, "agent ready over mTLS", func() error { return a.Ready() })
	if addr, ok := a.Proxy().Addr(snapshot.ListenerAPIServerLocal); !ok || addr.Port() != nsp {
		t.Fatalf("apiserver-local on %v (bound %v), want port %d", addr, ok, nsp)
	}

	// Rotation to a new CA: the server's certificate, its client CA bundle
	// and the node's certificate are all replaced on disk. The server is
	// restarted only to make the agent connect again; the agent is not.
	ca2, err := pki.NewCA("ca-2", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	write(ca2, "server", pki.Request{CommonName: "halo-1", DNSNames: []string{"halo.example"},
		URIs: []*url.URL{identity.ReplicaID(td, "halo-1").URL()}, Server: true, Client: true})
	write(ca2, "node-next", pki.Request{CommonName: "w", URIs: []*url.URL{identity.NodeID(td, "prod", "w").URL()}, Client: true})
	if _, err := ca2.WriteCertFile(dir, "ca-next"); err != nil {
		t.Fatal(err)
	}
	for from, to := range map[string]string{"node-next.crt": "node.crt", "node-next.key": "node.key", "ca-next.crt": "ca.crt"} {
		if err := os.Rename(filepath.Join(dir, from), filepath.Join(dir, to)); err != nil {
			t.Fatal(err)
		}
	}
	addr := s.Addr
	s.Close()
	ln, err := net.Listen("tcp", addr) // the same address: the agent dials it again
	if err != nil {
		t.Fatal(err)
	}
	s.Config.Listener = ln
	s.Start()
	poll(t, "agent connected again with its rotated certificate", func() error {
		c, err := grpc.NewClient(s.Addr, grpc.WithTransportCredentials(credentials.NewTLS(
			&tls.Config{RootCAs: ca2.Pool(), ServerName: "halo.example", Certificates: replicaCert(t, dir)})))
		if err != nil {
			return err
		}
		defer c.Close()
		r, err := halov1.NewStatusServiceClient(c).ListAgents(ctx, &halov1.ListAgentsRequest{Cluster: "prod"})
		if err == nil && (len(r.GetAgents()) != 1 || !r.GetAgents()[0].GetInSync()) {
			return os.ErrNotExist
		}
		return err
	})
}

// replicaCert is the rotated replica certificate (replicas may read status;
// a node may not), to ask whether the agent is back.
func replicaCert(t *testing.T, dir string) []tls.Certificate {
	t.Helper()
	c, err := tls.LoadX509KeyPair(filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key"))
	if err != nil {
		t.Fatal(err)
	}
	return []tls.Certificate{c}
}

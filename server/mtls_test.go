package server_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/internal/identity"
	"github.com/halolb/halo/internal/pki"
	"github.com/halolb/halo/internal/waitfor"
	"github.com/halolb/halo/internal/xdscontract"
	"github.com/halolb/halo/server"
	"github.com/halolb/halo/server/servertest"
)

const td = "halo.test"

// mtlsEnv is a halo-server in production mode: TLS with client
// certificates from ca, identities of trust domain td, alice admin and bob
// read-only.
type mtlsEnv struct {
	t   *testing.T
	dir string
	ca  *pki.CA
	srv *servertest.Server
}

func newMTLS(t *testing.T) *mtlsEnv {
	t.Helper()
	e := &mtlsEnv{t: t, dir: t.TempDir()}
	var err error
	if e.ca, err = pki.NewCA("halo test CA", time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := e.ca.WriteCertFile(e.dir, "ca"); err != nil {
		t.Fatal(err)
	}
	e.issue("server", pki.Request{CommonName: "replica-1", IPs: []net.IP{net.IPv4(127, 0, 0, 1)},
		URIs: []*url.URL{identity.ReplicaID(td, "replica-1").URL()}, Server: true, Client: true})
	policy := filepath.Join(e.dir, "policy.yaml")
	if err := os.WriteFile(policy, []byte("# roles\nadmin: [alice]\nread-only: [bob]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.srv = servertest.New(t, func(c *server.Config) {
		c.TLSCertFile, c.TLSKeyFile = filepath.Join(e.dir, "server.crt"), filepath.Join(e.dir, "server.key")
		c.ClientCAFile, c.PolicyFile, c.TrustDomain = filepath.Join(e.dir, "ca.crt"), policy, td
	})
	return e
}

// issue writes <name>.crt and <name>.key signed by the env's CA.
func (e *mtlsEnv) issue(name string, r pki.Request) {
	e.t.Helper()
	c, err := e.ca.Issue(r)
	if err != nil {
		e.t.Fatal(err)
	}
	if _, _, err := c.WriteFiles(e.dir, name); err != nil {
		e.t.Fatal(err)
	}
}

// client issues a client certificate for id (or uses name's files when id
// is nil) and dials the server with it.
func (e *mtlsEnv) client(name string, id *identity.ID) *grpc.ClientConn {
	e.t.Helper()
	if id != nil {
		e.issue(name, pki.Request{CommonName: name, URIs: []*url.URL{id.URL()}, Client: true})
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(e.dir, name+".crt"), filepath.Join(e.dir, name+".key"))
	if err != nil {
		e.t.Fatal(err)
	}
	return e.dial(&tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: e.ca.Pool(), ServerName: "127.0.0.1"})
}

func (e *mtlsEnv) dial(tc *tls.Config) *grpc.ClientConn {
	e.t.Helper()
	conn, err := grpc.NewClient(e.srv.Addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { conn.Close() })
	return conn
}

// ctx5 is a context for one step of a test (a few RPCs): its deadline
// bounds a stall; a test that waits between steps takes a new one.
func ctx5(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func expectCode(t *testing.T, what string, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Errorf("%s: %v (%v), want %v", what, got, err, want)
	}
}

func TestMTLSRoles(t *testing.T) {
	e := newMTLS(t)
	alice, bob, carol := identity.UserID(td, "alice"), identity.UserID(td, "bob"), identity.UserID(td, "carol")
	node, replica := identity.NodeID(td, "prod", "worker-1"), identity.ReplicaID(td, "replica-2")
	ctx := ctx5(t)
	cluster := &halov1.Cluster{Name: "prod"}
	put := func(conn *grpc.ClientConn) error {
		_, err := halov1.NewTopologyServiceClient(conn).PutCluster(ctx, &halov1.PutClusterRequest{Cluster: cluster})
		return err
	}
	list := func(conn *grpc.ClientConn) error {
		_, err := halov1.NewTopologyServiceClient(conn).ListClusters(ctx, &halov1.ListClustersRequest{})
		return err
	}
	agents := func(conn *grpc.ClientConn) error {
		_, err := halov1.NewStatusServiceClient(conn).ListAgents(ctx, &halov1.ListAgentsRequest{LocalOnly: true})
		return err
	}
	drain := func(conn *grpc.ClientConn) error {
		_, err := halov1.NewTopologyServiceClient(conn).PutNode(ctx, &halov1.PutNodeRequest{Node: &halov1.Node{Cluster: "prod", Name: "m1",
			Ip: "10.0.0.1", Roles: []halov1.Role{halov1.Role_ROLE_CONTROL_PLANE}, Draining: true}})
		return err
	}
	health := func(conn *grpc.ClientConn) error {
		_, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}

	a := e.client("alice", &alice)
	expectCode(t, "admin PutCluster", put(a), codes.OK)
	expectCode(t, "admin PutNode (draining)", drain(a), codes.OK)
	expectCode(t, "admin ListClusters", list(a), codes.OK)

	b := e.client("bob", &bob)
	expectCode(t, "read-only ListClusters", list(b), codes.OK)
	expectCode(t, "read-only ListAgents", agents(b), codes.OK)
	expectCode(t, "read-only PutCluster", put(b), codes.PermissionDenied)
	expectCode(t, "read-only PutNode", drain(b), codes.PermissionDenied)
	if _, err := halov1.NewTopologyServiceClient(b).DeleteCluster(ctx, &halov1.DeleteClusterRequest{Name: "prod"}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("read-only DeleteCluster: %v", err)
	}

	c := e.client("carol", &carol)
	expectCode(t, "no-role ListClusters", list(c), codes.PermissionDenied)
	expectCode(t, "no-role health", health(c), codes.OK)

	n := e.client("node", &node)
	expectCode(t, "node ListClusters", list(n), codes.PermissionDenied)
	expectCode(t, "node PutCluster", put(n), codes.PermissionDenied)
	expectCode(t, "node PutNode", drain(n), codes.PermissionDenied)
	expectCode(t, "node health", health(n), codes.OK)

	r := e.client("replica", &replica)
	expectCode(t, "replica ListAgents", agents(r), codes.OK)
	expectCode(t, "replica PutCluster", put(r), codes.PermissionDenied)

	// The refusals changed nothing: the cluster still has no draining flag
	// set by bob, and exists once.
	got, err := halov1.NewTopologyServiceClient(a).ListClusters(ctx, &halov1.ListClustersRequest{})
	if err != nil || len(got.GetClusters()) != 1 {
		t.Fatalf("clusters after the refusals: %v, %v", got, err)
	}
}

func TestMTLSRefusesBadCertificates(t *testing.T) {
	e := newMTLS(t)
	ctx := ctx5(t)
	list := func(conn *grpc.ClientConn) error {
		_, err := halov1.NewTopologyServiceClient(conn).ListClusters(ctx, &halov1.ListClustersRequest{})
		return err
	}
	// No certificate: the handshake fails.
	expectCode(t, "no client certificate", list(e.dial(&tls.Config{RootCAs: e.ca.Pool(), ServerName: "127.0.0.1"})), codes.Unavailable)

	// A certificate from another CA.
	other, err := pki.NewCA("other CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := other.Issue(pki.Request{CommonName: "alice", URIs: []*url.URL{identity.UserID(td, "alice").URL()}, Client: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := foreign.WriteFiles(e.dir, "foreign"); err != nil {
		t.Fatal(err)
	}
	expectCode(t, "unknown CA", list(e.client("foreign", nil)), codes.Unavailable)

	// An expired one.
	e.issue("expired", pki.Request{CommonName: "alice", URIs: []*url.URL{identity.UserID(td, "alice").URL()}, Client: true,
		NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	expectCode(t, "expired certificate", list(e.client("expired", nil)), codes.Unavailable)

	// Another trust domain, and no identity at all.
	foreignTD := identity.UserID("elsewhere", "alice")
	expectCode(t, "other trust domain", list(e.client("elsewhere", &foreignTD)), codes.PermissionDenied)
	e.issue("anonymous", pki.Request{CommonName: "alice", Client: true})
	expectCode(t, "no spiffe identity", list(e.client("anonymous", nil)), codes.Unauthenticated)

	// The server still serves a good one.
	alice := identity.UserID(td, "alice")
	expectCode(t, "admin", list(e.client("alice", &alice)), codes.OK)
}

// deltaAs opens a Delta ADS stream on conn and subscribes to clusters as
// node of cluster; it returns the first response's error.
func deltaAs(ctx context.Context, conn *grpc.ClientConn, cluster, node string) (discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient, error) {
	s, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: node, Cluster: cluster},
		TypeUrl: xdscontract.ClusterType}); err != nil {
		return nil, err
	}
	_, err = s.Recv()
	return s, err
}

func TestMTLSNodeSubscribesOnlyAsItself(t *testing.T) {
	e := newMTLS(t)
	ctx := ctx5(t)
	alice := identity.UserID(td, "alice")
	admin := halov1.NewTopologyServiceClient(e.client("alice", &alice))
	for _, c := range []string{"prod", "dev"} {
		if _, err := admin.PutCluster(ctx, &halov1.PutClusterRequest{Cluster: &halov1.Cluster{Name: c}}); err != nil {
			t.Fatal(err)
		}
		for i, n := range []string{"m1", "worker-1", "worker-2"} {
			role := halov1.Role_ROLE_WORKER
			if n == "m1" {
				role = halov1.Role_ROLE_CONTROL_PLANE
			}
			if _, err := admin.PutNode(ctx, &halov1.PutNodeRequest{Node: &halov1.Node{Cluster: c, Name: n, Ip: "10.0.0." + string(rune('1'+i)),
				Roles: []halov1.Role{role}}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	me := identity.NodeID(td, "prod", "worker-1")
	conn := e.client("worker-1", &me)

	s, err := deltaAs(ctx, conn, "prod", "worker-1")
	if err != nil {
		t.Fatalf("as itself: %v", err)
	}
	// Later requests are checked too: the same stream cannot turn into
	// another node.
	if err := s.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "worker-2", Cluster: "prod"},
		TypeUrl: xdscontract.ListenerType}); err != nil {
		t.Fatal(err)
	}
	waitfor.Nil(t, 10*time.Second, "stream ended with PermissionDenied", func() error {
		_, err := s.Recv()
		if status.Code(err) == codes.PermissionDenied {
			return nil
		}
		if err != nil {
			t.Fatalf("switching node: %v, want PermissionDenied", err)
		}
		return status.Error(codes.Unknown, "a response, not the end") // keep reading
	})

	ctx = ctx5(t) // a new step
	_, err = deltaAs(ctx, conn, "prod", "worker-2")
	expectCode(t, "as another node", err, codes.PermissionDenied)
	_, err = deltaAs(ctx, conn, "dev", "worker-1")
	expectCode(t, "as the same name in another cluster", err, codes.PermissionDenied)

	// Users do not subscribe.
	_, err = deltaAs(ctx, e.client("alice", nil), "prod", "worker-1")
	expectCode(t, "a user's xDS stream", err, codes.PermissionDenied)
}

// TestMTLSRotationWithoutRestart: the server picks up a new certificate
// and a new client CA bundle from its files at the next handshake.
func TestMTLSRotationWithoutRestart(t *testing.T) {
	e := newMTLS(t)
	alice := identity.UserID(td, "alice")
	first := e.client("alice", &alice)
	list := func(conn *grpc.ClientConn) error {
		_, err := halov1.NewTopologyServiceClient(conn).ListClusters(ctx5(t), &halov1.ListClustersRequest{})
		return err
	}
	expectCode(t, "before rotation", list(first), codes.OK)

	// A new server certificate (new serial, new CN), written over the old.
	e.issue("server-next", pki.Request{CommonName: "replica-1-rotated", IPs: []net.IP{net.IPv4(127, 0, 0, 1)},
		URIs: []*url.URL{identity.ReplicaID(td, "replica-1").URL()}, Server: true, Client: true})
	for _, ext := range []string{".crt", ".key"} {
		if err := os.Rename(filepath.Join(e.dir, "server-next"+ext), filepath.Join(e.dir, "server"+ext)); err != nil {
			t.Fatal(err)
		}
	}
	waitfor.Nil(t, 10*time.Second, "the rotated server certificate served", func() error {
		c, err := tls.Dial("tcp", e.srv.Addr, &tls.Config{RootCAs: e.ca.Pool(), ServerName: "127.0.0.1",
			Certificates: loadPair(t, e.dir, "alice"), NextProtos: []string{"h2"}})
		if err != nil {
			return err
		}
		defer c.Close()
		if cn := c.ConnectionState().PeerCertificates[0].Subject.CommonName; cn != "replica-1-rotated" {
			return status.Errorf(codes.Unknown, "still %s", cn)
		}
		return nil
	})

	// A new CA bundle without the old CA: new connections with the old
	// CA's certificates are refused; a certificate of the new CA works.
	next, err := pki.NewCA("next CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	nextAlice, err := next.Issue(pki.Request{CommonName: "alice", URIs: []*url.URL{alice.URL()}, Client: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := nextAlice.WriteFiles(e.dir, "alice-next"); err != nil {
		t.Fatal(err)
	}
	if _, err := next.WriteCertFile(e.dir, "ca-next"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(e.dir, "ca-next.crt"), filepath.Join(e.dir, "ca.crt")); err != nil {
		t.Fatal(err)
	}
	waitfor.Nil(t, 10*time.Second, "the new client CA in force", func() error {
		conn := e.dial(&tls.Config{Certificates: loadPair(t, e.dir, "alice-next"), RootCAs: e.ca.Pool(), ServerName: "127.0.0.1"})
		return list(conn)
	})
	expectCode(t, "old CA's certificate after rotation", list(e.client("alice", nil)), codes.Unavailable)
}

func loadPair(t *testing.T, dir, name string) []tls.Certificate {
	t.Helper()
	c, err := tls.LoadX509KeyPair(filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key"))
	if err != nil {
		t.Fatal(err)
	}
	return []tls.Certificate{c}
}

// TestMTLSReplicasAskEachOther: in production mode, replicas present their
// own certificates to each other (replica identities may read), so
// ListAgents on one lists the agents of the other.
func TestMTLSReplicasAskEachOther(t *testing.T) {
	etcd := servertest.NewEtcd(t)
	a := newMTLS(t)
	a.srv.Close() // restart it on the shared etcd
	startOn := func(e *mtlsEnv, name string) *servertest.Server {
		e.issue("server-"+name, pki.Request{CommonName: name, IPs: []net.IP{net.IPv4(127, 0, 0, 1)},
			URIs: []*url.URL{identity.ReplicaID(td, name).URL()}, Server: true, Client: true})
		return servertest.New(t, servertest.WithEtcd(etcd), func(c *server.Config) {
			c.ReplicaName = name
			c.TLSCertFile, c.TLSKeyFile = filepath.Join(e.dir, "server-"+name+".crt"), filepath.Join(e.dir, "server-"+name+".key")
			c.ClientCAFile, c.PolicyFile, c.TrustDomain = filepath.Join(e.dir, "ca.crt"), filepath.Join(e.dir, "policy.yaml"), td
		})
	}
	a.srv = startOn(a, "replica-a")
	b := &mtlsEnv{t: t, dir: a.dir, ca: a.ca}
	b.srv = startOn(b, "replica-b")

	ctx := ctx5(t)
	alice := identity.UserID(td, "alice")
	admin := halov1.NewTopologyServiceClient(a.client("alice", &alice))
	if _, err := admin.PutCluster(ctx, &halov1.PutClusterRequest{Cluster: &halov1.Cluster{Name: "prod"}}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*halov1.Node{
		{Cluster: "prod", Name: "m1", Ip: "10.0.0.1", Roles: []halov1.Role{halov1.Role_ROLE_CONTROL_PLANE}},
		{Cluster: "prod", Name: "worker-1", Ip: "10.0.0.2", Roles: []halov1.Role{halov1.Role_ROLE_WORKER}},
	} {
		if _, err := admin.PutNode(ctx, &halov1.PutNodeRequest{Node: n}); err != nil {
			t.Fatal(err)
		}
	}
	w := identity.NodeID(td, "prod", "worker-1")
	// The stream must outlive the wait below (up to 20 s): its deadline
	// only bounds a stall of its first response.
	streamCtx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := deltaAs(streamCtx, b.client("worker-1", &w), "prod", "worker-1"); err != nil {
		t.Fatal(err)
	}
	sc := halov1.NewStatusServiceClient(a.client("alice", nil))
	waitfor.Nil(t, 20*time.Second, "replica-a lists the agent on replica-b", func() error {
		r, err := sc.ListAgents(ctx5(t), &halov1.ListAgentsRequest{Cluster: "prod"})
		if err != nil {
			return err
		}
		if len(r.GetUnreachableReplicas()) > 0 {
			return fmt.Errorf("unreachable: %v", r.GetUnreachableReplicas())
		}
		if len(r.GetAgents()) != 1 || r.GetAgents()[0].GetReplica() != "replica-b" {
			return fmt.Errorf("agents %v", r.GetAgents())
		}
		return nil
	})
}

package server_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/internal/pki"
	"github.com/halolb/halo/server"
	"github.com/halolb/halo/server/servertest"
	"github.com/halolb/halo/server/store"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	cp = halov1.Role_ROLE_CONTROL_PLANE
	et = halov1.Role_ROLE_ETCD
	wk = halov1.Role_ROLE_WORKER
	lb = halov1.Role_ROLE_LOAD_BALANCER
)

// ctxT is a context for one step of a test (a few RPCs): its deadline
// bounds a stall; a test that waits between steps takes a new one.
func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func wantCode(t *testing.T, err error, want codes.Code) *status.Status {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != want {
		t.Fatalf("code %v (%v), want %v", st.Code(), err, want)
	}
	if want != codes.OK && st.Message() == "" {
		t.Fatalf("%v error without a message", want)
	}
	return st
}

func newNode(cluster, name, ip string, ordinal int32, roles ...halov1.Role) *halov1.Node {
	return &halov1.Node{Cluster: cluster, Name: name, Ip: ip, Ordinal: ordinal, Roles: roles}
}

// seed stores cluster prod with three masters (also etcd) and two workers.
func seed(t *testing.T, tc halov1.TopologyServiceClient) {
	t.Helper()
	ctx := ctxT(t)
	if _, err := tc.PutCluster(ctx, &halov1.PutClusterRequest{Cluster: &halov1.Cluster{Name: "prod"}}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*halov1.Node{
		newNode("prod", "master-1", "10.0.0.1", 0, cp, et),
		newNode("prod", "master-2", "10.0.0.2", 1, cp, et),
		newNode("prod", "master-3", "10.0.0.3", 2, cp, et),
		newNode("prod", "worker-1", "10.0.1.1", 0, wk),
		newNode("prod", "worker-2", "10.0.1.2", 0, wk),
	} {
		if _, err := tc.PutNode(ctx, &halov1.PutNodeRequest{Node: n}); err != nil {
			t.Fatal(err)
		}
	}
}

// clusterNames lists the stored clusters' names and the list's revision.
func clusterNames(t *testing.T, tc halov1.TopologyServiceClient) ([]string, int64) {
	t.Helper()
	list, err := tc.ListClusters(ctxT(t), &halov1.ListClustersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range list.GetClusters() {
		names = append(names, c.GetName())
	}
	return names, list.GetRevision()
}

// etcdState is every key under the prefix with its revisions, and etcd's
// current revision: if a call leaves it equal, the call wrote nothing.
func etcdState(t *testing.T, c *clientv3.Client) string {
	t.Helper()
	resp, err := c.Get(ctxT(t), "/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "revision %d\n", resp.Header.Revision)
	for _, kv := range resp.Kvs {
		fmt.Fprintf(&b, "%s c%d m%d v%d %x\n", kv.Key, kv.CreateRevision, kv.ModRevision, kv.Version, kv.Value)
	}
	return b.String()
}

func TestClusterCRUD(t *testing.T) {
	srv := servertest.New(t)
	tc := halov1.NewTopologyServiceClient(srv.Conn)
	ctx := ctxT(t)

	in := &halov1.Cluster{Name: "prod", LbDomainName: "my-apiserver-lb.example.com",
		Apiserver: &halov1.ApiServer{Port: 7443, SupplementaryAddresses: []string{"k8s.example.com"}}}
	put, err := tc.PutCluster(ctx, &halov1.PutClusterRequest{Cluster: in, ExpectedRevision: -1})
	if err != nil {
		t.Fatal(err)
	}
	if put.GetRevision() == 0 {
		t.Fatal("no revision")
	}
	got, err := tc.GetCluster(ctx, &halov1.GetClusterRequest{Name: "prod"})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(put, got, protocmp.Transform()); diff != "" {
		t.Errorf("get differs from put (-put +get):\n%s", diff)
	}
	want := proto.Clone(in).(*halov1.Cluster)
	want.Revision = put.GetRevision()
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("stored cluster differs (-want +got):\n%s", diff)
	}

	// Create-only again: ALREADY_EXISTS.
	_, err = tc.PutCluster(ctx, &halov1.PutClusterRequest{Cluster: in, ExpectedRevision: -1})
	wantCode(t, err, codes.AlreadyExists)

	// Update with the right revision.
	in.DnsDomain = "corp.local"
	upd, err := tc.PutCluster(ctx, &halov1.PutClusterRequest{Cluster: in, ExpectedRevision: put.GetRevision()})
	if err != nil {
		t.Fatal(err)
	}
	if upd.GetRevision() <= put.GetRevision() || upd.GetDnsDomain() != "corp.local" {
		t.Fatalf("update: %v", upd)
	}

	if _, err := tc.PutCluster(ctx, &halov1.PutClusterRequest{Cluster: &halov1.Cluster{Name: "dev"}}); err != nil {
		t.Fatal(err)
	}
	names, rev := clusterNames(t, tc)
	if !slices.Equal(names, []string{"dev", "prod"}) || rev < upd.GetRevision() {
		t.Fatalf("list: %v at %d", names, rev)
	}

	del, err := tc.DeleteCluster(ctx, &halov1.DeleteClusterRequest{Name: "dev"})
	if err != nil {
		t.Fatal(err)
	}
	if del.GetRevision() == 0 || del.GetDeletedNodes() != 0 {
		t.Fatalf("delete: %v", del)
	}
	_, err = tc.GetCluster(ctx, &halov1.GetClusterRequest{Name: "dev"})
	wantCode(t, err, codes.NotFound)
	_, err = tc.DeleteCluster(ctx, &halov1.DeleteClusterRequest{Name: "dev"})
	wantCode(t, err, codes.NotFound)
}

func TestNodeCRUD(t *testing.T) {
	srv := servertest.New(t)
	tc := halov1.NewTopologyServiceClient(srv.Conn)
	ctx := ctxT(t)

	// A node needs its cluster.
	_, err := tc.PutNode(ctx, &halov1.PutNodeRequest{Node: newNode("prod", "m1", "10.0.0.1", 0, cp)})
	wantCode(t, err, codes.FailedPrecondition)

	seed(t, tc)
	n, err := tc.GetNode(ctx, &halov1.GetNodeRequest{Cluster: "prod", Name: "master-2"})
	if err != nil {
		t.Fatal(err)
	}
	if n.GetIp() != "10.0.0.2" || n.GetOrdinal() != 1 || n.GetRevision() == 0 {
		t.Fatalf("get: %v", n)
	}
	list, err := tc.ListNodes(ctx, &halov1.ListNodesRequest{Cluster: "prod"})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, n := range list.GetNodes() {
		names = append(names, n.GetName())
	}
	if !slices.Equal(names, []string{"master-1", "master-2", "master-3", "worker-1", "worker-2"}) {
		t.Fatalf("list: %v", names)
	}
	_, err = tc.ListNodes(ctx, &halov1.ListNodesRequest{Cluster: "nope"})
	wantCode(t, err, codes.NotFound)

	// Update: drain master-2 with its revision.
	n.Draining = true
	n2, err := tc.PutNode(ctx, &halov1.PutNodeRequest{Node: n, ExpectedRevision: n.GetRevision()})
	if err != nil {
		t.Fatal(err)
	}
	if !n2.GetDraining() || n2.GetRevision() <= n.GetRevision() {
		t.Fatalf("update: %v", n2)
	}

	// Delete with a stale revision, then the right one.
	_, err = tc.DeleteNode(ctx, &halov1.DeleteNodeRequest{Cluster: "prod", Name: "master-2", ExpectedRevision: n.GetRevision()})
	wantCode(t, err, codes.Aborted)
	if _, err := tc.DeleteNode(ctx, &halov1.DeleteNodeRequest{Cluster: "prod", Name: "master-2", ExpectedRevision: n2.GetRevision()}); err != nil {
		t.Fatal(err)
	}
	_, err = tc.GetNode(ctx, &halov1.GetNodeRequest{Cluster: "prod", Name: "master-2"})
	wantCode(t, err, codes.NotFound)
	_, err = tc.DeleteNode(ctx, &halov1.DeleteNodeRequest{Cluster: "prod", Name: "master-2"})
	wantCode(t, err, codes.NotFound)

	// A cluster with nodes needs force; force deletes them in the same write.
	_, err = tc.DeleteCluster(ctx, &halov1.DeleteClusterRequest{Name: "prod"})
	st := wantCode(t, err, codes.FailedPrecondition)
	if !strings.Contains(st.Message(), "4 nodes") || !strings.Contains(st.Message(), "force") {
		t.Errorf("message %q should count the nodes and mention force", st.Message())
	}
	del, err := tc.DeleteCluster(ctx, &halov1.DeleteClusterRequest{Name: "prod", Force: true})
	if err != nil {
		t.Fatal(err)
	}
	if del.GetDeletedNodes() != 4 {
		t.Fatalf("deleted %d nodes, want 4", del.GetDeletedNodes())
	}
	keys := store.NewKeys(store.DefaultPrefix)
	for _, prefix := range []string{keys.Cluster("prod"), keys.NodesPrefix("prod"), keys.IndexPrefix("prod"), keys.HealthPrefix("prod")} {
		resp, err := srv.Etcd.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		if resp.Count != 0 {
			t.Fatalf("%d keys left under %s after a forced delete", resp.Count, prefix)
		}
	}
}

// TestConflictingWrites: two admins read the same revision and write; the
// second gets ABORTED and the first's write stands.
func TestConflictingWrites(t *testing.T) {
	srv := servertest.New(t)
	tc := halov1.NewTopologyServiceClient(srv.Conn)
	ctx := ctxT(t)
	seed(t, tc)

	c, err := tc.GetCluster(ctx, &halov1.GetClusterRequest{Name: "prod"})
	if err != nil {
		t.Fatal(err)
	}
	alice := proto.Clone(c).(*halov1.Cluster)
	alice.DnsDomain = "alice.local"
	bob := proto.Clone(c).(*halov1.Cluster)
	bob.DnsDomain = "bob.local"
	if _, err := tc.PutCluster(ctx, &halov1.PutClusterRequest{Cluster: alice, ExpectedRevision: c.GetRevision()}); err != nil {
		t.Fatal(err)
	}
	_, err = tc.PutCluster(ctx, &halov1.PutClusterRequest{Cluster: bob, ExpectedRevision: c.GetRevision()})
	st := wantCode(t, err, codes.Aborted)
	if !strings.Contains(st.Message(), "not the expected") {
		t.Errorf("message %q", st.Message())
	}
	got, _ := tc.GetCluster(ctx, &halov1.GetClusterRequest{Name: "prod"})
	if got.GetDnsDomain() != "alice.local" {
		t.Fatalf("bob overwrote alice: %v", got)
	}
	// An expected revision for a cluster that does not exist.
	_, err = tc.PutCluster(ctx, &halov1.PutClusterRequest{Cluster: &halov1.Cluster{Name: "new"}, ExpectedRevision: 5})
	wantCode(t, err, codes.Aborted)

	// Same for nodes.
	n, _ := tc.GetNode(ctx, &halov1.GetNodeRequest{Cluster: "prod", Name: "worker-1"})
	n.Labels = map[string]string{"by": "alice"}
	if _, err := tc.PutNode(ctx, &halov1.PutNodeRequest{Node: n, ExpectedRevision: n.GetRevision()}); err != nil {
		t.Fatal(err)
	}
	n.Labels = map[string]string{"by": "bob"}
	_, err = tc.PutNode(ctx, &halov1.PutNodeRequest{Node: n, ExpectedRevision: n.GetRevision()})
	wantCode(t, err, codes.Aborted)
}

// TestConcurrentMastersKeepOrdinalsUnique races many PutNode calls that all
// want ordinal 0 for a new master: exactly one may win, however the writes
// interleave, because each write commits only if no node changed since it
// was validated.
func TestConcurrentMastersKeepOrdinalsUnique(t *testing.T) {
	srv := servertest.New(t)
	tc := halov1.NewTopologyServiceClient(srv.Conn)
	ctx := ctxT(t)
	if _, err := tc.PutCluster(ctx, &halov1.PutClusterRequest{Cluster: &halov1.Cluster{Name: "prod"}}); err != nil {
		t.Fatal(err)
	}
	const writers = 16
	var wg sync.WaitGroup
	errs := make([]error, writers)
	for i := range writers {
		wg.Go(func() {
			_, errs[i] = tc.PutNode(ctx, &halov1.PutNodeRequest{Node: newNode("prod", fmt.Sprintf("m%d", i), fmt.Sprintf("10.0.0.%d", i+1), 0, cp)})
		})
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		switch status.Code(err) {
		case codes.OK:
			ok++
		case codes.InvalidArgument, codes.Aborted:
		default:
			t.Errorf("unexpected error: %v", err)
		}
	}
	list, err := tc.ListNodes(ctx, &halov1.ListNodesRequest{Cluster: "prod"})
	if err != nil {
		t.Fatal(err)
	}
	if ok != 1 || len(list.GetNodes()) != 1 {
		t.Fatalf("%d writes succeeded and %d masters are stored; want exactly 1 with ordinal 0", ok, len(list.GetNodes()))
	}
}

// TestBadInputChangesNothing sends bad input of every kind and checks the
// error code, that the error names the field, and that etcd is byte-for-byte
// unchanged (same keys, values, revisions, and no new revision at all).
func TestBadInputChangesNothing(t *testing.T) {
	srv := servertest.New(t)
	tc := halov1.NewTopologyServiceClient(srv.Conn)
	ec := halov1.NewEndpointServiceClient(srv.Conn)
	ctx := ctxT(t)
	seed(t, tc)
	if _, err := tc.PutCluster(ctx, &halov1.PutClusterRequest{Cluster: &halov1.Cluster{Name: "vip",
		Apiserver: &halov1.ApiServer{ExternalLb: &halov1.ExternalLB{Address: "10.0.0.100"}}}}); err != nil {
		t.Fatal(err)
	}
	lbNode := newNode("vip", "lb-1", "10.0.2.1", 0, lb)
	if _, err := tc.PutNode(ctx, &halov1.PutNodeRequest{Node: lbNode}); err != nil {
		t.Fatal(err)
	}
	before := etcdState(t, srv.Etcd)

	// putCluster and putNode change a valid cluster or node and put it.
	putCluster := func(f func(c *halov1.Cluster)) func() error {
		return func() error {
			c := &halov1.Cluster{Name: "prod"}
			f(c)
			_, err := tc.PutCluster(ctx, &halov1.PutClusterRequest{Cluster: c})
			return err
		}
	}
	putNode := func(f func(n *halov1.Node)) func() error {
		return func() error {
			n := newNode("prod", "worker-9", "10.0.1.9", 0, wk)
			f(n)
			_, err := tc.PutNode(ctx, &halov1.PutNodeRequest{Node: n})
			return err
		}
	}
	cases := []struct {
		name  string
		call  func() error
		code  codes.Code
		field string
	}{
		{"no cluster", func() error { _, err := tc.PutCluster(ctx, &halov1.PutClusterRequest{}); return err }, codes.InvalidArgument, "cluster"},
		{"bad cluster name", putCluster(func(c *halov1.Cluster) { c.Name = "Prod!" }), codes.InvalidArgument, "cluster.name"},
		{"out-of-range port", putCluster(func(c *halov1.Cluster) { c.Apiserver = &halov1.ApiServer{Port: 65536} }), codes.InvalidArgument, "cluster.apiserver.port"},
		{"bad bind IP", putCluster(func(c *halov1.Cluster) { c.Apiserver = &halov1.ApiServer{BindAddress: "1.2.3"} }), codes.InvalidArgument, "cluster.apiserver.bind_address"},
		{"bad DNS name", putCluster(func(c *halov1.Cluster) { c.LbDomainName = "lb_1.example.com" }), codes.InvalidArgument, "cluster.lb_domain_name"},
		{"bad URL", putCluster(func(c *halov1.Cluster) { c.Apiserver = &halov1.ApiServer{UnmanagedLbUrl: "ftp://x"} }), codes.InvalidArgument, "cluster.apiserver.unmanaged_lb_url"},
		{"bad CIDR", putCluster(func(c *halov1.Cluster) { c.ServiceCidr = "10.233.0.1/18" }), codes.InvalidArgument, "cluster.service_cidr"},
		{"bad duration", putCluster(func(c *halov1.Cluster) {
			c.Apiserver = &halov1.ApiServer{HealthCheck: &halov1.HealthCheck{Timeout: durationpb.New(-time.Second)}}
		}), codes.InvalidArgument, "cluster.apiserver.health_check.timeout"},
		{"a fifth load-balancer mode", putCluster(func(c *halov1.Cluster) {
			c.Apiserver = &halov1.ApiServer{LocalhostLb: proto.Bool(true), ExternalLb: &halov1.ExternalLB{Address: "10.0.0.100"}}
		}), codes.InvalidArgument, "cluster.apiserver.localhost_lb"},
		{"cluster update that breaks a load-balancer node", func() error {
			_, err := tc.PutCluster(ctx, &halov1.PutClusterRequest{Cluster: &halov1.Cluster{Name: "vip"}})
			return err
		}, codes.InvalidArgument, "cluster.apiserver.external_lb"},
		{"LB master with wildcard bind and lp = sp", func() error {
			_, err := tc.PutNode(ctx, &halov1.PutNodeRequest{Node: newNode("vip", "m-1", "10.0.2.2", 0, cp, lb)})
			return err
		}, codes.InvalidArgument, "node.roles"},
		{"stale revision", func() error {
			_, err := tc.PutCluster(ctx, &halov1.PutClusterRequest{Cluster: &halov1.Cluster{Name: "prod", DnsDomain: "x.local"}, ExpectedRevision: 1})
			return err
		}, codes.Aborted, ""},
		{"repeated supplementary address", putCluster(func(c *halov1.Cluster) {
			c.Apiserver = &halov1.ApiServer{SupplementaryAddresses: []string{"k8s.example.com", "k8s.example.com"}}
		}), codes.InvalidArgument, "cluster.apiserver.supplementary_addresses[1]"},
		{"repeated etcd access address", putCluster(func(c *halov1.Cluster) {
			c.Etcd = &halov1.Etcd{AccessAddresses: []string{"https://etcd.example.com:2379", "https://etcd.example.com:2379"}}
		}), codes.InvalidArgument, "cluster.etcd.access_addresses[1]"},
		{"no roles", putNode(func(n *halov1.Node) { n.Roles = nil }), codes.InvalidArgument, "node.roles"},
		{"unknown role", putNode(func(n *halov1.Node) { n.Roles = []halov1.Role{7} }), codes.InvalidArgument, "node.roles[0]"},
		{"repeated role", putNode(func(n *halov1.Node) { n.Roles = []halov1.Role{wk, wk} }), codes.InvalidArgument, "node.roles[1]"},
		{"bad IPv4", putNode(func(n *halov1.Node) { n.Ip = "10.0.0.256" }), codes.InvalidArgument, "node.ip"},
		{"bad IPv6", putNode(func(n *halov1.Node) { n.AccessIp = "2001:db8::g" }), codes.InvalidArgument, "node.access_ip"},
		{"duplicate master ordinal", putNode(func(n *halov1.Node) { n.Roles = []halov1.Role{cp}; n.Ordinal = 1 }), codes.InvalidArgument, "node.ordinal"},
		{"duplicate ip", putNode(func(n *halov1.Node) { n.Ip = "10.0.0.1" }), codes.InvalidArgument, "node.ip"},
		{"unknown cluster", putNode(func(n *halov1.Node) { n.Cluster = "nope" }), codes.FailedPrecondition, ""},
		{"delete cluster with nodes", func() error { _, err := tc.DeleteCluster(ctx, &halov1.DeleteClusterRequest{Name: "prod"}); return err }, codes.FailedPrecondition, ""},
		{"delete unknown node", func() error {
			_, err := tc.DeleteNode(ctx, &halov1.DeleteNodeRequest{Cluster: "prod", Name: "nope"})
			return err
		}, codes.NotFound, ""},
		{"delete node, stale revision", func() error {
			_, err := tc.DeleteNode(ctx, &halov1.DeleteNodeRequest{Cluster: "prod", Name: "worker-1", ExpectedRevision: 1})
			return err
		}, codes.Aborted, ""},
		{"get with a bad name", func() error {
			_, err := tc.GetNode(ctx, &halov1.GetNodeRequest{Cluster: "prod", Name: "a/b"})
			return err
		}, codes.InvalidArgument, "name"},
		{"resolve an unknown node", func() error {
			_, err := ec.ResolveEndpoints(ctx, &halov1.ResolveEndpointsRequest{Cluster: "prod", Node: "nope"})
			return err
		}, codes.NotFound, ""},
		{"resolve without a cluster", func() error {
			_, err := ec.ResolveEndpoints(ctx, &halov1.ResolveEndpointsRequest{Node: "worker-1"})
			return err
		}, codes.InvalidArgument, "cluster"},
		{"malformed protobuf", func() error {
			var out []byte
			// Field 1 (cluster) claims 100 bytes and carries 2.
			return srv.Conn.Invoke(ctx, "/halo.v1.TopologyService/PutCluster", []byte{0x0a, 100, 1, 2}, &out, grpc.ForceCodec(rawCodec{}))
		}, codes.Internal, ""},
		{"fields from a newer schema", func() error {
			c := &halov1.Cluster{Name: "prod", Apiserver: &halov1.ApiServer{}}
			c.Apiserver.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 1))
			_, err := tc.PutCluster(ctx, &halov1.PutClusterRequest{Cluster: c})
			return err
		}, codes.InvalidArgument, "cluster.apiserver"},
		{"watch from a negative revision", func() error {
			s, err := tc.Watch(ctx, &halov1.WatchRequest{FromRevision: -3})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		}, codes.InvalidArgument, "from_revision"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := wantCode(t, c.call(), c.code)
			if c.field != "" {
				var fields []string
				for _, d := range st.Details() {
					if br, ok := d.(*errdetails.BadRequest); ok {
						for _, v := range br.GetFieldViolations() {
							fields = append(fields, v.GetField())
						}
					}
				}
				if !slices.Contains(fields, c.field) || !strings.Contains(st.Message(), c.field) {
					t.Errorf("error %q (fields %q) does not name %q", st.Message(), fields, c.field)
				}
			}
			if after := etcdState(t, srv.Etcd); after != before {
				t.Fatalf("etcd changed:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
}

func TestResolveThroughAPI(t *testing.T) {
	srv := servertest.New(t)
	tc := halov1.NewTopologyServiceClient(srv.Conn)
	ec := halov1.NewEndpointServiceClient(srv.Conn)
	ctx := ctxT(t)
	seed(t, tc)

	w, err := ec.ResolveEndpoints(ctx, &halov1.ResolveEndpointsRequest{Cluster: "prod", Node: "worker-1"})
	if err != nil {
		t.Fatal(err)
	}
	want := &halov1.NodeEndpoints{
		ApiserverUrl: "https://localhost:6443",
		ExternalUrl:  "https://10.0.0.1:6443",
		EtcdUrls:     []string{"https://10.0.0.1:2379", "https://10.0.0.2:2379", "https://10.0.0.3:2379"},
		Mode:         halov1.LoadBalancerMode_LOAD_BALANCER_MODE_LOCAL,
		Revision:     w.GetRevision(),
	}
	if diff := cmp.Diff(want, w, protocmp.Transform()); diff != "" {
		t.Errorf("worker (-want +got):\n%s", diff)
	}
	m, err := ec.ResolveEndpoints(ctx, &halov1.ResolveEndpointsRequest{Cluster: "prod", Node: "master-2"})
	if err != nil {
		t.Fatal(err)
	}
	if m.GetApiserverUrl() != "https://127.0.0.1:6443" || m.GetEtcdClientUrl() != "https://10.0.0.2:2379" || !m.GetControlPlane() {
		t.Errorf("master: %v", m)
	}

	// Switch to the neither-LB mode: the worker now uses m[0] directly.
	if _, err := tc.PutCluster(ctx, &halov1.PutClusterRequest{Cluster: &halov1.Cluster{Name: "prod",
		Apiserver: &halov1.ApiServer{LocalhostLb: proto.Bool(false)}}}); err != nil {
		t.Fatal(err)
	}
	w, err = ec.ResolveEndpoints(ctx, &halov1.ResolveEndpointsRequest{Cluster: "prod", Node: "worker-1"})
	if err != nil {
		t.Fatal(err)
	}
	if w.GetApiserverUrl() != "https://10.0.0.1:6443" || w.GetMode() != halov1.LoadBalancerMode_LOAD_BALANCER_MODE_NONE {
		t.Errorf("after switch: %v", w)
	}
	// With every master gone, a worker has nothing to use: FAILED_PRECONDITION.
	for _, m := range []string{"master-1", "master-2", "master-3"} {
		if _, err := tc.DeleteNode(ctx, &halov1.DeleteNodeRequest{Cluster: "prod", Name: m}); err != nil {
			t.Fatal(err)
		}
	}
	_, err = ec.ResolveEndpoints(ctx, &halov1.ResolveEndpointsRequest{Cluster: "prod", Node: "worker-1"})
	wantCode(t, err, codes.FailedPrecondition)

	sans, err := ec.GetCertificateSANs(ctx, &halov1.GetCertificateSANsRequest{Cluster: "prod"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(sans.GetApiserverDnsNames(), "kubernetes.default.svc.cluster.local") || !slices.Contains(sans.GetApiserverIps(), "10.233.0.1") {
		t.Errorf("sans: %v", sans)
	}
	_, err = ec.GetCertificateSANs(ctx, &halov1.GetCertificateSANsRequest{Cluster: "nope"})
	wantCode(t, err, codes.NotFound)
}

func TestHealthServices(t *testing.T) {
	srv := servertest.New(t)
	hc := healthpb.NewHealthClient(srv.Conn)
	for _, svc := range []string{"", "halo.v1.TopologyService", "halo.v1.EndpointService"} {
		waitHealth(t, hc, svc, healthpb.HealthCheckResponse_SERVING)
	}
}

// waitHealth follows the health Watch stream of svc until it reports want.
func waitHealth(t *testing.T, hc healthpb.HealthClient, svc string, want healthpb.HealthCheckResponse_ServingStatus) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stream, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: svc})
	if err != nil {
		t.Fatal(err)
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("health of %q: %v (want %v)", svc, err, want)
		}
		if resp.GetStatus() == want {
			return
		}
	}
}

// rawCodec sends bytes as they are, to put malformed messages on the wire.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error)      { return v.([]byte), nil }
func (rawCodec) Unmarshal(data []byte, v any) error { *(v.(*[]byte)) = data; return nil }
func (rawCodec) Name() string                       { return "proto" }

// dial opens a plaintext client connection of the test's own.
func dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestRestartKeepsTopology stops a server and starts another on the same
// data directory: everything is there, with the same revisions.
func TestRestartKeepsTopology(t *testing.T) {
	dir := t.TempDir()
	srv := servertest.New(t, func(c *server.Config) { c.DataDir = dir })
	tc := halov1.NewTopologyServiceClient(srv.Conn)
	ctx := ctxT(t)
	seed(t, tc)
	before, err := tc.ListNodes(ctx, &halov1.ListNodesRequest{Cluster: "prod"})
	if err != nil {
		t.Fatal(err)
	}
	srv.Close()

	srv = servertest.New(t, func(c *server.Config) { c.DataDir = dir })
	tc = halov1.NewTopologyServiceClient(srv.Conn)
	after, err := tc.ListNodes(ctx, &halov1.ListNodesRequest{Cluster: "prod"})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before.GetNodes(), after.GetNodes(), protocmp.Transform()); diff != "" {
		t.Errorf("nodes changed across a restart (-before +after):\n%s", diff)
	}
}

// TestReplicasShareExternalEtcd runs two servers on one external etcd: a
// write through one is read through the other; a server with another
// prefix sees nothing of it.
func TestReplicasShareExternalEtcd(t *testing.T) {
	etcd := servertest.NewEtcd(t)
	a := servertest.New(t, servertest.WithEtcd(etcd))
	b := servertest.New(t, servertest.WithEtcd(etcd))
	other := servertest.New(t, servertest.WithEtcd(etcd), func(c *server.Config) { c.EtcdPrefix = "/other/" })
	ctx := ctxT(t)
	seed(t, halov1.NewTopologyServiceClient(a.Conn))
	n, err := halov1.NewTopologyServiceClient(b.Conn).GetNode(ctx, &halov1.GetNodeRequest{Cluster: "prod", Name: "master-3"})
	if err != nil {
		t.Fatal(err)
	}
	if n.GetIp() != "10.0.0.3" {
		t.Fatalf("replica b read %v", n)
	}
	list, err := halov1.NewTopologyServiceClient(other.Conn).ListClusters(ctx, &halov1.ListClustersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.GetClusters()) != 0 {
		t.Fatalf("prefix /other/ sees %v", list.GetClusters())
	}
}

// TestEtcdDownAndBack takes the external etcd away: health turns
// NOT_SERVING and writes fail with UNAVAILABLE (and write nothing); when
// etcd returns, health turns SERVING and writes work again.
func TestEtcdDownAndBack(t *testing.T) {
	etcd := servertest.NewEtcd(t)
	// The request timeout bounds the write during the outage; the writes
	// before and after it must not hit it on a loaded machine.
	srv := servertest.New(t, servertest.WithEtcd(etcd), func(c *server.Config) { c.EtcdRequestTimeout = 3 * time.Second })
	tc := halov1.NewTopologyServiceClient(srv.Conn)
	hc := healthpb.NewHealthClient(srv.Conn)
	seed(t, tc)
	waitHealth(t, hc, "", healthpb.HealthCheckResponse_SERVING)

	// A context per step: the outage takes a while on a loaded machine.
	etcd.Stop()
	waitHealth(t, hc, "", healthpb.HealthCheckResponse_NOT_SERVING)
	_, err := tc.PutCluster(ctxT(t), &halov1.PutClusterRequest{Cluster: &halov1.Cluster{Name: "during-outage"}})
	wantCode(t, err, codes.Unavailable)

	etcd.Start()
	waitHealth(t, hc, "", healthpb.HealthCheckResponse_SERVING)
	if _, err := tc.PutCluster(ctxT(t), &halov1.PutClusterRequest{Cluster: &halov1.Cluster{Name: "after-outage"}}); err != nil {
		t.Fatal(err)
	}
	if names, _ := clusterNames(t, tc); !slices.Equal(names, []string{"after-outage", "prod"}) {
		t.Fatalf("clusters %v: the write during the outage must not be stored", names)
	}
}

// TestConcurrentClusterAndNodeWritesStayValid races a cluster update that
// drops the managed external LB against adding a load-balancer node (which
// needs it). Whatever the interleaving, the stored topology must stay valid:
// never an LB node in a cluster without an external LB.
func TestConcurrentClusterAndNodeWritesStayValid(t *testing.T) {
	srv := servertest.New(t)
	tc := halov1.NewTopologyServiceClient(srv.Conn)
	ctx := ctxT(t)
	withVIP := &halov1.Cluster{Name: "prod", Apiserver: &halov1.ApiServer{ExternalLb: &halov1.ExternalLB{Address: "10.0.0.100"}}}
	noVIP := &halov1.Cluster{Name: "prod", Apiserver: &halov1.ApiServer{LocalhostLb: proto.Bool(false)}}
	for i := range 20 {
		if _, err := tc.PutCluster(ctx, &halov1.PutClusterRequest{Cluster: withVIP}); err != nil {
			t.Fatal(err)
		}
		lbNode := newNode("prod", fmt.Sprintf("lb-%d", i), fmt.Sprintf("10.0.2.%d", i+1), 0, lb)
		var wg sync.WaitGroup
		var clusterErr, nodeErr error
		wg.Go(func() { _, clusterErr = tc.PutCluster(ctx, &halov1.PutClusterRequest{Cluster: noVIP}) })
		wg.Go(func() { _, nodeErr = tc.PutNode(ctx, &halov1.PutNodeRequest{Node: lbNode}) })
		wg.Wait()
		c, err := tc.GetCluster(ctx, &halov1.GetClusterRequest{Name: "prod"})
		if err != nil {
			t.Fatal(err)
		}
		nodes, err := tc.ListNodes(ctx, &halov1.ListNodesRequest{Cluster: "prod"})
		if err != nil {
			t.Fatal(err)
		}
		if c.GetApiserver().GetExternalLb() == nil && len(nodes.GetNodes()) > 0 {
			t.Fatalf("round %d: LB nodes %d stored in a cluster without external LB (cluster err %v, node err %v)",
				i, len(nodes.GetNodes()), clusterErr, nodeErr)
		}
		if clusterErr == nil && nodeErr == nil {
			t.Fatalf("round %d: both conflicting writes succeeded", i)
		}
		// Reset: drop the LB nodes so that the next round starts alike.
		for _, n := range nodes.GetNodes() {
			if _, err := tc.DeleteNode(ctx, &halov1.DeleteNodeRequest{Cluster: "prod", Name: n.GetName()}); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestUniqueValuesFollowNodes: an ip or master ordinal is free again once
// its node moves off it, stops being a master, or is deleted.
func TestUniqueValuesFollowNodes(t *testing.T) {
	srv := servertest.New(t)
	tc := halov1.NewTopologyServiceClient(srv.Conn)
	ctx := ctxT(t)
	seed(t, tc)
	put := func(n *halov1.Node) error {
		_, err := tc.PutNode(ctx, &halov1.PutNodeRequest{Node: n})
		return err
	}
	// worker-1 moves from 10.0.1.1 to 10.0.1.100: 10.0.1.1 is free, .100 is not.
	if err := put(newNode("prod", "worker-1", "10.0.1.100", 0, wk)); err != nil {
		t.Fatal(err)
	}
	if err := put(newNode("prod", "worker-3", "10.0.1.1", 0, wk)); err != nil {
		t.Fatalf("the old ip is still taken: %v", err)
	}
	wantCode(t, put(newNode("prod", "worker-4", "10.0.1.100", 0, wk)), codes.InvalidArgument)
	// master-1 (ordinal 0) becomes a worker: ordinal 0 is free for a new master.
	if err := put(newNode("prod", "master-1", "10.0.0.1", 0, et)); err != nil {
		t.Fatal(err)
	}
	if err := put(newNode("prod", "master-4", "10.0.0.4", 0, cp)); err != nil {
		t.Fatalf("ordinal 0 is still taken: %v", err)
	}
	// Deleting a node frees both.
	if _, err := tc.DeleteNode(ctx, &halov1.DeleteNodeRequest{Cluster: "prod", Name: "master-4"}); err != nil {
		t.Fatal(err)
	}
	if err := put(newNode("prod", "master-5", "10.0.0.4", 0, cp)); err != nil {
		t.Fatalf("after delete: %v", err)
	}
	// One write that takes two values held by others names both.
	err := put(newNode("prod", "master-6", "10.0.0.2", 0, cp))
	st := wantCode(t, err, codes.InvalidArgument)
	if !strings.Contains(st.Message(), "node.ip") || !strings.Contains(st.Message(), "node.ordinal") {
		t.Errorf("message %q should name ip and ordinal", st.Message())
	}
	// A forced delete takes the index with it: the cluster can be rebuilt.
	if _, err := tc.DeleteCluster(ctx, &halov1.DeleteClusterRequest{Name: "prod", Force: true}); err != nil {
		t.Fatal(err)
	}
	seed(t, tc)
}

// TestExternalEtcdOverTLS: with --etcd-cacert/--etcd-cert/--etcd-key a
// server uses an etcd that requires client certificates; without a
// certificate, with one from another CA, or trusting another CA, it is not
// let in: health stays NOT_SERVING and calls fail with UNAVAILABLE.
func TestExternalEtcdOverTLS(t *testing.T) {
	etcd := servertest.NewEtcdTLS(t)
	srv := servertest.New(t, servertest.WithEtcd(etcd))
	seed(t, halov1.NewTopologyServiceClient(srv.Conn))
	waitHealth(t, healthpb.NewHealthClient(srv.Conn), "", healthpb.HealthCheckResponse_SERVING)

	dir := t.TempDir()
	other, err := pki.NewCA("other-ca", 0)
	if err != nil {
		t.Fatal(err)
	}
	otherCA, err := other.WriteCertFile(dir, "other-ca")
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := other.Issue(pki.Request{CommonName: "intruder", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	foreignCert, foreignKey, err := foreign.WriteFiles(dir, "intruder")
	if err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(c *server.Config){
		"no client certificate":              func(c *server.Config) { c.EtcdCertFile, c.EtcdKeyFile = "", "" },
		"a client certificate of another CA": func(c *server.Config) { c.EtcdCertFile, c.EtcdKeyFile = foreignCert, foreignKey },
		"trusting another CA":                func(c *server.Config) { c.EtcdCAFile = otherCA },
	} {
		t.Run(name, func(t *testing.T) {
			bad := servertest.New(t, servertest.WithEtcd(etcd), mod, func(c *server.Config) { c.EtcdRequestTimeout = time.Second })
			_, err := halov1.NewTopologyServiceClient(bad.Conn).ListClusters(ctxT(t), &halov1.ListClustersRequest{})
			wantCode(t, err, codes.Unavailable)
			resp, err := healthpb.NewHealthClient(bad.Conn).Check(ctxT(t), &healthpb.HealthCheckRequest{})
			if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
				t.Errorf("health %v %v, want NOT_SERVING", resp.GetStatus(), err)
			}
		})
	}
}

// TestMetrics: /metrics serves halo's gRPC metrics, the embedded etcd's and
// Go's, without name clashes between them (which fail the whole scrape).
func TestMetrics(t *testing.T) {
	lis := servertest.Listen(t)
	srv := servertest.New(t, func(c *server.Config) { c.MetricsListener = lis })
	if _, err := halov1.NewTopologyServiceClient(srv.Conn).ListClusters(ctxT(t), &halov1.ListClustersRequest{}); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + srv.Server().MetricsAddr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`halo_grpc_server_handled_total{grpc_code="OK",grpc_method="ListClusters",grpc_service="halo.v1.TopologyService",grpc_type="unary"} 1`,
		"halo_grpc_server_handling_seconds_bucket",
		"etcd_server_has_leader",
		"go_goroutines",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q:\n%.2000s", want, body)
		}
	}
}

package snapshot_test

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/internal/xdscontract"
	"github.com/halolb/halo/server/endpoints"
	"github.com/halolb/halo/server/snapshot"
	"github.com/halolb/halo/server/snapshot/snapshottest"
	"github.com/halolb/halo/server/topology"
)

const (
	cp = halov1.Role_ROLE_CONTROL_PLANE
	et = halov1.Role_ROLE_ETCD
	wk = halov1.Role_ROLE_WORKER
	lb = halov1.Role_ROLE_LOAD_BALANCER
)

func node(name, ip, aip string, ordinal int32, roles ...halov1.Role) *halov1.Node {
	return snapshottest.Node(name, ip, aip, ordinal, roles...)
}

func nodes() []*halov1.Node { return snapshottest.Nodes() }

func fixtures() map[string]*halov1.Cluster { return snapshottest.Clusters() }

// listenerOf returns the listener's address and its tcp_proxy.
func listenerOf(t *testing.T, r *snapshot.Resource) (string, *listenerv3.Listener, *tcpproxyv3.TcpProxy) {
	t.Helper()
	l := r.Message.(*listenerv3.Listener)
	sa := l.GetAddress().GetSocketAddress()
	if len(l.GetFilterChains()) != 1 || len(l.GetFilterChains()[0].GetFilters()) != 1 {
		t.Fatalf("listener %s: want one filter chain with one filter", l.GetName())
	}
	f := l.GetFilterChains()[0].GetFilters()[0]
	if f.GetName() != "envoy.filters.network.tcp_proxy" {
		t.Fatalf("listener %s: filter %q", l.GetName(), f.GetName())
	}
	tp := &tcpproxyv3.TcpProxy{}
	if err := f.GetTypedConfig().UnmarshalTo(tp); err != nil {
		t.Fatal(err)
	}
	if err := tp.ValidateAll(); err != nil {
		t.Fatalf("tcp_proxy of %s: %v", l.GetName(), err)
	}
	return net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue()))), l, tp
}

func endpointsOf(r *snapshot.Resource) []string {
	var out []string
	for _, lle := range r.Message.(*endpointv3.ClusterLoadAssignment).GetEndpoints() {
		for _, e := range lle.GetLbEndpoints() {
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			out = append(out, net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue()))))
		}
	}
	return out
}

func hostPort(t *testing.T, u string) string {
	t.Helper()
	p, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	return p.Host
}

// TestResourcesAgreeWithResolveEndpoints builds every fixture and checks, for
// every node, that its resources validate, are consistent, and say what
// ResolveEndpoints says: the URL a non-master uses is served by its local
// listener; a load-balancer node serves the VIP that /etc/hosts names on the
// port of the LB URL; a node told to use the local etcd LB has it; the
// backends are the masters (m[0] first) and the etcd members.
func TestResourcesAgreeWithResolveEndpoints(t *testing.T) {
	for name, c := range fixtures() {
		t.Run(name, func(t *testing.T) {
			if err := topology.ValidateCluster(c); err != nil {
				t.Fatalf("fixture: %v", err)
			}
			ns := nodes()
			if c.GetApiserver().GetExternalLb() == nil {
				ns = slices.DeleteFunc(ns, func(n *halov1.Node) bool { return topology.HasRole(n, lb) })
			}
			res := snapshot.Build(snapshot.Input{Cluster: c, Nodes: ns})
			if len(res.Held) != 0 {
				t.Fatalf("held: %v", res.Held)
			}
			d := topology.WithDefaults(c)
			for _, n := range ns {
				ep, err := endpoints.Resolve(c, ns, n.GetName())
				if err != nil {
					t.Fatal(err)
				}
				snap := res.Snapshots[res.ProfileOf(n)]
				if snap == nil {
					t.Fatalf("%s: no snapshot for profile %q", n.GetName(), res.ProfileOf(n))
				}
				checkConsistent(t, snap)

				// The apiserver URL of a non-master in a local-LB mode is the local listener.
				local := snap.Get(resource.ListenerType, snapshot.ListenerAPIServerLocal)
				wantLocal := strings.HasPrefix(ep.GetApiserverUrl(), "https://localhost:")
				if (local != nil) != wantLocal {
					t.Errorf("%s: apiserver-local %v, but its apiserver URL is %s", n.GetName(), local != nil, ep.GetApiserverUrl())
				}
				if local != nil {
					addr, _, tp := listenerOf(t, local)
					if want := "127.0.0.1:" + strings.TrimPrefix(ep.GetApiserverUrl(), "https://localhost:"); addr != want {
						t.Errorf("%s: apiserver-local on %s, want %s", n.GetName(), addr, want)
					}
					if tp.GetCluster() != snapshot.ClusterAPIServer || tp.GetIdleTimeout().AsDuration() != d.GetApiserver().GetIdleTimeout().AsDuration() {
						t.Errorf("%s: tcp_proxy %v", n.GetName(), tp)
					}
				}

				// A load-balancer node serves the VIP of /etc/hosts on the LB URL's port.
				vip := snap.Get(resource.ListenerType, snapshot.ListenerAPIServerVIP)
				wantVIP := topology.HasRole(n, lb) && len(ep.GetHostsEntries()) > 0
				if (vip != nil) != wantVIP {
					t.Errorf("%s: apiserver-vip %v, want %v", n.GetName(), vip != nil, wantVIP)
				}
				if vip != nil {
					addr, l, _ := listenerOf(t, vip)
					_, port, _ := net.SplitHostPort(hostPort(t, ep.GetExternalUrl()))
					want := net.JoinHostPort(strings.Fields(ep.GetHostsEntries()[0])[0], port)
					if addr != want || !l.GetFreebind().GetValue() {
						t.Errorf("%s: apiserver-vip on %s freebind %v, want %s with freebind", n.GetName(), addr, l.GetFreebind().GetValue(), want)
					}
				}

				// The local etcd LB exactly when the node is told to use it.
				el := snap.Get(resource.ListenerType, snapshot.ListenerEtcdLocal)
				wantEL := len(ep.GetEtcdUrls()) == 1 && strings.HasPrefix(ep.GetEtcdUrls()[0], "https://127.0.0.1:")
				if (el != nil) != wantEL {
					t.Errorf("%s: etcd-local %v, etcd urls %v", n.GetName(), el != nil, ep.GetEtcdUrls())
				}
				if el != nil {
					if addr, _, tp := listenerOf(t, el); addr != hostPort(t, ep.GetEtcdUrls()[0]) || tp.GetCluster() != snapshot.ClusterEtcd {
						t.Errorf("%s: etcd-local on %s to %s", n.GetName(), addr, tp.GetCluster())
					}
				}

				// Backends: every master at aip:sp, m[0] first; every etcd member at aip:client_port.
				if eds := snap.Get(resource.EndpointType, snapshot.ClusterAPIServer); eds != nil {
					got := endpointsOf(eds)
					var want []string
					for _, m := range topology.Masters(ns) {
						want = append(want, net.JoinHostPort(topology.AccessIP(m), strconv.Itoa(int(d.GetApiserver().GetPort()))))
					}
					if !slices.Equal(got, want) {
						t.Errorf("%s: kube-apiserver endpoints %v, want %v", n.GetName(), got, want)
					}
					if ep.GetMode() == halov1.LoadBalancerMode_LOAD_BALANCER_MODE_LOCAL && got[0] != hostPort(t, ep.GetExternalUrl()) {
						t.Errorf("%s: first endpoint %s, but m[0] is %s", n.GetName(), got[0], ep.GetExternalUrl())
					}
				}
				if eds := snap.Get(resource.EndpointType, snapshot.ClusterEtcd); eds != nil {
					members := topology.EtcdMembers(ns)
					var want []string
					for _, m := range members {
						want = append(want, net.JoinHostPort(topology.AccessIP(m), strconv.Itoa(int(d.GetEtcd().GetClientPort()))))
					}
					if got := endpointsOf(eds); !slices.Equal(got, want) {
						t.Errorf("%s: etcd endpoints %v, want %v", n.GetName(), got, want)
					}
				}
			}
		})
	}
}

// checkConsistent validates every resource, checks that each listener's
// cluster and its endpoints are in the snapshot and that nothing else is,
// and that versions match content.
func checkConsistent(t *testing.T, s *snapshot.Snapshot) {
	t.Helper()
	used := map[string]bool{}
	for _, typ := range xdscontract.Types {
		versions := map[string]string{}
		for name, r := range s.Resources[typ] {
			if err := r.Message.(interface{ ValidateAll() error }).ValidateAll(); err != nil {
				t.Errorf("%s %s: %v", typ, name, err)
			}
			if r.Any.GetTypeUrl() != typ {
				t.Errorf("%s packed as %s", name, r.Any.GetTypeUrl())
			}
			if r.Version != xdscontract.ResourceVersion(r.Any.GetValue()) {
				t.Errorf("%s %s: version %q does not match its encoding", typ, name, r.Version)
			}
			versions[name] = r.Version
			for _, c := range r.Clusters {
				used[c] = true
				if s.Get(resource.ClusterType, c) == nil || s.Get(resource.EndpointType, c) == nil {
					t.Errorf("listener %s uses cluster %s, which the snapshot lacks", name, c)
				}
			}
		}
		if s.Versions[typ] != xdscontract.TypeVersion(versions) {
			t.Errorf("%s version %q does not match its resources", typ, s.Versions[typ])
		}
	}
	for _, c := range s.Names(resource.ClusterType) {
		if !used[c] {
			t.Errorf("cluster %s is in the snapshot but no listener uses it", c)
		}
	}
}

func TestClusterSettings(t *testing.T) {
	c := fixtures()["managed, IPv6 VIP, etcd LB, round robin"]
	res := snapshot.Build(snapshot.Input{Cluster: c, Nodes: nodes()})
	snap := res.Snapshots[res.ProfileOf(node("l", "10.9.9.9", "", 0, lb))]
	cl := snap.Get(resource.ClusterType, snapshot.ClusterAPIServer).Message.(*clusterv3.Cluster)
	checks := []struct {
		what      string
		got, want any
	}{
		{"type", cl.GetType(), clusterv3.Cluster_EDS},
		{"eds over ads", cl.GetEdsClusterConfig().GetEdsConfig().GetAds() != nil, true},
		{"connect timeout", cl.GetConnectTimeout().AsDuration(), 2 * time.Second},
		{"lb policy", cl.GetLbPolicy(), clusterv3.Cluster_ROUND_ROBIN},
		{"panic threshold", cl.GetCommonLbConfig().GetHealthyPanicThreshold().GetValue(), 1.0},
		{"split local origin", cl.GetOutlierDetection().GetSplitExternalLocalOriginErrors(), true},
		{"eject on first connect failure", cl.GetOutlierDetection().GetConsecutiveLocalOriginFailure().GetValue(), uint32(1)},
		{"any host ejectable (panic mode fails open)", cl.GetOutlierDetection().GetMaxEjectionPercent().GetValue(), uint32(100)},
		{"keepalive", cl.GetUpstreamConnectionOptions().GetTcpKeepalive() != nil, true},
		{"close on health failure", cl.GetCloseConnectionsOnHostHealthFailure(), true},
		{"no 1024-connection cap", cl.GetCircuitBreakers().GetThresholds()[0].GetMaxConnections().GetValue() >= 1<<20, true},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s: %v, want %v", ch.what, ch.got, ch.want)
		}
	}
	_, _, tp := listenerOf(t, snap.Get(resource.ListenerType, snapshot.ListenerAPIServerVIP))
	if tp.GetIdleTimeout().AsDuration() != time.Hour || tp.GetMaxConnectAttempts().GetValue() != xdscontract.MaxConnectAttempts {
		t.Errorf("tcp_proxy: %v", tp)
	}
	// The default: least-request, and an idle timeout always set (3h, not Envoy's 1h).
	res = snapshot.Build(snapshot.Input{Cluster: &halov1.Cluster{Name: "prod"}, Nodes: nodes()})
	snap = res.Snapshots["prod/apiserver-local"]
	if p := snap.Get(resource.ClusterType, snapshot.ClusterAPIServer).Message.(*clusterv3.Cluster).GetLbPolicy(); p != clusterv3.Cluster_LEAST_REQUEST {
		t.Errorf("default policy %v", p)
	}
	if _, _, tp := listenerOf(t, snap.Get(resource.ListenerType, snapshot.ListenerAPIServerLocal)); tp.GetIdleTimeout().AsDuration() != 3*time.Hour {
		t.Errorf("default idle timeout %v", tp.GetIdleTimeout().AsDuration())
	}
}

func TestProfiles(t *testing.T) {
	c := fixtures()["local, etcd LB"]
	res := snapshot.Build(snapshot.Input{Cluster: c, Nodes: nodes()})
	for _, tc := range []struct {
		node *halov1.Node
		want string
	}{
		{node("w", "10.9.9.9", "", 0, wk), "prod/apiserver-local+etcd-local"},
		{node("m", "10.9.9.9", "", 0, cp), "prod/etcd-local"},
		{node("me", "10.9.9.9", "", 0, cp, et), "prod/none"},
		{node("we", "10.9.9.9", "", 0, wk, et), "prod/apiserver-local"},
	} {
		if got := res.ProfileOf(tc.node); got != tc.want {
			t.Errorf("%s: profile %q, want %q", tc.node.GetName(), got, tc.want)
		}
		if res.Snapshots[tc.want] == nil {
			t.Errorf("no snapshot for %q", tc.want)
		}
	}
	if s := res.Snapshots["prod/none"]; len(s.Resources[resource.ListenerType]) != 0 || len(s.Resources[resource.ClusterType]) != 0 {
		t.Errorf("a master that is an etcd member gets %v", s.Resources)
	}
}

// TestDeterministic: the same topology, in any order, built anywhere, gives
// the same bytes and versions.
func TestDeterministic(t *testing.T) {
	c := fixtures()["local, etcd LB"]
	a := snapshot.Build(snapshot.Input{Cluster: c, Nodes: nodes()})
	ns := nodes()
	rand.Shuffle(len(ns), func(i, j int) { ns[i], ns[j] = ns[j], ns[i] })
	b := snapshot.Build(snapshot.Input{Cluster: proto.Clone(c).(*halov1.Cluster), Nodes: ns})
	for p, sa := range a.Snapshots {
		sb := b.Snapshots[p]
		for _, typ := range xdscontract.Types {
			if sa.Versions[typ] != sb.Versions[typ] {
				t.Errorf("%s %s: versions %q and %q", p, typ, sa.Versions[typ], sb.Versions[typ])
			}
			for n, r := range sa.Resources[typ] {
				if !proto.Equal(r.Any, sb.Resources[typ][n].Any) {
					t.Errorf("%s %s %s: bytes differ", p, typ, n)
				}
			}
		}
	}
}

// TestHealthMovesOnlyEDS: a health change (and draining) changes the EDS
// version and nothing else.
func TestHealthMovesOnlyEDS(t *testing.T) {
	c := &halov1.Cluster{Name: "prod"}
	before := snapshot.Build(snapshot.Input{Cluster: c, Nodes: nodes()}).Snapshots["prod/apiserver-local"]
	down := func(cluster, n string, _ halov1.BackendKind) corev3.HealthStatus {
		if n == "master-b" {
			return corev3.HealthStatus_UNHEALTHY
		}
		return corev3.HealthStatus_HEALTHY
	}
	after := snapshot.Build(snapshot.Input{Cluster: c, Nodes: nodes(), Health: down}).Snapshots["prod/apiserver-local"]
	ns := nodes()
	ns[2].Draining = true // master-b
	drained := snapshot.Build(snapshot.Input{Cluster: c, Nodes: ns}).Snapshots["prod/apiserver-local"]
	for _, s := range []*snapshot.Snapshot{after, drained} {
		if s.Versions[resource.EndpointType] == before.Versions[resource.EndpointType] {
			t.Error("EDS version did not move")
		}
		for _, typ := range []string{resource.ClusterType, resource.ListenerType} {
			if s.Versions[typ] != before.Versions[typ] {
				t.Errorf("%s version moved on a health change", typ)
			}
		}
	}
	status := func(s *snapshot.Snapshot) []corev3.HealthStatus {
		var out []corev3.HealthStatus
		for _, e := range s.Get(resource.EndpointType, snapshot.ClusterAPIServer).Message.(*endpointv3.ClusterLoadAssignment).GetEndpoints()[0].GetLbEndpoints() {
			out = append(out, e.GetHealthStatus())
		}
		return out
	}
	if got := status(after); !slices.Equal(got, []corev3.HealthStatus{corev3.HealthStatus_HEALTHY, corev3.HealthStatus_UNHEALTHY, corev3.HealthStatus_HEALTHY, corev3.HealthStatus_HEALTHY, corev3.HealthStatus_HEALTHY}) {
		t.Errorf("health %v", got)
	}
	if got := status(drained); got[1] != corev3.HealthStatus_DRAINING || got[0] != corev3.HealthStatus_UNKNOWN {
		t.Errorf("draining %v", got)
	}
}

// TestNeverEmpty: without masters, a profile whose listener would send to
// an empty cluster is held, with the reason; others are published.
func TestNeverEmpty(t *testing.T) {
	ns := slices.DeleteFunc(nodes(), func(n *halov1.Node) bool { return topology.HasRole(n, cp) })
	res := snapshot.Build(snapshot.Input{Cluster: fixtures()["local, etcd LB"], Nodes: ns})
	for _, p := range []string{"prod/apiserver-local", "prod/apiserver-local+etcd-local"} {
		if res.Snapshots[p] != nil || !strings.Contains(res.Held[p], "kube-apiserver, which has no endpoints") {
			t.Errorf("%s: snapshot %v, held %q", p, res.Snapshots[p] != nil, res.Held[p])
		}
	}
	for _, p := range []string{"prod/etcd-local", "prod/none"} {
		if res.Snapshots[p] == nil {
			t.Errorf("%s not published: %s", p, res.Held[p])
		}
	}
}

// TestInvalidResourceHeld: a resource Envoy's validation rejects (here a
// listener port the topology's validation would have refused, forced
// through the builder) holds only the profiles that contain it.
func TestInvalidResourceHeld(t *testing.T) {
	res := snapshot.Build(snapshot.Input{Cluster: &halov1.Cluster{Name: "prod", Apiserver: &halov1.ApiServer{LocalLbPort: 70000}}, Nodes: nodes()})
	if res.Snapshots["prod/apiserver-local"] != nil || !strings.Contains(res.Held["prod/apiserver-local"], "lds/apiserver-local is invalid") {
		t.Errorf("held: %q", res.Held["prod/apiserver-local"])
	}
	if res.Snapshots["prod/none"] == nil {
		t.Error("a profile without the bad listener was held too")
	}
}

// TestVersionsFollowContent: a change to one type moves only its version.
func TestVersionsFollowContent(t *testing.T) {
	a := snapshot.Build(snapshot.Input{Cluster: &halov1.Cluster{Name: "prod"}, Nodes: nodes()}).Snapshots["prod/apiserver-local"]
	b := snapshot.Build(snapshot.Input{Cluster: &halov1.Cluster{Name: "prod", Apiserver: &halov1.ApiServer{LocalLbPort: 7443}}, Nodes: nodes()}).Snapshots["prod/apiserver-local"]
	if a.Versions[resource.ListenerType] == b.Versions[resource.ListenerType] {
		t.Error("listener version did not change with its port")
	}
	// A master joining changes endpoints only.
	c := snapshot.Build(snapshot.Input{Cluster: &halov1.Cluster{Name: "prod"}, Nodes: append(nodes(), node("master-z", "10.0.0.99", "", 99, cp))}).Snapshots["prod/apiserver-local"]
	if c.Versions[resource.EndpointType] == a.Versions[resource.EndpointType] || c.Versions[resource.ClusterType] != a.Versions[resource.ClusterType] {
		t.Error("a new master must move EDS and only EDS")
	}
	if a.Versions[resource.ClusterType] != b.Versions[resource.ClusterType] || a.Versions[resource.EndpointType] != b.Versions[resource.EndpointType] {
		t.Error("a listener change moved CDS or EDS")
	}
	if fmt.Sprint(a.Names(resource.ListenerType)) != "[apiserver-local]" {
		t.Errorf("names %v", a.Names(resource.ListenerType))
	}
}

// TestHealthPerKind: a node that is a master and an etcd member has a
// health for each; each EDS resource carries its own.
func TestHealthPerKind(t *testing.T) {
	c := fixtures()["local, etcd LB"]
	etcdDown := func(_, n string, kind halov1.BackendKind) corev3.HealthStatus {
		if n == "master-a" && kind == halov1.BackendKind_BACKEND_KIND_ETCD {
			return corev3.HealthStatus_UNHEALTHY
		}
		return corev3.HealthStatus_HEALTHY
	}
	s := snapshot.Build(snapshot.Input{Cluster: c, Nodes: nodes(), Health: etcdDown}).Snapshots["prod/apiserver-local+etcd-local"]
	if s == nil {
		t.Fatal("no snapshot for the worker profile")
	}
	statusOf := func(cluster, node string) corev3.HealthStatus {
		for _, e := range s.Get(resource.EndpointType, cluster).Message.(*endpointv3.ClusterLoadAssignment).GetEndpoints()[0].GetLbEndpoints() {
			if e.GetEndpoint().GetHostname() == node {
				return e.GetHealthStatus()
			}
		}
		t.Fatalf("%s has no endpoint %s", cluster, node)
		return 0
	}
	if got := statusOf(snapshot.ClusterEtcd, "master-a"); got != corev3.HealthStatus_UNHEALTHY {
		t.Errorf("etcd master-a: %v", got)
	}
	if got := statusOf(snapshot.ClusterAPIServer, "master-a"); got != corev3.HealthStatus_HEALTHY {
		t.Errorf("apiserver master-a: %v", got)
	}
}

// TestRebalanceMetadata: a cluster with rebalancing on carries it in its
// metadata, in the form the server writes, with the topology's defaults
// applied; with rebalancing off, a cluster has no metadata.
func TestRebalanceMetadata(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    *halov1.Rebalance
		want *halov1.RebalanceMetadata
	}{
		{"off", nil, nil},
		{"disabled", &halov1.Rebalance{MaxFraction: 0.5}, nil},
		{"defaults", &halov1.Rebalance{Enabled: true}, &halov1.RebalanceMetadata{MaxFraction: topology.DefaultRebalanceMaxFraction,
			MinAge: durationpb.New(topology.DefaultRebalanceMinAge), Interval: durationpb.New(topology.DefaultRebalanceInterval)}},
		{"set", &halov1.Rebalance{Enabled: true, MaxFraction: 0.25, MinAge: durationpb.New(30 * time.Second), Interval: durationpb.New(1500 * time.Millisecond)},
			&halov1.RebalanceMetadata{MaxFraction: 0.25, MinAge: durationpb.New(30 * time.Second), Interval: durationpb.New(1500 * time.Millisecond)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &halov1.Cluster{Name: "prod", Apiserver: &halov1.ApiServer{Rebalance: tc.r}}
			res := snapshot.Build(snapshot.Input{Cluster: c, Nodes: nodes()})
			cl := res.Snapshots["prod/apiserver-local"].Get(resource.ClusterType, snapshot.ClusterAPIServer).Message.(*clusterv3.Cluster)
			if tc.want == nil {
				if cl.GetMetadata() != nil {
					t.Fatalf("metadata %v, want none", cl.GetMetadata())
				}
				return
			}
			want, err := xdscontract.RebalanceMetadata(tc.want)
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(cl.GetMetadata(), want) {
				t.Errorf("metadata %v, want %v", cl.GetMetadata(), want)
			}
			got, err := xdscontract.RebalanceFromMetadata(cl.GetMetadata())
			if err != nil || !proto.Equal(got, tc.want) {
				t.Errorf("read back %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

package config_test

import (
	"math"
	"net/netip"
	"slices"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/halolb/halo/agent/config"
	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/internal/xdscontract"
	"github.com/halolb/halo/server/snapshot"
	"github.com/halolb/halo/server/snapshot/snapshottest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	cp = halov1.Role_ROLE_CONTROL_PLANE
	et = halov1.Role_ROLE_ETCD
	wk = halov1.Role_ROLE_WORKER
	lb = halov1.Role_ROLE_LOAD_BALANCER
)

// addrs compares addresses by value (netip's fields are unexported).
var addrs = cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })

func node(name, ip, aip string, ordinal int32, roles ...halov1.Role) *halov1.Node {
	return snapshottest.Node(name, ip, aip, ordinal, roles...)
}

func nodes() []*halov1.Node { return snapshottest.Nodes() }

func fixtures() map[string]*halov1.Cluster { return snapshottest.Clusters() }

// health gives master-b UNHEALTHY, master-c DEGRADED, etcd-4 TIMEOUT, the
// rest HEALTHY; master-a is draining.
func health(_, n string, _ halov1.BackendKind) corev3.HealthStatus {
	switch n {
	case "master-b":
		return corev3.HealthStatus_UNHEALTHY
	case "master-c":
		return corev3.HealthStatus_DEGRADED
	case "etcd-4":
		return corev3.HealthStatus_TIMEOUT
	}
	return corev3.HealthStatus_HEALTHY
}

// haloSnapshots builds every fixture, with and without health, and returns
// every snapshot halo-server can publish.
func haloSnapshots(t testing.TB) map[string]*snapshot.Snapshot {
	t.Helper()
	out := map[string]*snapshot.Snapshot{}
	for fname, c := range fixtures() {
		for _, h := range []snapshot.Health{nil, health} {
			ns := nodes()
			if h != nil {
				ns[1].Draining = true // master-a
			}
			res := snapshot.Build(snapshot.Input{Cluster: c, Nodes: ns, Health: h})
			if len(res.Held) != 0 {
				t.Fatalf("%s: held: %v", fname, res.Held)
			}
			for p, s := range res.Snapshots {
				key := fname + " " + p
				if h != nil {
					key += " (health)"
				}
				out[key] = s
			}
		}
	}
	return out
}

// TestHaloResourcesAccepted decodes every resource of every snapshot
// halo-server builds and checks the translation field by field against the
// Envoy resource, then checks each snapshot is a valid Set.
func TestHaloResourcesAccepted(t *testing.T) {
	snaps := haloSnapshots(t)
	if len(snaps) < 10 {
		t.Fatalf("only %d snapshots", len(snaps))
	}
	for key, s := range snaps {
		t.Run(key, func(t *testing.T) {
			set := &config.Set{Listeners: map[string]*config.Listener{}, Clusters: map[string]*config.Cluster{}, Endpoints: map[string]*config.Endpoints{}}
			for _, typ := range xdscontract.Types {
				for name, r := range s.Resources[typ] {
					gotName, v, err := config.Decode(r.Any)
					if err != nil {
						t.Fatalf("%s %s: %v", typ, name, err)
					}
					if gotName != name {
						t.Errorf("%s: name %q", name, gotName)
					}
					switch m := r.Message.(type) {
					case *listenerv3.Listener:
						set.Listeners[name] = v.(*config.Listener)
						if d := cmp.Diff(wantListener(t, m), v, addrs); d != "" {
							t.Errorf("listener %s (-want +got):\n%s", name, d)
						}
					case *clusterv3.Cluster:
						set.Clusters[name] = v.(*config.Cluster)
						if d := cmp.Diff(wantCluster(t, m), v, addrs); d != "" {
							t.Errorf("cluster %s (-want +got):\n%s", name, d)
						}
					case *endpointv3.ClusterLoadAssignment:
						set.Endpoints[name] = v.(*config.Endpoints)
						if d := cmp.Diff(wantEndpoints(t, m), v, addrs); d != "" {
							t.Errorf("endpoints %s (-want +got):\n%s", name, d)
						}
					}
				}
			}
			if err := set.Validate(); err != nil {
				t.Errorf("Validate: %v", err)
			}
			var eds []string
			for _, c := range set.Clusters {
				if c.EDS {
					eds = append(eds, c.EDSServiceName)
				}
			}
			slices.Sort(eds)
			if got, want := slices.Compact(eds), s.Names(xdscontract.EndpointType); !slices.Equal(got, want) {
				t.Errorf("EDS service names %v, want %v", got, want)
			}
		})
	}
}

// wantListener reads the listener's fields directly.
func wantListener(t *testing.T, l *listenerv3.Listener) *config.Listener {
	t.Helper()
	tp := &tcpproxyv3.TcpProxy{}
	if err := l.GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(tp); err != nil {
		t.Fatal(err)
	}
	if tp.GetIdleTimeout() == nil {
		t.Fatal("halo always sets idle_timeout")
	}
	sa := l.GetAddress().GetSocketAddress()
	return &config.Listener{
		Name:               l.GetName(),
		Address:            netip.AddrPortFrom(netip.MustParseAddr(sa.GetAddress()), uint16(sa.GetPortValue())),
		Freebind:           l.GetFreebind().GetValue(),
		Cluster:            tp.GetCluster(),
		StatPrefix:         tp.GetStatPrefix(),
		IdleTimeout:        tp.GetIdleTimeout().AsDuration(),
		MaxConnectAttempts: int(tp.GetMaxConnectAttempts().GetValue()),
	}
}

// wantCluster reads the cluster's fields directly, relying on halo setting
// every one it needs (it does: no Envoy default is left to chance).
func wantCluster(t *testing.T, c *clusterv3.Cluster) *config.Cluster {
	t.Helper()
	policy := map[clusterv3.Cluster_LbPolicy]config.LbPolicy{
		clusterv3.Cluster_LEAST_REQUEST: config.LeastRequest,
		clusterv3.Cluster_ROUND_ROBIN:   config.RoundRobin,
		clusterv3.Cluster_RANDOM:        config.Random,
	}[c.GetLbPolicy()]
	od := c.GetOutlierDetection()
	ka := c.GetUpstreamConnectionOptions().GetTcpKeepalive()
	var rb *config.Rebalance
	if r, err := xdscontract.RebalanceFromMetadata(c.GetMetadata()); err != nil {
		t.Fatal(err)
	} else if r != nil {
		rb = &config.Rebalance{MaxFraction: r.GetMaxFraction(), MinAge: r.GetMinAge().AsDuration(), Interval: r.GetInterval().AsDuration()}
	}
	return &config.Cluster{
		Name:           c.GetName(),
		EDS:            true,
		EDSServiceName: c.GetName(),
		LbPolicy:       policy,
		ConnectTimeout: c.GetConnectTimeout().AsDuration(),
		PanicThreshold: math.Round(c.GetCommonLbConfig().GetHealthyPanicThreshold().GetValue()),
		Outlier: &config.Outlier{
			ConsecutiveFailures: int(od.GetConsecutiveLocalOriginFailure().GetValue()),
			EnforcingPercent:    int(od.GetEnforcingConsecutiveLocalOriginFailure().GetValue()),
			Interval:            od.GetInterval().AsDuration(),
			BaseEjectionTime:    od.GetBaseEjectionTime().AsDuration(),
			MaxEjectionTime:     od.GetMaxEjectionTime().AsDuration(),
			MaxEjectionPercent:  int(od.GetMaxEjectionPercent().GetValue()),
		},
		Keepalive: &config.Keepalive{
			Probes:   int(ka.GetKeepaliveProbes().GetValue()),
			Time:     time.Duration(ka.GetKeepaliveTime().GetValue()) * time.Second,
			Interval: time.Duration(ka.GetKeepaliveInterval().GetValue()) * time.Second,
		},
		CloseOnHealthFailure: c.GetCloseConnectionsOnHostHealthFailure(),
		MaxConnections:       int(c.GetCircuitBreakers().GetThresholds()[0].GetMaxConnections().GetValue()),
		Rebalance:            rb,
	}
}

func wantEndpoints(t *testing.T, c *endpointv3.ClusterLoadAssignment) *config.Endpoints {
	t.Helper()
	out := &config.Endpoints{Name: c.GetClusterName()}
	for _, lle := range c.GetEndpoints() {
		for _, e := range lle.GetLbEndpoints() {
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			h, ok := map[corev3.HealthStatus]config.Health{
				corev3.HealthStatus_UNKNOWN:   config.Healthy,
				corev3.HealthStatus_HEALTHY:   config.Healthy,
				corev3.HealthStatus_DEGRADED:  config.Degraded,
				corev3.HealthStatus_UNHEALTHY: config.Unhealthy,
				corev3.HealthStatus_TIMEOUT:   config.Unhealthy,
				corev3.HealthStatus_DRAINING:  config.Draining,
			}[e.GetHealthStatus()]
			if !ok {
				t.Fatalf("health %v", e.GetHealthStatus())
			}
			out.Endpoints = append(out.Endpoints, config.Endpoint{
				Address:  netip.AddrPortFrom(netip.MustParseAddr(sa.GetAddress()), uint16(sa.GetPortValue())),
				Hostname: e.GetEndpoint().GetHostname(),
				Health:   h,
			})
		}
	}
	return out
}

// TestHaloSettings: halo's failover settings (xdscontract) mean to the
// agent what they say, so that a change on the server side that the agent
// would read differently shows.
func TestHaloSettings(t *testing.T) {
	res := snapshot.Build(snapshot.Input{Cluster: &halov1.Cluster{Name: "prod"}, Nodes: nodes()})
	s := res.Snapshots["prod/apiserver-local"]
	_, v, err := config.Decode(s.Get(xdscontract.ClusterType, snapshot.ClusterAPIServer).Any)
	if err != nil {
		t.Fatal(err)
	}
	c := v.(*config.Cluster)
	want := &config.Outlier{ConsecutiveFailures: xdscontract.ConsecutiveLocalOriginFailures, EnforcingPercent: 100,
		Interval: xdscontract.OutlierInterval, BaseEjectionTime: xdscontract.BaseEjectionTime,
		MaxEjectionTime: xdscontract.MaxEjectionTime, MaxEjectionPercent: xdscontract.MaxEjectionPercent}
	if d := cmp.Diff(want, c.Outlier, addrs); d != "" {
		t.Errorf("outlier (-want +got):\n%s", d)
	}
	wantKA := &config.Keepalive{Probes: xdscontract.KeepaliveProbes, Time: xdscontract.KeepaliveTime, Interval: xdscontract.KeepaliveInterval}
	if d := cmp.Diff(wantKA, c.Keepalive); d != "" {
		t.Errorf("keepalive (-want +got):\n%s", d)
	}
	if c.LbPolicy != config.LeastRequest || c.PanicThreshold != xdscontract.HealthyPanicThreshold || !c.CloseOnHealthFailure ||
		c.MaxConnections != xdscontract.MaxConnections || c.Rebalance != nil {
		t.Errorf("cluster %+v", c)
	}
	_, v, err = config.Decode(s.Get(xdscontract.ListenerType, snapshot.ListenerAPIServerLocal).Any)
	if err != nil {
		t.Fatal(err)
	}
	if l := v.(*config.Listener); l.MaxConnectAttempts != xdscontract.MaxConnectAttempts || l.IdleTimeout != 3*time.Hour || l.Freebind {
		t.Errorf("listener %+v", l)
	}
}

// TestRebalanceFromHalo: a cluster's rebalance settings reach the agent
// through the cluster's typed metadata, as halo-server writes them and as
// the wire contract encodes other settings.
func TestRebalanceFromHalo(t *testing.T) {
	res := snapshot.Build(snapshot.Input{Cluster: fixtures()["local, rebalance"], Nodes: nodes()})
	s := res.Snapshots["prod/apiserver-local"]
	if s == nil {
		t.Fatal("no worker snapshot")
	}
	want := &config.Rebalance{MaxFraction: 0.25, MinAge: 30 * time.Second, Interval: 5 * time.Second}
	_, v, err := config.Decode(s.Get(xdscontract.ClusterType, snapshot.ClusterAPIServer).Any)
	if err != nil {
		t.Fatal(err)
	}
	if got := v.(*config.Cluster).Rebalance; got == nil || *got != *want {
		t.Fatalf("rebalance %+v, want %+v", got, want)
	}

	cl := proto.Clone(s.Get(xdscontract.ClusterType, snapshot.ClusterAPIServer).Message).(*clusterv3.Cluster)
	md, err := xdscontract.RebalanceMetadata(&halov1.RebalanceMetadata{MaxFraction: 0.5,
		MinAge: durationpb.New(time.Minute), Interval: durationpb.New(1500 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	cl.Metadata = md
	got, err := config.ClusterFromEnvoy(cl)
	if err != nil {
		t.Fatal(err)
	}
	want = &config.Rebalance{MaxFraction: 0.5, MinAge: time.Minute, Interval: 1500 * time.Millisecond}
	if got.Rebalance == nil || *got.Rebalance != *want {
		t.Fatalf("typed rebalance %+v, want %+v", got.Rebalance, want)
	}
}

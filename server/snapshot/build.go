package snapshot

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/internal/xdscontract"
	"github.com/halolb/halo/server/topology"
)

// listenerClusters names the cluster each listener sends to.
var listenerClusters = map[string][]string{
	ListenerAPIServerLocal: {ClusterAPIServer},
	ListenerAPIServerVIP:   {ClusterAPIServer},
	ListenerEtcdLocal:      {ClusterEtcd},
}

// Health reports the health of one backend (a node of a cluster, as an
// apiserver or an etcd member) for EDS.
type Health func(cluster, node string, kind halov1.BackendKind) corev3.HealthStatus

// Input is what a cluster's snapshots are built from.
type Input struct {
	// Cluster is the stored cluster (defaults are applied here).
	Cluster *halov1.Cluster
	// Nodes are all the cluster's nodes.
	Nodes []*halov1.Node
	// Health gives each backend's health; nil reports UNKNOWN for all
	// (Envoy and the agent treat UNKNOWN as healthy). Node.draining always
	// wins: such an endpoint is DRAINING.
	Health Health
}

// Result is every snapshot a cluster's nodes can get.
type Result struct {
	// Snapshots maps a profile to its snapshot, for every profile this
	// cluster's settings allow that can be published.
	Snapshots map[string]*Snapshot
	// Held maps a profile to the reason its snapshot must not be published
	// (a listener whose cluster has no endpoints, or a resource that fails
	// validation); nodes of that profile keep what they have.
	Held map[string]string

	cluster          *halov1.Cluster // with defaults
	hasEtcdMembers   bool
	localLB, vip, el bool
}

// Build builds the snapshots of every profile of a cluster. It is pure and
// deterministic.
func Build(in Input) *Result {
	d := topology.WithDefaults(in.Cluster)
	masters := topology.Masters(in.Nodes)
	members := topology.EtcdMembers(in.Nodes)
	r := &Result{
		Snapshots:      map[string]*Snapshot{},
		Held:           map[string]string{},
		cluster:        d,
		hasEtcdMembers: len(members) > 0,
		localLB:        d.GetApiserver().GetLocalhostLb(),
		vip:            d.GetApiserver().GetExternalLb() != nil,
	}
	r.el = d.GetEtcd().GetLocalLb() && r.hasEtcdMembers

	a, e := d.GetApiserver(), d.GetEtcd()
	res := map[string]*Resource{}
	failed := map[string]string{} // key → why the resource could not be built
	add := func(key string, m proto.Message, err error, clusters ...string) {
		if err == nil {
			err = validate(m)
		}
		var rs *Resource
		if err == nil {
			rs, err = newResource(xdscontract.Name(m), m, clusters...)
		}
		if err != nil {
			failed[key] = fmt.Sprintf("%s is invalid: %v", key, err)
			return
		}
		res[key] = rs
	}
	health := in.Health
	if health == nil {
		health = func(string, string, halov1.BackendKind) corev3.HealthStatus { return corev3.HealthStatus_UNKNOWN }
	}

	c, err := edsCluster(ClusterAPIServer, a)
	add("cds/"+ClusterAPIServer, c, err)
	add("eds/"+ClusterAPIServer, loadAssignment(ClusterAPIServer, d.GetName(), masters, a.GetPort(), halov1.BackendKind_BACKEND_KIND_APISERVER, health), nil)
	if r.localLB {
		l, err := tcpListener(ListenerAPIServerLocal, "127.0.0.1", a.GetLocalLbPort(), false, ClusterAPIServer, a)
		add("lds/"+ListenerAPIServerLocal, l, err, listenerClusters[ListenerAPIServerLocal]...)
	}
	if r.vip {
		l, err := tcpListener(ListenerAPIServerVIP, a.GetExternalLb().GetAddress(), a.GetExternalLb().GetPort(), true, ClusterAPIServer, a)
		add("lds/"+ListenerAPIServerVIP, l, err, listenerClusters[ListenerAPIServerVIP]...)
	}
	if r.el {
		c, err := edsCluster(ClusterEtcd, a)
		add("cds/"+ClusterEtcd, c, err)
		add("eds/"+ClusterEtcd, loadAssignment(ClusterEtcd, d.GetName(), members, e.GetClientPort(), halov1.BackendKind_BACKEND_KIND_ETCD, health), nil)
		l, err := tcpListener(ListenerEtcdLocal, "127.0.0.1", e.GetLocalLbPort(), false, ClusterEtcd, a)
		add("lds/"+ListenerEtcdLocal, l, err, listenerClusters[ListenerEtcdLocal]...)
	}

	for _, listeners := range r.possibleProfiles() {
		profile := profileName(d.GetName(), listeners)
		var rs []*Resource
		var why []string
		for _, l := range listeners {
			keys := []string{"lds/" + l}
			for _, c := range listenerClusters[l] {
				keys = append(keys, "cds/"+c, "eds/"+c)
			}
			for _, k := range keys {
				switch {
				case failed[k] != "":
					why = append(why, failed[k])
				case !slices.Contains(rs, res[k]):
					rs = append(rs, res[k])
				}
			}
			for _, c := range listenerClusters[l] {
				if cla, ok := res["eds/"+c].Message.(*endpointv3.ClusterLoadAssignment); ok && len(cla.GetEndpoints()) == 0 {
					why = append(why, fmt.Sprintf("listener %s would send to cluster %s, which has no endpoints", l, c))
				}
			}
		}
		if len(why) > 0 {
			r.Held[profile] = strings.Join(why, "; ") + "; keeping the last published resources"
			continue
		}
		r.Snapshots[profile] = newSnapshot(profile, rs...)
	}
	return r
}

// possibleProfiles lists every combination of listeners a node of this
// cluster can get, each in a fixed order.
func (r *Result) possibleProfiles() [][]string {
	var opts []string
	if r.localLB {
		opts = append(opts, ListenerAPIServerLocal)
	}
	if r.vip {
		opts = append(opts, ListenerAPIServerVIP)
	}
	if r.el {
		opts = append(opts, ListenerEtcdLocal)
	}
	var out [][]string
	for mask := 0; mask < 1<<len(opts); mask++ {
		var ls []string
		for i, o := range opts {
			if mask&(1<<i) != 0 {
				ls = append(ls, o)
			}
		}
		out = append(out, ls)
	}
	return out
}

// Listeners returns the listeners node n gets: the apiserver local LB on a
// non-master when the local LB is on; the VIP on a load-balancer node of a
// managed external LB; the etcd local LB on a node that is not an etcd
// member when the cluster asks for it (and has members).
func (r *Result) Listeners(n *halov1.Node) []string {
	var ls []string
	if r.localLB && !topology.HasRole(n, halov1.Role_ROLE_CONTROL_PLANE) {
		ls = append(ls, ListenerAPIServerLocal)
	}
	if r.vip && topology.HasRole(n, halov1.Role_ROLE_LOAD_BALANCER) {
		ls = append(ls, ListenerAPIServerVIP)
	}
	if r.el && !topology.HasRole(n, halov1.Role_ROLE_ETCD) {
		ls = append(ls, ListenerEtcdLocal)
	}
	return ls
}

// ProfileOf returns the profile of node n.
func (r *Result) ProfileOf(n *halov1.Node) string {
	return profileName(r.cluster.GetName(), r.Listeners(n))
}

func profileName(cluster string, listeners []string) string {
	if len(listeners) == 0 {
		return cluster + "/none"
	}
	return cluster + "/" + strings.Join(listeners, "+")
}

// validate runs the Envoy types' generated validation.
func validate(m proto.Message) error {
	if v, ok := m.(interface{ ValidateAll() error }); ok {
		return v.ValidateAll()
	}
	return nil
}

// tcpListener is a listener on addr:port whose one filter proxies TCP to
// cluster, with the apiserver settings' idle timeout.
func tcpListener(name, addr string, port uint32, freebind bool, cluster string, a *halov1.ApiServer) (*listenerv3.Listener, error) {
	tp := &tcpproxyv3.TcpProxy{
		StatPrefix:         name,
		ClusterSpecifier:   &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster},
		IdleTimeout:        a.GetIdleTimeout(),
		MaxConnectAttempts: wrapperspb.UInt32(xdscontract.MaxConnectAttempts),
	}
	if err := tp.ValidateAll(); err != nil {
		return nil, fmt.Errorf("tcp_proxy: %w", err)
	}
	tpAny, err := anypb.New(tp)
	if err != nil {
		return nil, err
	}
	l := &listenerv3.Listener{
		Name:    name,
		Address: socketAddress(addr, port),
		FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{{
				Name:       wellknown.TCPProxy,
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: tpAny},
			}},
		}},
	}
	if freebind {
		// The VIP may not be on this node (keepalived moves it): bind anyway.
		l.Freebind = wrapperspb.Bool(true)
	}
	return l, nil
}

func socketAddress(addr string, port uint32) *corev3.Address {
	if a, err := netip.ParseAddr(addr); err == nil {
		addr = a.String()
	}
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Protocol:      corev3.SocketAddress_TCP,
		Address:       addr,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

// edsCluster is a cluster whose endpoints come over ADS, with halo's
// failover settings (xdscontract): least-request (or the configured
// policy), a 1% panic threshold (traffic goes to unhealthy hosts only when
// none is healthy), ejection of a host at its first local-origin connect
// failure, upstream TCP keepalive, and connections closed when a host turns
// unhealthy; and rebalancing in its metadata when on.
func edsCluster(name string, a *halov1.ApiServer) (*clusterv3.Cluster, error) {
	policy := clusterv3.Cluster_LEAST_REQUEST
	switch a.GetLbPolicy() {
	case halov1.LbPolicy_LB_POLICY_ROUND_ROBIN:
		policy = clusterv3.Cluster_ROUND_ROBIN
	case halov1.LbPolicy_LB_POLICY_RANDOM:
		policy = clusterv3.Cluster_RANDOM
	}
	c := &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{
			ResourceApiVersion:    corev3.ApiVersion_V3,
			ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		}},
		ConnectTimeout: a.GetConnectTimeout(),
		LbPolicy:       policy,
		CommonLbConfig: &clusterv3.Cluster_CommonLbConfig{HealthyPanicThreshold: &typev3.Percent{Value: xdscontract.HealthyPanicThreshold}},
		OutlierDetection: &clusterv3.OutlierDetection{
			SplitExternalLocalOriginErrors:         true,
			ConsecutiveLocalOriginFailure:          wrapperspb.UInt32(xdscontract.ConsecutiveLocalOriginFailures),
			EnforcingConsecutiveLocalOriginFailure: wrapperspb.UInt32(100),
			EnforcingLocalOriginSuccessRate:        wrapperspb.UInt32(0),
			EnforcingConsecutive_5Xx:               wrapperspb.UInt32(0),
			EnforcingConsecutiveGatewayFailure:     wrapperspb.UInt32(0),
			EnforcingSuccessRate:                   wrapperspb.UInt32(0),
			Interval:                               durationpb.New(xdscontract.OutlierInterval),
			BaseEjectionTime:                       durationpb.New(xdscontract.BaseEjectionTime),
			MaxEjectionTime:                        durationpb.New(xdscontract.MaxEjectionTime),
			MaxEjectionPercent:                     wrapperspb.UInt32(xdscontract.MaxEjectionPercent),
		},
		CircuitBreakers: &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
			MaxConnections:     wrapperspb.UInt32(xdscontract.MaxConnections),
			MaxPendingRequests: wrapperspb.UInt32(xdscontract.MaxConnections),
			MaxRequests:        wrapperspb.UInt32(xdscontract.MaxConnections),
		}}},
		UpstreamConnectionOptions: &clusterv3.UpstreamConnectionOptions{TcpKeepalive: &corev3.TcpKeepalive{
			KeepaliveProbes:   wrapperspb.UInt32(xdscontract.KeepaliveProbes),
			KeepaliveTime:     wrapperspb.UInt32(uint32(xdscontract.KeepaliveTime / time.Second)),
			KeepaliveInterval: wrapperspb.UInt32(uint32(xdscontract.KeepaliveInterval / time.Second)),
		}},
		CloseConnectionsOnHostHealthFailure: true,
	}
	if r := a.GetRebalance(); r.GetEnabled() {
		md, err := xdscontract.RebalanceMetadata(&halov1.RebalanceMetadata{
			MaxFraction: r.GetMaxFraction(), MinAge: r.GetMinAge(), Interval: r.GetInterval(),
		})
		if err != nil {
			return nil, err
		}
		c.Metadata = md
	}
	return c, nil
}

// loadAssignment lists backends at aip:port, in ordinal order, with their
// health.
func loadAssignment(name, cluster string, backends []*halov1.Node, port uint32, kind halov1.BackendKind, health Health) *endpointv3.ClusterLoadAssignment {
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: name}
	if len(backends) == 0 {
		return cla
	}
	lle := &endpointv3.LocalityLbEndpoints{}
	for _, n := range backends {
		hs := health(cluster, n.GetName(), kind)
		if n.GetDraining() {
			hs = corev3.HealthStatus_DRAINING
		}
		lle.LbEndpoints = append(lle.LbEndpoints, &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address:  socketAddress(topology.AccessIP(n), port),
				Hostname: n.GetName(),
			}},
			HealthStatus: hs,
		})
	}
	cla.Endpoints = []*endpointv3.LocalityLbEndpoints{lle}
	return cla
}

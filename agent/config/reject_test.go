package config_test

import (
	"errors"
	"strings"
	"testing"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/halolb/halo/agent/config"
	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/server/snapshot"
)

// haloResources returns fresh copies of the resources halo builds for a
// load-balancer node of a managed external LB: the VIP listener, the
// kube-apiserver cluster and its endpoints.
func haloResources(t *testing.T) (*listenerv3.Listener, *clusterv3.Cluster, *endpointv3.ClusterLoadAssignment) {
	t.Helper()
	c := &halov1.Cluster{Name: "prod", Apiserver: &halov1.ApiServer{ExternalLb: &halov1.ExternalLB{Address: "203.0.113.10", Port: 8383}}}
	res := snapshot.Build(snapshot.Input{Cluster: c, Nodes: nodes()})
	s := res.Snapshots[res.ProfileOf(node("lb", "10.9.9.9", "", 0, lb))]
	if s == nil {
		t.Fatalf("no snapshot: %v", res.Held)
	}
	l := proto.Clone(s.Get(resource.ListenerType, snapshot.ListenerAPIServerVIP).Message).(*listenerv3.Listener)
	cl := proto.Clone(s.Get(resource.ClusterType, snapshot.ClusterAPIServer).Message).(*clusterv3.Cluster)
	cla := proto.Clone(s.Get(resource.EndpointType, snapshot.ClusterAPIServer).Message).(*endpointv3.ClusterLoadAssignment)
	return l, cl, cla
}

// editTCPProxy unpacks the listener's tcp_proxy, edits it and packs it back.
func editTCPProxy(t *testing.T, l *listenerv3.Listener, edit func(*tcpproxyv3.TcpProxy)) {
	t.Helper()
	f := l.GetFilterChains()[0].GetFilters()[0]
	tp := &tcpproxyv3.TcpProxy{}
	if err := f.GetTypedConfig().UnmarshalTo(tp); err != nil {
		t.Fatal(err)
	}
	edit(tp)
	f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, tp)}
}

func mustAny(t testing.TB, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// withUnknown appends field 999 (varint 1) to m's unknown fields.
func withUnknown(m proto.Message) {
	b := protowire.AppendTag(nil, 999, protowire.VarintType)
	b = protowire.AppendVarint(b, 1)
	m.ProtoReflect().SetUnknown(b)
}

func sockAddr(addr string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: addr, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

func lbEndpoint(addr string, port uint32) *endpointv3.LbEndpoint {
	return &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: sockAddr(addr, port)}}}
}

// rejection is one resource edit that must be refused with an error that
// names field and says reason.
type rejection struct {
	name   string
	field  string // FieldError.Field, exactly
	reason string // a substring of FieldError.Reason
}

func checkRejected(t *testing.T, resourceLabel string, err error, r rejection) {
	t.Helper()
	var fe *config.FieldError
	if !errors.As(err, &fe) {
		t.Fatalf("error %v (%T), want a *FieldError", err, err)
	}
	if fe.Resource != resourceLabel || fe.Field != r.field || !strings.Contains(fe.Reason, r.reason) {
		t.Errorf("got %q\nwant resource %s, field %q, reason containing %q", err, resourceLabel, r.field, r.reason)
	}
	if !strings.Contains(err.Error(), r.field) {
		t.Errorf("%q does not name %q", err, r.field)
	}
}

const (
	unsupported = "not supported by halo-agent"
	invalid     = "invalid (Envoy's validation rules)"
	tp          = "filter_chains[0].filters[0].typed_config"
)

func TestListenerRejections(t *testing.T) {
	for _, tc := range []struct {
		rejection
		edit func(*testing.T, *listenerv3.Listener)
	}{
		{rejection{"no name", "name", "must be set"}, func(_ *testing.T, l *listenerv3.Listener) { l.Name = "" }},
		{rejection{"unknown field", "", "unknown field number 999"}, func(_ *testing.T, l *listenerv3.Listener) { withUnknown(l) }},
		{rejection{"unknown field in tcp_proxy", tp, "unknown field number 999"}, func(t *testing.T, l *listenerv3.Listener) {
			editTCPProxy(t, l, func(p *tcpproxyv3.TcpProxy) { withUnknown(p) })
		}},
		{rejection{"no address", "address", "must be set"}, func(_ *testing.T, l *listenerv3.Listener) { l.Address = nil }},
		{rejection{"pipe", "address.pipe", unsupported}, func(_ *testing.T, l *listenerv3.Listener) {
			l.Address = &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: "/run/x.sock"}}}
		}},
		{rejection{"hostname", "address.socket_address.address", "not an IP address"}, func(_ *testing.T, l *listenerv3.Listener) {
			l.Address = sockAddr("localhost", 6443)
		}},
		{rejection{"zone", "address.socket_address.address", "zone"}, func(_ *testing.T, l *listenerv3.Listener) {
			l.Address = sockAddr("fe80::1%eth0", 6443)
		}},
		{rejection{"UDP", "address.socket_address.protocol", "TCP only"}, func(_ *testing.T, l *listenerv3.Listener) {
			l.GetAddress().GetSocketAddress().Protocol = corev3.SocketAddress_UDP
		}},
		{rejection{"named port", "address.socket_address.named_port", unsupported}, func(_ *testing.T, l *listenerv3.Listener) {
			l.GetAddress().GetSocketAddress().PortSpecifier = &corev3.SocketAddress_NamedPort{NamedPort: "https"}
		}},
		{rejection{"port 0", "address.socket_address.port_value", "between 1 and 65535"}, func(_ *testing.T, l *listenerv3.Listener) {
			l.GetAddress().GetSocketAddress().PortSpecifier = &corev3.SocketAddress_PortValue{PortValue: 0}
		}},
		{rejection{"port too large", "address.socket_address.port_value", invalid}, func(_ *testing.T, l *listenerv3.Listener) {
			l.GetAddress().GetSocketAddress().PortSpecifier = &corev3.SocketAddress_PortValue{PortValue: 70000}
		}},
		{rejection{"resolver", "address.socket_address.resolver_name", unsupported}, func(_ *testing.T, l *listenerv3.Listener) {
			l.GetAddress().GetSocketAddress().ResolverName = "dns"
		}},
		{rejection{"ipv4_compat", "address.socket_address.ipv4_compat", unsupported}, func(_ *testing.T, l *listenerv3.Listener) {
			l.GetAddress().GetSocketAddress().Ipv4Compat = true
		}},
		{rejection{"additional addresses", "additional_addresses", unsupported}, func(_ *testing.T, l *listenerv3.Listener) {
			l.AdditionalAddresses = []*listenerv3.AdditionalAddress{{Address: sockAddr("::1", 6443)}}
		}},
		{rejection{"transparent", "transparent", unsupported}, func(_ *testing.T, l *listenerv3.Listener) { l.Transparent = wrapperspb.Bool(true) }},
		{rejection{"listener filters", "listener_filters", unsupported}, func(_ *testing.T, l *listenerv3.Listener) {
			l.ListenerFilters = []*listenerv3.ListenerFilter{{Name: "envoy.filters.listener.tls_inspector"}}
		}},
		{rejection{"socket options", "socket_options", unsupported}, func(_ *testing.T, l *listenerv3.Listener) {
			l.SocketOptions = []*corev3.SocketOption{{Level: 1, Name: 2, Value: &corev3.SocketOption_IntValue{IntValue: 1}}}
		}},
		{rejection{"buffer limit", "per_connection_buffer_limit_bytes", unsupported}, func(_ *testing.T, l *listenerv3.Listener) {
			l.PerConnectionBufferLimitBytes = wrapperspb.UInt32(1 << 20)
		}},
		{rejection{"listener access log", "access_log", unsupported}, func(_ *testing.T, l *listenerv3.Listener) {
			l.AccessLog = []*accesslogv3.AccessLog{{Name: "x"}}
		}},
		{rejection{"default filter chain", "default_filter_chain", unsupported}, func(_ *testing.T, l *listenerv3.Listener) {
			l.DefaultFilterChain = &listenerv3.FilterChain{}
		}},
		{rejection{"drain type", "drain_type", unsupported}, func(_ *testing.T, l *listenerv3.Listener) {
			l.DrainType = listenerv3.Listener_MODIFY_ONLY
		}},
		{rejection{"no filter chain", "filter_chains", "exactly one filter chain"}, func(_ *testing.T, l *listenerv3.Listener) { l.FilterChains = nil }},
		{rejection{"two filter chains", "filter_chains", "got 2"}, func(_ *testing.T, l *listenerv3.Listener) {
			l.FilterChains = append(l.FilterChains, proto.Clone(l.FilterChains[0]).(*listenerv3.FilterChain))
		}},
		{rejection{"filter chain match", "filter_chains[0].filter_chain_match", unsupported}, func(_ *testing.T, l *listenerv3.Listener) {
			l.FilterChains[0].FilterChainMatch = &listenerv3.FilterChainMatch{ServerNames: []string{"x"}}
		}},
		{rejection{"transport socket", "filter_chains[0].transport_socket", unsupported}, func(_ *testing.T, l *listenerv3.Listener) {
			l.FilterChains[0].TransportSocket = &corev3.TransportSocket{Name: "tls"}
		}},
		{rejection{"two filters", "filter_chains[0].filters", "got 2"}, func(_ *testing.T, l *listenerv3.Listener) {
			l.FilterChains[0].Filters = append(l.FilterChains[0].Filters, proto.Clone(l.FilterChains[0].Filters[0]).(*listenerv3.Filter))
		}},
		{rejection{"http filter", tp, `unsupported filter type "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager" (filter "hcm")`},
			func(_ *testing.T, l *listenerv3.Listener) {
				l.FilterChains[0].Filters[0] = &listenerv3.Filter{Name: "hcm", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: &anypb.Any{
					TypeUrl: "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"}}}
			}},
		{rejection{"typed struct", tp, `unsupported filter type "google.protobuf.Struct"`}, func(t *testing.T, l *listenerv3.Listener) {
			l.FilterChains[0].Filters[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, &structpb.Struct{})}
		}},
		{rejection{"config discovery", "filter_chains[0].filters[0].config_discovery", unsupported}, func(_ *testing.T, l *listenerv3.Listener) {
			l.FilterChains[0].Filters[0].ConfigType = &listenerv3.Filter_ConfigDiscovery{ConfigDiscovery: &corev3.ExtensionConfigSource{
				ConfigSource: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}},
				TypeUrls:     []string{"type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"}}}
		}},
		{rejection{"garbage tcp_proxy", tp, "cannot decode"}, func(_ *testing.T, l *listenerv3.Listener) {
			l.FilterChains[0].Filters[0].GetTypedConfig().Value = []byte{0xff}
		}},
		{rejection{"no stat prefix", tp + ".stat_prefix", invalid}, func(t *testing.T, l *listenerv3.Listener) {
			editTCPProxy(t, l, func(p *tcpproxyv3.TcpProxy) { p.StatPrefix = "" })
		}},
		{rejection{"no cluster", tp + ".cluster", "must be set"}, func(t *testing.T, l *listenerv3.Listener) {
			editTCPProxy(t, l, func(p *tcpproxyv3.TcpProxy) { p.ClusterSpecifier = &tcpproxyv3.TcpProxy_Cluster{} })
		}},
		{rejection{"weighted clusters", tp + ".weighted_clusters", unsupported}, func(t *testing.T, l *listenerv3.Listener) {
			editTCPProxy(t, l, func(p *tcpproxyv3.TcpProxy) {
				p.ClusterSpecifier = &tcpproxyv3.TcpProxy_WeightedClusters{WeightedClusters: &tcpproxyv3.TcpProxy_WeightedCluster{
					Clusters: []*tcpproxyv3.TcpProxy_WeightedCluster_ClusterWeight{{Name: "a", Weight: 1}}}}
			})
		}},
		{rejection{"tcp_proxy access log", tp + ".access_log", unsupported}, func(t *testing.T, l *listenerv3.Listener) {
			editTCPProxy(t, l, func(p *tcpproxyv3.TcpProxy) { p.AccessLog = []*accesslogv3.AccessLog{{Name: "x"}} })
		}},
		{rejection{"tunneling", tp + ".tunneling_config", unsupported}, func(t *testing.T, l *listenerv3.Listener) {
			editTCPProxy(t, l, func(p *tcpproxyv3.TcpProxy) { p.TunnelingConfig = &tcpproxyv3.TcpProxy_TunnelingConfig{Hostname: "x"} })
		}},
		{rejection{"metadata match", tp + ".metadata_match", unsupported}, func(t *testing.T, l *listenerv3.Listener) {
			editTCPProxy(t, l, func(p *tcpproxyv3.TcpProxy) { p.MetadataMatch = &corev3.Metadata{} })
		}},
		{rejection{"hash policy", tp + ".hash_policy", unsupported}, func(t *testing.T, l *listenerv3.Listener) {
			editTCPProxy(t, l, func(p *tcpproxyv3.TcpProxy) {
				p.HashPolicy = []*typev3.HashPolicy{{PolicySpecifier: &typev3.HashPolicy_SourceIp_{SourceIp: &typev3.HashPolicy_SourceIp{}}}}
			})
		}},
		{rejection{"on demand", tp + ".on_demand", unsupported}, func(t *testing.T, l *listenerv3.Listener) {
			editTCPProxy(t, l, func(p *tcpproxyv3.TcpProxy) { p.OnDemand = &tcpproxyv3.TcpProxy_OnDemand{} })
		}},
		{rejection{"max duration", tp + ".max_downstream_connection_duration", unsupported}, func(t *testing.T, l *listenerv3.Listener) {
			editTCPProxy(t, l, func(p *tcpproxyv3.TcpProxy) { p.MaxDownstreamConnectionDuration = durationpb.New(1e9) })
		}},
		{rejection{"negative idle timeout", tp + ".idle_timeout", "must not be negative"}, func(t *testing.T, l *listenerv3.Listener) {
			editTCPProxy(t, l, func(p *tcpproxyv3.TcpProxy) { p.IdleTimeout = durationpb.New(-1e9) })
		}},
		{rejection{"bad idle timeout", tp + ".idle_timeout", "invalid duration"}, func(t *testing.T, l *listenerv3.Listener) {
			editTCPProxy(t, l, func(p *tcpproxyv3.TcpProxy) { p.IdleTimeout = &durationpb.Duration{Seconds: 1, Nanos: -1} })
		}},
		{rejection{"0 connect attempts", tp + ".max_connect_attempts", invalid}, func(t *testing.T, l *listenerv3.Listener) {
			editTCPProxy(t, l, func(p *tcpproxyv3.TcpProxy) { p.MaxConnectAttempts = wrapperspb.UInt32(0) })
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, _, _ := haloResources(t)
			if _, err := config.ListenerFromEnvoy(l); err != nil {
				t.Fatalf("base: %v", err)
			}
			tc.edit(t, l)
			got, err := config.ListenerFromEnvoy(l)
			if got != nil {
				t.Errorf("accepted: %+v", got)
			}
			checkRejected(t, `listener "`+l.GetName()+`"`, err, tc.rejection)
		})
	}
}

func TestClusterRejections(t *testing.T) {
	od := func(c *clusterv3.Cluster) *clusterv3.OutlierDetection { return c.OutlierDetection }
	const o = "outlier_detection."
	for _, tc := range []struct {
		rejection
		edit func(*clusterv3.Cluster)
	}{
		{rejection{"no name", "name", invalid}, func(c *clusterv3.Cluster) { c.Name = "" }},
		{rejection{"unknown field", "", "unknown field number 999"}, func(c *clusterv3.Cluster) { withUnknown(c) }},
		{rejection{"unknown field deep", "outlier_detection.interval", "unknown field number 999"}, func(c *clusterv3.Cluster) { withUnknown(od(c).Interval) }},
		{rejection{"strict dns", "type", "STRICT_DNS is not supported"}, func(c *clusterv3.Cluster) {
			c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS}
		}},
		{rejection{"original dst", "type", "ORIGINAL_DST is not supported"}, func(c *clusterv3.Cluster) {
			c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST}
		}},
		{rejection{"custom cluster type", "cluster_type", unsupported}, func(c *clusterv3.Cluster) {
			c.ClusterDiscoveryType = &clusterv3.Cluster_ClusterType{ClusterType: &clusterv3.Cluster_CustomClusterType{Name: "x"}}
		}},
		{rejection{"eds without config", "eds_cluster_config.eds_config", "must be set"}, func(c *clusterv3.Cluster) { c.EdsClusterConfig = nil }},
		{rejection{"eds config without ads", "eds_cluster_config.eds_config.config_source_specifier", invalid}, func(c *clusterv3.Cluster) {
			c.EdsClusterConfig.EdsConfig.ConfigSourceSpecifier = nil
		}},
		{rejection{"eds over api config source", "eds_cluster_config.eds_config.api_config_source", unsupported}, func(c *clusterv3.Cluster) {
			c.EdsClusterConfig.EdsConfig.ConfigSourceSpecifier = &corev3.ConfigSource_ApiConfigSource{ApiConfigSource: &corev3.ApiConfigSource{}}
		}},
		{rejection{"eds over self", "eds_cluster_config.eds_config.self", unsupported}, func(c *clusterv3.Cluster) {
			c.EdsClusterConfig.EdsConfig.ConfigSourceSpecifier = &corev3.ConfigSource_Self{Self: &corev3.SelfConfigSource{}}
		}},
		{rejection{"eds v2", "eds_cluster_config.eds_config.resource_api_version", "V2 is not supported"}, func(c *clusterv3.Cluster) {
			c.EdsClusterConfig.EdsConfig.ResourceApiVersion = corev3.ApiVersion_V2 //nolint:staticcheck // SA1019: the point is that the deprecated V2 is refused
		}},
		{rejection{"initial fetch timeout", "eds_cluster_config.eds_config.initial_fetch_timeout", unsupported}, func(c *clusterv3.Cluster) {
			c.EdsClusterConfig.EdsConfig.InitialFetchTimeout = durationpb.New(1e9)
		}},
		{rejection{"load assignment on eds", "load_assignment", "its endpoints come from EDS"}, func(c *clusterv3.Cluster) {
			c.LoadAssignment = &endpointv3.ClusterLoadAssignment{ClusterName: c.Name}
		}},
		{rejection{"eds config on static", "eds_cluster_config", "only for an EDS cluster"}, func(c *clusterv3.Cluster) {
			c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}
		}},
		{rejection{"static endpoint by name", "load_assignment.endpoints[0].lb_endpoints[1].endpoint.address.socket_address.address", "not an IP address"}, func(c *clusterv3.Cluster) {
			c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}
			c.EdsClusterConfig = nil
			c.LoadAssignment = &endpointv3.ClusterLoadAssignment{ClusterName: c.Name, Endpoints: []*endpointv3.LocalityLbEndpoints{{
				LbEndpoints: []*endpointv3.LbEndpoint{lbEndpoint("192.0.2.1", 6443), lbEndpoint("master-b", 6443)}}}}
		}},
		{rejection{"static endpoint policy", "load_assignment.policy", unsupported}, func(c *clusterv3.Cluster) {
			c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}
			c.EdsClusterConfig = nil
			c.LoadAssignment = &endpointv3.ClusterLoadAssignment{ClusterName: c.Name, Policy: &endpointv3.ClusterLoadAssignment_Policy{}}
		}},
		{rejection{"connect timeout 0", "connect_timeout", invalid}, func(c *clusterv3.Cluster) { c.ConnectTimeout = durationpb.New(0) }},
		{rejection{"ring hash", "lb_policy", "RING_HASH is not supported"}, func(c *clusterv3.Cluster) { c.LbPolicy = clusterv3.Cluster_RING_HASH }},
		{rejection{"maglev", "lb_policy", "MAGLEV is not supported"}, func(c *clusterv3.Cluster) { c.LbPolicy = clusterv3.Cluster_MAGLEV }},
		{rejection{"least request config", "least_request_lb_config", unsupported}, func(c *clusterv3.Cluster) {
			c.LbConfig = &clusterv3.Cluster_LeastRequestLbConfig_{LeastRequestLbConfig: &clusterv3.Cluster_LeastRequestLbConfig{}}
		}},
		{rejection{"load balancing policy", "load_balancing_policy", unsupported}, func(c *clusterv3.Cluster) {
			c.LoadBalancingPolicy = &clusterv3.LoadBalancingPolicy{}
		}},
		{rejection{"zone aware", "common_lb_config.zone_aware_lb_config", unsupported}, func(c *clusterv3.Cluster) {
			c.CommonLbConfig.LocalityConfigSpecifier = &clusterv3.Cluster_CommonLbConfig_ZoneAwareLbConfig_{ZoneAwareLbConfig: &clusterv3.Cluster_CommonLbConfig_ZoneAwareLbConfig{}}
		}},
		{rejection{"panic threshold over 100", "common_lb_config.healthy_panic_threshold.value", invalid}, func(c *clusterv3.Cluster) {
			c.CommonLbConfig.HealthyPanicThreshold.Value = 150
		}},
		{rejection{"success rate unset", o + "enforcing_success_rate", "success-rate ejection is not supported by halo-agent; set it to 0 (Envoy's default is 100)"}, func(c *clusterv3.Cluster) {
			od(c).EnforcingSuccessRate = nil
		}},
		{rejection{"success rate on", o + "enforcing_success_rate", "set it to 0"}, func(c *clusterv3.Cluster) {
			od(c).EnforcingSuccessRate = wrapperspb.UInt32(50)
		}},
		{rejection{"local origin success rate unset", o + "enforcing_local_origin_success_rate", "set it to 0"}, func(c *clusterv3.Cluster) {
			od(c).EnforcingLocalOriginSuccessRate = nil
		}},
		{rejection{"local origin success rate on", o + "enforcing_local_origin_success_rate", "set it to 0"}, func(c *clusterv3.Cluster) {
			od(c).EnforcingLocalOriginSuccessRate = wrapperspb.UInt32(1)
		}},
		{rejection{"failure percentage", o + "enforcing_failure_percentage", "failure-percentage ejection is not supported"}, func(c *clusterv3.Cluster) {
			od(c).EnforcingFailurePercentage = wrapperspb.UInt32(10)
		}},
		{rejection{"failure percentage local origin", o + "enforcing_failure_percentage_local_origin", "set it to 0"}, func(c *clusterv3.Cluster) {
			od(c).EnforcingFailurePercentageLocalOrigin = wrapperspb.UInt32(10)
		}},
		{rejection{"gateway failures counting connect failures", o + "enforcing_consecutive_gateway_failure", "use consecutive_5xx"}, func(c *clusterv3.Cluster) {
			od(c).SplitExternalLocalOriginErrors = false
			od(c).EnforcingConsecutiveGatewayFailure = wrapperspb.UInt32(100)
		}},
		{rejection{"ejection jitter", o + "max_ejection_time_jitter", unsupported}, func(c *clusterv3.Cluster) {
			od(c).MaxEjectionTimeJitter = durationpb.New(1e9)
		}},
		{rejection{"always eject one", o + "always_eject_one_host", unsupported}, func(c *clusterv3.Cluster) {
			od(c).AlwaysEjectOneHost = wrapperspb.Bool(true)
		}},
		{rejection{"interval 0", o + "interval", invalid}, func(c *clusterv3.Cluster) { od(c).Interval = durationpb.New(0) }},
		{rejection{"max ejection below base", o + "max_ejection_time", "must not be less than base_ejection_time"}, func(c *clusterv3.Cluster) {
			od(c).MaxEjectionTime = durationpb.New(1e9)
		}},
		{rejection{"enforcing over 100", o + "enforcing_consecutive_local_origin_failure", invalid}, func(c *clusterv3.Cluster) {
			od(c).EnforcingConsecutiveLocalOriginFailure = wrapperspb.UInt32(101)
		}},
		{rejection{"high priority", "circuit_breakers.thresholds[0].priority", "only DEFAULT"}, func(c *clusterv3.Cluster) {
			c.CircuitBreakers.Thresholds[0].Priority = corev3.RoutingPriority_HIGH
		}},
		{rejection{"two thresholds", "circuit_breakers.thresholds", "got 2"}, func(c *clusterv3.Cluster) {
			c.CircuitBreakers.Thresholds = append(c.CircuitBreakers.Thresholds, &clusterv3.CircuitBreakers_Thresholds{})
		}},
		{rejection{"per host thresholds", "circuit_breakers.per_host_thresholds", unsupported}, func(c *clusterv3.Cluster) {
			c.CircuitBreakers.PerHostThresholds = []*clusterv3.CircuitBreakers_Thresholds{{}}
		}},
		{rejection{"retry budget", "circuit_breakers.thresholds[0].retry_budget", unsupported}, func(c *clusterv3.Cluster) {
			c.CircuitBreakers.Thresholds[0].RetryBudget = &clusterv3.CircuitBreakers_Thresholds_RetryBudget{}
		}},
		{rejection{"track remaining", "circuit_breakers.thresholds[0].track_remaining", unsupported}, func(c *clusterv3.Cluster) {
			c.CircuitBreakers.Thresholds[0].TrackRemaining = true
		}},
		{rejection{"max connection pools", "circuit_breakers.thresholds[0].max_connection_pools", unsupported}, func(c *clusterv3.Cluster) {
			c.CircuitBreakers.Thresholds[0].MaxConnectionPools = wrapperspb.UInt32(1)
		}},
		{rejection{"max connections 0", "circuit_breakers.thresholds[0].max_connections", "refuse every connection"}, func(c *clusterv3.Cluster) {
			c.CircuitBreakers.Thresholds[0].MaxConnections = wrapperspb.UInt32(0)
		}},
		{rejection{"happy eyeballs", "upstream_connection_options.happy_eyeballs_config", unsupported}, func(c *clusterv3.Cluster) {
			c.UpstreamConnectionOptions.HappyEyeballsConfig = &clusterv3.UpstreamConnectionOptions_HappyEyeballsConfig{}
		}},
		{rejection{"keepalive probes 0", "upstream_connection_options.tcp_keepalive.keepalive_probes", "between 1 and 127"}, func(c *clusterv3.Cluster) {
			c.UpstreamConnectionOptions.TcpKeepalive.KeepaliveProbes = wrapperspb.UInt32(0)
		}},
		{rejection{"keepalive time too long", "upstream_connection_options.tcp_keepalive.keepalive_time", "between 1 and 32767"}, func(c *clusterv3.Cluster) {
			c.UpstreamConnectionOptions.TcpKeepalive.KeepaliveTime = wrapperspb.UInt32(40000)
		}},
		{rejection{"keepalive interval 0", "upstream_connection_options.tcp_keepalive.keepalive_interval", "between 1 and 32767"}, func(c *clusterv3.Cluster) {
			c.UpstreamConnectionOptions.TcpKeepalive.KeepaliveInterval = wrapperspb.UInt32(0)
		}},
		{rejection{"transport socket", "transport_socket", unsupported}, func(c *clusterv3.Cluster) {
			c.TransportSocket = &corev3.TransportSocket{Name: "tls"}
		}},
		{rejection{"health checks", "health_checks", unsupported}, func(c *clusterv3.Cluster) {
			c.HealthChecks = []*corev3.HealthCheck{validHealthCheck()}
		}},
		{rejection{"dns lookup family", "dns_lookup_family", unsupported}, func(c *clusterv3.Cluster) {
			c.DnsLookupFamily = clusterv3.Cluster_V4_ONLY
		}},
		{rejection{"buffer limit", "per_connection_buffer_limit_bytes", unsupported}, func(c *clusterv3.Cluster) {
			c.PerConnectionBufferLimitBytes = wrapperspb.UInt32(1)
		}},
		{rejection{"typed metadata", "metadata.typed_filter_metadata[a]", unsupported}, func(c *clusterv3.Cluster) {
			c.Metadata = &corev3.Metadata{TypedFilterMetadata: map[string]*anypb.Any{"a": {}, "halo.rebalance": {}}}
		}},
		{rejection{"bad typed rebalance", "metadata.typed_filter_metadata[halo.rebalance]", "want halo.v1.RebalanceMetadata"}, func(c *clusterv3.Cluster) {
			c.Metadata = &corev3.Metadata{TypedFilterMetadata: map[string]*anypb.Any{"halo.rebalance": {TypeUrl: "type.googleapis.com/google.protobuf.Struct"}}}
		}},
		{rejection{"untyped rebalance", "metadata.filter_metadata[halo.rebalance]", "travel in typed_filter_metadata"}, func(c *clusterv3.Cluster) {
			c.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"halo.rebalance": {Fields: map[string]*structpb.Value{
				"max_fraction": structpb.NewNumberValue(2), "min_age_seconds": structpb.NewNumberValue(60), "interval_seconds": structpb.NewNumberValue(10)}}}}
		}},
		{rejection{"alt stat name", "alt_stat_name", unsupported}, func(c *clusterv3.Cluster) { c.AltStatName = "x" }},
		{rejection{"ignore health on removal", "ignore_health_on_host_removal", unsupported}, func(c *clusterv3.Cluster) { c.IgnoreHealthOnHostRemoval = true }},
		{rejection{"protocol options", "typed_extension_protocol_options", unsupported}, func(c *clusterv3.Cluster) {
			c.TypedExtensionProtocolOptions = map[string]*anypb.Any{"x": {}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, c, _ := haloResources(t)
			if _, err := config.ClusterFromEnvoy(c); err != nil {
				t.Fatalf("base: %v", err)
			}
			tc.edit(c)
			got, err := config.ClusterFromEnvoy(c)
			if got != nil {
				t.Errorf("accepted: %+v", got)
			}
			checkRejected(t, `cluster "`+c.GetName()+`"`, err, tc.rejection)
		})
	}
}

// TestErrorText pins the text a NACK carries.
func TestErrorText(t *testing.T) {
	_, c, _ := haloResources(t)
	c.OutlierDetection.EnforcingSuccessRate = wrapperspb.UInt32(100)
	_, err := config.ClusterFromEnvoy(c)
	const want = `cluster "kube-apiserver": outlier_detection.enforcing_success_rate: success-rate ejection is not supported by halo-agent; set it to 0`
	if err == nil || err.Error() != want {
		t.Errorf("got  %v\nwant %s", err, want)
	}
}

// TestValidationErrorUnwraps: an error of Envoy's generated validation is
// kept under the FieldError.
func TestValidationErrorUnwraps(t *testing.T) {
	_, c, _ := haloResources(t)
	c.ConnectTimeout = durationpb.New(-1)
	_, err := config.ClusterFromEnvoy(c)
	var ve interface{ AllErrors() []error }
	if !errors.As(err, &ve) {
		t.Fatalf("%v does not wrap the validation error", err)
	}
}

func TestEndpointsRejections(t *testing.T) {
	const e0 = "endpoints[0].lb_endpoints[0]"
	for _, tc := range []struct {
		rejection
		edit func(*endpointv3.ClusterLoadAssignment)
	}{
		{rejection{"no name", "cluster_name", invalid}, func(c *endpointv3.ClusterLoadAssignment) { c.ClusterName = "" }},
		{rejection{"unknown field", e0 + ".endpoint", "unknown field number 999"}, func(c *endpointv3.ClusterLoadAssignment) {
			withUnknown(c.Endpoints[0].LbEndpoints[0].GetEndpoint())
		}},
		{rejection{"policy", "policy", unsupported}, func(c *endpointv3.ClusterLoadAssignment) {
			c.Policy = &endpointv3.ClusterLoadAssignment_Policy{OverprovisioningFactor: wrapperspb.UInt32(100)}
		}},
		{rejection{"named endpoints", "named_endpoints", unsupported}, func(c *endpointv3.ClusterLoadAssignment) {
			c.NamedEndpoints = map[string]*endpointv3.Endpoint{"a": {}}
		}},
		{rejection{"priority", "endpoints[0].priority", "only priority 0"}, func(c *endpointv3.ClusterLoadAssignment) { c.Endpoints[0].Priority = 1 }},
		{rejection{"locality weight", "endpoints[0].load_balancing_weight", unsupported}, func(c *endpointv3.ClusterLoadAssignment) {
			c.Endpoints[0].LoadBalancingWeight = wrapperspb.UInt32(1)
		}},
		{rejection{"leds", "endpoints[0].leds_cluster_locality_config", unsupported}, func(c *endpointv3.ClusterLoadAssignment) {
			c.Endpoints[0].LbConfig = &endpointv3.LocalityLbEndpoints_LedsClusterLocalityConfig{LedsClusterLocalityConfig: &endpointv3.LedsClusterLocalityConfig{}}
		}},
		{rejection{"locality metadata", "endpoints[0].metadata", unsupported}, func(c *endpointv3.ClusterLoadAssignment) {
			c.Endpoints[0].Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"a": {}}}
		}},
		{rejection{"endpoint name", e0 + ".endpoint_name", unsupported}, func(c *endpointv3.ClusterLoadAssignment) {
			c.Endpoints[0].LbEndpoints[0].HostIdentifier = &endpointv3.LbEndpoint_EndpointName{EndpointName: "a"}
		}},
		{rejection{"no endpoint", e0 + ".endpoint", "must be set"}, func(c *endpointv3.ClusterLoadAssignment) {
			c.Endpoints[0].LbEndpoints[0].HostIdentifier = nil
		}},
		{rejection{"weight", e0 + ".load_balancing_weight", "leave it unset or 1"}, func(c *endpointv3.ClusterLoadAssignment) {
			c.Endpoints[0].LbEndpoints[0].LoadBalancingWeight = wrapperspb.UInt32(2)
		}},
		{rejection{"endpoint metadata", e0 + ".metadata", unsupported}, func(c *endpointv3.ClusterLoadAssignment) {
			c.Endpoints[0].LbEndpoints[0].Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"a": {}}}
		}},
		{rejection{"health check config", e0 + ".endpoint.health_check_config", unsupported}, func(c *endpointv3.ClusterLoadAssignment) {
			c.Endpoints[0].LbEndpoints[0].GetEndpoint().HealthCheckConfig = &endpointv3.Endpoint_HealthCheckConfig{PortValue: 1}
		}},
		{rejection{"additional addresses", e0 + ".endpoint.additional_addresses", unsupported}, func(c *endpointv3.ClusterLoadAssignment) {
			c.Endpoints[0].LbEndpoints[0].GetEndpoint().AdditionalAddresses = []*endpointv3.Endpoint_AdditionalAddress{{Address: sockAddr("::1", 1)}}
		}},
		{rejection{"hostname address", e0 + ".endpoint.address.socket_address.address", "does not resolve names"}, func(c *endpointv3.ClusterLoadAssignment) {
			c.Endpoints[0].LbEndpoints[0].GetEndpoint().Address = sockAddr("master-a.example.com", 6443)
		}},
		{rejection{"UDP", e0 + ".endpoint.address.socket_address.protocol", "TCP only"}, func(c *endpointv3.ClusterLoadAssignment) {
			c.Endpoints[0].LbEndpoints[0].GetEndpoint().GetAddress().GetSocketAddress().Protocol = corev3.SocketAddress_UDP
		}},
		{rejection{"internal address", e0 + ".endpoint.address.envoy_internal_address", unsupported}, func(c *endpointv3.ClusterLoadAssignment) {
			c.Endpoints[0].LbEndpoints[0].GetEndpoint().Address = &corev3.Address{Address: &corev3.Address_EnvoyInternalAddress{
				EnvoyInternalAddress: &corev3.EnvoyInternalAddress{AddressNameSpecifier: &corev3.EnvoyInternalAddress_ServerListenerName{ServerListenerName: "x"}}}}
		}},
		{rejection{"port 0", e0 + ".endpoint.address.socket_address.port_value", "between 1 and 65535"}, func(c *endpointv3.ClusterLoadAssignment) {
			c.Endpoints[0].LbEndpoints[0].GetEndpoint().Address = sockAddr("192.0.2.9", 0)
		}},
		{rejection{"duplicate", "endpoints[0].lb_endpoints[2].endpoint.address", "is also endpoints[0].lb_endpoints[0]"}, func(c *endpointv3.ClusterLoadAssignment) {
			c.Endpoints[0].LbEndpoints[2].GetEndpoint().Address = proto.Clone(c.Endpoints[0].LbEndpoints[0].GetEndpoint().GetAddress()).(*corev3.Address)
		}},
		{rejection{"duplicate across localities", "endpoints[1].lb_endpoints[0].endpoint.address", "is also endpoints[0].lb_endpoints[1]"}, func(c *endpointv3.ClusterLoadAssignment) {
			c.Endpoints = append(c.Endpoints, &endpointv3.LocalityLbEndpoints{
				Locality:    &corev3.Locality{Zone: "b"},
				LbEndpoints: []*endpointv3.LbEndpoint{proto.Clone(c.Endpoints[0].LbEndpoints[1]).(*endpointv3.LbEndpoint)}})
		}},
		{rejection{"unknown health", e0 + ".health_status", "unknown status 42"}, func(c *endpointv3.ClusterLoadAssignment) {
			c.Endpoints[0].LbEndpoints[0].HealthStatus = 42
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, c := haloResources(t)
			if _, err := config.EndpointsFromEnvoy(c); err != nil {
				t.Fatalf("base: %v", err)
			}
			tc.edit(c)
			label := `endpoints "` + c.GetClusterName() + `"`
			got, err := config.EndpointsFromEnvoy(c)
			if got != nil {
				t.Errorf("accepted: %+v", got)
			}
			checkRejected(t, label, err, tc.rejection)
		})
	}
}

func TestDecodeRejections(t *testing.T) {
	l, c, _ := haloResources(t)
	lb, _ := proto.Marshal(l)
	for _, tc := range []struct {
		name string
		a    *anypb.Any
		want string
		// wantName is the name Decode reports with the error.
		wantName string
	}{
		{"unknown type", &anypb.Any{TypeUrl: resource.RouteType}, "not supported by halo-agent", ""},
		{"listener as cluster", &anypb.Any{TypeUrl: resource.ClusterType, Value: lb}, `cluster "`, ""},
		{"garbage", &anypb.Any{TypeUrl: resource.ListenerType, Value: []byte{0xff, 0xff}}, "decode listener", ""},
		{"named cluster with a bad field", mustAny(t, func() proto.Message {
			c.HealthChecks = []*corev3.HealthCheck{validHealthCheck()}
			return c
		}()), "health_checks", c.GetName()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name, v, err := config.Decode(tc.a)
			if err == nil || v != nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Decode = %v, %v; want an error containing %q", v, err, tc.want)
			}
			if tc.wantName != "" && name != tc.wantName {
				t.Errorf("name %q, want %q", name, tc.wantName)
			}
		})
	}
}

// validHealthCheck passes Envoy's validation (so that the allowlist is what
// refuses it).
func validHealthCheck() *corev3.HealthCheck {
	return &corev3.HealthCheck{
		Timeout: durationpb.New(1e9), Interval: durationpb.New(1e9),
		HealthyThreshold: wrapperspb.UInt32(1), UnhealthyThreshold: wrapperspb.UInt32(1),
		HealthChecker: &corev3.HealthCheck_TcpHealthCheck_{TcpHealthCheck: &corev3.HealthCheck_TcpHealthCheck{}},
	}
}

package config_test

import (
	"net/netip"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/halolb/halo/agent/config"
)

// minimalListener is the least a listener needs: a name, an address and a
// tcp_proxy with its two required fields.
func minimalListener(t testing.TB, edit func(*tcpproxyv3.TcpProxy)) *listenerv3.Listener {
	tp := &tcpproxyv3.TcpProxy{StatPrefix: "s", ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: "c"}}
	if edit != nil {
		edit(tp)
	}
	return &listenerv3.Listener{
		Name:    "l",
		Address: sockAddr("::", 443),
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name: "anything", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, tp)},
		}}}},
	}
}

func TestListenerDefaults(t *testing.T) {
	base := config.Listener{Name: "l", Address: netip.MustParseAddrPort("[::]:443"), Cluster: "c", StatPrefix: "s",
		IdleTimeout: time.Hour, MaxConnectAttempts: 1}
	for _, tc := range []struct {
		name string
		in   *listenerv3.Listener
		want func(*config.Listener)
	}{
		{"unset: 1h idle timeout, 1 attempt, no freebind", minimalListener(t, nil), func(*config.Listener) {}},
		{"idle timeout 0 disables it", minimalListener(t, func(p *tcpproxyv3.TcpProxy) { p.IdleTimeout = durationpb.New(0) }),
			func(l *config.Listener) { l.IdleTimeout = 0 }},
		{"attempts", minimalListener(t, func(p *tcpproxyv3.TcpProxy) { p.MaxConnectAttempts = wrapperspb.UInt32(4) }),
			func(l *config.Listener) { l.MaxConnectAttempts = 4 }},
		{"freebind false", func() *listenerv3.Listener {
			l := minimalListener(t, nil)
			l.Freebind = wrapperspb.Bool(false)
			l.StatPrefix = "listener-label"
			l.FilterChains[0].Name = "chain"
			return l
		}(), func(*config.Listener) {}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := config.ListenerFromEnvoy(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			want := base
			tc.want(&want)
			if d := cmp.Diff(&want, got, addrs); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
}

func edsCluster(edit func(*clusterv3.Cluster)) *clusterv3.Cluster {
	c := &clusterv3.Cluster{
		Name:                 "c",
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{
			ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		}},
	}
	if edit != nil {
		edit(c)
	}
	return c
}

// quietOutlier is outlier detection with only what must be said: the
// success-rate ejection Envoy enforces by default turned off.
func quietOutlier(split bool) *clusterv3.OutlierDetection {
	od := &clusterv3.OutlierDetection{EnforcingSuccessRate: wrapperspb.UInt32(0), SplitExternalLocalOriginErrors: split}
	if split {
		od.EnforcingLocalOriginSuccessRate = wrapperspb.UInt32(0)
	}
	return od
}

func TestClusterDefaults(t *testing.T) {
	base := config.Cluster{Name: "c", EDS: true, EDSServiceName: "c", LbPolicy: config.RoundRobin,
		ConnectTimeout: 5 * time.Second, PanicThreshold: 50, MaxConnections: 1024}
	defaultOutlier := &config.Outlier{ConsecutiveFailures: 5, EnforcingPercent: 100, Interval: 10 * time.Second,
		BaseEjectionTime: 30 * time.Second, MaxEjectionTime: 300 * time.Second, MaxEjectionPercent: 10}
	withOutlier := func(edit func(*config.Outlier)) func(*config.Cluster) {
		return func(c *config.Cluster) {
			o := *defaultOutlier
			edit(&o)
			c.Outlier = &o
		}
	}
	for _, tc := range []struct {
		name string
		in   *clusterv3.Cluster
		want func(*config.Cluster)
	}{
		{"unset: round robin, 5s, 50%, no outlier, 1024 connections", edsCluster(nil), func(*config.Cluster) {}},
		{"service name", edsCluster(func(c *clusterv3.Cluster) { c.EdsClusterConfig.ServiceName = "other" }),
			func(c *config.Cluster) { c.EDSServiceName = "other" }},
		{"api version V3", edsCluster(func(c *clusterv3.Cluster) { c.EdsClusterConfig.EdsConfig.ResourceApiVersion = corev3.ApiVersion_V3 }),
			func(*config.Cluster) {}},
		{"static, no endpoints", &clusterv3.Cluster{Name: "c"}, func(c *config.Cluster) {
			c.EDS, c.EDSServiceName, c.StaticEndpoints = false, "", &config.Endpoints{Name: "c"}
		}},
		{"static with endpoints", &clusterv3.Cluster{Name: "c", LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: "ignored-name", Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{lbEndpoint("192.0.2.1", 80)}}}}},
			func(c *config.Cluster) {
				c.EDS, c.EDSServiceName = false, ""
				c.StaticEndpoints = &config.Endpoints{Name: "ignored-name", Endpoints: []config.Endpoint{{Address: netip.MustParseAddrPort("192.0.2.1:80")}}}
			}},
		{"least request", edsCluster(func(c *clusterv3.Cluster) { c.LbPolicy = clusterv3.Cluster_LEAST_REQUEST }),
			func(c *config.Cluster) { c.LbPolicy = config.LeastRequest }},
		{"random", edsCluster(func(c *clusterv3.Cluster) { c.LbPolicy = clusterv3.Cluster_RANDOM }),
			func(c *config.Cluster) { c.LbPolicy = config.Random }},
		{"empty common_lb_config", edsCluster(func(c *clusterv3.Cluster) { c.CommonLbConfig = &clusterv3.Cluster_CommonLbConfig{} }),
			func(*config.Cluster) {}},
		{"panic threshold 0 disables panic", edsCluster(func(c *clusterv3.Cluster) {
			c.CommonLbConfig = &clusterv3.Cluster_CommonLbConfig{HealthyPanicThreshold: &typev3.Percent{}}
		}), func(c *config.Cluster) { c.PanicThreshold = 0 }},
		{"panic threshold rounded as Envoy does (0.4 → 0)", edsCluster(func(c *clusterv3.Cluster) {
			c.CommonLbConfig = &clusterv3.Cluster_CommonLbConfig{HealthyPanicThreshold: &typev3.Percent{Value: 0.4}}
		}), func(c *config.Cluster) { c.PanicThreshold = 0 }},
		{"panic threshold rounded as Envoy does (1.5 → 2)", edsCluster(func(c *clusterv3.Cluster) {
			c.CommonLbConfig = &clusterv3.Cluster_CommonLbConfig{HealthyPanicThreshold: &typev3.Percent{Value: 1.5}}
		}), func(c *config.Cluster) { c.PanicThreshold = 2 }},
		{"outlier: consecutive_5xx defaults", edsCluster(func(c *clusterv3.Cluster) { c.OutlierDetection = quietOutlier(false) }),
			withOutlier(func(*config.Outlier) {})},
		{"outlier: local origin defaults", edsCluster(func(c *clusterv3.Cluster) { c.OutlierDetection = quietOutlier(true) }),
			withOutlier(func(*config.Outlier) {})},
		{"outlier: consecutive_5xx", edsCluster(func(c *clusterv3.Cluster) {
			c.OutlierDetection = quietOutlier(false)
			c.OutlierDetection.Consecutive_5Xx = wrapperspb.UInt32(2)
			c.OutlierDetection.EnforcingConsecutive_5Xx = wrapperspb.UInt32(50)
			c.OutlierDetection.ConsecutiveLocalOriginFailure = wrapperspb.UInt32(9) // ignored without the split
		}), withOutlier(func(o *config.Outlier) { o.ConsecutiveFailures, o.EnforcingPercent = 2, 50 })},
		{"outlier: local origin", edsCluster(func(c *clusterv3.Cluster) {
			c.OutlierDetection = quietOutlier(true)
			c.OutlierDetection.ConsecutiveLocalOriginFailure = wrapperspb.UInt32(3)
			c.OutlierDetection.EnforcingConsecutiveLocalOriginFailure = wrapperspb.UInt32(70)
			c.OutlierDetection.Consecutive_5Xx = wrapperspb.UInt32(9) // external errors only: none in TCP
			// Gateway failures are external-origin with the split: harmless.
			c.OutlierDetection.EnforcingConsecutiveGatewayFailure = wrapperspb.UInt32(100)
		}), withOutlier(func(o *config.Outlier) { o.ConsecutiveFailures, o.EnforcingPercent = 3, 70 })},
		{"outlier: success-rate and failure-percentage knobs with enforcement 0", edsCluster(func(c *clusterv3.Cluster) {
			c.OutlierDetection = quietOutlier(false)
			c.OutlierDetection.SuccessRateMinimumHosts = wrapperspb.UInt32(1)
			c.OutlierDetection.SuccessRateRequestVolume = wrapperspb.UInt32(1)
			c.OutlierDetection.SuccessRateStdevFactor = wrapperspb.UInt32(1)
			c.OutlierDetection.FailurePercentageThreshold = wrapperspb.UInt32(1)
			c.OutlierDetection.FailurePercentageMinimumHosts = wrapperspb.UInt32(1)
			c.OutlierDetection.FailurePercentageRequestVolume = wrapperspb.UInt32(1)
			c.OutlierDetection.EnforcingFailurePercentage = wrapperspb.UInt32(0)
			c.OutlierDetection.EnforcingLocalOriginSuccessRate = wrapperspb.UInt32(0)
			c.OutlierDetection.ConsecutiveGatewayFailure = wrapperspb.UInt32(1)
			c.OutlierDetection.EnforcingConsecutiveGatewayFailure = wrapperspb.UInt32(0)
		}), withOutlier(func(*config.Outlier) {})},
		{"outlier: local origin success rate ignored without the split", edsCluster(func(c *clusterv3.Cluster) {
			c.OutlierDetection = quietOutlier(false)
		}), withOutlier(func(*config.Outlier) {})},
		{"outlier: max ejection time follows a larger base", edsCluster(func(c *clusterv3.Cluster) {
			c.OutlierDetection = quietOutlier(false)
			c.OutlierDetection.BaseEjectionTime = durationpb.New(400 * time.Second)
		}), withOutlier(func(o *config.Outlier) { o.BaseEjectionTime, o.MaxEjectionTime = 400*time.Second, 400*time.Second })},
		{"outlier: times", edsCluster(func(c *clusterv3.Cluster) {
			c.OutlierDetection = quietOutlier(false)
			c.OutlierDetection.Interval = durationpb.New(time.Second)
			c.OutlierDetection.BaseEjectionTime = durationpb.New(2 * time.Second)
			c.OutlierDetection.MaxEjectionTime = durationpb.New(2 * time.Second)
		}), withOutlier(func(o *config.Outlier) {
			o.Interval, o.BaseEjectionTime, o.MaxEjectionTime = time.Second, 2*time.Second, 2*time.Second
		})},
		{"outlier: max ejection percent", edsCluster(func(c *clusterv3.Cluster) {
			c.OutlierDetection = quietOutlier(false)
			c.OutlierDetection.MaxEjectionPercent = wrapperspb.UInt32(100)
		}), withOutlier(func(o *config.Outlier) { o.MaxEjectionPercent = 100 })},
		{"outlier: threshold 0 never ejects", edsCluster(func(c *clusterv3.Cluster) {
			c.OutlierDetection = quietOutlier(false)
			c.OutlierDetection.Consecutive_5Xx = wrapperspb.UInt32(0)
		}), func(*config.Cluster) {}},
		{"outlier: enforcing 0 never ejects", edsCluster(func(c *clusterv3.Cluster) {
			c.OutlierDetection = quietOutlier(true)
			c.OutlierDetection.EnforcingConsecutiveLocalOriginFailure = wrapperspb.UInt32(0)
		}), func(*config.Cluster) {}},
		{"circuit breakers: empty threshold", edsCluster(func(c *clusterv3.Cluster) {
			c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{}}}
		}), func(*config.Cluster) {}},
		{"circuit breakers: requests and retries do not apply", edsCluster(func(c *clusterv3.Cluster) {
			c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
				MaxConnections: wrapperspb.UInt32(7), MaxPendingRequests: wrapperspb.UInt32(1),
				MaxRequests: wrapperspb.UInt32(1), MaxRetries: wrapperspb.UInt32(1)}}}
		}), func(c *config.Cluster) { c.MaxConnections = 7 }},
		{"keepalive: empty keeps the system's values", edsCluster(func(c *clusterv3.Cluster) {
			c.UpstreamConnectionOptions = &clusterv3.UpstreamConnectionOptions{TcpKeepalive: &corev3.TcpKeepalive{}}
		}), func(c *config.Cluster) { c.Keepalive = &config.Keepalive{} }},
		{"keepalive", edsCluster(func(c *clusterv3.Cluster) {
			c.UpstreamConnectionOptions = &clusterv3.UpstreamConnectionOptions{TcpKeepalive: &corev3.TcpKeepalive{
				KeepaliveProbes: wrapperspb.UInt32(2), KeepaliveTime: wrapperspb.UInt32(60), KeepaliveInterval: wrapperspb.UInt32(5)}}
		}), func(c *config.Cluster) {
			c.Keepalive = &config.Keepalive{Probes: 2, Time: time.Minute, Interval: 5 * time.Second}
		}},
		{"upstream options without keepalive", edsCluster(func(c *clusterv3.Cluster) {
			c.UpstreamConnectionOptions = &clusterv3.UpstreamConnectionOptions{}
		}), func(*config.Cluster) {}},
		{"close on health failure", edsCluster(func(c *clusterv3.Cluster) { c.CloseConnectionsOnHostHealthFailure = true }),
			func(c *config.Cluster) { c.CloseOnHealthFailure = true }},
		{"connect timeout", edsCluster(func(c *clusterv3.Cluster) { c.ConnectTimeout = durationpb.New(time.Millisecond) }),
			func(c *config.Cluster) { c.ConnectTimeout = time.Millisecond }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := config.ClusterFromEnvoy(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			want := base
			tc.want(&want)
			if d := cmp.Diff(&want, got, addrs); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
}

func TestEndpointsHealthAndLabels(t *testing.T) {
	in := &endpointv3.ClusterLoadAssignment{ClusterName: "e", Endpoints: []*endpointv3.LocalityLbEndpoints{{
		Locality: &corev3.Locality{Region: "r", Zone: "z", SubZone: "s"},
	}}}
	want := &config.Endpoints{Name: "e"}
	for i, h := range []struct {
		status corev3.HealthStatus
		want   config.Health
	}{
		{corev3.HealthStatus_UNKNOWN, config.Healthy},
		{corev3.HealthStatus_HEALTHY, config.Healthy},
		{corev3.HealthStatus_UNHEALTHY, config.Unhealthy},
		{corev3.HealthStatus_TIMEOUT, config.Unhealthy},
		{corev3.HealthStatus_DRAINING, config.Draining},
		{corev3.HealthStatus_DEGRADED, config.Degraded},
	} {
		e := lbEndpoint("2001:db8::1", uint32(1000+i))
		e.HealthStatus = h.status
		e.GetEndpoint().Hostname = "h"
		if i == 0 {
			e.LoadBalancingWeight = wrapperspb.UInt32(1)
		}
		in.Endpoints[0].LbEndpoints = append(in.Endpoints[0].LbEndpoints, e)
		want.Endpoints = append(want.Endpoints, config.Endpoint{
			Address: netip.AddrPortFrom(netip.MustParseAddr("2001:db8::1"), uint16(1000+i)), Hostname: "h", Health: h.want})
	}
	got, err := config.EndpointsFromEnvoy(in)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(want, got, addrs); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	// An empty assignment is valid (the cluster is warming, or drained).
	if got, err := config.EndpointsFromEnvoy(&endpointv3.ClusterLoadAssignment{ClusterName: "e"}); err != nil || got.Name != "e" || len(got.Endpoints) != 0 {
		t.Errorf("empty: %+v, %v", got, err)
	}
}

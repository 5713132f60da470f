package config

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"net/netip"
	"slices"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/halolb/halo/internal/xdscontract"
)

// Envoy's defaults for the fields halo-agent accepts, applied when a field
// is unset.
const (
	// DefaultIdleTimeout is tcp_proxy's idle_timeout when unset.
	DefaultIdleTimeout = time.Hour
	// DefaultMaxConnectAttempts is tcp_proxy's max_connect_attempts when
	// unset.
	DefaultMaxConnectAttempts = 1
	// DefaultConnectTimeout is a cluster's connect_timeout when unset.
	DefaultConnectTimeout = 5 * time.Second
	// DefaultPanicThreshold is common_lb_config.healthy_panic_threshold
	// (percent) when unset.
	DefaultPanicThreshold = 50
	// DefaultMaxConnections is a cluster's circuit-breaker max_connections
	// when unset.
	DefaultMaxConnections = 1024
	// DefaultConsecutiveFailures is outlier detection's consecutive_5xx and
	// consecutive_local_origin_failure when unset.
	DefaultConsecutiveFailures = 5
	// DefaultEnforcingPercent is enforcing_consecutive_5xx and
	// enforcing_consecutive_local_origin_failure when unset.
	DefaultEnforcingPercent = 100
	// DefaultOutlierInterval is outlier detection's interval when unset.
	DefaultOutlierInterval = 10 * time.Second
	// DefaultBaseEjectionTime is base_ejection_time when unset.
	DefaultBaseEjectionTime = 30 * time.Second
	// DefaultMaxEjectionTime is max_ejection_time when unset (or
	// base_ejection_time, whichever is larger).
	DefaultMaxEjectionTime = 300 * time.Second
	// DefaultMaxEjectionPercent is max_ejection_percent when unset.
	DefaultMaxEjectionPercent = 10
)

// FieldError is a resource, or a field of it, that halo-agent refuses:
// invalid by Envoy's own validation rules, not supported, or a value the
// agent cannot honour. Its text is meant for an xDS NACK's error_detail.
//
// A translator reports one problem, the first found, deterministically:
// Envoy's generated validation (ValidateAll) first, then the allowlist
// walked in field declaration order (depth first), then the values.
type FieldError struct {
	// Resource names the resource: `listener "apiserver-local"`,
	// `cluster "kube-apiserver"`, `endpoints "kube-apiserver"`.
	Resource string
	// Field is the proto path of the field, as in
	// "filter_chains[0].filters[0].typed_config"; empty for the resource
	// itself.
	Field string
	// Reason says what is wrong and, where it helps, what to do.
	Reason string

	err error // the underlying error (Envoy's validation), for Unwrap
}

// Error reads `cluster "kube-apiserver": outlier_detection.enforcing_success_rate: ...`.
func (e *FieldError) Error() string {
	var b strings.Builder
	b.WriteString(e.Resource)
	if e.Field != "" {
		b.WriteString(": ")
		b.WriteString(e.Field)
	}
	b.WriteString(": ")
	b.WriteString(e.Reason)
	return b.String()
}

// Unwrap returns the error of Envoy's generated validation the FieldError
// was made from, if any.
func (e *FieldError) Unwrap() error { return e.err }

// Decode translates one xDS resource (by its Any's type URL: listener,
// cluster, or ClusterLoadAssignment, v3) into *Listener, *Cluster or
// *Endpoints; name is the resource name. On an error name is still set
// when the resource could be decoded, so that a NACK can say which one,
// and v is nil.
func Decode(a *anypb.Any) (name string, v any, err error) {
	switch a.GetTypeUrl() {
	case xdscontract.ListenerType:
		m := &listenerv3.Listener{}
		if err := proto.Unmarshal(a.GetValue(), m); err != nil {
			return "", nil, fmt.Errorf("decode listener: %w", err)
		}
		l, err := ListenerFromEnvoy(m)
		if err != nil {
			return m.GetName(), nil, err
		}
		return m.GetName(), l, nil
	case xdscontract.ClusterType:
		m := &clusterv3.Cluster{}
		if err := proto.Unmarshal(a.GetValue(), m); err != nil {
			return "", nil, fmt.Errorf("decode cluster: %w", err)
		}
		c, err := ClusterFromEnvoy(m)
		if err != nil {
			return m.GetName(), nil, err
		}
		return m.GetName(), c, nil
	case xdscontract.EndpointType:
		m := &endpointv3.ClusterLoadAssignment{}
		if err := proto.Unmarshal(a.GetValue(), m); err != nil {
			return "", nil, fmt.Errorf("decode cluster load assignment: %w", err)
		}
		e, err := EndpointsFromEnvoy(m)
		if err != nil {
			return m.GetClusterName(), nil, err
		}
		return m.GetClusterName(), e, nil
	}
	return "", nil, fmt.Errorf("resource type %q is not supported by halo-agent", a.GetTypeUrl())
}

// translator collects what is common to translating one resource: its
// label for errors.
type translator struct {
	resource string
}

func (t translator) errorf(field, format string, args ...any) *FieldError {
	return &FieldError{Resource: t.resource, Field: field, Reason: fmt.Sprintf(format, args...)}
}

// check runs Envoy's generated validation then the allowlist on m, which
// sits at path in the resource.
func (t translator) check(m interface {
	proto.Message
	ValidateAll() error
}, path string) error {
	if err := m.ValidateAll(); err != nil {
		return t.validationError(m.ProtoReflect().Descriptor(), path, err)
	}
	if p := unsupported(m.ProtoReflect(), path); p != nil {
		return t.errorf(p.field, "%s", p.reason)
	}
	return nil
}

// pgvError is the shape of the errors protoc-gen-validate generates.
type pgvError interface {
	Field() string
	Reason() string
	Cause() error
}

// validationError turns the first error of a generated ValidateAll into a
// FieldError whose Field is the proto path (the generated errors name Go
// fields: "FilterChains[0]" → "filter_chains[0]").
func (t translator) validationError(md protoreflect.MessageDescriptor, path string, err error) *FieldError {
	fe := &FieldError{Resource: t.resource, Field: path, err: err}
	cur := err
	for cur != nil {
		if me, ok := cur.(interface{ AllErrors() []error }); ok {
			if all := me.AllErrors(); len(all) > 0 {
				cur = all[0]
				continue
			}
		}
		pe, ok := cur.(pgvError)
		if !ok {
			fe.Reason = cur.Error()
			break
		}
		var seg string
		seg, md = protoSegment(md, pe.Field())
		fe.Field = join(fe.Field, seg)
		c := pe.Cause()
		if _, nested := c.(pgvError); nested {
			cur = c
			continue
		}
		if _, nested := c.(interface{ AllErrors() []error }); nested {
			cur = c
			continue
		}
		fe.Reason = pe.Reason()
		if c != nil {
			fe.Reason += ": " + c.Error()
		}
		break
	}
	fe.Reason = "invalid (Envoy's validation rules): " + fe.Reason
	return fe
}

// protoSegment maps a generated Go field name with an optional index
// ("FilterChains[0]") to the proto name ("filter_chains[0]") and the
// field's message type (nil if none or not found).
func protoSegment(md protoreflect.MessageDescriptor, goField string) (string, protoreflect.MessageDescriptor) {
	name, index, _ := strings.Cut(goField, "[")
	if index != "" {
		index = "[" + index
	}
	if md == nil {
		return goField, nil
	}
	norm := func(s string) string { return strings.ToLower(strings.ReplaceAll(s, "_", "")) }
	fields := md.Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if norm(string(fd.Name())) != norm(name) {
			continue
		}
		next := fd.Message()
		if fd.IsMap() {
			next = fd.MapValue().Message()
		}
		return string(fd.Name()) + index, next
	}
	oneofs := md.Oneofs()
	for i := range oneofs.Len() {
		if od := oneofs.Get(i); norm(string(od.Name())) == norm(name) {
			return string(od.Name()) + index, nil
		}
	}
	return goField, nil
}

// typeName is the message name of a type URL: what follows the last '/'
// (as Envoy reads a typed_config).
func typeName(url string) protoreflect.FullName {
	return protoreflect.FullName(url[strings.LastIndexByte(url, '/')+1:])
}

// ListenerFromEnvoy translates a listener: one TCP socket address (an IP
// literal and a port), optionally freebind, with exactly one filter chain
// holding exactly one filter whose typed_config is a TcpProxy to one
// cluster.
func ListenerFromEnvoy(l *listenerv3.Listener) (*Listener, error) {
	t := translator{resource: fmt.Sprintf("listener %q", l.GetName())}
	if l == nil {
		return nil, errors.New("listener: nil")
	}
	if err := t.check(l, ""); err != nil {
		return nil, err
	}
	if l.GetName() == "" {
		return nil, t.errorf("name", "must be set")
	}
	out := &Listener{Name: l.GetName(), Freebind: l.GetFreebind().GetValue()}
	var err error
	if out.Address, err = t.socketAddress(l.GetAddress(), "address"); err != nil {
		return nil, err
	}
	if n := len(l.GetFilterChains()); n != 1 {
		return nil, t.errorf("filter_chains", "exactly one filter chain is supported by halo-agent, got %d", n)
	}
	fc := l.GetFilterChains()[0]
	if n := len(fc.GetFilters()); n != 1 {
		return nil, t.errorf("filter_chains[0].filters", "exactly one filter (a tcp_proxy) is supported by halo-agent, got %d", n)
	}
	f := fc.GetFilters()[0]
	const path = "filter_chains[0].filters[0].typed_config"
	tc := f.GetTypedConfig()
	if tc == nil {
		return nil, t.errorf(path, "must be set (a %s)", tcpProxyName)
	}
	if got := typeName(tc.GetTypeUrl()); got != tcpProxyName {
		return nil, t.errorf(path, "unsupported filter type %q (filter %q): halo-agent supports only %s", got, f.GetName(), tcpProxyName)
	}
	tp := &tcpproxyv3.TcpProxy{}
	if err := proto.Unmarshal(tc.GetValue(), tp); err != nil {
		return nil, t.errorf(path, "cannot decode %s: %v", tcpProxyName, err)
	}
	if err := t.check(tp, path); err != nil {
		return nil, err
	}
	if out.Cluster = tp.GetCluster(); out.Cluster == "" {
		return nil, t.errorf(path+".cluster", "must be set")
	}
	out.StatPrefix = tp.GetStatPrefix()
	out.IdleTimeout = DefaultIdleTimeout
	if d := tp.GetIdleTimeout(); d != nil {
		if out.IdleTimeout, err = t.duration(d, path+".idle_timeout", true); err != nil {
			return nil, err
		}
	}
	out.MaxConnectAttempts = int(uint32Or(tp.GetMaxConnectAttempts(), DefaultMaxConnectAttempts))
	if out.MaxConnectAttempts < 1 { // Envoy's validation already says gte 1.
		return nil, t.errorf(path+".max_connect_attempts", "must be at least 1")
	}
	return out, nil
}

var tcpProxyName = (&tcpproxyv3.TcpProxy{}).ProtoReflect().Descriptor().FullName()

// ClusterFromEnvoy translates a cluster: STATIC (endpoints inline in
// load_assignment) or EDS over ADS, with the load-balancing, outlier
// detection, circuit-breaker and keepalive settings a TCP proxy honours.
func ClusterFromEnvoy(c *clusterv3.Cluster) (*Cluster, error) {
	t := translator{resource: fmt.Sprintf("cluster %q", c.GetName())}
	if c == nil {
		return nil, errors.New("cluster: nil")
	}
	if err := t.check(c, ""); err != nil {
		return nil, err
	}
	if c.GetName() == "" {
		return nil, t.errorf("name", "must be set")
	}
	out := &Cluster{Name: c.GetName()}
	var err error
	if out.Rebalance, err = t.rebalance(c.GetMetadata()); err != nil {
		return nil, err
	}
	switch c.GetType() {
	case clusterv3.Cluster_STATIC:
		if c.GetEdsClusterConfig() != nil {
			return nil, t.errorf("eds_cluster_config", "only for an EDS cluster; this one is STATIC")
		}
		out.StaticEndpoints = &Endpoints{Name: c.GetName()}
		if la := c.GetLoadAssignment(); la != nil {
			e, err := t.endpoints(la, "load_assignment")
			if err != nil {
				return nil, err
			}
			out.StaticEndpoints = e
		}
	case clusterv3.Cluster_EDS:
		if c.GetLoadAssignment() != nil {
			return nil, t.errorf("load_assignment", "not supported by halo-agent for an EDS cluster (its endpoints come from EDS)")
		}
		src := c.GetEdsClusterConfig().GetEdsConfig()
		if src == nil {
			return nil, t.errorf("eds_cluster_config.eds_config", "must be set (to ads)")
		}
		if src.GetAds() == nil {
			return nil, t.errorf("eds_cluster_config.eds_config", "must be ads: halo-agent gets endpoints over its ADS stream only")
		}
		if v := src.GetResourceApiVersion(); v != corev3.ApiVersion_AUTO && v != corev3.ApiVersion_V3 {
			return nil, t.errorf("eds_cluster_config.eds_config.resource_api_version", "%v is not supported by halo-agent (V3 or AUTO)", v)
		}
		out.EDS = true
		out.EDSServiceName = c.GetEdsClusterConfig().GetServiceName()
		if out.EDSServiceName == "" {
			out.EDSServiceName = c.GetName()
		}
	default:
		return nil, t.errorf("type", "discovery type %v is not supported by halo-agent (STATIC or EDS)", c.GetType())
	}

	out.ConnectTimeout = DefaultConnectTimeout
	if d := c.GetConnectTimeout(); d != nil {
		var err error
		if out.ConnectTimeout, err = t.duration(d, "connect_timeout", false); err != nil {
			return nil, err
		}
	}
	switch c.GetLbPolicy() {
	case clusterv3.Cluster_ROUND_ROBIN: // Envoy's default (the enum's zero).
		out.LbPolicy = RoundRobin
	case clusterv3.Cluster_LEAST_REQUEST:
		out.LbPolicy = LeastRequest
	case clusterv3.Cluster_RANDOM:
		out.LbPolicy = Random
	default:
		return nil, t.errorf("lb_policy", "%v is not supported by halo-agent (ROUND_ROBIN, LEAST_REQUEST or RANDOM)", c.GetLbPolicy())
	}

	// Envoy rounds the threshold to a whole percent.
	out.PanicThreshold = DefaultPanicThreshold
	if p := c.GetCommonLbConfig().GetHealthyPanicThreshold(); p != nil {
		out.PanicThreshold = math.Round(p.GetValue())
		if math.IsNaN(p.GetValue()) || out.PanicThreshold < 0 || out.PanicThreshold > 100 {
			return nil, t.errorf("common_lb_config.healthy_panic_threshold.value", "must be between 0 and 100")
		}
	}

	if out.Outlier, err = t.outlier(c.GetOutlierDetection()); err != nil {
		return nil, err
	}
	if out.MaxConnections, err = t.maxConnections(c.GetCircuitBreakers()); err != nil {
		return nil, err
	}
	if ka := c.GetUpstreamConnectionOptions().GetTcpKeepalive(); ka != nil {
		if out.Keepalive, err = t.keepalive(ka, "upstream_connection_options.tcp_keepalive"); err != nil {
			return nil, err
		}
	}
	out.CloseOnHealthFailure = c.GetCloseConnectionsOnHostHealthFailure()
	return out, nil
}

// outlier translates outlier detection. Only consecutive-failure ejection
// is implemented; success-rate and failure-percentage ejection are
// accepted only when their enforcement is 0. Detection that can never
// eject (a threshold or an enforcement of 0) is nil.
func (t translator) outlier(od *clusterv3.OutlierDetection) (*Outlier, error) {
	if od == nil {
		return nil, nil
	}
	const p = "outlier_detection."
	split := od.GetSplitExternalLocalOriginErrors()

	// Success rate: Envoy enforces it by default (100).
	if w := od.GetEnforcingSuccessRate(); w == nil {
		return nil, t.errorf(p+"enforcing_success_rate", "success-rate ejection is not supported by halo-agent; set it to 0 (Envoy's default is 100)")
	} else if w.GetValue() != 0 {
		return nil, t.errorf(p+"enforcing_success_rate", "success-rate ejection is not supported by halo-agent; set it to 0")
	}
	if w := od.GetEnforcingLocalOriginSuccessRate(); w == nil && split {
		return nil, t.errorf(p+"enforcing_local_origin_success_rate", "success-rate ejection is not supported by halo-agent; set it to 0 (Envoy's default is 100 when split_external_local_origin_errors is true)")
	} else if w.GetValue() != 0 {
		return nil, t.errorf(p+"enforcing_local_origin_success_rate", "success-rate ejection is not supported by halo-agent; set it to 0")
	}
	// Failure percentage: off by default.
	if od.GetEnforcingFailurePercentage().GetValue() != 0 {
		return nil, t.errorf(p+"enforcing_failure_percentage", "failure-percentage ejection is not supported by halo-agent; set it to 0")
	}
	if od.GetEnforcingFailurePercentageLocalOrigin().GetValue() != 0 {
		return nil, t.errorf(p+"enforcing_failure_percentage_local_origin", "failure-percentage ejection is not supported by halo-agent; set it to 0")
	}
	// Gateway failures: without the split Envoy counts a connect failure
	// as a 503, a gateway failure, so this would be a second detector.
	if !split && od.GetEnforcingConsecutiveGatewayFailure().GetValue() != 0 &&
		uint32Or(od.GetConsecutiveGatewayFailure(), DefaultConsecutiveFailures) != 0 {
		return nil, t.errorf(p+"enforcing_consecutive_gateway_failure",
			"without split_external_local_origin_errors Envoy counts connect failures as gateway failures, a second detector halo-agent does not support; set it to 0 and use consecutive_5xx")
	}

	o := &Outlier{
		ConsecutiveFailures: int(uint32Or(od.GetConsecutive_5Xx(), DefaultConsecutiveFailures)),
		EnforcingPercent:    int(uint32Or(od.GetEnforcingConsecutive_5Xx(), DefaultEnforcingPercent)),
		Interval:            DefaultOutlierInterval,
		BaseEjectionTime:    DefaultBaseEjectionTime,
		MaxEjectionPercent:  int(min(uint32Or(od.GetMaxEjectionPercent(), DefaultMaxEjectionPercent), 100)), // validated ≤ 100; Envoy caps it too.
	}
	if split {
		o.ConsecutiveFailures = int(uint32Or(od.GetConsecutiveLocalOriginFailure(), DefaultConsecutiveFailures))
		o.EnforcingPercent = int(uint32Or(od.GetEnforcingConsecutiveLocalOriginFailure(), DefaultEnforcingPercent))
	}
	var err error
	if d := od.GetInterval(); d != nil {
		if o.Interval, err = t.duration(d, p+"interval", false); err != nil {
			return nil, err
		}
	}
	if d := od.GetBaseEjectionTime(); d != nil {
		if o.BaseEjectionTime, err = t.duration(d, p+"base_ejection_time", false); err != nil {
			return nil, err
		}
	}
	o.MaxEjectionTime = max(DefaultMaxEjectionTime, o.BaseEjectionTime)
	if d := od.GetMaxEjectionTime(); d != nil {
		if o.MaxEjectionTime, err = t.duration(d, p+"max_ejection_time", false); err != nil {
			return nil, err
		}
		if o.MaxEjectionTime < o.BaseEjectionTime {
			return nil, t.errorf(p+"max_ejection_time", "must not be less than base_ejection_time (%v)", o.BaseEjectionTime)
		}
	}
	if o.EnforcingPercent > 100 { // Envoy's validation already says lte 100.
		f := "enforcing_consecutive_5xx"
		if split {
			f = "enforcing_consecutive_local_origin_failure"
		}
		return nil, t.errorf(p+f, "must be at most 100")
	}
	if o.ConsecutiveFailures == 0 || o.EnforcingPercent == 0 {
		return nil, nil
	}
	return o, nil
}

// maxConnections reads the circuit breakers: one threshold, of priority
// DEFAULT (a TCP proxy has no other), whose max_connections is honoured.
// max_pending_requests, max_requests and max_retries are accepted but do
// not apply: Envoy's TCP connection pool does not count requests, and
// tcp_proxy does not retry through the retry budget.
func (t translator) maxConnections(cb *clusterv3.CircuitBreakers) (int, error) {
	th := cb.GetThresholds()
	switch {
	case len(th) == 0:
		return DefaultMaxConnections, nil
	case len(th) > 1:
		return 0, t.errorf("circuit_breakers.thresholds", "only one threshold (priority DEFAULT) is supported by halo-agent, got %d", len(th))
	case th[0].GetPriority() != corev3.RoutingPriority_DEFAULT:
		return 0, t.errorf("circuit_breakers.thresholds[0].priority", "only DEFAULT is supported by halo-agent")
	}
	n := uint32Or(th[0].GetMaxConnections(), DefaultMaxConnections)
	if n == 0 {
		return 0, t.errorf("circuit_breakers.thresholds[0].max_connections", "0 would refuse every connection; not supported by halo-agent")
	}
	return int(n), nil
}

// keepalive reads TCP keepalive; a field unset keeps the system's value. A
// value the kernel refuses is refused here (Envoy would fail every
// connection).
func (t translator) keepalive(ka *corev3.TcpKeepalive, p string) (*Keepalive, error) {
	k := &Keepalive{}
	if w := ka.GetKeepaliveProbes(); w != nil {
		if v := w.GetValue(); v < 1 || v > 127 {
			return nil, t.errorf(p+".keepalive_probes", "must be between 1 and 127")
		}
		k.Probes = int(w.GetValue())
	}
	if w := ka.GetKeepaliveTime(); w != nil {
		if v := w.GetValue(); v < 1 || v > 32767 {
			return nil, t.errorf(p+".keepalive_time", "must be between 1 and 32767 (seconds)")
		}
		k.Time = time.Duration(w.GetValue()) * time.Second
	}
	if w := ka.GetKeepaliveInterval(); w != nil {
		if v := w.GetValue(); v < 1 || v > 32767 {
			return nil, t.errorf(p+".keepalive_interval", "must be between 1 and 32767 (seconds)")
		}
		k.Interval = time.Duration(w.GetValue()) * time.Second
	}
	return k, nil
}

// EndpointsFromEnvoy translates a ClusterLoadAssignment: endpoints of
// priority 0 (localities are only labels), each a TCP socket address with
// an optional hostname and an EDS health status, weight 1.
func EndpointsFromEnvoy(c *endpointv3.ClusterLoadAssignment) (*Endpoints, error) {
	t := translator{resource: fmt.Sprintf("endpoints %q", c.GetClusterName())}
	if c == nil {
		return nil, errors.New("endpoints: nil")
	}
	if err := t.check(c, ""); err != nil {
		return nil, err
	}
	return t.endpoints(c, "")
}

// endpoints translates a ClusterLoadAssignment already checked, at path p
// in the resource.
func (t translator) endpoints(c *endpointv3.ClusterLoadAssignment, p string) (*Endpoints, error) {
	if c.GetClusterName() == "" {
		return nil, t.errorf(join(p, "cluster_name"), "must be set")
	}
	out := &Endpoints{Name: c.GetClusterName()}
	seen := map[netip.AddrPort]string{}
	for i, lle := range c.GetEndpoints() {
		lp := fmt.Sprintf("%s[%d]", join(p, "endpoints"), i)
		if lle.GetPriority() != 0 {
			return nil, t.errorf(lp+".priority", "only priority 0 is supported by halo-agent")
		}
		for j, lbe := range lle.GetLbEndpoints() {
			ep := fmt.Sprintf("%s.lb_endpoints[%d]", lp, j)
			e := lbe.GetEndpoint()
			if e == nil {
				return nil, t.errorf(ep+".endpoint", "must be set")
			}
			addr, err := t.socketAddress(e.GetAddress(), ep+".endpoint.address")
			if err != nil {
				return nil, err
			}
			if first, dup := seen[addr]; dup {
				return nil, t.errorf(ep+".endpoint.address", "%v is also %s", addr, first)
			}
			seen[addr] = ep
			var h Health
			switch lbe.GetHealthStatus() {
			case corev3.HealthStatus_UNKNOWN, corev3.HealthStatus_HEALTHY:
				h = Healthy
			case corev3.HealthStatus_UNHEALTHY, corev3.HealthStatus_TIMEOUT:
				h = Unhealthy
			case corev3.HealthStatus_DRAINING:
				h = Draining
			case corev3.HealthStatus_DEGRADED:
				h = Degraded
			default:
				return nil, t.errorf(ep+".health_status", "unknown status %d", lbe.GetHealthStatus())
			}
			if w := lbe.GetLoadBalancingWeight(); w != nil && w.GetValue() != 1 {
				return nil, t.errorf(ep+".load_balancing_weight", "weighted endpoints are not supported by halo-agent; leave it unset or 1")
			}
			out.Endpoints = append(out.Endpoints, Endpoint{Address: addr, Hostname: e.GetHostname(), Health: h})
		}
	}
	return out, nil
}

// socketAddress reads a TCP socket address: an IP literal (no hostname,
// no zone) and a port other than 0.
func (t translator) socketAddress(a *corev3.Address, p string) (netip.AddrPort, error) {
	if a == nil {
		return netip.AddrPort{}, t.errorf(p, "must be set")
	}
	sa := a.GetSocketAddress()
	if sa == nil {
		return netip.AddrPort{}, t.errorf(p, "must be a socket_address")
	}
	p += ".socket_address"
	if sa.GetProtocol() != corev3.SocketAddress_TCP {
		return netip.AddrPort{}, t.errorf(p+".protocol", "%v is not supported by halo-agent (TCP only)", sa.GetProtocol())
	}
	ip, err := netip.ParseAddr(sa.GetAddress())
	if err != nil {
		return netip.AddrPort{}, t.errorf(p+".address", "%q is not an IP address (halo-agent does not resolve names)", sa.GetAddress())
	}
	if ip.Zone() != "" {
		return netip.AddrPort{}, t.errorf(p+".address", "%q: an IPv6 zone is not supported by halo-agent", sa.GetAddress())
	}
	port := sa.GetPortValue()
	if port == 0 || port > math.MaxUint16 {
		return netip.AddrPort{}, t.errorf(p+".port_value", "must be between 1 and 65535")
	}
	return netip.AddrPortFrom(ip, uint16(port)), nil
}

// duration reads a Duration: valid, positive (or zero when zeroOK).
func (t translator) duration(d *durationpb.Duration, p string, zeroOK bool) (time.Duration, error) {
	if err := d.CheckValid(); err != nil {
		return 0, t.errorf(p, "invalid duration: %v", err)
	}
	v := d.AsDuration()
	if v < 0 && zeroOK {
		return 0, t.errorf(p, "must not be negative")
	}
	if v <= 0 && !zeroOK {
		return 0, t.errorf(p, "must be positive")
	}
	return v, nil
}

// uint32Or is a wrapper's value, or def when unset.
func uint32Or(w *wrapperspb.UInt32Value, def uint32) uint32 {
	if w == nil {
		return def
	}
	return w.GetValue()
}

// rebalance reads halo's rebalancing settings from cluster metadata
// (xdscontract.RebalanceFromMetadata);
// nil when absent. typed_filter_metadata holds nothing else: it cannot be
// walked, so another entry is refused.
func (t translator) rebalance(md *corev3.Metadata) (*Rebalance, error) {
	for _, k := range slices.Sorted(maps.Keys(md.GetTypedFilterMetadata())) {
		if k != xdscontract.RebalanceKey {
			return nil, t.errorf("metadata.typed_filter_metadata["+k+"]", "not supported by halo-agent (only %s)", xdscontract.RebalanceKey)
		}
	}
	r, err := xdscontract.RebalanceFromMetadata(md)
	if err != nil {
		var me *xdscontract.MetadataError
		if errors.As(err, &me) {
			return nil, t.errorf("metadata."+me.Field, "%v", me.Err)
		}
		return nil, t.errorf("metadata", "%v", err)
	}
	if r == nil {
		return nil, nil
	}
	return &Rebalance{MaxFraction: r.GetMaxFraction(), MinAge: r.GetMinAge().AsDuration(), Interval: r.GetInterval().AsDuration()}, nil
}

package config

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// allowlist names, per message, the fields halo-agent understands. A field
// that is populated (Has: a non-zero proto3 scalar, a set message or
// wrapper, a non-empty list or map, a set oneof member) and is not listed
// here is refused. Being listed only means the translator looks at the
// field: it still checks values (a UDP protocol, a second filter chain,
// success-rate ejection left on) and refuses what it cannot honour.
//
// google.protobuf.Any is never walked: the Anys accepted (a filter's
// typed_config, the halo.rebalance typed metadata) are unpacked and checked
// by the translator.
var allowlist = map[protoreflect.FullName][]protoreflect.Name{
	// LDS.
	"envoy.config.listener.v3.Listener": {
		"name", "address", "stat_prefix", "filter_chains", "freebind",
	},
	"envoy.config.listener.v3.FilterChain": {"filters", "name"},
	"envoy.config.listener.v3.Filter":      {"name", "typed_config"},
	"envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy": {
		"stat_prefix", "cluster", "idle_timeout", "max_connect_attempts",
	},

	// CDS.
	"envoy.config.cluster.v3.Cluster": {
		"name", "type", "eds_cluster_config", "connect_timeout", "lb_policy",
		"load_assignment", "circuit_breakers", "outlier_detection",
		"common_lb_config", "upstream_connection_options",
		"close_connections_on_host_health_failure", "metadata",
	},
	// Metadata is opaque data to a proxy; halo-agent reads its
	// "halo.rebalance" entry (rebalancing settings, which Envoy ignores),
	// typed or a Struct. The translator refuses any other typed entry.
	"envoy.config.core.v3.Metadata":                    {"filter_metadata", "typed_filter_metadata"},
	"google.protobuf.Struct":                           {"fields"},
	"google.protobuf.Value":                            {"null_value", "number_value", "string_value", "bool_value", "struct_value", "list_value"},
	"google.protobuf.ListValue":                        {"values"},
	"envoy.config.cluster.v3.Cluster.EdsClusterConfig": {"eds_config", "service_name"},
	"envoy.config.core.v3.ConfigSource":                {"ads", "resource_api_version"},
	"envoy.config.core.v3.AggregatedConfigSource":      {},
	"envoy.config.cluster.v3.Cluster.CommonLbConfig":   {"healthy_panic_threshold"},
	"envoy.type.v3.Percent":                            {"value"},
	"envoy.config.cluster.v3.OutlierDetection": {
		// Consecutive failures: what halo-agent implements.
		"consecutive_5xx", "enforcing_consecutive_5xx",
		"split_external_local_origin_errors",
		"consecutive_local_origin_failure", "enforcing_consecutive_local_origin_failure",
		"interval", "base_ejection_time", "max_ejection_time", "max_ejection_percent",
		// Gateway failures: checked by the translator (harmless only when
		// connect failures are not counted as gateway failures).
		"consecutive_gateway_failure", "enforcing_consecutive_gateway_failure",
		// Success rate and failure percentage: accepted only with their
		// enforcement at 0 (checked by the translator).
		"enforcing_success_rate", "enforcing_local_origin_success_rate",
		"success_rate_minimum_hosts", "success_rate_request_volume", "success_rate_stdev_factor",
		"enforcing_failure_percentage", "enforcing_failure_percentage_local_origin",
		"failure_percentage_threshold", "failure_percentage_minimum_hosts", "failure_percentage_request_volume",
	},
	"envoy.config.cluster.v3.CircuitBreakers": {"thresholds"},
	"envoy.config.cluster.v3.CircuitBreakers.Thresholds": {
		"priority", "max_connections",
		// Not applicable to a TCP proxy (see Cluster.MaxConnections).
		"max_pending_requests", "max_requests", "max_retries",
	},
	"envoy.config.cluster.v3.UpstreamConnectionOptions": {"tcp_keepalive"},
	"envoy.config.core.v3.TcpKeepalive":                 {"keepalive_probes", "keepalive_time", "keepalive_interval"},

	// EDS (and a STATIC cluster's load_assignment).
	"envoy.config.endpoint.v3.ClusterLoadAssignment": {"cluster_name", "endpoints"},
	"envoy.config.endpoint.v3.LocalityLbEndpoints":   {"locality", "lb_endpoints", "priority"},
	"envoy.config.core.v3.Locality":                  {"region", "zone", "sub_zone"},
	"envoy.config.endpoint.v3.LbEndpoint":            {"endpoint", "health_status", "load_balancing_weight"},
	"envoy.config.endpoint.v3.Endpoint":              {"address", "hostname"},

	// Shared.
	"envoy.config.core.v3.Address":       {"socket_address"},
	"envoy.config.core.v3.SocketAddress": {"protocol", "address", "port_value"},
	"google.protobuf.Duration":           {"seconds", "nanos"},
	"google.protobuf.UInt32Value":        {"value"},
	"google.protobuf.BoolValue":          {"value"},
}

const anyName protoreflect.FullName = "google.protobuf.Any"

// problem is a field the walk or the translator refuses, relative to the
// resource.
type problem struct {
	field, reason string
}

// unsupported walks m and returns the first populated field, in
// declaration order (depth first), that the allowlist does not name, or
// the first message with unknown fields or extensions; nil if none. path
// is m's own path ("" for the resource).
func unsupported(m protoreflect.Message, path string) *problem {
	md := m.Descriptor()
	if raw := m.GetUnknown(); len(raw) > 0 {
		num, _, _ := protowire.ConsumeTag(raw)
		return &problem{path, fmt.Sprintf("unknown field number %d (a newer Envoy API?) is not supported by halo-agent", num)}
	}
	if md.FullName() == anyName {
		return nil
	}
	allowed := allowlist[md.FullName()]
	var ext *problem
	m.Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		if fd.IsExtension() {
			ext = &problem{join(path, "["+string(fd.FullName())+"]"), "extensions are not supported by halo-agent"}
			return false
		}
		return true
	})
	if ext != nil {
		return ext
	}
	fields := md.Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if !m.Has(fd) {
			continue
		}
		p := join(path, string(fd.Name()))
		if !slices.Contains(allowed, fd.Name()) {
			return &problem{p, "not supported by halo-agent"}
		}
		if pr := unsupportedIn(m.Get(fd), fd, p); pr != nil {
			return pr
		}
	}
	return nil
}

// unsupportedIn walks the messages held by one populated field.
func unsupportedIn(v protoreflect.Value, fd protoreflect.FieldDescriptor, p string) *problem {
	switch {
	case fd.IsList():
		if fd.Message() == nil {
			return nil
		}
		l := v.List()
		for i := range l.Len() {
			if pr := unsupported(l.Get(i).Message(), p+"["+strconv.Itoa(i)+"]"); pr != nil {
				return pr
			}
		}
	case fd.IsMap():
		if fd.MapValue().Message() == nil {
			return nil
		}
		var keys []protoreflect.MapKey
		v.Map().Range(func(k protoreflect.MapKey, _ protoreflect.Value) bool {
			keys = append(keys, k)
			return true
		})
		slices.SortFunc(keys, func(a, b protoreflect.MapKey) int { return strings.Compare(a.String(), b.String()) })
		for _, k := range keys {
			if pr := unsupported(v.Map().Get(k).Message(), p+"["+strconv.Quote(k.String())+"]"); pr != nil {
				return pr
			}
		}
	case fd.Message() != nil:
		return unsupported(v.Message(), p)
	}
	return nil
}

// join appends a field name to a path.
func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

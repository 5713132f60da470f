// Package config is the agent's model of its proxy configuration: the
// subset of Envoy's listeners, clusters and endpoints that halo-agent
// understands, translated from the Envoy v3 resources with Envoy's
// semantics (defaults included). Anything the agent cannot honour is an
// error that names the field, so the xDS client can NACK it.
package config

import (
	"net/netip"
	"time"
)

// LbPolicy is how a cluster picks an endpoint for a new connection.
type LbPolicy int

// The supported load-balancing policies.
const (
	// LeastRequest picks the endpoint with the fewest active connections.
	LeastRequest LbPolicy = iota
	// RoundRobin cycles through the endpoints.
	RoundRobin
	// Random picks an endpoint at random.
	Random
)

func (p LbPolicy) String() string {
	switch p {
	case LeastRequest:
		return "least_request"
	case RoundRobin:
		return "round_robin"
	case Random:
		return "random"
	}
	return "unknown"
}

// Health is an endpoint's health as EDS reports it, folded into the tiers
// the agent balances over.
type Health int

// The health tiers, best first.
const (
	// Healthy is Envoy's UNKNOWN or HEALTHY: the endpoint gets traffic.
	Healthy Health = iota
	// Degraded is Envoy's DEGRADED: used only when no endpoint is healthy.
	Degraded
	// Unhealthy is Envoy's UNHEALTHY or TIMEOUT: used only in panic mode.
	Unhealthy
	// Draining is Envoy's DRAINING: no new connections, open ones finish
	// (used only in panic mode, like an unhealthy endpoint).
	Draining
)

func (h Health) String() string {
	switch h {
	case Healthy:
		return "healthy"
	case Degraded:
		return "degraded"
	case Unhealthy:
		return "unhealthy"
	case Draining:
		return "draining"
	}
	return "unknown"
}

// Listener is a TCP listener whose connections are proxied to a cluster
// (an Envoy listener with one filter chain holding one tcp_proxy filter).
type Listener struct {
	// Name is the listener's resource name.
	Name string
	// Address is where it listens.
	Address netip.AddrPort
	// Freebind lets it bind an address this host does not (yet) have: a
	// VIP that keepalived moves between load-balancer nodes.
	Freebind bool
	// Cluster is the cluster connections go to.
	Cluster string
	// StatPrefix is tcp_proxy's stat_prefix (a label on metrics).
	StatPrefix string
	// IdleTimeout closes a connection with no bytes either way for this
	// long; zero disables it (Envoy's default when unset is 1 h).
	IdleTimeout time.Duration
	// MaxConnectAttempts is how many endpoints a new connection tries
	// before it is given up (Envoy's default is 1).
	MaxConnectAttempts int
}

// Cluster is a group of endpoints with how to pick and reach them.
type Cluster struct {
	// Name is the cluster's resource name.
	Name string
	// EDS is true when the endpoints come from EDS (resource name
	// EDSServiceName); false for a STATIC cluster whose endpoints are
	// given inline in StaticEndpoints.
	EDS bool
	// EDSServiceName is the EDS resource that holds the endpoints
	// (Envoy: eds_cluster_config.service_name, else the cluster name).
	EDSServiceName string
	// StaticEndpoints are the endpoints of a STATIC cluster.
	StaticEndpoints *Endpoints
	// LbPolicy picks an endpoint.
	LbPolicy LbPolicy
	// ConnectTimeout bounds one connect attempt (Envoy's default 5 s).
	ConnectTimeout time.Duration
	// PanicThreshold is common_lb_config.healthy_panic_threshold in
	// percent (Envoy's default 50): when fewer than this share of the
	// endpoints are healthy (and not ejected), all endpoints get traffic.
	// Zero disables panic mode.
	PanicThreshold float64
	// Outlier is passive ejection on connect failures; nil disables it.
	Outlier *Outlier
	// Keepalive is TCP keepalive towards the endpoints; nil leaves the
	// system's settings.
	Keepalive *Keepalive
	// CloseOnHealthFailure closes an endpoint's open connections when EDS
	// turns it UNHEALTHY (close_connections_on_host_health_failure; halo's
	// extension applies it to EDS health, see the README).
	CloseOnHealthFailure bool
	// MaxConnections is the circuit breaker on open connections to the
	// cluster (Envoy's default 1024).
	MaxConnections int
	// Rebalance moves long-lived connections back onto an endpoint that
	// returned or joined (halo's extension, from the cluster's
	// "halo.rebalance" metadata: xdscontract.RebalanceFromMetadata); nil:
	// off.
	Rebalance *Rebalance
}

// Rebalance is bounded rebalancing of long-lived connections.
type Rebalance struct {
	// MaxFraction is the largest share of the cluster's connections
	// closed per Interval (0 < f <= 1).
	MaxFraction float64
	// MinAge: only connections older than this move.
	MinAge time.Duration
	// Interval is the time between two rounds.
	Interval time.Duration
}

// Outlier is Envoy's outlier detection as it applies to a TCP proxy:
// consecutive local-origin (connect) failures eject an endpoint.
type Outlier struct {
	// ConsecutiveFailures ejects an endpoint after this many connect
	// failures in a row (consecutive_local_origin_failure when
	// split_external_local_origin_errors, else consecutive_5xx; default 5).
	ConsecutiveFailures int
	// EnforcingPercent is the chance in percent that such an ejection is
	// enforced (default 100).
	EnforcingPercent int
	// Interval is how often ejections are reviewed (default 10 s).
	Interval time.Duration
	// BaseEjectionTime is multiplied by the number of times an endpoint
	// has been ejected (default 30 s).
	BaseEjectionTime time.Duration
	// MaxEjectionTime caps an ejection (default 300 s).
	MaxEjectionTime time.Duration
	// MaxEjectionPercent caps the share of endpoints ejected at once
	// (default 10).
	MaxEjectionPercent int
}

// Keepalive is TCP keepalive (Envoy's core.v3.TcpKeepalive); a zero field
// keeps the system's value.
type Keepalive struct {
	Probes   int
	Time     time.Duration
	Interval time.Duration
}

// Endpoints are a cluster's endpoints (an Envoy ClusterLoadAssignment).
type Endpoints struct {
	// Name is the resource name (cluster_name).
	Name string
	// Endpoints are the endpoints, in the order given.
	Endpoints []Endpoint
}

// Endpoint is one backend.
type Endpoint struct {
	// Address is where to connect.
	Address netip.AddrPort
	// Hostname is the endpoint's hostname (a label on metrics).
	Hostname string
	// Health is its health as EDS reports it.
	Health Health
}

// Set is a complete configuration: what the proxy runs.
type Set struct {
	Listeners map[string]*Listener
	Clusters  map[string]*Cluster
	// Endpoints are keyed by EDS resource name.
	Endpoints map[string]*Endpoints
}

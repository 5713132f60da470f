package xdscontract

import "time"

// Halo's failover settings: the values halo-server writes into every
// listener and cluster it serves, and that halo-agent's static
// --bootstrap-backends configuration uses until a server answers. Where
// Envoy's default differs (Envoy tries 1 endpoint, panics below 50%, ejects
// after 5 failures...), halo chose these so that a dead or hung master is
// invisible to clients. halo-agent applies Envoy's defaults, not these, to a
// field left unset (agent/config).
const (
	// MaxConnectAttempts is how many endpoints a new connection tries
	// before it is given up (tcp_proxy.max_connect_attempts): a refused or
	// timed-out connect moves on to the next endpoint.
	MaxConnectAttempts = 3
	// HealthyPanicThreshold is common_lb_config.healthy_panic_threshold in
	// percent: traffic goes to unhealthy endpoints only when none is
	// healthy.
	HealthyPanicThreshold = 1
	// ConsecutiveLocalOriginFailures ejects an endpoint at its first
	// connect failure (outlier_detection.consecutive_local_origin_failure,
	// enforced at 100%, with split_external_local_origin_errors).
	ConsecutiveLocalOriginFailures = 1
	// OutlierInterval is outlier_detection.interval.
	OutlierInterval = time.Second
	// BaseEjectionTime is outlier_detection.base_ejection_time.
	BaseEjectionTime = 5 * time.Second
	// MaxEjectionTime is outlier_detection.max_ejection_time.
	MaxEjectionTime = time.Minute
	// MaxEjectionPercent is outlier_detection.max_ejection_percent: any
	// endpoint may be ejected (when all are, the panic threshold sends
	// traffic to all). A value that does not depend on the number of
	// endpoints keeps the cluster unchanged when a master joins or leaves.
	MaxEjectionPercent = 100
	// MaxConnections is the circuit breakers' max_connections (also
	// max_pending_requests and max_requests): Envoy's 1024 is far too few
	// for a VIP in front of the apiservers.
	MaxConnections = 1 << 20
	// KeepaliveProbes, KeepaliveTime and KeepaliveInterval are the
	// upstream TCP keepalive.
	KeepaliveProbes   = 3
	KeepaliveTime     = 30 * time.Second
	KeepaliveInterval = 10 * time.Second
)

package config

// The type URLs of the Envoy v3 resources the agent handles. They equal
// go-control-plane's pkg/resource/v3 constants (a test checks), which the
// agent does not import: that package links every Envoy type there is
// (HTTP connection manager, routes, tracing...), megabytes of binary and
// of resident memory that a TCP proxy does not need.
const (
	ListenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"
	ClusterType  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	EndpointType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
)

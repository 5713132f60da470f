// Package xdscontract is what halo-server and halo-agent must agree on over
// xDS, written once for both: the resource types halo serves and their order,
// how resources and types are versioned, halo's failover settings, and the
// cluster metadata that carries halo's rebalancing (which Envoy ignores).
//
// halo-server (server/snapshot) builds resources with it; halo-agent
// (agent/config, agent/xdsclient) reads and versions them with it. It imports
// neither side, only Envoy's and halo's protos.
//
// # Rebalance metadata
//
// Rebalancing travels in a cluster's typed_filter_metadata under
// [RebalanceKey]: a halo.v1.RebalanceMetadata (proto/halo/v1/xds.proto), whose
// schema buf lints and checks for breaking changes like the admin API's.
// Envoy ignores metadata it has no filter for, so an Envoy stand-in takes the
// same clusters.
package xdscontract

import (
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// The type URLs of the Envoy v3 resources halo serves.
const (
	ClusterType  = resource.ClusterType
	EndpointType = resource.EndpointType
	ListenerType = resource.ListenerType
)

// Types are the resource types halo serves, in make-before-break order:
// clusters before their endpoints before the listeners that use them. Do
// not modify it.
var Types = []string{ClusterType, EndpointType, ListenerType}

// Package xdscontract is what halo-server and halo-agent must agree on over
// xDS, written once for both: the resource types halo serves and their order,
// how resources and types are versioned, halo's failover settings, and the
// cluster metadata that carries halo's rebalancing (which Envoy ignores).
//
// halo-server (server/snapshot) builds resources with it; halo-agent
// (agent/config, agent/xdsclient) reads and versions them with it. It imports
// neither side, only Envoy's and halo's protos.
//
// # Rebalance metadata, and the release after this one
//
// Rebalancing travels in a cluster's metadata under [RebalanceKey] in one of
// two forms (see [RebalanceForm]): the typed one, a halo.v1.RebalanceMetadata
// (proto/halo/v1/xds.proto) in typed_filter_metadata, whose schema buf
// versions; and the Struct of numbers in filter_metadata that earlier releases
// wrote and read. An agent of an earlier release refuses (NACKs) any cluster
// with typed_filter_metadata, so a server that wrote the typed form, alone or
// beside the Struct, would freeze the clusters of every agent not yet
// upgraded. This release therefore reads both forms (the typed one wins) and
// writes the Struct ([ServerRebalanceForm]); the next release switches
// ServerRebalanceForm to [TypedForm], and the one after that may drop the
// Struct reader.
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

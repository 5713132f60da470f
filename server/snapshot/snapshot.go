// Package snapshot builds the Envoy v3 resources (LDS, CDS, EDS) that each
// node of a cluster gets, from the cluster's topology: a pure, deterministic
// function with no I/O and no clock, so that every replica builds the same
// bytes and the same versions from the same topology.
//
// Nodes that get identical resources share one Snapshot, named by a profile
// ("prod/apiserver-local"), so 10,000 workers cost one snapshot. Versions
// are per resource (a hash of its bytes) and per type (a hash of that type's
// resources), so a health change moves only the EDS version: both as
// internal/xdscontract defines them, which halo-agent uses too.
package snapshot

import (
	"fmt"
	"slices"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/halolb/halo/internal/xdscontract"
)

// The resources' stable names (docs/design.md, "xDS mapping"): agents,
// Envoy bootstraps and dashboards refer to them.
const (
	ListenerAPIServerLocal = "apiserver-local"
	ListenerAPIServerVIP   = "apiserver-vip"
	ListenerEtcdLocal      = "etcd-local"
	ClusterAPIServer       = "kube-apiserver"
	ClusterEtcd            = "etcd"
)

// Resource is one Envoy resource as served.
type Resource struct {
	// Name is the resource's name (a ClusterLoadAssignment's cluster_name).
	Name string
	// Version is xdscontract.ResourceVersion of the resource's
	// deterministic encoding.
	Version string
	// Message is the resource.
	Message proto.Message
	// Any is Message packed once, shared by every stream that sends it.
	Any *anypb.Any
	// Clusters are the clusters a listener sends traffic to (nil for
	// other types): it must not reach a node before them.
	Clusters []string
}

// Snapshot is the set of resources one profile of nodes gets. It is
// immutable once built.
type Snapshot struct {
	// Profile names the nodes that get it: "<cluster>/<listeners>".
	Profile string
	// Resources maps a type URL to its resources by name.
	Resources map[string]map[string]*Resource
	// Versions maps a type URL to the xdscontract.TypeVersion of that
	// type's resources.
	Versions map[string]string
}

// Get returns one resource, or nil.
func (s *Snapshot) Get(typeURL, name string) *Resource {
	if s == nil {
		return nil
	}
	return s.Resources[typeURL][name]
}

// Same reports whether o holds the same resources as s (equal versions of
// every type, which are content hashes).
func (s *Snapshot) Same(o *Snapshot) bool {
	if s == nil || o == nil || s.Profile != o.Profile {
		return false
	}
	for _, t := range xdscontract.Types {
		if s.Versions[t] != o.Versions[t] {
			return false
		}
	}
	return true
}

// Names returns the names of a type's resources, sorted.
func (s *Snapshot) Names(typeURL string) []string {
	if s == nil {
		return nil
	}
	names := make([]string, 0, len(s.Resources[typeURL]))
	for n := range s.Resources[typeURL] {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// newResource encodes m once and versions it by content.
func newResource(name string, m proto.Message, clusters ...string) (*Resource, error) {
	a, version, err := xdscontract.Encode(m)
	if err != nil {
		return nil, fmt.Errorf("snapshot: %s: %w", name, err)
	}
	return &Resource{Name: name, Version: version, Message: m, Any: a, Clusters: clusters}, nil
}

// newSnapshot assembles resources into a snapshot and computes versions.
func newSnapshot(profile string, resources ...*Resource) *Snapshot {
	s := &Snapshot{Profile: profile, Resources: map[string]map[string]*Resource{}, Versions: map[string]string{}}
	for _, t := range xdscontract.Types {
		s.Resources[t] = map[string]*Resource{}
	}
	for _, r := range resources {
		t := r.Any.GetTypeUrl()
		s.Resources[t][r.Name] = r
	}
	for _, t := range xdscontract.Types {
		v := make(map[string]string, len(s.Resources[t]))
		for n, r := range s.Resources[t] {
			v[n] = r.Version
		}
		s.Versions[t] = xdscontract.TypeVersion(v)
	}
	return s
}

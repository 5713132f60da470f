package xdsclient

import (
	"bytes"
	"maps"
	"slices"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"

	"github.com/halolb/halo/internal/xdscontract"
)

// state is what the client holds: type URL → name → resource.
type state map[string]map[string]*Resource

func newState(rs []*Resource) state {
	s := state{}
	for _, r := range rs {
		if s[r.TypeURL] == nil {
			s[r.TypeURL] = map[string]*Resource{}
		}
		s[r.TypeURL][r.Name] = r
	}
	return s
}

// clone copies the maps, not the resources (which are never changed).
func (s state) clone() state {
	out := make(state, len(s))
	for t, m := range s {
		out[t] = maps.Clone(m)
	}
	return out
}

// list returns every resource, sorted by type URL and name.
func (s state) list() []*Resource {
	var out []*Resource
	for _, t := range slices.Sorted(maps.Keys(s)) {
		for _, n := range slices.Sorted(maps.Keys(s[t])) {
			out = append(out, s[t][n])
		}
	}
	return out
}

// equal reports whether two states hold the same resources, versions and
// contents.
func (s state) equal(o state) bool {
	for _, t := range types {
		a, b := s[t], o[t]
		if len(a) != len(b) {
			return false
		}
		for n, r := range a {
			q, ok := b[n]
			if !ok || r.Version != q.Version || r.Body.GetTypeUrl() != q.Body.GetTypeUrl() || !bytes.Equal(r.Body.GetValue(), q.Body.GetValue()) {
				return false
			}
		}
	}
	return true
}

// keepEndpoints drops the endpoint resources not in want (sorted) and
// returns their names.
func (s state) keepEndpoints(want []string) []string {
	var dropped []string
	for n := range s[xdscontract.EndpointType] {
		if _, ok := slices.BinarySearch(want, n); !ok {
			dropped = append(dropped, n)
			delete(s[xdscontract.EndpointType], n)
		}
	}
	slices.Sort(dropped)
	return dropped
}

// versions returns name → version of one type.
func (s state) versions(typeURL string) map[string]string {
	out := make(map[string]string, len(s[typeURL]))
	for n, r := range s[typeURL] {
		out[n] = r.Version
	}
	return out
}

// typeVersions returns each type's Delta version (absent types as ""): the
// version halo-server computes for what a node holds.
func (s state) typeVersions() map[string]string {
	out := map[string]string{}
	for _, t := range types {
		out[t] = xdscontract.TypeVersion(s.versions(t))
	}
	return out
}

// ClusterEDSNames is the default Config.EDSNames: the endpoint resources of
// every EDS cluster in state, by eds_cluster_config.service_name or else
// the cluster's name. Clusters that do not decode are skipped (Update is
// where they are refused).
func ClusterEDSNames(state []*Resource) []string {
	var out []string
	for _, r := range state {
		if r.TypeURL != xdscontract.ClusterType {
			continue
		}
		cl := &clusterv3.Cluster{}
		if r.Body.UnmarshalTo(cl) != nil || cl.GetType() != clusterv3.Cluster_EDS {
			continue
		}
		if n := cl.GetEdsClusterConfig().GetServiceName(); n != "" {
			out = append(out, n)
		} else {
			out = append(out, cl.GetName())
		}
	}
	return sortedUnique(out)
}

func sortedUnique(names []string) []string {
	out := slices.Clone(names)
	slices.Sort(out)
	out = slices.Compact(out)
	if len(out) > 0 && out[0] == "" {
		out = out[1:]
	}
	return out
}

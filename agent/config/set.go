package config

import (
	"errors"
	"fmt"
	"maps"
	"slices"
)

// Validate checks a complete Set: every listener's cluster exists and has
// at least one endpoint (the EDS resource named by EDSServiceName with ≥1
// endpoint, or static endpoints); no two listeners on the same address
// (0.0.0.0:p and [::]:p overlap with any address on port p); map keys
// equal resource names. A cluster without endpoints that no listener uses
// is fine (it is warming). All problems are reported, joined, in the order
// of the resources' names.
func (s *Set) Validate() error {
	var errs []error
	errs = append(errs, checkKeys("listener", s.Listeners, func(l *Listener) string { return l.Name })...)
	errs = append(errs, checkKeys("cluster", s.Clusters, func(c *Cluster) string { return c.Name })...)
	errs = append(errs, checkKeys("endpoints", s.Endpoints, func(e *Endpoints) string { return e.Name })...)

	names := slices.Sorted(maps.Keys(s.Listeners))
	for _, name := range names {
		l := s.Listeners[name]
		if l == nil {
			continue
		}
		c := s.Clusters[l.Cluster]
		switch {
		case c == nil:
			errs = append(errs, fmt.Errorf("listener %q: cluster %q does not exist", name, l.Cluster))
		case !c.EDS && (c.StaticEndpoints == nil || len(c.StaticEndpoints.Endpoints) == 0):
			errs = append(errs, fmt.Errorf("listener %q: cluster %q has no endpoints", name, l.Cluster))
		case c.EDS && s.Endpoints[c.EDSServiceName] == nil:
			errs = append(errs, fmt.Errorf("listener %q: cluster %q has no endpoints (EDS resource %q missing)", name, l.Cluster, c.EDSServiceName))
		case c.EDS && len(s.Endpoints[c.EDSServiceName].Endpoints) == 0:
			errs = append(errs, fmt.Errorf("listener %q: cluster %q has no endpoints (EDS resource %q is empty)", name, l.Cluster, c.EDSServiceName))
		}
	}

	for i, a := range names {
		la := s.Listeners[a]
		if la == nil {
			continue
		}
		for _, b := range names[i+1:] {
			lb := s.Listeners[b]
			if lb != nil && overlap(la, lb) {
				errs = append(errs, fmt.Errorf("listener %q on %v and listener %q on %v: overlapping addresses", a, la.Address, b, lb.Address))
			}
		}
	}
	return errors.Join(errs...)
}

// overlap reports whether two listeners would bind the same socket: the
// same port and the same address, or either one a wildcard (0.0.0.0 or
// [::]).
func overlap(a, b *Listener) bool {
	if a.Address.Port() != b.Address.Port() {
		return false
	}
	x, y := a.Address.Addr().Unmap(), b.Address.Addr().Unmap()
	return x == y || x.IsUnspecified() || y.IsUnspecified()
}

// checkKeys reports nil values and keys that differ from the value's name.
func checkKeys[T any](kind string, m map[string]*T, name func(*T) string) []error {
	var errs []error
	for _, k := range slices.Sorted(maps.Keys(m)) {
		switch v := m[k]; {
		case v == nil:
			errs = append(errs, fmt.Errorf("%s %q: nil", kind, k))
		case name(v) != k:
			errs = append(errs, fmt.Errorf("%s %q: keyed as %q", kind, name(v), k))
		}
	}
	return errs
}

package xdscontract_test

import (
	"maps"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/halolb/halo/internal/xdscontract"
)

// The versions are pinned: a change to how halo versions resources is a
// change of the wire (every agent is re-sent everything and a mixed
// release's server and agent disagree on the versions shown), so it must be
// deliberate.

func TestResourceVersionPinned(t *testing.T) {
	if got, want := xdscontract.ResourceVersion([]byte("halo")), "a4e63bcacf6c172a"; got != want {
		t.Errorf("ResourceVersion(halo) = %q, want %q", got, want)
	}
}

func TestEncodePinned(t *testing.T) {
	a, v, err := xdscontract.Encode(&clusterv3.Cluster{Name: "c"})
	if err != nil {
		t.Fatal(err)
	}
	if a.GetTypeUrl() != resource.ClusterType || string(a.GetValue()) != "\x0a\x01c" {
		t.Errorf("Any %v", a)
	}
	if want := "5c3d327c76e771df"; v != want {
		t.Errorf("version %q, want %q", v, want)
	}
	if v != xdscontract.ResourceVersion(a.GetValue()) {
		t.Error("the version is not that of the encoding")
	}
}

func TestTypeVersionPinned(t *testing.T) {
	vs := map[string]string{"kube-apiserver": "0123456789abcdef", "etcd": "fedcba9876543210"}
	if got, want := xdscontract.TypeVersion(vs), "775ded1a42296118"; got != want {
		t.Errorf("TypeVersion = %q, want %q", got, want)
	}
	if got := xdscontract.TypeVersion(nil); got != "" {
		t.Errorf("TypeVersion(nil) = %q, want empty", got)
	}
	if got := xdscontract.TypeVersion(map[string]string{}); got != "" {
		t.Errorf("TypeVersion({}) = %q, want empty", got)
	}
}

// TestTypeVersionOrderIndependent: maps built in different orders (and Go's
// random iteration) give one version; any change of a name or a version
// gives another.
func TestTypeVersionOrderIndependent(t *testing.T) {
	names := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
	fwd, rev := map[string]string{}, map[string]string{}
	for i, n := range names {
		fwd[n] = "v" + n
		rev[names[len(names)-1-i]] = "v" + names[len(names)-1-i]
	}
	want := xdscontract.TypeVersion(fwd)
	for range 20 {
		if got := xdscontract.TypeVersion(maps.Clone(rev)); got != want {
			t.Fatalf("version %q, want %q", got, want)
		}
	}
	seen := map[string]string{want: "original"}
	for _, tc := range []struct {
		name string
		edit func(map[string]string)
	}{
		{"a version changed", func(m map[string]string) { m["c"] = "vx" }},
		{"a resource added", func(m map[string]string) { m["i"] = "vi" }},
		{"a resource removed", func(m map[string]string) { delete(m, "h") }},
		{"a name changed", func(m map[string]string) { delete(m, "h"); m["H"] = "vh" }},
		{"two versions swapped", func(m map[string]string) { m["a"], m["b"] = m["b"], m["a"] }},
	} {
		m := maps.Clone(fwd)
		tc.edit(m)
		v := xdscontract.TypeVersion(m)
		if prev, dup := seen[v]; dup {
			t.Errorf("%s: version %q, the same as %s", tc.name, v, prev)
		}
		seen[v] = tc.name
	}
}

func TestTypes(t *testing.T) {
	want := []string{resource.ClusterType, resource.EndpointType, resource.ListenerType}
	if len(xdscontract.Types) != len(want) {
		t.Fatalf("Types %v, want %v", xdscontract.Types, want)
	}
	for i := range want {
		if xdscontract.Types[i] != want[i] {
			t.Errorf("Types %v, want %v (clusters, endpoints, listeners: make before break)", xdscontract.Types, want)
		}
	}
}

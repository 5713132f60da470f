package topology_test

import (
	"testing"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/server/topology"
)

func TestBackendKinds(t *testing.T) {
	const api, etcd, none = halov1.BackendKind_BACKEND_KIND_APISERVER, halov1.BackendKind_BACKEND_KIND_ETCD, halov1.BackendKind_BACKEND_KIND_UNSPECIFIED
	node := func(roles ...halov1.Role) *halov1.Node { return &halov1.Node{Name: "n", Roles: roles} }
	for _, c := range []struct {
		what           string
		n              *halov1.Node
		api, etcd, any bool
	}{
		{"a master", node(halov1.Role_ROLE_CONTROL_PLANE), true, false, true},
		{"an etcd member", node(halov1.Role_ROLE_ETCD), false, true, true},
		{"a master and etcd member", node(halov1.Role_ROLE_CONTROL_PLANE, halov1.Role_ROLE_ETCD), true, true, true},
		{"a worker", node(halov1.Role_ROLE_WORKER), false, false, false},
		{"a load balancer", node(halov1.Role_ROLE_LOAD_BALANCER), false, false, false},
		{"no node", nil, false, false, false},
	} {
		if got := topology.IsBackend(c.n, api); got != c.api {
			t.Errorf("%s: apiserver backend %v, want %v", c.what, got, c.api)
		}
		if got := topology.IsBackend(c.n, etcd); got != c.etcd {
			t.Errorf("%s: etcd backend %v, want %v", c.what, got, c.etcd)
		}
		if got := topology.IsAnyBackend(c.n); got != c.any {
			t.Errorf("%s: any backend %v, want %v", c.what, got, c.any)
		}
		if topology.IsBackend(c.n, none) {
			t.Errorf("%s: a backend of no kind", c.what)
		}
	}
	nodes := []*halov1.Node{
		{Name: "m2", Ordinal: 1, Roles: []halov1.Role{halov1.Role_ROLE_CONTROL_PLANE}},
		{Name: "e1", Roles: []halov1.Role{halov1.Role_ROLE_ETCD}},
		{Name: "m1", Roles: []halov1.Role{halov1.Role_ROLE_CONTROL_PLANE, halov1.Role_ROLE_ETCD}},
		{Name: "w1", Roles: []halov1.Role{halov1.Role_ROLE_WORKER}},
	}
	names := func(ns []*halov1.Node) (out []string) {
		for _, n := range ns {
			out = append(out, n.GetName())
		}
		return out
	}
	if got := names(topology.Backends(nodes, api)); len(got) != 2 || got[0] != "m1" || got[1] != "m2" {
		t.Errorf("apiserver backends %v, want [m1 m2]", got)
	}
	if got := names(topology.Backends(nodes, etcd)); len(got) != 2 || got[0] != "e1" || got[1] != "m1" {
		t.Errorf("etcd backends %v, want [e1 m1]", got)
	}
	if got := topology.Backends(nodes, none); got != nil {
		t.Errorf("backends of no kind: %v", names(got))
	}
}

package store_test

import (
	"strings"
	"testing"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/server/store"
	"github.com/halolb/halo/server/topology"
)

var (
	apiKind  = halov1.BackendKind_BACKEND_KIND_APISERVER
	etcdKind = halov1.BackendKind_BACKEND_KIND_ETCD
)

// TestKeysLayout pins every key: a change to the layout in etcd must be
// deliberate (it breaks every installation's stored data and mixed-version
// replicas), so it must change this test too.
func TestKeysLayout(t *testing.T) {
	k := store.NewKeys("/p/")
	lb := &halov1.Node{Cluster: "prod", Name: "lb-1", Ip: "fd00::1", Ordinal: 2,
		Roles: []halov1.Role{halov1.Role_ROLE_CONTROL_PLANE, halov1.Role_ROLE_LOAD_BALANCER}}
	for _, c := range []struct{ got, want string }{
		{k.Prefix(), "/p/"},
		{k.ClustersPrefix(), "/p/clusters/"},
		{k.Cluster("prod"), "/p/clusters/prod"},
		{k.AllNodesPrefix(), "/p/nodes/"},
		{k.NodesPrefix("prod"), "/p/nodes/prod/"},
		{k.Node("prod", "m1"), "/p/nodes/prod/m1"},
		{k.IndexPrefix("prod"), "/p/index/prod/"},
		{k.Unique("prod", topology.UniqueValues(lb)[0]), "/p/index/prod/ip/fd00::1"},
		{k.Unique("prod", topology.UniqueValues(lb)[1]), "/p/index/prod/master-ordinal/2"},
		{k.LoadBalancersPrefix("prod"), "/p/index/prod/load-balancer/"},
		{k.LoadBalancer("prod", "lb-1"), "/p/index/prod/load-balancer/lb-1"},
		{strings.Join(k.NodeIndex(lb), " "), "/p/index/prod/ip/fd00::1 /p/index/prod/master-ordinal/2 /p/index/prod/load-balancer/lb-1"},
		{k.AllHealthPrefix(), "/p/health/"},
		{k.HealthPrefix("prod"), "/p/health/prod/"},
		{k.Health("prod", apiKind, "m1"), "/p/health/prod/apiserver/m1"},
		{k.Health("prod", etcdKind, "m1"), "/p/health/prod/etcd/m1"},
		{strings.Join(k.NodeHealth("prod", "m1"), " "), "/p/health/prod/apiserver/m1 /p/health/prod/etcd/m1"},
		{k.ReplicasPrefix(), "/p/replicas/"},
		{k.Replica("r1"), "/p/replicas/r1"},
		{k.ProberElectionPrefix(), "/p/prober-election/"},
		{store.NewKeys("").Cluster("prod"), "/halo/v1/clusters/prod"},
	} {
		if c.got != c.want {
			t.Errorf("key %q, want %q", c.got, c.want)
		}
	}
	if err := store.CheckPrefix("/halo"); err == nil {
		t.Error("CheckPrefix accepts a prefix without a trailing /")
	}
	if err := store.CheckPrefix("/halo/"); err != nil {
		t.Error(err)
	}
	if _, err := store.New(store.Config{Client: nil}); err == nil {
		t.Error("store.New without a client")
	}
}

// TestKeysDoNotCollide builds every kind of key for names chosen to look
// like the other kinds' segments, and checks that Parse recovers each one's
// kind and names (so no two keys of different objects are equal), and that
// no key lies under another kind's prefix (so a prefix read or delete of
// one kind never reaches another's keys).
func TestKeysDoNotCollide(t *testing.T) {
	k := store.NewKeys("/halo/v1/")
	names := []string{"clusters", "nodes", "index", "health", "replicas", "prober-election", "ip", "master-ordinal",
		"load-balancer", "apiserver", "etcd", "a", "a.b", "a-b"}
	type entry struct {
		key  string
		want store.Key
	}
	var all []entry
	var prefixes []entry // want.Type: the kind the prefix holds
	add := func(key string, want store.Key) { all = append(all, entry{key, want}) }
	prefixes = append(prefixes,
		entry{k.ClustersPrefix(), store.Key{Type: store.KeyCluster}},
		entry{k.AllNodesPrefix(), store.Key{Type: store.KeyNode}},
		entry{k.AllHealthPrefix(), store.Key{Type: store.KeyHealth}},
		entry{k.ReplicasPrefix(), store.Key{Type: store.KeyReplica}},
		entry{k.ProberElectionPrefix(), store.Key{Type: store.KeyProberElection}})
	for _, c := range names {
		add(k.Cluster(c), store.Key{Type: store.KeyCluster, Cluster: c})
		add(k.Replica(c), store.Key{Type: store.KeyReplica, Name: c})
		add(k.ProberElectionPrefix()+"/"+c, store.Key{Type: store.KeyProberElection, Name: c})
		prefixes = append(prefixes,
			entry{k.NodesPrefix(c), store.Key{Type: store.KeyNode, Cluster: c}},
			entry{k.IndexPrefix(c), store.Key{Type: store.KeyIndex, Cluster: c}},
			entry{k.LoadBalancersPrefix(c), store.Key{Type: store.KeyIndex, Cluster: c, Index: "load-balancer"}},
			entry{k.HealthPrefix(c), store.Key{Type: store.KeyHealth, Cluster: c}})
		for _, n := range names {
			add(k.Node(c, n), store.Key{Type: store.KeyNode, Cluster: c, Name: n})
			add(k.LoadBalancer(c, n), store.Key{Type: store.KeyIndex, Cluster: c, Index: "load-balancer", Value: n, Name: n})
			for _, kind := range []halov1.BackendKind{apiKind, etcdKind} {
				add(k.Health(c, kind, n), store.Key{Type: store.KeyHealth, Cluster: c, Backend: kind, Name: n})
			}
			node := &halov1.Node{Cluster: c, Name: n, Ip: "10.0.0.1", Ordinal: 3, Roles: []halov1.Role{halov1.Role_ROLE_CONTROL_PLANE}}
			for _, u := range topology.UniqueValues(node) {
				add(k.Unique(c, u), store.Key{Type: store.KeyIndex, Cluster: c, Index: u.Kind, Value: u.Value})
			}
		}
	}
	seen := map[string]store.Key{}
	for _, e := range all {
		got, ok := k.Parse(e.key)
		if !ok || got != e.want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", e.key, got, ok, e.want)
		}
		if prev, dup := seen[e.key]; dup && prev != e.want {
			t.Errorf("%q is the key of both %+v and %+v", e.key, prev, e.want)
		}
		seen[e.key] = e.want
		for _, p := range prefixes {
			under := strings.HasPrefix(e.key, p.key)
			mine := e.want.Type == p.want.Type && (p.want.Cluster == "" || p.want.Cluster == e.want.Cluster) &&
				(p.want.Index == "" || p.want.Index == e.want.Index)
			if under != mine {
				t.Errorf("%q (%v of cluster %q) under prefix %q of %v of cluster %q: %v", e.key, e.want.Type, e.want.Cluster,
					p.key, p.want.Type, p.want.Cluster, under)
			}
		}
	}
	for _, bad := range []string{"/other/clusters/a", "/halo/v1/clusters/", "/halo/v1/clusters/a/b", "/halo/v1/nodes/a",
		"/halo/v1/health/a/dns/n", "/halo/v1/index/a/ip", "/halo/v1/unknown/a", "/halo/v1/prober-election/x", "/halo/v1/"} {
		if got, ok := k.Parse(bad); ok {
			t.Errorf("Parse(%q) = %+v: not a key of halo's", bad, got)
		}
	}
}

package publisher_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/prototext"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/server/publisher"
	"github.com/halolb/halo/server/snapcache"
	"github.com/halolb/halo/server/snapshot"
	"github.com/halolb/halo/server/store"
	"github.com/halolb/halo/server/topowatch"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	cp = halov1.Role_ROLE_CONTROL_PLANE
	et = halov1.Role_ROLE_ETCD
	wk = halov1.Role_ROLE_WORKER

	apiserver = halov1.BackendKind_BACKEND_KIND_APISERVER
	etcd      = halov1.BackendKind_BACKEND_KIND_ETCD
)

func node(name, ip string, ordinal int32, roles ...halov1.Role) *halov1.Node {
	return &halov1.Node{Cluster: "prod", Name: name, Ip: ip, Ordinal: ordinal, Roles: roles}
}

func status(node string, kind halov1.BackendKind, st halov1.BackendState) *halov1.BackendStatus {
	return &halov1.BackendStatus{Cluster: "prod", Node: node, Kind: kind, State: st}
}

// fixture is a publisher in front of a real snapshot cache, and what the
// cache told its subscriber: "prod" for a publication of the whole
// cluster (a rebuild or a removal), "prod/w1" for one node moved.
type fixture struct {
	pub   *publisher.Publisher
	cache *snapcache.Cache
	mu    sync.Mutex
	told  []string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{cache: snapcache.New()}
	f.cache.Subscribe(func(cluster, node string) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if node != "" {
			cluster += "/" + node
		}
		f.told = append(f.told, cluster)
	})
	var err error
	if f.pub, err = publisher.New(publisher.Config{Cache: f.cache}); err != nil {
		t.Fatal(err)
	}
	return f
}

// take returns what the cache told since the last take.
func (f *fixture) take() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := strings.Join(f.told, " ")
	f.told = nil
	return s
}

// apply applies one revision's changes and returns what the cache told.
func (f *fixture) apply(changes ...topowatch.Change) string {
	f.pub.Apply(topowatch.Event{Revision: 100, Changes: changes})
	return f.take()
}

// apiservers are the addresses the node's apiserver EDS lists, with their
// health.
func (f *fixture) apiservers(t *testing.T, name string) string {
	t.Helper()
	v := f.cache.Lookup("prod", name)
	if v.Snapshot == nil {
		t.Fatalf("%s: no snapshot (%s)", name, v.Condition)
	}
	r := v.Snapshot.Get(resource.EndpointType, snapshot.ClusterAPIServer)
	if r == nil {
		t.Fatalf("%s: no apiserver endpoints", name)
	}
	return prototext.Format(r.Message)
}

var (
	m1 = node("m1", "10.0.0.1", 0, cp, et)
	m2 = node("m2", "10.0.0.2", 1, cp, et)
	w1 = node("w1", "10.0.1.1", 0, wk)
	e1 = node("e1", "10.0.2.1", 0, et)
)

func loaded(t *testing.T) *fixture {
	t.Helper()
	f := newFixture(t)
	f.pub.Reset(map[string]*store.ClusterTopology{"prod": {Cluster: &halov1.Cluster{Name: "prod"}, Nodes: []*halov1.Node{m1, w1, e1}}}, 7)
	if got := f.take(); got != "prod" {
		t.Fatalf("the first load: the cache was told %q, want one publication of prod", got)
	}
	if v := f.cache.Lookup("prod", "w1"); v.Profile == "" || v.Snapshot == nil {
		t.Fatalf("w1 after the load: %+v", v)
	}
	return f
}

// TestOnlyBackendsRebuild: what each change means for the published
// snapshots. A cluster, a master, an etcd member, or the health of one of
// them rebuilds the cluster's snapshots; a worker only moves that node to
// its profile; the health of a node as what it is not changes nothing.
func TestOnlyBackendsRebuild(t *testing.T) {
	f := loaded(t)
	w2 := node("w2", "10.0.1.2", 1, wk)
	for _, c := range []struct {
		what    string
		changes []topowatch.Change
		want    string
	}{
		{"a worker joins", []topowatch.Change{topowatch.NodePut{Node: w2}}, "prod/w2"},
		{"a worker changes", []topowatch.Change{topowatch.NodePut{Node: node("w2", "10.0.1.3", 1, wk), Old: w2}}, ""},
		{"a master joins", []topowatch.Change{topowatch.NodePut{Node: m2}}, "prod"},
		{"a master's apiserver turns unhealthy", []topowatch.Change{topowatch.StatusPut{Status: status("m2", apiserver, halov1.BackendState_BACKEND_STATE_UNHEALTHY)}}, "prod"},
		{"a worker's health (stale) is stored", []topowatch.Change{topowatch.StatusPut{Status: status("w1", apiserver, halov1.BackendState_BACKEND_STATE_UNHEALTHY)}}, ""},
		{"an etcd member's health as an apiserver (stale)", []topowatch.Change{topowatch.StatusPut{Status: status("e1", apiserver, halov1.BackendState_BACKEND_STATE_UNHEALTHY)}}, ""},
		{"its health as an etcd member", []topowatch.Change{topowatch.StatusPut{Status: status("e1", etcd, halov1.BackendState_BACKEND_STATE_UNHEALTHY)}}, "prod"},
		{"a master becomes a worker", []topowatch.Change{topowatch.NodePut{Node: node("m2", "10.0.0.2", 1, wk), Old: m2}}, "prod"},
		{"its apiserver health is deleted", []topowatch.Change{topowatch.StatusDeleted{Status: status("m2", apiserver, halov1.BackendState_BACKEND_STATE_UNHEALTHY)}}, ""},
		{"a worker leaves", []topowatch.Change{topowatch.NodeDeleted{Node: w2}}, "prod/w2"},
		{"an etcd member leaves", []topowatch.Change{topowatch.NodeDeleted{Node: e1}}, "prod"},
		{"the cluster changes", []topowatch.Change{topowatch.ClusterPut{Cluster: &halov1.Cluster{Name: "prod", Revision: 9}, Old: &halov1.Cluster{Name: "prod"}}}, "prod"},
		{"a node of an unknown cluster", []topowatch.Change{topowatch.NodePut{Node: &halov1.Node{Cluster: "gone", Name: "m1", Roles: []halov1.Role{cp}}}}, ""},
	} {
		if got := f.apply(c.changes...); got != c.want {
			t.Errorf("%s: the cache was told %q, want %q", c.what, got, c.want)
		}
	}
	if v := f.cache.Lookup("prod", "w2"); v.Profile != "" {
		t.Errorf("w2 after it left: %+v", v)
	}
}

// TestHealthReachesEDS: the health of a master as an apiserver is its
// endpoint's health; as an etcd member, not.
func TestHealthReachesEDS(t *testing.T) {
	f := loaded(t)
	before := f.apiservers(t, "w1")
	f.apply(topowatch.StatusPut{Status: status("m1", etcd, halov1.BackendState_BACKEND_STATE_UNHEALTHY)})
	if got := f.apiservers(t, "w1"); got != before {
		t.Errorf("etcd health changed the apiserver endpoints:\n%s\nto\n%s", before, got)
	}
	f.apply(topowatch.StatusPut{Status: status("m1", apiserver, halov1.BackendState_BACKEND_STATE_UNHEALTHY)})
	if got := f.apiservers(t, "w1"); got == before || !strings.Contains(got, "UNHEALTHY") {
		t.Errorf("an unhealthy apiserver: %s", got)
	}
}

// TestOneRebuildPerRevision: a revision that changes several backends of a
// cluster rebuilds it once; a revision's node moves in a cluster it
// rebuilds are part of the rebuild.
func TestOneRebuildPerRevision(t *testing.T) {
	f := loaded(t)
	if got := f.apply(topowatch.NodePut{Node: m2}, topowatch.NodePut{Node: node("w2", "10.0.1.2", 1, wk)},
		topowatch.StatusPut{Status: status("m2", apiserver, halov1.BackendState_BACKEND_STATE_HEALTHY)}); got != "prod" {
		t.Errorf("the cache was told %q, want one publication of prod", got)
	}
	if v := f.cache.Lookup("prod", "w2"); v.Profile == "" {
		t.Errorf("w2 was not published: %+v", v)
	}
}

// TestClusterDeletedAndReset: a deleted cluster is removed from the cache
// and nothing is published for it afterwards; a reset publishes every
// cluster it holds and removes the others.
func TestClusterDeletedAndReset(t *testing.T) {
	f := loaded(t)
	if got := f.apply(topowatch.ClusterDeleted{Cluster: &halov1.Cluster{Name: "prod"}}, topowatch.NodeDeleted{Node: m1}); got != "prod" {
		t.Errorf("deleting prod: the cache was told %q, want its removal only", got)
	}
	if s, _ := f.cache.Profiles("prod"); s != nil {
		t.Errorf("prod is still published: %v", s)
	}
	f.pub.Reset(map[string]*store.ClusterTopology{"prod": {Cluster: &halov1.Cluster{Name: "prod"}, Nodes: []*halov1.Node{m1}},
		"test": {Cluster: &halov1.Cluster{Name: "test"}}}, 20)
	if got := f.take(); got != "prod test" {
		t.Errorf("a reset of prod and test: the cache was told %q", got)
	}
	f.pub.Reset(map[string]*store.ClusterTopology{"test": {Cluster: &halov1.Cluster{Name: "test"}}}, 30)
	if got := f.take(); got != "prod test" {
		t.Errorf("a reset of test only: the cache was told %q, want prod removed and test published", got)
	}
	if s, _ := f.cache.Profiles("prod"); s != nil {
		t.Errorf("prod is still published after a reset without it: %v", fmt.Sprint(s))
	}
}

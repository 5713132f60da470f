package prober_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/server/prober"
	"github.com/halolb/halo/server/store"
	"github.com/halolb/halo/server/topowatch"
)

var (
	cp = halov1.Role_ROLE_CONTROL_PLANE
	et = halov1.Role_ROLE_ETCD
	wk = halov1.Role_ROLE_WORKER
)

func topoNode(name, ip string, roles ...halov1.Role) *halov1.Node {
	return &halov1.Node{Cluster: "prod", Name: name, Ip: ip, Roles: roles}
}

// backendSets records each set of backends handed to the prober, rendered.
type backendSets struct{ sets []string }

func (b *backendSets) set(bs []prober.Backend) {
	var out []string
	for _, x := range bs {
		kind := "apiserver"
		if x.Kind == prober.Etcd {
			kind = "etcd"
		}
		out = append(out, fmt.Sprintf("%s/%s/%s %s every %v from %v", x.Cluster, x.Node, kind, x.Target.URL, x.Settings.Interval, x.Initial))
	}
	b.sets = append(b.sets, strings.Join(out, ", "))
}

func (b *backendSets) take() []string {
	s := b.sets
	b.sets = nil
	return s
}

// TestBackendSetFollowsOnlyBackends: the prober's set of backends is
// computed again for a cluster, a master or an etcd member (also one that
// stops being one), and never for a worker or a health transition: at
// 10,000 nodes a registration must not cost a pass over the topology.
func TestBackendSetFollowsOnlyBackends(t *testing.T) {
	rec := &backendSets{}
	s := prober.NewBackendSet("replica-a", rec.set)
	m1, w1 := topoNode("m1", "10.0.0.1", cp, et), topoNode("w1", "10.0.1.1", wk)
	s.Reset(map[string]*store.ClusterTopology{"prod": {Cluster: &halov1.Cluster{Name: "prod"}, Nodes: []*halov1.Node{m1, w1}}}, 7)
	want := "prod/m1/apiserver https://10.0.0.1:6443/readyz every 1s from unknown, prod/m1/etcd https://10.0.0.1:2379/health every 1s from unknown"
	if got := rec.take(); len(got) != 1 || got[0] != want {
		t.Fatalf("after the load: %q, want [%s]", got, want)
	}
	m2, e1 := topoNode("m2", "10.0.0.2", cp), topoNode("e1", "10.0.2.1", et)
	const none = "-" // the set is not computed again
	for _, c := range []struct {
		what    string
		changes []topowatch.Change
		want    string
	}{
		{"a worker joins", []topowatch.Change{topowatch.NodePut{Node: topoNode("w2", "10.0.1.2", wk)}}, none},
		{"a worker changes", []topowatch.Change{topowatch.NodePut{Node: topoNode("w1", "10.0.1.3", wk), Old: w1}}, none},
		{"a health transition", []topowatch.Change{topowatch.StatusPut{Status: &halov1.BackendStatus{Cluster: "prod", Node: "m1",
			State: halov1.BackendState_BACKEND_STATE_UNHEALTHY}}}, none},
		{"a worker leaves", []topowatch.Change{topowatch.NodeDeleted{Node: w1}}, none},
		{"a master joins", []topowatch.Change{topowatch.NodePut{Node: m2}},
			"prod/m1/apiserver https://10.0.0.1:6443/readyz every 1s from unhealthy, prod/m2/apiserver https://10.0.0.2:6443/readyz every 1s from unknown, prod/m1/etcd https://10.0.0.1:2379/health every 1s from unknown"},
		{"an etcd member joins", []topowatch.Change{topowatch.NodePut{Node: e1}},
			"prod/m1/apiserver https://10.0.0.1:6443/readyz every 1s from unhealthy, prod/m2/apiserver https://10.0.0.2:6443/readyz every 1s from unknown, prod/e1/etcd https://10.0.2.1:2379/health every 1s from unknown, prod/m1/etcd https://10.0.0.1:2379/health every 1s from unknown"},
		{"a master and etcd member becomes a worker", []topowatch.Change{topowatch.NodePut{Node: topoNode("m1", "10.0.0.1", wk), Old: m1}},
			"prod/m2/apiserver https://10.0.0.2:6443/readyz every 1s from unknown, prod/e1/etcd https://10.0.2.1:2379/health every 1s from unknown"},
		{"the worker it became changes", []topowatch.Change{topowatch.NodePut{Node: topoNode("m1", "10.0.0.9", wk), Old: topoNode("m1", "10.0.0.1", wk)}}, none},
		{"a node of an unknown cluster", []topowatch.Change{topowatch.NodePut{Node: &halov1.Node{Cluster: "gone", Name: "m1", Roles: []halov1.Role{cp}}}}, none},
		{"the cluster's probes change", []topowatch.Change{topowatch.ClusterPut{Cluster: &halov1.Cluster{Name: "prod",
			Apiserver: &halov1.ApiServer{HealthCheck: &halov1.HealthCheck{Interval: durationpb.New(3 * time.Second)}}}}},
			"prod/m2/apiserver https://10.0.0.2:6443/readyz every 3s from unknown, prod/e1/etcd https://10.0.2.1:2379/health every 1s from unknown"},
		{"an etcd member leaves", []topowatch.Change{topowatch.NodeDeleted{Node: e1}},
			"prod/m2/apiserver https://10.0.0.2:6443/readyz every 3s from unknown"},
		{"the cluster is deleted", []topowatch.Change{topowatch.ClusterDeleted{Cluster: &halov1.Cluster{Name: "prod"}}}, ""},
	} {
		s.Apply(topowatch.Event{Revision: 10, Changes: c.changes})
		got := rec.take()
		switch {
		case c.want == none && len(got) != 0:
			t.Errorf("%s: the set was computed again: %q", c.what, got)
		case c.want != none && (len(got) != 1 || got[0] != c.want):
			t.Errorf("%s: %q, want [%s]", c.what, got, c.want)
		}
	}
}

// TestBackendSetStartsFromStoredHealth: a backend starts from the health
// etcd holds for it, the one loaded or the last transition stored since,
// so that a backend probed again (its cluster's probes changed) does not
// start over from unknown.
func TestBackendSetStartsFromStoredHealth(t *testing.T) {
	rec := &backendSets{}
	s := prober.NewBackendSet("replica-a", rec.set)
	since := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	stored := func(state halov1.BackendState) *halov1.BackendStatus {
		return &halov1.BackendStatus{Cluster: "prod", Node: "m1", Kind: halov1.BackendKind_BACKEND_KIND_APISERVER, State: state, Since: timestamppb.New(since)}
	}
	s.Reset(map[string]*store.ClusterTopology{"prod": {Cluster: &halov1.Cluster{Name: "prod"}, Nodes: []*halov1.Node{topoNode("m1", "10.0.0.1", cp)},
		Backends: []*halov1.BackendStatus{stored(halov1.BackendState_BACKEND_STATE_HEALTHY)}}}, 7)
	if got := rec.take(); len(got) != 1 || !strings.HasSuffix(got[0], "from healthy") {
		t.Errorf("after the load: %q, want m1 from healthy", got)
	}
	s.Apply(topowatch.Event{Revision: 8, Changes: []topowatch.Change{topowatch.StatusPut{Status: stored(halov1.BackendState_BACKEND_STATE_UNHEALTHY)}}})
	s.Apply(topowatch.Event{Revision: 9, Changes: []topowatch.Change{topowatch.ClusterPut{Cluster: &halov1.Cluster{Name: "prod", Revision: 9}}}})
	if got := rec.take(); len(got) != 1 || !strings.HasSuffix(got[0], "from unhealthy") {
		t.Errorf("after a transition and a cluster change: %q, want m1 from unhealthy", got)
	}
	s.Apply(topowatch.Event{Revision: 10, Changes: []topowatch.Change{topowatch.StatusDeleted{Status: stored(halov1.BackendState_BACKEND_STATE_UNHEALTHY)}}})
	s.Apply(topowatch.Event{Revision: 11, Changes: []topowatch.Change{topowatch.ClusterPut{Cluster: &halov1.Cluster{Name: "prod", Revision: 11}}}})
	if got := rec.take(); len(got) != 1 || !strings.HasSuffix(got[0], "from unknown") {
		t.Errorf("after its health was deleted: %q, want m1 from unknown", got)
	}
}

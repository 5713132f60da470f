package prober

import (
	"testing"

	halov1 "github.com/halolb/halo/gen/halo/v1"
)

func TestConcernsBackends(t *testing.T) {
	node := func(name string, roles ...halov1.Role) *halov1.WatchEvent {
		return &halov1.WatchEvent{Changes: []*halov1.Change{{Type: halov1.ChangeType_CHANGE_TYPE_PUT,
			Object: &halov1.Change_Node{Node: &halov1.Node{Cluster: "prod", Name: name, Roles: roles}}}}}
	}
	probed := map[string]bool{"prod/m1": true}
	for _, c := range []struct {
		what string
		ev   *halov1.WatchEvent
		want bool
	}{
		{"a worker joins", node("w1", halov1.Role_ROLE_WORKER), false},
		{"a master joins", node("m2", halov1.Role_ROLE_CONTROL_PLANE), true},
		{"an etcd member joins", node("e1", halov1.Role_ROLE_ETCD), true},
		{"a probed master becomes a worker", node("m1", halov1.Role_ROLE_WORKER), true},
		{"a cluster changes", &halov1.WatchEvent{Changes: []*halov1.Change{{Object: &halov1.Change_Cluster{Cluster: &halov1.Cluster{Name: "prod"}}}}}, true},
		{"a health transition", &halov1.WatchEvent{Changes: []*halov1.Change{{Object: &halov1.Change_BackendStatus{BackendStatus: &halov1.BackendStatus{Cluster: "prod", Node: "m1"}}}}}, false},
		{"a progress report", &halov1.WatchEvent{Revision: 7}, false},
	} {
		if got := concernsBackends(c.ev, probed); got != c.want {
			t.Errorf("%s: %v, want %v", c.what, got, c.want)
		}
	}
}

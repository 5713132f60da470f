package store_test

import (
	"errors"
	"testing"

	halov1 "github.com/halolb/halo/gen/halo/v1"
)

// TestBackendStatusReadersAgree: LoadAll, BackendStatuses and Watch decode
// backend statuses alike: a value that does not decode is skipped by all
// three, and the good ones come through. Watch also recognizes halo's keys
// alike: the index, replica and election keys, and the other cluster's
// keys, are no changes of the watched cluster.
func TestBackendStatusReadersAgree(t *testing.T) {
	s, client := newStore(t)
	ctx := testCtx(t)
	k := s.Keys()
	for _, c := range []string{"prod", "prod2"} {
		if _, err := s.PutCluster(ctx, &halov1.Cluster{Name: c}, 0); err != nil {
			t.Fatal(err)
		}
	}
	_, from, err := s.LoadAll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"prod2", "prod"} {
		n := worker("m1", "10.0.0.1")
		n.Cluster = c
		if _, err := s.PutNode(ctx, n, 0); err != nil {
			t.Fatal(err)
		}
		if err := s.PutBackendStatus(ctx, &halov1.BackendStatus{Cluster: c, Node: "m1", Kind: apiKind,
			State: halov1.BackendState_BACKEND_STATE_HEALTHY}); err != nil {
			t.Fatal(err)
		}
	}
	// Not a BackendStatus: field 0 does not exist.
	if _, err := client.Put(ctx, k.Health("prod", etcdKind, "m1"), "\x00\x00"); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{k.Replica("r1"), k.ProberElectionPrefix() + "/694d9c4b7a1b2c3d"} {
		if _, err := client.Put(ctx, key, "x"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.PutCluster(ctx, &halov1.Cluster{Name: "prod", DnsDomain: "end.local"}, 0); err != nil {
		t.Fatal(err)
	}

	good := func(what string, sts []*halov1.BackendStatus) {
		t.Helper()
		if len(sts) != 1 || sts[0].GetCluster() != "prod" || sts[0].GetKind() != apiKind {
			t.Errorf("%s: statuses %v, want prod's apiserver status of m1 only", what, sts)
		}
	}
	all, _, err := s.LoadAll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	good("LoadAll", all["prod"].Backends)
	sts, _, err := s.BackendStatuses(ctx, "prod")
	if err != nil {
		t.Fatal(err)
	}
	good("BackendStatuses", sts)

	var watched []*halov1.BackendStatus
	var changes []string
	done := errors.New("done")
	err = s.Watch(ctx, "prod", from+1, func(ev *halov1.WatchEvent) error {
		for _, ch := range ev.GetChanges() {
			switch o := ch.GetObject().(type) {
			case *halov1.Change_BackendStatus:
				watched = append(watched, o.BackendStatus)
				changes = append(changes, "status "+o.BackendStatus.GetCluster())
			case *halov1.Change_Node:
				changes = append(changes, "node "+o.Node.GetCluster()+"/"+o.Node.GetName())
			case *halov1.Change_Cluster:
				changes = append(changes, "cluster "+o.Cluster.GetName())
				if o.Cluster.GetDnsDomain() == "end.local" {
					return done
				}
			}
		}
		return nil
	})
	if !errors.Is(err, done) {
		t.Fatal(err)
	}
	good("Watch", watched)
	if want := []string{"node prod/m1", "status prod", "cluster prod"}; len(changes) != len(want) ||
		changes[0] != want[0] || changes[1] != want[1] || changes[2] != want[2] {
		t.Errorf("watched changes %v, want %v", changes, want)
	}
}

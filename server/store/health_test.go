package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/server/servertest"
	"github.com/halolb/halo/server/store"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestBackendStatuses(t *testing.T) {
	if testing.Short() {
		t.Skip("embedded etcd")
	}
	e := servertest.NewEtcd(t)
	s, err := store.New(store.Config{Client: servertest.EtcdClient(t, e.Endpoint)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.PutCluster(ctx, &halov1.Cluster{Name: "prod"}, 0); err != nil {
		t.Fatal(err)
	}
	for i, n := range []string{"m1", "m2"} {
		node := &halov1.Node{Cluster: "prod", Name: n, Ip: "10.0.0." + string(rune('1'+i)), Ordinal: int32(i),
			Roles: []halov1.Role{halov1.Role_ROLE_CONTROL_PLANE, halov1.Role_ROLE_ETCD}}
		if _, err := s.PutNode(ctx, node, 0); err != nil {
			t.Fatal(err)
		}
	}
	put := func(node string, kind halov1.BackendKind, state halov1.BackendState) error {
		return s.PutBackendStatus(ctx, &halov1.BackendStatus{Cluster: "prod", Node: node, Kind: kind, State: state})
	}
	api, etcd := halov1.BackendKind_BACKEND_KIND_APISERVER, halov1.BackendKind_BACKEND_KIND_ETCD
	for _, p := range []struct {
		node  string
		kind  halov1.BackendKind
		state halov1.BackendState
	}{{"m2", etcd, halov1.BackendState_BACKEND_STATE_HEALTHY}, {"m1", api, halov1.BackendState_BACKEND_STATE_UNHEALTHY},
		{"m2", api, halov1.BackendState_BACKEND_STATE_HEALTHY}, {"m1", api, halov1.BackendState_BACKEND_STATE_HEALTHY}} {
		if err := put(p.node, p.kind, p.state); err != nil {
			t.Fatal(err)
		}
	}
	if err := put("ghost", api, halov1.BackendState_BACKEND_STATE_HEALTHY); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("status of an unknown node: %v", err)
	}
	list := func() []string {
		sts, _, err := s.BackendStatuses(ctx, "prod")
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, st := range sts {
			out = append(out, st.GetNode()+"/"+st.GetKind().String()+"="+st.GetState().String())
		}
		return out
	}
	want := []string{"m1/BACKEND_KIND_APISERVER=BACKEND_STATE_HEALTHY", "m2/BACKEND_KIND_APISERVER=BACKEND_STATE_HEALTHY", "m2/BACKEND_KIND_ETCD=BACKEND_STATE_HEALTHY"}
	if got := list(); len(got) != 3 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Fatalf("statuses %v, want %v", got, want)
	}
	// A node's statuses go with it; a cluster's with it.
	if _, err := s.DeleteNode(ctx, "prod", "m2", 0); err != nil {
		t.Fatal(err)
	}
	if got := list(); len(got) != 1 || got[0] != want[0] {
		t.Fatalf("after deleting m2: %v", got)
	}
	if _, _, err := s.DeleteCluster(ctx, "prod", true, 0); err != nil {
		t.Fatal(err)
	}
	if got := list(); len(got) != 0 {
		t.Fatalf("after deleting the cluster: %v", got)
	}
}

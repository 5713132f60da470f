package replicas_test

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/halolb/halo/internal/waitfor"
	"github.com/halolb/halo/server/replicas"
	"github.com/halolb/halo/server/servertest"
	"github.com/halolb/halo/server/store"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestRegistration: a running Registration is listed under its prefix, at
// the key store.Keys gives it, and disappears when it stops; another prefix
// does not see it.
func TestRegistration(t *testing.T) {
	if testing.Short() {
		t.Skip("embedded etcd")
	}
	e := servertest.NewEtcd(t)
	client := servertest.EtcdClient(t, e.Endpoint)
	const prefix = "/p/"
	if _, err := replicas.New(replicas.Config{Client: client, Prefix: "/p", Self: replicas.Replica{Name: "a"}}); err == nil {
		t.Fatal("a prefix without a trailing / accepted")
	}
	reg, err := replicas.New(replicas.Config{Client: client, Prefix: prefix, Self: replicas.Replica{Name: "a", Address: "10.0.0.1:7443"}, TTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- reg.Run(ctx) }()
	list := func(prefix string) []replicas.Replica {
		l, err := replicas.List(context.Background(), client, prefix)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	waitfor.True(t, 20*time.Second, "a registered", func() bool { return len(list(prefix)) == 1 })
	if got := list(prefix)[0]; got != (replicas.Replica{Name: "a", Address: "10.0.0.1:7443"}) {
		t.Errorf("listed %+v", got)
	}
	resp, err := client.Get(context.Background(), store.NewKeys(prefix).Replica("a"))
	if err != nil || len(resp.Kvs) != 1 {
		t.Errorf("no key %s (%v)", store.NewKeys(prefix).Replica("a"), err)
	}
	if got := list("/other/"); len(got) != 0 {
		t.Errorf("another prefix lists %v", got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := list(prefix); len(got) != 0 {
		t.Fatalf("still listed after stopping: %v", got)
	}
}

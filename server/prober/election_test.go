package prober_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/halolb/halo/internal/waitfor"
	"github.com/halolb/halo/server/prober"
	"github.com/halolb/halo/server/servertest"
	"github.com/halolb/halo/server/store"
)

// replica runs an election for name; leading reports whether its lead
// function runs now.
type replica struct {
	leading atomic.Bool
	terms   atomic.Int64
	cancel  context.CancelFunc
	done    chan error
}

func startReplica(t *testing.T, e *servertest.Etcd, name string) *replica {
	t.Helper()
	// A client of its own, closed before etcd stops: a lease keepalive
	// stream left open on a shared client holds up etcd's shutdown.
	el := &prober.Election{Client: servertest.EtcdClient(t, e.Endpoint), Prefix: "/halo/v1/", Name: name, TTL: time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	r := &replica{cancel: cancel, done: make(chan error, 1)}
	go func() {
		r.done <- el.Run(ctx, func(lctx context.Context) {
			r.terms.Add(1)
			r.leading.Store(true)
			<-lctx.Done()
			r.leading.Store(false)
		})
	}()
	t.Cleanup(func() { r.stop(t) })
	return r
}

func (r *replica) stop(t *testing.T) {
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	if err := <-r.done; err != nil {
		t.Error(err)
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	waitfor.True(t, 20*time.Second, what, cond)
}

func TestElectionOneLeaderAndFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("embedded etcd")
	}
	e := servertest.NewEtcd(t)
	a := startReplica(t, e, "a")
	eventually(t, "a leads", a.leading.Load)
	b := startReplica(t, e, "b")
	leader := func() string {
		n, err := prober.Leader(context.Background(), e.Client, "/halo/v1/")
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if got := leader(); got != "a" {
		t.Fatalf("leader %q, want a", got)
	}
	// The election's keys are where store.Keys says.
	keys := store.NewKeys("/halo/v1/")
	resp, err := e.Client.Get(context.Background(), keys.Prefix(), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		if k, ok := keys.Parse(string(kv.Key)); !ok || k.Type != store.KeyProberElection {
			t.Errorf("election key %s is not a prober-election key of store.Keys", kv.Key)
		}
	}
	if len(resp.Kvs) == 0 {
		t.Error("no election key")
	}
	// b waits while a leads: once b's campaign has begun (its key is
	// under the election prefix, behind a's), b does not lead and the
	// leader key still names a.
	eventually(t, "b campaigning", func() bool {
		resp, err := e.Client.Get(context.Background(), keys.ProberElectionPrefix(), clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range resp.Kvs {
			if string(kv.Value) == "b" {
				return true
			}
		}
		return false
	})
	if b.leading.Load() || b.terms.Load() != 0 {
		t.Fatal("two leaders")
	}
	if got := leader(); got != "a" {
		t.Fatalf("leader %q while b campaigns, want a", got)
	}
	// a stops (resigns): b takes over at once, without waiting for the TTL.
	start := time.Now()
	a.stop(t)
	eventually(t, "b leads", b.leading.Load)
	if got := leader(); got != "b" {
		t.Fatalf("leader %q, want b", got)
	}
	t.Logf("failover after a clean stop took %v", time.Since(start))
}

// TestElectionLeaseLost: when the leader's lease ends without it resigning
// (etcd lost it for longer than the TTL; here revoked from outside), its
// lead function is stopped, and a replica leads again.
func TestElectionLeaseLost(t *testing.T) {
	if testing.Short() {
		t.Skip("embedded etcd")
	}
	e := servertest.NewEtcd(t)
	a := startReplica(t, e, "a")
	eventually(t, "a leads", a.leading.Load)
	b := startReplica(t, e, "b")
	leases, err := e.Client.Leases(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range leases.Leases {
		if _, err := e.Client.Revoke(context.Background(), l.ID); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "a new term", func() bool { return a.terms.Load()+b.terms.Load() >= 2 })
	eventually(t, "one leader", func() bool { return a.leading.Load() != b.leading.Load() })
}

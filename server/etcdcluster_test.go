package server_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/internal/waitfor"
	"github.com/halolb/halo/server"
	"github.com/halolb/halo/server/servertest"
	"github.com/halolb/halo/server/store"
)

// TestNoAckedWriteLostWhenAnEtcdMemberDies runs a halo-server on a
// three-member etcd cluster and has several clients register nodes through
// the admin API while the etcd leader crashes (no leadership handover).
// Every call either succeeds or fails cleanly (UNAVAILABLE or
// DEADLINE_EXCEEDED: the client retries); every node whose write
// succeeded is there afterwards, through the API and in etcd as each
// surviving member serves it, at the revision the API returned; nothing
// is stored that no one wrote; and writes succeed again on the two members
// left.
func TestNoAckedWriteLostWhenAnEtcdMemberDies(t *testing.T) {
	if testing.Short() {
		t.Skip("etcd cluster test")
	}
	cluster := servertest.NewEtcdCluster(t, 3)
	srv := servertest.New(t, servertest.WithEtcdEndpoints(cluster.Endpoints()...),
		func(c *server.Config) { c.EtcdRequestTimeout = 3 * time.Second })
	tc := halov1.NewTopologyServiceClient(srv.Conn)
	if _, err := tc.PutCluster(ctxT(t), &halov1.PutClusterRequest{Cluster: &halov1.Cluster{Name: "prod"}}); err != nil {
		t.Fatal(err)
	}

	const (
		writers   = 4
		perWriter = 1000 // a bound, far above what the test waits for
		before    = 40   // acknowledged writes before the leader dies
		after     = 20   // writes begun once it is gone that must succeed
	)
	var (
		mu      sync.Mutex
		acked   = map[string]int64{} // node → the revision PutNode returned
		failed  = map[string]codes.Code{}
		phase   atomic.Int32    // 0 before the crash, 1 while the member stops, 2 once it is gone
		ackedAt [3]atomic.Int64 // acknowledged writes by the phase they began in
		stop    = make(chan struct{})
		wg      sync.WaitGroup
	)
	for w := range writers {
		wg.Go(func() {
			for i := range perWriter {
				select {
				case <-stop:
					return
				default:
				}
				name := fmt.Sprintf("w%d-%03d", w, i)
				n := newNode("prod", name, fmt.Sprintf("10.%d.%d.%d", w+1, i/250, i%250+1), 0, wk)
				began := phase.Load()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				resp, err := tc.PutNode(ctx, &halov1.PutNodeRequest{Node: n})
				cancel()
				mu.Lock()
				if err == nil {
					acked[name] = resp.GetRevision()
					ackedAt[began].Add(1)
				} else {
					code := status.Code(err)
					failed[name] = code
					if code != codes.Unavailable && code != codes.DeadlineExceeded {
						t.Errorf("PutNode %s: %v: only UNAVAILABLE or DEADLINE_EXCEEDED may tell a client that etcd lost a member", name, err)
					}
				}
				mu.Unlock()
			}
		})
	}
	stopWriters := sync.OnceFunc(func() { close(stop); wg.Wait() })
	t.Cleanup(stopWriters)

	waitfor.True(t, 60*time.Second, fmt.Sprintf("%d acknowledged writes", before), func() bool { return ackedAt[0].Load() >= before })
	leader := cluster.Leader()
	start := time.Now()
	phase.Store(1)
	cluster.StopMember(leader)
	phase.Store(2)
	t.Logf("etcd leader (member %d) crashed after %d acknowledged writes; stopping it took %v", leader, ackedAt[0].Load(), time.Since(start).Round(time.Millisecond))
	newLeader := cluster.Leader()
	t.Logf("member %d leads %v after the crash", newLeader, time.Since(start).Round(time.Millisecond))
	waitfor.True(t, 60*time.Second, fmt.Sprintf("%d acknowledged writes begun once the leader is gone", after), func() bool {
		return ackedAt[2].Load() >= after
	})
	stopWriters()

	mu.Lock()
	defer mu.Unlock()
	counts := map[codes.Code]int{}
	for _, c := range failed {
		counts[c]++
	}
	t.Logf("%d writes acknowledged (begun before the crash %d, while the member stopped %d, after %d), failed: %v",
		len(acked), ackedAt[0].Load(), ackedAt[1].Load(), ackedAt[2].Load(), counts)

	// Through the API: the list and each node.
	ctx := ctxT(t)
	list, err := tc.ListNodes(ctx, &halov1.ListNodesRequest{Cluster: "prod"})
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]int64{}
	for _, n := range list.GetNodes() {
		listed[n.GetName()] = n.GetRevision()
	}
	for _, name := range slices.Sorted(maps.Keys(acked)) {
		if rev, ok := listed[name]; !ok || rev != acked[name] {
			t.Errorf("ListNodes: acknowledged node %s (revision %d) is listed at revision %d (listed: %v)", name, acked[name], rev, ok)
		}
		n, err := tc.GetNode(ctx, &halov1.GetNodeRequest{Cluster: "prod", Name: name})
		if err != nil || n.GetRevision() != acked[name] {
			t.Errorf("GetNode %s: revision %d, %v; acknowledged at %d", name, n.GetRevision(), err, acked[name])
		}
	}
	for name := range listed {
		if _, ok := acked[name]; !ok {
			if _, ok := failed[name]; !ok {
				t.Errorf("node %s is stored, and nobody wrote it", name)
			}
		}
	}

	// In etcd, as each surviving member serves it on its own.
	for i := range 3 {
		if i == leader {
			continue
		}
		ec := servertest.EtcdClient(t, cluster.Endpoint(i))
		resp, err := ec.Get(ctx, store.NewKeys(store.DefaultPrefix).NodesPrefix("prod"), clientv3.WithPrefix())
		if err != nil {
			t.Fatalf("member %d: %v", i, err)
		}
		stored := map[string]int64{}
		for _, kv := range resp.Kvs {
			stored[string(kv.Key)] = kv.ModRevision
		}
		lost := 0
		for name, rev := range acked {
			if stored[store.NewKeys(store.DefaultPrefix).Node("prod", name)] != rev {
				lost++
			}
		}
		if lost > 0 {
			t.Errorf("member %d: %d of %d acknowledged writes are missing or at another revision", i, lost, len(acked))
		}
	}

	// And writes go on.
	if _, err := tc.PutNode(ctx, &halov1.PutNodeRequest{Node: newNode("prod", "after", "10.9.9.9", 0, wk)}); err != nil {
		t.Fatalf("a write on the two members left: %v", err)
	}
}

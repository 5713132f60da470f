package server_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/durationpb"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/internal/waitfor"
	"github.com/halolb/halo/server"
	"github.com/halolb/halo/server/ads/adstest"
	"github.com/halolb/halo/server/servertest"
	"github.com/halolb/halo/server/store"
)

// TestEtcdDownAndBack (server_test.go) shows health and admin writes
// during an etcd outage. These show what the nodes see: the replicas keep
// serving their last snapshots over xDS to the streams that stay open and to
// the ones that open during the outage; and when etcd is back, the replicas
// catch up, also when what they missed has been compacted away.

// outageTopology stores cluster "local" (local LBs for the apiserver and
// etcd) with three masters that are etcd members, on loopback addresses
// where nothing listens, and a worker. Health checks are fast, so that the
// prober has marked every backend unhealthy soon (see settled).
func outageTopology(t *testing.T, tc halov1.TopologyServiceClient) {
	t.Helper()
	ctx := ctxT(t)
	hc := &halov1.HealthCheck{Interval: durationpb.New(200 * time.Millisecond), Timeout: durationpb.New(200 * time.Millisecond), Rise: 1, Fall: 1}
	c := &halov1.Cluster{Name: "local",
		Apiserver: &halov1.ApiServer{LocalLbPort: 16443, HealthCheck: hc},
		Etcd:      &halov1.Etcd{LocalLb: true, LocalLbPort: 12379, HealthCheck: hc}}
	if _, err := tc.PutCluster(ctx, &halov1.PutClusterRequest{Cluster: c}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*halov1.Node{
		newNode("local", "master-1", "127.0.0.41", 0, cp, et),
		newNode("local", "master-2", "127.0.0.42", 1, cp, et),
		newNode("local", "master-3", "127.0.0.43", 2, cp, et),
		newNode("local", "worker-1", "127.0.0.51", 0, wk),
	} {
		if _, err := tc.PutNode(ctx, &halov1.PutNodeRequest{Node: n}); err != nil {
			t.Fatal(err)
		}
	}
}

// settled waits until the prober has concluded on every backend of
// "local": from then on nothing changes in etcd but what the test writes
// (the probes keep failing, and only transitions are stored).
func settled(t *testing.T, sc halov1.StatusServiceClient, backends int) {
	t.Helper()
	poll(t, "every backend probed", func() bool {
		resp, err := sc.ListBackends(ctxT(t), &halov1.ListBackendsRequest{Cluster: "local"})
		if err != nil || len(resp.GetBackends()) != backends {
			return false
		}
		for _, b := range resp.GetBackends() {
			if b.GetState() == halov1.BackendState_BACKEND_STATE_UNSPECIFIED {
				return false
			}
		}
		return true
	})
}

// heldAll is what a client holds of every type, by type and name.
func heldAll(c *adstest.Client) map[string]map[string]string {
	return map[string]map[string]string{ldsT: c.Held(ldsT), cdsT: c.Held(cdsT), edsT: c.Held(edsT)}
}

// holds is a condition: the client holds exactly want (names and versions).
func holds(want map[string]map[string]string) func(c *adstest.Client) bool {
	return func(c *adstest.Client) bool { return fmt.Sprint(heldAll(c)) == fmt.Sprint(want) }
}

// apiservers is a condition: the client's kube-apiserver endpoints are
// exactly these (in any order).
func apiservers(t *testing.T, want ...string) func(c *adstest.Client) bool {
	slices.Sort(want)
	return func(c *adstest.Client) bool {
		got := endpointAddrs(t, c, "kube-apiserver")
		slices.Sort(got)
		return slices.Equal(got, want)
	}
}

// TestXDSServesThroughEtcdOutage: with etcd down, two replicas keep
// serving what they had: the streams open before the outage stay open and
// are sent nothing (nothing is taken away from a node), and nodes that
// connect during the outage, to either replica over Delta or SotW, get the
// complete resources, the same versions as before. Admin writes fail with
// UNAVAILABLE. When etcd returns, a change written right after reaches every
// stream, the ones that lived through the outage too.
func TestXDSServesThroughEtcdOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("etcd outage test")
	}
	etcd := servertest.NewEtcd(t)
	// The request timeout bounds the refused writes during the outage;
	// the writes before and after it must not hit it on a loaded machine.
	named := func(name string) servertest.Option {
		return func(c *server.Config) { c.ReplicaName, c.EtcdRequestTimeout = name, 3*time.Second }
	}
	a := servertest.New(t, servertest.WithEtcd(etcd), named("replica-a"))
	b := servertest.New(t, servertest.WithEtcd(etcd), named("replica-b"))
	replicas := []*servertest.Server{a, b}
	outageTopology(t, halov1.NewTopologyServiceClient(a.Conn))
	settled(t, halov1.NewStatusServiceClient(a.Conn), 6)

	// Before the outage: a Delta and a SotW node on each replica, in sync.
	type stream struct {
		on *servertest.Server
		c  *adstest.Client
	}
	var before []stream
	for _, r := range replicas {
		for _, delta := range []bool{true, false} {
			node := nodeID("local", "worker-1")
			node.UserAgentName = fmt.Sprintf("before-%s-delta=%v", r.Config.ReplicaName, delta)
			c := agent(t, r.Conn, &adstest.Client{Node: node, Delta: delta})
			before = append(before, stream{r, c})
		}
	}
	for _, s := range before {
		waitFor(t, s.c, "the initial resources", apiservers(t, "127.0.0.41:6443", "127.0.0.42:6443", "127.0.0.43:6443"))
		waitAgentInSync(t, halov1.NewStatusServiceClient(s.on.Conn), "local", "worker-1", s.c.Node.GetUserAgentName())
	}
	// Versions are content hashes: both replicas serve the same ones, once
	// both have taken in the prober's last transitions (one may be a
	// moment behind the other).
	poll(t, "replica-b's nodes hold what replica-a's hold", func() bool {
		for i, s := range before[2:] {
			if fmt.Sprint(heldAll(s.c)) != fmt.Sprint(heldAll(before[i].c)) {
				return false
			}
		}
		return true
	})
	want := map[bool]map[string]map[string]string{true: heldAll(before[0].c), false: heldAll(before[1].c)}
	if len(want[true][edsT]) != 2 || len(want[true][ldsT]) != 2 {
		t.Fatalf("the worker holds %v", want[true])
	}

	etcd.Stop()
	for _, r := range replicas {
		waitHealth(t, healthpb.NewHealthClient(r.Conn), "", healthpb.HealthCheckResponse_NOT_SERVING)
	}
	seen := make([]int, len(before))
	for i, s := range before {
		seen[i] = len(s.c.Events())
	}

	// Nodes connecting during the outage get everything, from either
	// replica, over both protocols.
	var during []*adstest.Client
	for _, r := range replicas {
		for _, delta := range []bool{true, false} {
			node := nodeID("local", "worker-1")
			node.UserAgentName = fmt.Sprintf("during-%s-delta=%v", r.Config.ReplicaName, delta)
			c := agent(t, r.Conn, &adstest.Client{Node: node, Delta: delta})
			waitFor(t, c, fmt.Sprintf("everything from %s during the outage", r.Config.ReplicaName), holds(want[delta]))
			waitAgentInSync(t, halov1.NewStatusServiceClient(r.Conn), "local", "worker-1", node.UserAgentName)
			during = append(during, c)
		}
	}

	// Admin writes fail with UNAVAILABLE on both replicas.
	for _, r := range replicas {
		_, err := halov1.NewTopologyServiceClient(r.Conn).PutNode(ctxT(t), &halov1.PutNodeRequest{Node: newNode("local", "during-outage", "127.0.0.59", 0, wk)})
		wantCode(t, err, codes.Unavailable)
	}

	// The streams open before the outage are still open and were sent
	// nothing.
	for i, s := range before {
		if n := len(s.c.Events()); n != seen[i] {
			t.Errorf("%s: %d responses during the outage: %s", s.c.Node.GetUserAgentName(), n-seen[i], describeEvents(s.c.Events()[seen[i]:]))
		}
		if got := heldAll(s.c); fmt.Sprint(got) != fmt.Sprint(want[s.c.Delta]) {
			t.Errorf("%s holds %v during the outage, had %v", s.c.Node.GetUserAgentName(), got, want[s.c.Delta])
		}
	}

	// etcd returns: a change written right after reaches every stream.
	etcd.Start()
	for _, r := range replicas {
		waitHealth(t, healthpb.NewHealthClient(r.Conn), "", healthpb.HealthCheckResponse_SERVING)
	}
	tc := halov1.NewTopologyServiceClient(b.Conn)
	if _, err := tc.PutNode(ctxT(t), &halov1.PutNodeRequest{Node: newNode("local", "master-4", "127.0.0.44", 3, cp, et)}); err != nil {
		t.Fatal(err)
	}
	all := during
	for _, s := range before {
		all = append(all, s.c)
	}
	for _, c := range all {
		waitFor(t, c, "the master added after the outage", apiservers(t, "127.0.0.41:6443", "127.0.0.42:6443", "127.0.0.43:6443", "127.0.0.44:6443"))
	}
	if _, err := tc.GetNode(ctxT(t), &halov1.GetNodeRequest{Cluster: "local", Name: "during-outage"}); err == nil {
		t.Error("the write refused during the outage was stored")
	} else {
		wantCode(t, err, codes.NotFound)
	}
}

// TestXDSCatchesUpAfterCompaction cuts one replica (a) off etcd while the
// other (b) changes the topology and etcd compacts its history, and the
// cut-off lasts longer than a's registration lease. While cut off, a keeps
// serving its last snapshot (to a node connected before and to one
// connecting then) and refuses admin writes with UNAVAILABLE. When the
// link returns, a notices that its watch fell behind the compaction, loads
// everything again, and its nodes get what b's node has, on the streams
// they have; a registers again, so that ListAgents on b shows a's nodes.
func TestXDSCatchesUpAfterCompaction(t *testing.T) {
	if testing.Short() {
		t.Skip("etcd outage test")
	}
	etcd := servertest.NewEtcd(t)
	socket := strings.TrimPrefix(etcd.Endpoint, "unix://")
	link := servertest.NewForwarder(t)
	link.SetTarget("unix", socket)
	logs := &logRecorder{}
	a := servertest.New(t, servertest.WithEtcdEndpoints(link.URL()), func(c *server.Config) {
		// Short enough that the cut-off outlives a's registration soon;
		// long enough that a loaded machine neither fails a's writes
		// before the cut nor lets its lease lapse while the link is up.
		c.ReplicaName, c.EtcdRequestTimeout, c.ReplicaTTL = "replica-a", 3*time.Second, 3*time.Second
		c.Logger = slog.New(&recordingHandler{Handler: c.Logger.Handler(), r: logs})
	})
	b := servertest.New(t, servertest.WithEtcd(etcd), func(c *server.Config) { c.ReplicaName = "replica-b" })
	tcB := halov1.NewTopologyServiceClient(b.Conn)
	outageTopology(t, tcB)
	settled(t, halov1.NewStatusServiceClient(b.Conn), 6)

	onA := agent(t, a.Conn, &adstest.Client{Node: nodeID("local", "worker-1"), Delta: true})
	onB := agent(t, b.Conn, &adstest.Client{Node: nodeID("local", "worker-1"), Delta: true})
	old := []string{"127.0.0.41:6443", "127.0.0.42:6443", "127.0.0.43:6443"}
	waitFor(t, onA, "the initial resources on a", apiservers(t, old...))
	waitFor(t, onB, "the initial resources on b", apiservers(t, old...))
	waitAgentInSync(t, halov1.NewStatusServiceClient(a.Conn), "local", "worker-1", "adstest")
	// Either node may not have its last health transition yet: compare
	// what both hold at each look.
	waitfor.Nil(t, 20*time.Second, "a and b agree", func() error {
		if a, b := fmt.Sprint(heldAll(onA)), fmt.Sprint(heldAll(onB)); a != b {
			return fmt.Errorf("a's node holds %s, b's %s", a, b)
		}
		return nil
	})
	listedOn := func(replica string) bool {
		resp, err := halov1.NewStatusServiceClient(b.Conn).ListAgents(ctxT(t), &halov1.ListAgentsRequest{Cluster: "local"})
		if err != nil {
			t.Fatal(err)
		}
		for _, ag := range resp.GetAgents() {
			if ag.GetReplica() == replica && ag.GetNode() == "worker-1" {
				return true
			}
		}
		return false
	}
	poll(t, "b lists a's node", func() bool { return listedOn("replica-a") })

	link.Cut()
	waitHealth(t, healthpb.NewHealthClient(a.Conn), "", healthpb.HealthCheckResponse_NOT_SERVING)
	_, err := halov1.NewTopologyServiceClient(a.Conn).PutNode(ctxT(t), &halov1.PutNodeRequest{Node: newNode("local", "cut-off", "127.0.0.59", 0, wk)})
	wantCode(t, err, codes.Unavailable)
	held := heldAll(onA)

	// b changes the topology (two revisions), then etcd compacts them away.
	if _, err := tcB.PutNode(ctxT(t), &halov1.PutNodeRequest{Node: newNode("local", "master-4", "127.0.0.44", 3, cp, et)}); err != nil {
		t.Fatal(err)
	}
	del, err := tcB.DeleteNode(ctxT(t), &halov1.DeleteNodeRequest{Cluster: "local", Name: "master-1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := etcd.Client.Compact(ctxT(t), del.GetRevision(), clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	current := []string{"127.0.0.42:6443", "127.0.0.43:6443", "127.0.0.44:6443"}
	waitFor(t, onB, "b's change on b", apiservers(t, current...))

	// a's lease expires: it is no longer registered.
	poll(t, "a's registration expired", func() bool {
		resp, err := etcd.Client.Get(ctxT(t), store.NewKeys(store.DefaultPrefix).Replica("replica-a"))
		return err == nil && len(resp.Kvs) == 0
	})
	// Meanwhile a serves what it had, to the node connected before and to
	// one that connects now.
	late := agent(t, a.Conn, &adstest.Client{Node: nodeID("local", "worker-1"), Delta: true})
	waitFor(t, late, "a's last snapshot while cut off", holds(held))
	if got := heldAll(onA); fmt.Sprint(got) != fmt.Sprint(held) {
		t.Fatalf("while cut off, a's node went from %v to %v", held, got)
	}

	link.SetTarget("unix", socket)
	waitHealth(t, healthpb.NewHealthClient(a.Conn), "", healthpb.HealthCheckResponse_SERVING)
	for _, c := range []*adstest.Client{onA, late} {
		waitFor(t, c, "b's change on a", apiservers(t, current...))
	}
	// The same versions as b's node, once both settled on the new master's
	// health.
	settled(t, halov1.NewStatusServiceClient(b.Conn), 6)
	poll(t, "a's nodes hold what b's node holds", func() bool {
		w := fmt.Sprint(heldAll(onB))
		return fmt.Sprint(heldAll(onA)) == w && fmt.Sprint(heldAll(late)) == w
	})
	if !logs.has("topology watch fell behind etcd's compaction") {
		t.Errorf("a caught up without noticing the compaction (a full reload after a broken watch?); its warnings:\n%s", logs)
	}
	// a is a full replica again: it writes, and is registered.
	if _, err := halov1.NewTopologyServiceClient(a.Conn).PutNode(ctxT(t), &halov1.PutNodeRequest{Node: newNode("local", "after", "127.0.0.59", 0, wk)}); err != nil {
		t.Fatal(err)
	}
	poll(t, "b lists a's nodes again", func() bool { return listedOn("replica-a") })
}

// logRecorder keeps the messages a server logged.
type logRecorder struct {
	mu   sync.Mutex
	msgs []string
}

func (r *logRecorder) has(msg string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.ContainsFunc(r.msgs, func(m string) bool { return strings.HasPrefix(m, msg) })
}

func (r *logRecorder) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.msgs, "\n")
}

// recordingHandler records the message of every record it passes on.
type recordingHandler struct {
	slog.Handler
	r *logRecorder
}

func (h *recordingHandler) Handle(ctx context.Context, rec slog.Record) error {
	h.r.mu.Lock()
	h.r.msgs = append(h.r.msgs, rec.Message)
	h.r.mu.Unlock()
	return h.Handler.Handle(ctx, rec)
}

func (h *recordingHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &recordingHandler{Handler: h.Handler.WithAttrs(attrs), r: h.r}
}

func (h *recordingHandler) WithGroup(name string) slog.Handler {
	return &recordingHandler{Handler: h.Handler.WithGroup(name), r: h.r}
}

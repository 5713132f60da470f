package topowatch_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/internal/waitfor"
	"github.com/halolb/halo/server/servertest"
	"github.com/halolb/halo/server/store"
	"github.com/halolb/halo/server/topowatch"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// wait bounds a wait for something that takes a few etcd round trips.
const wait = 30 * time.Second

var (
	cp = halov1.Role_ROLE_CONTROL_PLANE
	et = halov1.Role_ROLE_ETCD
	wk = halov1.Role_ROLE_WORKER
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	t.Cleanup(cancel)
	return ctx
}

// recorder is a consumer that writes down every call, and keeps the
// topology the calls describe.
type recorder struct {
	mu    sync.Mutex
	calls []string
	rev   int64
	topo  map[string]*store.ClusterTopology
}

func (r *recorder) Reset(all map[string]*store.ClusterTopology, rev int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, fmt.Sprintf("reset %d: %s", rev, render(all)))
	r.topo, r.rev = map[string]*store.ClusterTopology{}, rev
	for name, t := range all {
		r.topo[name] = &store.ClusterTopology{Cluster: t.Cluster, Nodes: slices.Clone(t.Nodes), Backends: slices.Clone(t.Backends)}
	}
}

func (r *recorder) Apply(ev topowatch.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ev.Revision <= r.rev {
		r.calls = append(r.calls, fmt.Sprintf("out of order: %d after %d", ev.Revision, r.rev))
	}
	r.rev = ev.Revision
	if r.topo == nil {
		r.calls = append(r.calls, fmt.Sprintf("apply before any reset: %d", ev.Revision))
		return
	}
	var parts []string
	for _, ch := range ev.Changes {
		parts = append(parts, describe(ch))
		t := r.topo[ch.ClusterName()]
		if _, put := ch.(topowatch.ClusterPut); t == nil && !put {
			parts = append(parts, "(of an unknown cluster)")
			continue
		}
		switch c := ch.(type) {
		case topowatch.ClusterPut:
			if t == nil {
				t = &store.ClusterTopology{}
				r.topo[ch.ClusterName()] = t
			}
			t.Cluster = c.Cluster
		case topowatch.ClusterDeleted:
			delete(r.topo, ch.ClusterName())
		case topowatch.NodePut:
			t.Nodes = append(slices.DeleteFunc(t.Nodes, func(n *halov1.Node) bool { return n.GetName() == c.Node.GetName() }), c.Node)
		case topowatch.NodeDeleted:
			t.Nodes = slices.DeleteFunc(t.Nodes, func(n *halov1.Node) bool { return n.GetName() == c.Node.GetName() })
		case topowatch.StatusPut:
			t.Backends = append(slices.DeleteFunc(t.Backends, sameBackend(c.Status)), c.Status)
		case topowatch.StatusDeleted:
			t.Backends = slices.DeleteFunc(t.Backends, sameBackend(c.Status))
		}
	}
	r.calls = append(r.calls, fmt.Sprintf("%d: %s", ev.Revision, strings.Join(parts, "; ")))
}

func sameBackend(st *halov1.BackendStatus) func(*halov1.BackendStatus) bool {
	return func(o *halov1.BackendStatus) bool { return o.GetNode() == st.GetNode() && o.GetKind() == st.GetKind() }
}

// take returns the calls written down since the last take.
func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.calls
	r.calls = nil
	return c
}

// state is the topology the calls so far describe, rendered, and its
// revision.
func (r *recorder) state() (string, int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return render(r.topo), r.rev
}

// waitCalls waits until the recorder has written down n calls, and takes
// them.
func (r *recorder) waitCalls(t *testing.T, n int) []string {
	t.Helper()
	var got []string
	waitfor.True(t, wait, fmt.Sprintf("%d calls", n), func() bool {
		got = append(got, r.take()...)
		return len(got) >= n
	})
	return got
}

func describe(ch topowatch.Change) string {
	switch c := ch.(type) {
	case topowatch.ClusterPut:
		return fmt.Sprintf("put cluster %s (was %v)", c.Cluster.GetName(), c.Old != nil)
	case topowatch.ClusterDeleted:
		return "delete cluster " + c.Cluster.GetName()
	case topowatch.NodePut:
		was := "new"
		if c.Old != nil {
			was = "was " + roles(c.Old)
		}
		return fmt.Sprintf("put node %s/%s %s (%s)", c.Node.GetCluster(), c.Node.GetName(), roles(c.Node), was)
	case topowatch.NodeDeleted:
		return fmt.Sprintf("delete node %s/%s %s", c.Node.GetCluster(), c.Node.GetName(), roles(c.Node))
	case topowatch.StatusPut:
		return fmt.Sprintf("put status %s/%s/%s %s", c.Status.GetCluster(), c.Status.GetNode(), kind(c.Status), state(c.Status))
	case topowatch.StatusDeleted:
		return fmt.Sprintf("delete status %s/%s/%s", c.Status.GetCluster(), c.Status.GetNode(), kind(c.Status))
	}
	return fmt.Sprintf("unknown change %T", ch)
}

func roles(n *halov1.Node) string {
	var out []string
	for _, r := range n.GetRoles() {
		out = append(out, strings.ToLower(strings.TrimPrefix(r.String(), "ROLE_")))
	}
	return "[" + strings.Join(out, " ") + "]"
}

func kind(st *halov1.BackendStatus) string {
	return strings.ToLower(strings.TrimPrefix(st.GetKind().String(), "BACKEND_KIND_"))
}

func state(st *halov1.BackendStatus) string {
	return strings.ToLower(strings.TrimPrefix(st.GetState().String(), "BACKEND_STATE_"))
}

// render is a topology as one sorted line: every object with its
// revision.
func render(all map[string]*store.ClusterTopology) string {
	var out []string
	for name, t := range all {
		out = append(out, fmt.Sprintf("cluster %s@%d", name, t.Cluster.GetRevision()))
		for _, n := range t.Nodes {
			out = append(out, fmt.Sprintf("node %s/%s@%d%s", name, n.GetName(), n.GetRevision(), roles(n)))
		}
		for _, st := range t.Backends {
			out = append(out, fmt.Sprintf("status %s/%s/%s %s", name, st.GetNode(), kind(st), state(st)))
		}
	}
	slices.Sort(out)
	return "{" + strings.Join(out, ", ") + "}"
}

// env is an etcd, a store of it, and a watcher of that store (through
// link, when the test cuts etcd off).
type env struct {
	etcd *servertest.Etcd
	st   *store.Store // straight to etcd
	w    *topowatch.Watcher
	reg  *prometheus.Registry
	logs *logs
}

func newEnv(t *testing.T, link *servertest.Forwarder) *env {
	t.Helper()
	if testing.Short() {
		t.Skip("embedded etcd")
	}
	e := &env{etcd: servertest.NewEtcd(t), reg: prometheus.NewRegistry(), logs: &logs{}}
	var err error
	if e.st, err = store.New(store.Config{Client: e.etcd.Client}); err != nil {
		t.Fatal(err)
	}
	watched := e.st
	if link != nil {
		link.SetTarget("unix", strings.TrimPrefix(e.etcd.Endpoint, "unix://"))
		client := servertest.EtcdClient(t, link.URL())
		if watched, err = store.New(store.Config{Client: client, RequestTimeout: 200 * time.Millisecond}); err != nil {
			t.Fatal(err)
		}
	}
	e.w, err = topowatch.New(topowatch.Config{Store: watched, Registerer: e.reg, RetryInterval: 20 * time.Millisecond,
		Logger: slog.New(e.logs)})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// run runs the watcher until the test ends.
func (e *env) run(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// relists is the count of full reloads for reason.
func (e *env) relists(t *testing.T, reason string) float64 {
	t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "halo_topology_relists_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no halo_topology_relists_total{reason=%q}", reason)
	return 0
}

// loadAll is what etcd holds, rendered, and its revision.
func (e *env) loadAll(t *testing.T) (string, int64) {
	t.Helper()
	all, rev, err := e.st.LoadAll(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	return render(all), rev
}

func (e *env) putCluster(t *testing.T, name string) *halov1.Cluster {
	t.Helper()
	c, err := e.st.PutCluster(ctxT(t), &halov1.Cluster{Name: name}, 0)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (e *env) putNode(t *testing.T, cluster, name, ip string, ordinal int32, roles ...halov1.Role) *halov1.Node {
	t.Helper()
	n, err := e.st.PutNode(ctxT(t), &halov1.Node{Cluster: cluster, Name: name, Ip: ip, Ordinal: ordinal, Roles: roles}, 0)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// logs keeps the warnings logged.
type logs struct {
	mu    sync.Mutex
	lines []string
}

func (l *logs) Enabled(_ context.Context, lvl slog.Level) bool { return lvl >= slog.LevelWarn }
func (l *logs) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, r.Message)
	return nil
}
func (l *logs) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logs) WithGroup(string) slog.Handler      { return l }

func (l *logs) has(msg string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.ContainsFunc(l.lines, func(s string) bool { return strings.Contains(s, msg) })
}

// TestTypedChanges: every write reaches the consumer as the typed changes
// of its revision, a node change with what the node was, and deleting a
// cluster with its nodes as one change.
func TestTypedChanges(t *testing.T) {
	e := newEnv(t, nil)
	r := &recorder{}
	e.w.Subscribe(r)
	e.run(t)
	if got := r.waitCalls(t, 1); len(got) != 1 || !strings.HasPrefix(got[0], "reset ") || !strings.HasSuffix(got[0], ": {}") {
		t.Fatalf("first calls %q, want one reset of nothing", got)
	}

	c := e.putCluster(t, "prod")
	m1 := e.putNode(t, "prod", "m1", "10.0.0.1", 0, cp, et)
	w1 := e.putNode(t, "prod", "w1", "10.0.1.1", 0, wk)
	demoted := e.putNode(t, "prod", "m1", "10.0.0.1", 0, wk)
	if err := e.st.PutBackendStatus(ctxT(t), &halov1.BackendStatus{Cluster: "prod", Node: "w1", Kind: halov1.BackendKind_BACKEND_KIND_ETCD,
		State: halov1.BackendState_BACKEND_STATE_UNHEALTHY}); err != nil {
		t.Fatal(err)
	}
	delW1, err := e.st.DeleteNode(ctxT(t), "prod", "w1", 0)
	if err != nil {
		t.Fatal(err)
	}
	c2 := e.putCluster(t, "prod")
	delProd, _, err := e.st.DeleteCluster(ctxT(t), "prod", true, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		fmt.Sprintf("%d: put cluster prod (was false)", c.GetRevision()),
		fmt.Sprintf("%d: put node prod/m1 [control_plane etcd] (new)", m1.GetRevision()),
		fmt.Sprintf("%d: put node prod/w1 [worker] (new)", w1.GetRevision()),
		fmt.Sprintf("%d: put node prod/m1 [worker] (was [control_plane etcd])", demoted.GetRevision()),
		// PutBackendStatus returns no revision: the next one.
		fmt.Sprintf("%d: put status prod/w1/etcd unhealthy", demoted.GetRevision()+1),
		fmt.Sprintf("%d: delete node prod/w1 [worker]; delete status prod/w1/etcd", delW1),
		fmt.Sprintf("%d: put cluster prod (was true)", c2.GetRevision()),
		fmt.Sprintf("%d: delete cluster prod", delProd),
	}
	got := r.waitCalls(t, len(want))
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestSubscribeHandsTheCurrentTopology: a consumer subscribing to a
// running watcher gets the topology at once, from the watcher's copy (as
// LoadAll would return it), then every change; after unsubscribing,
// nothing.
func TestSubscribeHandsTheCurrentTopology(t *testing.T) {
	e := newEnv(t, nil)
	first := &recorder{}
	e.w.Subscribe(first)
	e.run(t)
	e.putCluster(t, "prod")
	e.putCluster(t, "test")
	e.putNode(t, "prod", "m1", "10.0.0.1", 0, cp, et)
	e.putNode(t, "prod", "w1", "10.0.1.1", 0, wk)
	e.putNode(t, "prod", "w1", "10.0.1.9", 0, wk)
	e.putNode(t, "test", "m1", "10.0.0.1", 0, cp)
	if err := e.st.PutBackendStatus(ctxT(t), &halov1.BackendStatus{Cluster: "prod", Node: "m1", Kind: halov1.BackendKind_BACKEND_KIND_APISERVER,
		State: halov1.BackendState_BACKEND_STATE_HEALTHY}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.st.DeleteNode(ctxT(t), "test", "m1", 0); err != nil {
		t.Fatal(err)
	}
	stored, rev := e.loadAll(t)
	waitfor.True(t, wait, "the first consumer caught up", func() bool {
		_, got := first.state()
		return got == rev
	})
	if got, _ := first.state(); got != stored {
		t.Errorf("the first consumer, from its reset and changes:\n%s\nwant (LoadAll):\n%s", got, stored)
	}

	late := &recorder{}
	unsubscribe := e.w.Subscribe(late)
	if got := late.take(); len(got) != 1 || got[0] != fmt.Sprintf("reset %d: %s", rev, stored) {
		t.Errorf("at Subscribe: %q, want one reset at %d to %s", got, rev, stored)
	}
	n := e.putNode(t, "prod", "w2", "10.0.1.2", 1, wk)
	if got := late.waitCalls(t, 1); len(got) != 1 || got[0] != fmt.Sprintf("%d: put node prod/w2 [worker] (new)", n.GetRevision()) {
		t.Errorf("after Subscribe: %q", got)
	}
	unsubscribe()
	n = e.putNode(t, "prod", "w3", "10.0.1.3", 2, wk)
	waitfor.True(t, wait, "the first consumer saw w3", func() bool {
		_, got := first.state()
		return got == n.GetRevision()
	})
	if got := late.take(); len(got) != 0 {
		t.Errorf("after unsubscribing: %q", got)
	}
}

// TestRelistsAfterCompactionWhileCutOff: the watcher is cut off etcd while
// the topology changes and etcd compacts those changes away; when the link
// returns, its watch has fallen behind: it logs and counts that, loads
// everything again, and hands the consumer the topology as it is now.
func TestRelistsAfterCompactionWhileCutOff(t *testing.T) {
	link := servertest.NewForwarder(t)
	e := newEnv(t, link)
	r := &recorder{}
	e.w.Subscribe(r)
	e.run(t)
	e.putCluster(t, "prod")
	e.putNode(t, "prod", "m1", "10.0.0.1", 0, cp, et)
	e.putNode(t, "prod", "w1", "10.0.1.1", 0, wk)
	_, rev := e.loadAll(t)
	waitfor.True(t, wait, "the consumer caught up", func() bool {
		_, got := r.state()
		return got == rev
	})
	r.take()

	link.Cut()
	e.putNode(t, "prod", "m2", "10.0.0.2", 1, cp, et)
	if _, err := e.st.DeleteNode(ctxT(t), "prod", "w1", 0); err != nil {
		t.Fatal(err)
	}
	stored, rev := e.loadAll(t)
	if _, err := e.etcd.Client.Compact(ctxT(t), rev, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	link.SetTarget("unix", strings.TrimPrefix(e.etcd.Endpoint, "unix://"))

	waitfor.True(t, wait, "the consumer caught up after the link returned", func() bool {
		_, got := r.state()
		return got >= rev
	})
	if got, _ := r.state(); got != stored {
		t.Errorf("after the link returned:\n%s\nwant:\n%s", got, stored)
	}
	got := r.take()
	if len(got) == 0 || !strings.HasPrefix(got[len(got)-1], "reset ") {
		t.Errorf("the consumer caught up without a reset: %q", got)
	}
	if n := e.relists(t, "compacted"); n < 1 {
		t.Errorf("relists after a compaction: %v", n)
	}
	if !e.logs.has("topology watch fell behind etcd's compaction") {
		t.Errorf("the compaction was not logged: %q", e.logs.lines)
	}
}

// TestRetriesUntilEtcdAnswers: a watcher that cannot reach etcd counts
// and logs each failed load, retries after a pause, and once etcd answers,
// hands the consumer the topology and follows it.
func TestRetriesUntilEtcdAnswers(t *testing.T) {
	link := servertest.NewForwarder(t)
	e := newEnv(t, link)
	link.Cut()
	e.putCluster(t, "prod")
	e.putNode(t, "prod", "m1", "10.0.0.1", 0, cp, et)
	r := &recorder{}
	e.w.Subscribe(r)
	e.run(t)
	waitfor.True(t, wait, "failed loads counted", func() bool { return e.relists(t, "error") >= 3 })
	if got := r.take(); len(got) != 0 {
		t.Fatalf("calls while etcd was out of reach: %q", got)
	}
	if !e.logs.has("topology watch failed") {
		t.Errorf("the failures were not logged: %q", e.logs.lines)
	}

	link.SetTarget("unix", strings.TrimPrefix(e.etcd.Endpoint, "unix://"))
	stored, rev := e.loadAll(t)
	got := r.waitCalls(t, 1)
	if got[0] != fmt.Sprintf("reset %d: %s", rev, stored) {
		t.Errorf("once etcd answered: %q, want a reset at %d to %s", got, rev, stored)
	}
	n := e.putNode(t, "prod", "w1", "10.0.1.1", 0, wk)
	if got := r.waitCalls(t, 1); got[0] != fmt.Sprintf("%d: put node prod/w1 [worker] (new)", n.GetRevision()) {
		t.Errorf("then: %q", got)
	}
}

// Package topowatch follows the topology in etcd for every part of a
// replica that acts on it, through one etcd watch: it loads everything,
// watches from the next revision, loads everything again after a compaction
// (a watch that fell behind) or an error (after a backoff), and hands each
// change, typed, to its consumers.
//
// One Watcher runs per replica and fans out to every subscribed Consumer
// (the publisher of xDS snapshots, the health prober, ...), so that a
// replica holds one watch however many parts follow the topology. A
// consumer that only cares at times (the prober, only while its replica
// leads the probes) subscribes when it starts caring and unsubscribes when
// it stops: Subscribe hands it the current topology at once, from the
// watcher's own copy, without reading etcd, so it never needs to ignore
// changes or to load anything itself.
//
// Consumers are called one at a time, from the watcher's goroutine (or
// from the goroutine calling Subscribe, for its first Reset), in revision
// order: a consumer needs no lock for what only these calls touch, and must
// not block for long, nor call Subscribe or an unsubscribe function.
package topowatch

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/internal/backoff"
	"github.com/halolb/halo/server/store"
)

// Consumer is told the topology and its changes.
type Consumer interface {
	// Reset replaces everything the consumer knew with all, the whole
	// topology at revision rev: at the first load, after a reload, and at
	// Subscribe. all is shared with the other consumers and with the
	// watcher: read it, never change it.
	Reset(all map[string]*store.ClusterTopology, rev int64)
	// Apply is one etcd revision's changes, in the order they were
	// written, after the Reset or Apply before it. The changes' objects
	// are shared too: never change them.
	Apply(ev Event)
}

// Event is what one etcd revision changed in the topology.
type Event struct {
	// Revision is the etcd revision of the changes.
	Revision int64
	// Changes holds at least one change. A node or backend status change
	// only comes for a cluster that exists; deleting a cluster with its
	// nodes comes as one ClusterDeleted.
	Changes []Change
}

// Change is one of ClusterPut, ClusterDeleted, NodePut, NodeDeleted,
// StatusPut and StatusDeleted.
type Change interface {
	// ClusterName is the cluster the change is in.
	ClusterName() string
	change()
}

// ClusterPut is a cluster created or changed.
type ClusterPut struct {
	// Cluster is the stored cluster.
	Cluster *halov1.Cluster
	// Old is what it replaced, nil for a new cluster.
	Old *halov1.Cluster
}

// ClusterDeleted is a cluster deleted, with its nodes and their backend
// statuses (which come as no change of their own).
type ClusterDeleted struct {
	// Cluster is the cluster as it was last stored.
	Cluster *halov1.Cluster
}

// NodePut is a node registered or changed.
type NodePut struct {
	// Node is the stored node.
	Node *halov1.Node
	// Old is what it replaced, nil for a new node: whether Old or Node is
	// a backend (topology.IsBackend) says whether the backends changed.
	Old *halov1.Node
}

// NodeDeleted is a node deleted.
type NodeDeleted struct {
	// Node is the node as it was last stored.
	Node *halov1.Node
}

// StatusPut is a backend's health, as the prober stored it.
type StatusPut struct {
	Status *halov1.BackendStatus
}

// StatusDeleted is a backend's stored health deleted (with its node).
type StatusDeleted struct {
	// Status is the health last stored.
	Status *halov1.BackendStatus
}

// ClusterName is the cluster's name.
func (c ClusterPut) ClusterName() string { return c.Cluster.GetName() }

// ClusterName is the cluster's name.
func (c ClusterDeleted) ClusterName() string { return c.Cluster.GetName() }

// ClusterName is the node's cluster.
func (c NodePut) ClusterName() string { return c.Node.GetCluster() }

// ClusterName is the node's cluster.
func (c NodeDeleted) ClusterName() string { return c.Node.GetCluster() }

// ClusterName is the backend's cluster.
func (c StatusPut) ClusterName() string { return c.Status.GetCluster() }

// ClusterName is the backend's cluster.
func (c StatusDeleted) ClusterName() string { return c.Status.GetCluster() }

func (ClusterPut) change()     {}
func (ClusterDeleted) change() {}
func (NodePut) change()        {}
func (NodeDeleted) change()    {}
func (StatusPut) change()      {}
func (StatusDeleted) change()  {}

// Config configures a Watcher.
type Config struct {
	// Store is the topology. Required.
	Store *store.Store
	// Logger receives the watcher's logs. Nil: discard.
	Logger *slog.Logger
	// Registerer receives its metrics. Nil: none.
	Registerer prometheus.Registerer
	// RetryInterval is the first wait after etcd fails; it doubles up to
	// ten times that. Zero: 500ms.
	RetryInterval time.Duration
}

// Watcher follows the topology and tells its consumers. Create it with New,
// subscribe consumers, and run it with Run.
type Watcher struct {
	cfg     Config
	log     *slog.Logger
	relists *prometheus.CounterVec

	// mu orders the calls to consumers and guards what follows.
	mu     sync.Mutex
	subs   []*subscription
	loaded bool // the copy below holds a load
	rev    int64
	// clusters is the topology at rev: the Old of each change, and what a
	// consumer subscribing late is handed.
	clusters map[string]*cluster
}

type subscription struct{ c Consumer }

// cluster is one cluster as the watcher last saw it.
type cluster struct {
	c        *halov1.Cluster
	nodes    map[string]*halov1.Node
	statuses map[statusKey]*halov1.BackendStatus
}

type statusKey struct {
	node string
	kind halov1.BackendKind
}

// Relist reasons, the label of halo_topology_relists_total.
const (
	reasonCompacted = "compacted"
	reasonError     = "error"
)

// New returns a Watcher. It starts nothing.
func New(cfg Config) (*Watcher, error) {
	if cfg.Store == nil {
		return nil, errors.New("topowatch: Config.Store is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = 500 * time.Millisecond
	}
	relists := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "halo", Subsystem: "topology", Name: "relists_total",
		Help: "Full reloads of the topology, by reason: the watch fell behind etcd's compaction, or etcd failed."}, []string{"reason"})
	for _, r := range []string{reasonCompacted, reasonError} {
		relists.WithLabelValues(r)
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(relists); err != nil {
			return nil, fmt.Errorf("topowatch: register metrics: %w", err)
		}
	}
	return &Watcher{cfg: cfg, log: cfg.Logger, relists: relists}, nil
}

// Subscribe makes c a consumer until the returned function is called. If
// the topology is loaded, c.Reset is called with it before Subscribe
// returns; otherwise c's first call is the first load's Reset. After the
// returned function returns, c is called no more.
func (w *Watcher) Subscribe(c Consumer) (unsubscribe func()) {
	s := &subscription{c: c}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.subs = append(w.subs, s)
	if w.loaded {
		c.Reset(w.topologyLocked(), w.rev)
	}
	return func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.subs = slices.DeleteFunc(w.subs, func(o *subscription) bool { return o == s })
	}
}

// Run follows the topology until ctx ends; it returns nil then. etcd
// failures are retried with backoff, never fatal.
func (w *Watcher) Run(ctx context.Context) error {
	retry := backoff.Backoff{Initial: w.cfg.RetryInterval, Max: 10 * w.cfg.RetryInterval, Jitter: 0.2}
	for {
		all, rev, err := w.cfg.Store.LoadAll(ctx)
		if err == nil {
			retry.Reset()
			w.reset(all, rev)
			err = w.cfg.Store.Watch(ctx, "", rev+1, w.apply)
		}
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, store.ErrCompacted) {
			w.relists.WithLabelValues(reasonCompacted).Inc()
			w.log.Warn("topology watch fell behind etcd's compaction; loading everything again", "error", err)
			continue
		}
		w.relists.WithLabelValues(reasonError).Inc()
		w.log.Warn("topology watch failed; loading everything again after a pause", "error", err)
		if !retry.Wait(ctx) {
			return nil
		}
	}
}

// reset takes a full load and hands it to every consumer.
func (w *Watcher) reset(all map[string]*store.ClusterTopology, rev int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.clusters = make(map[string]*cluster, len(all))
	for name, t := range all {
		c := &cluster{c: t.Cluster, nodes: make(map[string]*halov1.Node, len(t.Nodes)), statuses: map[statusKey]*halov1.BackendStatus{}}
		for _, n := range t.Nodes {
			c.nodes[n.GetName()] = n
		}
		for _, st := range t.Backends {
			c.statuses[statusKey{st.GetNode(), st.GetKind()}] = st
		}
		w.clusters[name] = c
	}
	w.loaded, w.rev = true, rev
	w.log.Info("topology loaded", "clusters", len(all), "revision", rev)
	for _, s := range w.subs {
		s.c.Reset(all, rev)
	}
}

// apply follows one revision: it updates the watcher's copy, and tells the
// consumers what changed.
func (w *Watcher) apply(wev *halov1.WatchEvent) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.rev = max(w.rev, wev.GetRevision())
	ev := Event{Revision: wev.GetRevision()}
	for _, ch := range wev.GetChanges() {
		if c := w.change(ch); c != nil {
			ev.Changes = append(ev.Changes, c)
		}
	}
	if len(ev.Changes) == 0 {
		return nil // a progress report, or changes of a cluster already gone
	}
	for _, s := range w.subs {
		s.c.Apply(ev)
	}
	return nil
}

// change applies one stored change to the watcher's copy and types it; nil
// when there is nothing to tell (an object of a cluster deleted in the
// same write).
func (w *Watcher) change(ch *halov1.Change) Change {
	del := ch.GetType() == halov1.ChangeType_CHANGE_TYPE_DELETE
	switch o := ch.GetObject().(type) {
	case *halov1.Change_Cluster:
		name := o.Cluster.GetName()
		c := w.clusters[name]
		if del {
			if c == nil {
				return nil
			}
			delete(w.clusters, name)
			return ClusterDeleted{Cluster: c.c}
		}
		if c == nil {
			c = &cluster{nodes: map[string]*halov1.Node{}, statuses: map[statusKey]*halov1.BackendStatus{}}
			w.clusters[name] = c
		}
		old := c.c
		c.c = o.Cluster
		return ClusterPut{Cluster: o.Cluster, Old: old}
	case *halov1.Change_Node:
		n := o.Node
		c := w.clusters[n.GetCluster()]
		if c == nil {
			return nil
		}
		old := c.nodes[n.GetName()]
		if del {
			if old == nil {
				return nil
			}
			delete(c.nodes, n.GetName())
			return NodeDeleted{Node: old}
		}
		c.nodes[n.GetName()] = n
		return NodePut{Node: n, Old: old}
	case *halov1.Change_BackendStatus:
		st := o.BackendStatus
		c := w.clusters[st.GetCluster()]
		if c == nil {
			return nil
		}
		k := statusKey{st.GetNode(), st.GetKind()}
		if del {
			delete(c.statuses, k)
			return StatusDeleted{Status: st}
		}
		c.statuses[k] = st
		return StatusPut{Status: st}
	}
	return nil
}

// topologyLocked returns the watcher's copy as LoadAll would (nodes by
// name, statuses by node and kind).
func (w *Watcher) topologyLocked() map[string]*store.ClusterTopology {
	out := make(map[string]*store.ClusterTopology, len(w.clusters))
	for name, c := range w.clusters {
		t := &store.ClusterTopology{Cluster: c.c, Nodes: make([]*halov1.Node, 0, len(c.nodes))}
		for _, n := range slices.Sorted(maps.Keys(c.nodes)) {
			t.Nodes = append(t.Nodes, c.nodes[n])
		}
		for _, k := range slices.SortedFunc(maps.Keys(c.statuses), func(a, b statusKey) int {
			return cmp.Or(cmp.Compare(a.node, b.node), cmp.Compare(a.kind, b.kind))
		}) {
			t.Backends = append(t.Backends, c.statuses[k])
		}
		out[name] = t
	}
	return out
}

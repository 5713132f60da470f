package ads

import (
	"maps"
	"sync"

	"github.com/halolb/halo/server/snapshot"
)

// Hub holds what is published for every cluster: the last publishable
// snapshot of each profile, why a profile is held back, and which profile
// each node has. Streams look their node up, then wait for the next change:
// a publication wakes every stream of the cluster; moving one node to
// another profile wakes only that node's streams, so registering thousands
// of workers does not wake thousands of streams each time.
type Hub struct {
	mu       sync.RWMutex
	clusters map[string]*entry
	// created is closed (and replaced) when a cluster is first published,
	// waking the streams of nodes whose cluster did not exist yet.
	created chan struct{}
}

type entry struct {
	snapshots map[string]*snapshot.Snapshot // profile → last publishable snapshot
	held      map[string]string             // profile → why its newest build is not published
	nodes     map[string]string             // node → profile
	changed   chan struct{}                 // closed at the next publication
	nodeWait  map[string]chan struct{}      // node → closed when that node moves
}

// NewHub returns an empty hub.
func NewHub() *Hub {
	return &Hub{clusters: map[string]*entry{}, created: make(chan struct{})}
}

// Update is one cluster's new state for Publish.
type Update struct {
	// Snapshots are the profiles that can be published now.
	Snapshots map[string]*snapshot.Snapshot
	// Held are the profiles whose new snapshot must not be published, with
	// the reason; their last published snapshot stays.
	Held map[string]string
	// Nodes maps every node of the cluster to its profile. The hub takes
	// this map over: the caller must not use it afterwards.
	Nodes map[string]string
}

// Publish makes u the cluster's state and wakes the cluster's streams.
// Profiles in u.Held keep their previous snapshot, if they had one.
func (h *Hub) Publish(cluster string, u Update) {
	h.mu.Lock()
	defer h.mu.Unlock()
	e := h.clusters[cluster]
	snaps := maps.Clone(u.Snapshots)
	if snaps == nil {
		snaps = map[string]*snapshot.Snapshot{}
	}
	if u.Nodes == nil {
		u.Nodes = map[string]string{}
	}
	if e != nil {
		for profile := range u.Held {
			if last := e.snapshots[profile]; last != nil && snaps[profile] == nil {
				snaps[profile] = last
			}
		}
		close(e.changed)
	} else {
		close(h.created)
		h.created = make(chan struct{})
	}
	// The streams waiting on a node wake with the cluster: their channels
	// can go.
	h.clusters[cluster] = &entry{snapshots: snaps, held: maps.Clone(u.Held), nodes: u.Nodes,
		changed: make(chan struct{}), nodeWait: map[string]chan struct{}{}}
}

// SetNode moves one node to a profile (or, with profile "", removes it) and
// wakes that node's streams. It does nothing for an unknown cluster.
func (h *Hub) SetNode(cluster, node, profile string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	e := h.clusters[cluster]
	if e == nil {
		return
	}
	if old, ok := e.nodes[node]; ok && old == profile {
		return
	}
	if profile == "" {
		delete(e.nodes, node)
	} else {
		e.nodes[node] = profile
	}
	if ch := e.nodeWait[node]; ch != nil {
		close(ch)
		delete(e.nodeWait, node)
	}
}

// Remove forgets a deleted cluster. Its streams keep what they have.
func (h *Hub) Remove(cluster string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if e := h.clusters[cluster]; e != nil {
		close(e.changed)
		delete(h.clusters, cluster)
	}
}

// Clusters returns the names of the published clusters.
func (h *Hub) Clusters() []string {
	h.mu.RLock()
	defer h.mu.RUnlock()
	out := make([]string, 0, len(h.clusters))
	for c := range h.clusters {
		out = append(out, c)
	}
	return out
}

// View is what a node is to get.
type View struct {
	// Snapshot is the node's snapshot; nil when there is none to serve
	// (unknown node, or a profile never publishable).
	Snapshot *snapshot.Snapshot
	// Profile is the node's profile ("" for an unknown node).
	Profile string
	// Condition says why the node does not get its newest resources, or "".
	Condition string
}

// Wait holds the channels that announce a change to a node's view.
type Wait struct {
	// Cluster is closed at the cluster's next publication (or, for a
	// cluster not yet known, when any cluster is created).
	Cluster <-chan struct{}
	// Node is closed when the node moves to another profile; nil for a
	// node of an unknown cluster.
	Node <-chan struct{}
}

// Lookup returns the node's view and what to wait on for the next change.
func (h *Hub) Lookup(cluster, node string) (View, Wait) {
	h.mu.RLock()
	e := h.clusters[cluster]
	if e == nil {
		defer h.mu.RUnlock()
		return View{Condition: "cluster " + cluster + " is not known to halo"}, Wait{Cluster: h.created}
	}
	if ch := e.nodeWait[node]; ch != nil {
		defer h.mu.RUnlock()
		return e.view(cluster, node), Wait{Cluster: e.changed, Node: ch}
	}
	h.mu.RUnlock()

	// First wait for this node since the last change: make its channel.
	h.mu.Lock()
	defer h.mu.Unlock()
	e = h.clusters[cluster]
	if e == nil {
		return View{Condition: "cluster " + cluster + " is not known to halo"}, Wait{Cluster: h.created}
	}
	ch := e.nodeWait[node]
	if ch == nil {
		ch = make(chan struct{})
		e.nodeWait[node] = ch
	}
	return e.view(cluster, node), Wait{Cluster: e.changed, Node: ch}
}

// view computes a node's view; the caller holds the hub's lock.
func (e *entry) view(cluster, node string) View {
	profile, known := e.nodes[node]
	if !known {
		return View{Condition: "node " + node + " is not registered in cluster " + cluster}
	}
	v := View{Snapshot: e.snapshots[profile], Profile: profile}
	switch why := e.held[profile]; {
	case why != "":
		v.Condition = "newest resources held back: " + why
	case v.Snapshot == nil:
		v.Condition = "no resources published for profile " + profile
	}
	return v
}

// Profiles returns a cluster's published snapshots and held reasons.
func (h *Hub) Profiles(cluster string) (map[string]*snapshot.Snapshot, map[string]string) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	e := h.clusters[cluster]
	if e == nil {
		return nil, nil
	}
	return maps.Clone(e.snapshots), maps.Clone(e.held)
}

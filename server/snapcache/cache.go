// Package snapcache holds the snapshots published for every cluster and tells
// the xDS server which nodes they concern.
package snapcache

import (
	"maps"
	"sync"

	"github.com/halolb/halo/server/snapshot"
)

// Cache holds what is published for every cluster: the last publishable
// snapshot of each profile, why a profile is held back, and which profile
// each node has. It tells its subscriber what changed: a publication
// concerns every node of the cluster; moving one node to another profile
// concerns only that node, so registering thousands of workers does not
// stir thousands of streams each time.
type Cache struct {
	mu       sync.RWMutex
	clusters map[string]*entry
	notify   func(cluster, node string)
}

type entry struct {
	snapshots map[string]*snapshot.Snapshot // profile → last publishable snapshot
	held      map[string]string             // profile → why its newest build is not published
	nodes     map[string]string             // node → profile
}

// New returns an empty cache.
func New() *Cache {
	return &Cache{clusters: map[string]*entry{}}
}

// Subscribe sets the function told of every change, after the change is
// visible: node is "" when the whole cluster changed. It replaces any
// earlier subscriber; fn must not block.
func (c *Cache) Subscribe(fn func(cluster, node string)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.notify = fn
}

func (c *Cache) tell(cluster, node string) {
	c.mu.RLock()
	fn := c.notify
	c.mu.RUnlock()
	if fn != nil {
		fn(cluster, node)
	}
}

// Update is one cluster's new state for Publish.
type Update struct {
	// Snapshots are the profiles that can be published now.
	Snapshots map[string]*snapshot.Snapshot
	// Held are the profiles whose new snapshot must not be published, with
	// the reason; their last published snapshot stays.
	Held map[string]string
	// Nodes maps every node of the cluster to its profile. The cache takes
	// this map over: the caller must not use it afterwards.
	Nodes map[string]string
}

// Publish makes u the cluster's state. Profiles in u.Held keep their
// previous snapshot, if they had one.
func (c *Cache) Publish(cluster string, u Update) {
	c.mu.Lock()
	e := c.clusters[cluster]
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
	}
	c.clusters[cluster] = &entry{snapshots: snaps, held: maps.Clone(u.Held), nodes: u.Nodes}
	c.mu.Unlock()
	c.tell(cluster, "")
}

// SetNode moves one node to a profile (or, with profile "", removes it).
// It does nothing for an unknown cluster.
func (c *Cache) SetNode(cluster, node, profile string) {
	c.mu.Lock()
	e := c.clusters[cluster]
	if e == nil {
		c.mu.Unlock()
		return
	}
	if old, ok := e.nodes[node]; ok && old == profile {
		c.mu.Unlock()
		return
	}
	if profile == "" {
		delete(e.nodes, node)
	} else {
		e.nodes[node] = profile
	}
	c.mu.Unlock()
	c.tell(cluster, node)
}

// Remove forgets a deleted cluster. Its nodes keep what they have.
func (c *Cache) Remove(cluster string) {
	c.mu.Lock()
	_, ok := c.clusters[cluster]
	delete(c.clusters, cluster)
	c.mu.Unlock()
	if ok {
		c.tell(cluster, "")
	}
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

// Lookup returns what a node is to get now.
func (c *Cache) Lookup(cluster, node string) View {
	c.mu.RLock()
	defer c.mu.RUnlock()
	e := c.clusters[cluster]
	if e == nil {
		return View{Condition: "cluster " + cluster + " is not known to halo"}
	}
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
func (c *Cache) Profiles(cluster string) (map[string]*snapshot.Snapshot, map[string]string) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	e := c.clusters[cluster]
	if e == nil {
		return nil, nil
	}
	return maps.Clone(e.snapshots), maps.Clone(e.held)
}

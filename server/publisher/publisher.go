// Package publisher keeps every node's xDS snapshot in step with the
// topology in etcd. It is a consumer of the replica's topology watcher
// (server/topowatch): at each full load it builds every cluster's snapshots
// and publishes them to the snapshot cache; at each change it rebuilds only
// the clusters whose backends or settings changed (a worker joining only
// moves that node to its profile).
package publisher

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/server/snapcache"
	"github.com/halolb/halo/server/snapshot"
	"github.com/halolb/halo/server/store"
	"github.com/halolb/halo/server/topology"
	"github.com/halolb/halo/server/topowatch"
)

// Config configures a Publisher.
type Config struct {
	// Cache receives the snapshots. Required.
	Cache *snapcache.Cache
	// Logger receives the publisher's logs. Nil: discard.
	Logger *slog.Logger
	// Registerer receives its metrics. Nil: none.
	Registerer prometheus.Registerer
}

// Publisher publishes snapshots from the topology. Create it with New and
// subscribe it to the topology watcher: it is a topowatch.Consumer, and
// like one it is called one call at a time.
type Publisher struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics

	// The topology as last seen, owned by the calls of the watcher.
	clusters map[string]*model
}

type model struct {
	cluster *halov1.Cluster
	nodes   map[string]*halov1.Node
	health  map[backendKey]halov1.BackendState
	result  *snapshot.Result
	held    string // the held reasons last logged
}

// backendKey names a backend of a cluster: a node as an apiserver or as
// an etcd member.
type backendKey struct {
	node string
	kind halov1.BackendKind
}

func newModel() *model {
	return &model{nodes: map[string]*halov1.Node{}, health: map[backendKey]halov1.BackendState{}}
}

// healthOf is the EDS health of a backend as the prober last concluded it
// (UNKNOWN, which agents and Envoy treat as healthy, until it has).
func (m *model) healthOf(_, node string, kind halov1.BackendKind) corev3.HealthStatus {
	switch m.health[backendKey{node, kind}] {
	case halov1.BackendState_BACKEND_STATE_HEALTHY:
		return corev3.HealthStatus_HEALTHY
	case halov1.BackendState_BACKEND_STATE_UNHEALTHY:
		return corev3.HealthStatus_UNHEALTHY
	}
	return corev3.HealthStatus_UNKNOWN
}

// New returns a Publisher. It starts nothing.
func New(cfg Config) (*Publisher, error) {
	if cfg.Cache == nil {
		return nil, errors.New("publisher: Config.Cache is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &Publisher{cfg: cfg, log: cfg.Logger, metrics: m, clusters: map[string]*model{}}, nil
}

var _ topowatch.Consumer = (*Publisher)(nil)

// Reset publishes a full load, and forgets the clusters that are gone.
func (p *Publisher) Reset(all map[string]*store.ClusterTopology, rev int64) {
	for name := range p.clusters {
		if all[name] == nil {
			delete(p.clusters, name)
			p.cfg.Cache.Remove(name)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(all)) {
		t := all[name]
		m := newModel()
		m.cluster = t.Cluster
		if old := p.clusters[name]; old != nil {
			m.held = old.held
		}
		for _, n := range t.Nodes {
			m.nodes[n.GetName()] = n
		}
		for _, st := range t.Backends {
			m.health[backendKey{st.GetNode(), st.GetKind()}] = st.GetState()
		}
		p.clusters[name] = m
		p.publish(name, m)
	}
	p.log.Info("topology published", "clusters", len(all), "revision", rev)
}

// Apply follows one revision: it rebuilds once each cluster whose settings,
// backends or backend health changed, and only moves the other nodes that
// changed to their profile.
func (p *Publisher) Apply(ev topowatch.Event) {
	rebuild := map[string]bool{}
	type moved struct{ cluster, node string }
	var nodesMoved []moved
	for _, ch := range ev.Changes {
		name := ch.ClusterName()
		if _, ok := ch.(topowatch.ClusterDeleted); ok {
			delete(p.clusters, name)
			delete(rebuild, name)
			p.cfg.Cache.Remove(name)
			continue
		}
		m := p.clusters[name]
		if c, ok := ch.(topowatch.ClusterPut); ok {
			if m == nil {
				m = newModel()
				p.clusters[name] = m
			}
			m.cluster = c.Cluster
			rebuild[name] = true
			continue
		}
		if m == nil {
			continue // the watcher tells nothing of a cluster it does not know
		}
		switch c := ch.(type) {
		case topowatch.NodePut:
			m.nodes[c.Node.GetName()] = c.Node
			if topology.IsAnyBackend(c.Old) || topology.IsAnyBackend(c.Node) {
				rebuild[name] = true
			} else {
				nodesMoved = append(nodesMoved, moved{name, c.Node.GetName()})
			}
		case topowatch.NodeDeleted:
			delete(m.nodes, c.Node.GetName())
			if topology.IsAnyBackend(c.Node) {
				rebuild[name] = true
			} else {
				nodesMoved = append(nodesMoved, moved{name, c.Node.GetName()})
			}
		case topowatch.StatusPut:
			m.health[backendKey{c.Status.GetNode(), c.Status.GetKind()}] = c.Status.GetState()
			if topology.IsBackend(m.nodes[c.Status.GetNode()], c.Status.GetKind()) {
				rebuild[name] = true
			}
		case topowatch.StatusDeleted:
			delete(m.health, backendKey{c.Status.GetNode(), c.Status.GetKind()})
			if topology.IsBackend(m.nodes[c.Status.GetNode()], c.Status.GetKind()) {
				rebuild[name] = true
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(rebuild)) {
		p.publish(name, p.clusters[name])
	}
	for _, mv := range nodesMoved {
		m := p.clusters[mv.cluster]
		if m == nil || rebuild[mv.cluster] || m.result == nil {
			continue
		}
		profile := ""
		if n := m.nodes[mv.node]; n != nil {
			profile = m.result.ProfileOf(n)
		}
		p.cfg.Cache.SetNode(mv.cluster, mv.node, profile)
	}
}

// publish builds a cluster's snapshots and publishes them with every node's
// profile.
func (p *Publisher) publish(name string, m *model) {
	nodes := make([]*halov1.Node, 0, len(m.nodes))
	for _, n := range m.nodes {
		nodes = append(nodes, n)
	}
	r := snapshot.Build(snapshot.Input{Cluster: m.cluster, Nodes: nodes, Health: m.healthOf})
	m.result = r
	// A profile whose content did not change keeps its snapshot, so that
	// its streams see nothing new and do no work.
	published, _ := p.cfg.Cache.Profiles(name)
	for profile, snap := range r.Snapshots {
		if old := published[profile]; snap.Same(old) {
			r.Snapshots[profile] = old
		}
	}
	profiles := make(map[string]string, len(nodes))
	for _, n := range nodes {
		profiles[n.GetName()] = r.ProfileOf(n)
	}
	p.cfg.Cache.Publish(name, snapcache.Update{Snapshots: r.Snapshots, Held: r.Held, Nodes: profiles})
	p.metrics.builds.Inc()
	p.metrics.held.WithLabelValues(name).Set(float64(len(r.Held)))

	// Report the held profiles that hold nodes back: a profile no node has
	// (a new cluster without masters yet) is nothing to act on.
	inUse := map[string]bool{}
	for _, profile := range profiles {
		inUse[profile] = true
	}
	var held []string
	for _, profile := range slices.Sorted(maps.Keys(r.Held)) {
		if inUse[profile] {
			held = append(held, fmt.Sprintf("%s: %s", profile, r.Held[profile]))
		}
	}
	if summary := strings.Join(held, "; "); summary != m.held {
		m.held = summary
		if summary != "" {
			p.log.Warn("snapshots held back: nodes keep their last resources", "cluster", name, "held", summary)
		} else {
			p.log.Info("all snapshots published", "cluster", name)
		}
	}
}

type metrics struct {
	builds prometheus.Counter
	held   *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		builds: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "halo", Subsystem: "snapshot", Name: "builds_total",
			Help: "Cluster snapshot builds."}),
		held: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "halo", Subsystem: "snapshot", Name: "held_profiles",
			Help: "Profiles whose newest snapshot is held back (empty cluster or invalid resource), by cluster."}, []string{"cluster"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.builds, m.held} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("publisher: register metrics: %w", err)
		}
	}
	return m, nil
}

// Package publisher keeps every node's xDS snapshot in step with the
// topology in etcd: it loads everything once, builds each cluster's
// snapshots, publishes them to the snapshot cache, and then follows etcd's watch,
// rebuilding only the clusters a change affects (a worker joining only
// moves that node to its profile). After a compaction or a broken watch it
// loads everything again, so no change is ever missed.
package publisher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/internal/backoff"
	"github.com/halolb/halo/server/snapcache"
	"github.com/halolb/halo/server/snapshot"
	"github.com/halolb/halo/server/store"
	"github.com/halolb/halo/server/topology"
)

// Config configures a Publisher.
type Config struct {
	// Store is the topology. Required.
	Store *store.Store
	// Cache receives the snapshots. Required.
	Cache *snapcache.Cache
	// Logger receives the publisher's logs. Nil: discard.
	Logger *slog.Logger
	// Registerer receives its metrics. Nil: none.
	Registerer prometheus.Registerer
	// RetryInterval is the first wait after etcd fails; it doubles up to
	// ten times that. Zero: 500ms.
	RetryInterval time.Duration
}

// Publisher publishes snapshots from the topology. Create it with New and
// run it with Run.
type Publisher struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics

	// The topology as last seen, owned by Run.
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
	if cfg.Store == nil || cfg.Cache == nil {
		return nil, errors.New("publisher: Config.Store and Config.Cache are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = 500 * time.Millisecond
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &Publisher{cfg: cfg, log: cfg.Logger, metrics: m, clusters: map[string]*model{}}, nil
}

// Run publishes the topology and follows its changes until ctx ends; it
// returns nil then. etcd failures are retried with backoff, never fatal.
func (p *Publisher) Run(ctx context.Context) error {
	retry := backoff.Backoff{Initial: p.cfg.RetryInterval, Max: 10 * p.cfg.RetryInterval, Jitter: 0.2}
	for {
		all, rev, err := p.cfg.Store.LoadAll(ctx)
		if err == nil {
			retry.Reset()
			p.replaceAll(all)
			p.log.Info("topology published", "clusters", len(all), "revision", rev)
			err = p.cfg.Store.Watch(ctx, "", rev+1, p.apply)
		}
		if ctx.Err() != nil {
			return nil
		}
		p.metrics.relists.Inc()
		if errors.Is(err, store.ErrCompacted) {
			p.log.Warn("topology watch fell behind etcd's compaction; loading everything again", "error", err)
			continue
		}
		p.log.Warn("topology watch failed; retrying", "error", err)
		if !retry.Wait(ctx) {
			return nil
		}
	}
}

// replaceAll publishes a full load, and forgets clusters that are gone.
func (p *Publisher) replaceAll(all map[string]*store.ClusterTopology) {
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
}

// apply follows one committed write.
func (p *Publisher) apply(ev *halov1.WatchEvent) error {
	rebuild := map[string]bool{}
	type moved struct{ cluster, node string }
	var nodesMoved []moved
	for _, ch := range ev.GetChanges() {
		del := ch.GetType() == halov1.ChangeType_CHANGE_TYPE_DELETE
		if c := ch.GetCluster(); c != nil {
			name := c.GetName()
			if del {
				delete(p.clusters, name)
				delete(rebuild, name)
				p.cfg.Cache.Remove(name)
				continue
			}
			m := p.clusters[name]
			if m == nil {
				m = newModel()
				p.clusters[name] = m
			}
			m.cluster = c
			rebuild[name] = true
			continue
		}
		if st := ch.GetBackendStatus(); st != nil {
			m := p.clusters[st.GetCluster()]
			if m == nil {
				continue
			}
			k := backendKey{st.GetNode(), st.GetKind()}
			if del {
				delete(m.health, k)
			} else {
				m.health[k] = st.GetState()
			}
			if shapesResources(m.nodes[st.GetNode()]) {
				rebuild[st.GetCluster()] = true
			}
			continue
		}
		n := ch.GetNode()
		m := p.clusters[n.GetCluster()]
		if n == nil || m == nil {
			continue // a node of a cluster deleted in the same write
		}
		old := m.nodes[n.GetName()]
		if del {
			delete(m.nodes, n.GetName())
		} else {
			m.nodes[n.GetName()] = n
		}
		if shapesResources(old) || (!del && shapesResources(n)) {
			rebuild[n.GetCluster()] = true
		} else {
			nodesMoved = append(nodesMoved, moved{n.GetCluster(), n.GetName()})
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
	return nil
}

// shapesResources: masters and etcd members are the backends; the other
// roles only choose a node's profile.
func shapesResources(n *halov1.Node) bool {
	return n != nil && (topology.HasRole(n, halov1.Role_ROLE_CONTROL_PLANE) || topology.HasRole(n, halov1.Role_ROLE_ETCD))
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
	builds  prometheus.Counter
	relists prometheus.Counter
	held    *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		builds: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "halo", Subsystem: "snapshot", Name: "builds_total",
			Help: "Cluster snapshot builds."}),
		relists: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "halo", Subsystem: "snapshot", Name: "relists_total",
			Help: "Full reloads of the topology after a compaction or a broken watch."}),
		held: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "halo", Subsystem: "snapshot", Name: "held_profiles",
			Help: "Profiles whose newest snapshot is held back (empty cluster or invalid resource), by cluster."}, []string{"cluster"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.builds, m.relists, m.held} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("publisher: register metrics: %w", err)
		}
	}
	return m, nil
}

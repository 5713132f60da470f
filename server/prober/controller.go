package prober

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/internal/backoff"
	"github.com/halolb/halo/server/store"
	"github.com/halolb/halo/server/topology"
	"github.com/halolb/halo/server/topowatch"
)

// ControllerConfig configures a Controller.
type ControllerConfig struct {
	// Store is where transitions are written.
	Store *store.Store
	// Topology is the replica's topology watcher, followed while leading.
	Topology *topowatch.Watcher
	// Election decides which replica probes.
	Election *Election
	// Logger receives the controller's logs; nil discards them.
	Logger *slog.Logger
}

// Controller runs the prober on the replica that wins the election: it
// follows the topology, probes every master's apiserver and every etcd
// member with its cluster's settings, and writes each transition to etcd,
// from where every replica publishes it as EDS health.
type Controller struct {
	cfg ControllerConfig
	log *slog.Logger
	// prober is the running prober while this replica leads (else nil).
	prober atomic.Pointer[Prober]
}

// NewController returns a controller; it starts nothing.
func NewController(cfg ControllerConfig) (*Controller, error) {
	if cfg.Store == nil || cfg.Topology == nil || cfg.Election == nil {
		return nil, errors.New("prober: ControllerConfig.Store, Topology and Election are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Controller{cfg: cfg, log: cfg.Logger}, nil
}

// Run campaigns and probes while leading, until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	return c.cfg.Election.Run(ctx, c.lead)
}

// Statuses returns the live probe states when this replica leads (nil
// otherwise: ListBackends then reads etcd).
func (c *Controller) Statuses() []Status {
	if p := c.prober.Load(); p != nil {
		return p.Statuses()
	}
	return nil
}

// lead probes until ctx ends (leadership lost or shutdown): it follows the
// topology only meanwhile, subscribed to the watcher, which hands it the
// current topology at once.
func (c *Controller) lead(ctx context.Context) {
	p := NewProber(Config{OnTransition: func(t Transition) { c.write(ctx, t) }, Logger: c.log})
	c.prober.Store(p)
	defer c.prober.Store(nil)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = p.Run(ctx)
	}()
	unsubscribe := c.cfg.Topology.Subscribe(newBackendSet(c.cfg.Election.Name, c.log, p.Set))
	<-ctx.Done()
	unsubscribe()
	<-done
}

// backendSet keeps the set of backends to probe from the topology: a
// topowatch.Consumer. It keeps only the clusters and their backends (and
// the backends' stored health, to start a backend from), and computes the
// set again only when a change concerns it: a cluster, or a node that is
// or was a master or an etcd member. Workers, which are nearly every node,
// and health transitions (the prober's own) are not: at 10,000 nodes a
// registration must not cost the prober a pass over the whole topology.
type backendSet struct {
	replica string // in the probes' User-Agent
	log     *slog.Logger
	set     func([]Backend)
	clients *clientCache
	// clusters is the topology as far as it shapes the set.
	clusters map[string]*backendCluster
}

type backendCluster struct {
	cluster  *halov1.Cluster
	backends map[string]*halov1.Node // the masters and etcd members
	stored   map[Key]*halov1.BackendStatus
}

func newBackendSet(replica string, log *slog.Logger, set func([]Backend)) *backendSet {
	return &backendSet{replica: replica, log: log, set: set, clients: &clientCache{m: map[string]*http.Client{}}, clusters: map[string]*backendCluster{}}
}

// Reset takes the whole topology and sets the backends.
func (s *backendSet) Reset(all map[string]*store.ClusterTopology, _ int64) {
	s.clusters = make(map[string]*backendCluster, len(all))
	for name, t := range all {
		bc := &backendCluster{cluster: t.Cluster, backends: map[string]*halov1.Node{}, stored: map[Key]*halov1.BackendStatus{}}
		for _, n := range t.Nodes {
			if topology.IsAnyBackend(n) {
				bc.backends[n.GetName()] = n
			}
		}
		for _, st := range t.Backends {
			bc.stored[keyOf(st)] = st
		}
		s.clusters[name] = bc
	}
	s.set(s.backends())
}

// Apply follows one revision, and sets the backends if it concerns them.
func (s *backendSet) Apply(ev topowatch.Event) {
	changed := false
	for _, ch := range ev.Changes {
		bc := s.clusters[ch.ClusterName()]
		switch c := ch.(type) {
		case topowatch.ClusterPut:
			if bc == nil {
				bc = &backendCluster{backends: map[string]*halov1.Node{}, stored: map[Key]*halov1.BackendStatus{}}
				s.clusters[ch.ClusterName()] = bc
			}
			bc.cluster, changed = c.Cluster, true
		case topowatch.ClusterDeleted:
			delete(s.clusters, ch.ClusterName())
			changed = true
		case topowatch.NodePut:
			if bc == nil || !topology.IsAnyBackend(c.Old) && !topology.IsAnyBackend(c.Node) {
				continue // a worker
			}
			if topology.IsAnyBackend(c.Node) {
				bc.backends[c.Node.GetName()] = c.Node
			} else {
				delete(bc.backends, c.Node.GetName())
			}
			changed = true
		case topowatch.NodeDeleted:
			if bc == nil || !topology.IsAnyBackend(c.Node) {
				continue
			}
			delete(bc.backends, c.Node.GetName())
			changed = true
		case topowatch.StatusPut:
			if bc != nil {
				bc.stored[keyOf(c.Status)] = c.Status
			}
		case topowatch.StatusDeleted:
			if bc != nil {
				delete(bc.stored, keyOf(c.Status))
			}
		}
	}
	if changed {
		s.set(s.backends())
	}
}

func keyOf(st *halov1.BackendStatus) Key {
	return Key{Cluster: st.GetCluster(), Node: st.GetNode(), Kind: kindOf(st.GetKind())}
}

// write stores a transition, retrying briefly while etcd is unavailable.
func (c *Controller) write(ctx context.Context, t Transition) {
	st := &halov1.BackendStatus{Cluster: t.Cluster, Node: t.Node, Kind: protoKind(t.Kind), Address: hostPort(t.Target.URL),
		State: protoState(t.State), Since: timestamppb.New(t.Since), LastLatency: durationpb.New(t.Last.Latency), ReadinessUnverified: t.Last.Unverified}
	if t.Last.Err != nil {
		st.LastError = t.Last.Err.Error()
	}
	retry := backoff.Backoff{Initial: 100 * time.Millisecond, Max: time.Second, Jitter: 0.2}
	for attempt := 0; attempt < 10; attempt++ {
		err := c.cfg.Store.PutBackendStatus(ctx, st)
		if err == nil || errors.Is(err, store.ErrNotFound) || ctx.Err() != nil {
			return
		}
		c.log.Warn("prober: cannot store a transition; retrying", "cluster", t.Cluster, "node", t.Node, "error", err)
		if !retry.Wait(ctx) {
			return
		}
	}
}

// backends lists what to probe in every cluster, starting each backend
// from its stored state.
func (s *backendSet) backends() []Backend {
	var out []Backend
	for _, name := range slices.Sorted(maps.Keys(s.clusters)) {
		bc := s.clusters[name]
		d := topology.WithDefaults(bc.cluster)
		nodes := slices.Collect(maps.Values(bc.backends))
		add := func(kind halov1.BackendKind, port uint32, hc *halov1.HealthCheck) {
			client, token, creds, err := s.clients.get(hc)
			if err != nil {
				s.log.Warn("prober: cannot load probe credentials; probing without", "cluster", d.GetName(), "error", err)
			}
			st := Settings{Interval: hc.GetInterval().AsDuration(), Timeout: hc.GetTimeout().AsDuration(), Rise: int(hc.GetRise()), Fall: int(hc.GetFall())}
			for _, n := range topology.Backends(nodes, kind) {
				k := Key{Cluster: d.GetName(), Node: n.GetName(), Kind: kindOf(kind)}
				b := Backend{Key: k, Client: client, Settings: st,
					Target: Target{Kind: k.Kind, URL: "https://" + net.JoinHostPort(topology.AccessIP(n), strconv.Itoa(int(port))) + hc.GetPath(),
						Token: token, Credentials: creds, UserAgent: "halo-prober/" + s.replica}}
				if stored := bc.stored[k]; stored != nil {
					b.Initial, b.Since = stateOf(stored.GetState()), stored.GetSince().AsTime()
				}
				out = append(out, b)
			}
		}
		add(halov1.BackendKind_BACKEND_KIND_APISERVER, d.GetApiserver().GetPort(), d.GetApiserver().GetHealthCheck())
		add(halov1.BackendKind_BACKEND_KIND_ETCD, d.GetEtcd().GetClientPort(), d.GetEtcd().GetHealthCheck())
	}
	return out
}

// clientCache shares one HTTP client per distinct TLS/credential setting,
// so that a backend's client (and so its prober) stays the same across
// topology changes.
type clientCache struct {
	m map[string]*http.Client
}

// get returns the client, bearer token and whether the probes carry
// credentials, for hc's settings. Files are read on the replica.
func (cc *clientCache) get(hc *halov1.HealthCheck) (*http.Client, string, bool, error) {
	var token string
	var errs []error
	if f := hc.GetBearerTokenFile(); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			errs = append(errs, fmt.Errorf("bearer token: %w", err))
		}
		token = strings.TrimSpace(string(b))
	}
	key := strings.Join([]string{hc.GetCaCertPem(), hc.GetClientCertFile(), hc.GetClientKeyFile()}, "\x00")
	if cl := cc.m[key]; cl != nil {
		return cl, token, token != "" || hasCert(cl), errors.Join(errs...)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if pem := hc.GetCaCertPem(); pem != "" {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM([]byte(pem)) {
			errs = append(errs, errors.New("ca_cert_pem holds no certificate"))
		}
		cfg.RootCAs = pool
	} else {
		cfg.InsecureSkipVerify = true // the seed's "check-ssl verify none"
	}
	if hc.GetClientCertFile() != "" {
		cert, err := tls.LoadX509KeyPair(hc.GetClientCertFile(), hc.GetClientKeyFile())
		if err != nil {
			errs = append(errs, fmt.Errorf("client certificate: %w", err))
		} else {
			cfg.Certificates = []tls.Certificate{cert}
		}
	}
	cl := NewClient(cfg)
	cc.m[key] = cl
	return cl, token, token != "" || hasCert(cl), errors.Join(errs...)
}

func hasCert(cl *http.Client) bool {
	tr, ok := cl.Transport.(*http.Transport)
	return ok && tr.TLSClientConfig != nil && len(tr.TLSClientConfig.Certificates) > 0
}

func hostPort(url string) string {
	s := strings.TrimPrefix(url, "https://")
	h, _, _ := strings.Cut(s, "/")
	return h
}

func protoKind(k Kind) halov1.BackendKind {
	if k == Etcd {
		return halov1.BackendKind_BACKEND_KIND_ETCD
	}
	return halov1.BackendKind_BACKEND_KIND_APISERVER
}

func kindOf(k halov1.BackendKind) Kind {
	if k == halov1.BackendKind_BACKEND_KIND_ETCD {
		return Etcd
	}
	return APIServer
}

func protoState(s State) halov1.BackendState {
	switch s {
	case Healthy:
		return halov1.BackendState_BACKEND_STATE_HEALTHY
	case Unhealthy:
		return halov1.BackendState_BACKEND_STATE_UNHEALTHY
	}
	return halov1.BackendState_BACKEND_STATE_UNSPECIFIED
}

func stateOf(s halov1.BackendState) State {
	switch s {
	case halov1.BackendState_BACKEND_STATE_HEALTHY:
		return Healthy
	case halov1.BackendState_BACKEND_STATE_UNHEALTHY:
		return Unhealthy
	}
	return Unknown
}

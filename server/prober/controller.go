package prober

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
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
)

// ControllerConfig configures a Controller.
type ControllerConfig struct {
	// Store is where the topology is read and transitions are written.
	Store *store.Store
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
	if cfg.Store == nil || cfg.Election == nil {
		return nil, errors.New("health: ControllerConfig.Store and Election are required")
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

// lead probes until ctx ends (leadership lost or shutdown).
func (c *Controller) lead(ctx context.Context) {
	p := NewProber(Config{OnTransition: func(t Transition) { c.write(ctx, t) }, Logger: c.log})
	c.prober.Store(p)
	defer c.prober.Store(nil)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = p.Run(ctx)
	}()
	defer func() { <-done }()
	clients := &clientCache{m: map[string]*http.Client{}}
	retry := backoff.Backoff{Initial: 200 * time.Millisecond, Max: 5 * time.Second, Jitter: 0.2}
	for ctx.Err() == nil {
		all, rev, err := c.cfg.Store.LoadAll(ctx)
		if err == nil {
			retry.Reset()
			bs := c.backends(all, clients)
			p.Set(bs)
			probed := nodesOf(bs)
			err = c.cfg.Store.Watch(ctx, "", rev+1, func(ev *halov1.WatchEvent) error {
				if !concernsBackends(ev, probed) {
					return nil // a worker, or a health transition (ours)
				}
				// A cluster, a master or an etcd member changed: recompute
				// from a fresh read (rare; keeps one code path).
				all, _, err := c.cfg.Store.LoadAll(ctx)
				if err != nil {
					return err
				}
				bs := c.backends(all, clients)
				p.Set(bs)
				probed = nodesOf(bs)
				return nil
			})
		}
		if ctx.Err() != nil {
			return
		}
		c.log.Warn("prober: following the topology failed; retrying", "error", err)
		if !retry.Wait(ctx) {
			return
		}
	}
}

// nodesOf returns the nodes bs are on (cluster/node).
func nodesOf(bs []Backend) map[string]bool {
	m := make(map[string]bool, len(bs))
	for _, b := range bs {
		m[b.Cluster+"/"+b.Node] = true
	}
	return m
}

// concernsBackends reports whether a watch event can change what is
// probed: a cluster (ports, probe settings, credentials), or a node that is
// or was a master or an etcd member. Workers, which are nearly every node,
// and health transitions are not: at 10,000 nodes a registration must not
// cost the prober a reload of the whole topology.
func concernsBackends(ev *halov1.WatchEvent, probed map[string]bool) bool {
	for _, ch := range ev.GetChanges() {
		switch o := ch.GetObject().(type) {
		case *halov1.Change_Cluster:
			return true
		case *halov1.Change_Node:
			n := o.Node
			if probed[n.GetCluster()+"/"+n.GetName()] ||
				topology.HasRole(n, halov1.Role_ROLE_CONTROL_PLANE) || topology.HasRole(n, halov1.Role_ROLE_ETCD) {
				return true
			}
		}
	}
	return false
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
func (c *Controller) backends(all map[string]*store.ClusterTopology, clients *clientCache) []Backend {
	var out []Backend
	for _, ct := range all {
		d := topology.WithDefaults(ct.Cluster)
		stored := map[Key]*halov1.BackendStatus{}
		for _, st := range ct.Backends {
			stored[Key{Cluster: st.GetCluster(), Node: st.GetNode(), Kind: kindOf(st.GetKind())}] = st
		}
		add := func(nodes []*halov1.Node, kind Kind, port uint32, hc *halov1.HealthCheck) {
			client, token, creds, err := clients.get(hc)
			if err != nil {
				c.log.Warn("prober: cannot load probe credentials; probing without", "cluster", d.GetName(), "error", err)
			}
			s := Settings{Interval: hc.GetInterval().AsDuration(), Timeout: hc.GetTimeout().AsDuration(), Rise: int(hc.GetRise()), Fall: int(hc.GetFall())}
			for _, n := range nodes {
				k := Key{Cluster: d.GetName(), Node: n.GetName(), Kind: kind}
				b := Backend{Key: k, Client: client, Settings: s,
					Target: Target{Kind: kind, URL: "https://" + net.JoinHostPort(topology.AccessIP(n), strconv.Itoa(int(port))) + hc.GetPath(),
						Token: token, Credentials: creds, UserAgent: "halo-prober/" + c.cfg.Election.Name}}
				if st := stored[k]; st != nil {
					b.Initial, b.Since = stateOf(st.GetState()), st.GetSince().AsTime()
				}
				out = append(out, b)
			}
		}
		add(topology.Masters(ct.Nodes), APIServer, d.GetApiserver().GetPort(), d.GetApiserver().GetHealthCheck())
		add(topology.EtcdMembers(ct.Nodes), Etcd, d.GetEtcd().GetClientPort(), d.GetEtcd().GetHealthCheck())
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

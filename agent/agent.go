// Package agent is halo-agent: the per-node TCP proxy that follows the
// control plane over xDS. It wires the xDS client, the on-disk cache of the
// last ACKed configuration, the proxy (listeners and which endpoint each
// client tries), the relay engine (it accepts, connects upstream with
// failover and moves the bytes) and the admin HTTP server (metrics, health,
// readiness).
package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/halolb/halo/agent/cache"
	"github.com/halolb/halo/agent/config"
	"github.com/halolb/halo/agent/proxy"
	"github.com/halolb/halo/agent/relay"
	"github.com/halolb/halo/agent/xdsclient"
	"github.com/halolb/halo/internal/xdscontract"
)

// Defaults.
const (
	// DefaultAdminListen is where /metrics, /healthz and /readyz are served.
	DefaultAdminListen = "127.0.0.1:18002"
	// DefaultCacheDir holds the last ACKed configuration.
	DefaultCacheDir = "/var/lib/halo-agent"
	// DefaultFallbackListen is the listener of --fallback-backends:
	// Kubespray's loadbalancer_apiserver_port.
	DefaultFallbackListen = "127.0.0.1:6443"
)

// Fallback configuration: what --fallback-backends becomes.
const (
	FallbackListener = "fallback-apiserver"
	FallbackCluster  = "fallback-apiserver"
)

// Config configures an Agent.
type Config struct {
	// Servers are halo-server replicas (host:port), tried in order. Empty:
	// the agent runs only from its cache or fallback backends.
	Servers []string
	// Cluster is the halo cluster this node belongs to (xDS node.cluster).
	Cluster string
	// Node is this node's name in the topology (xDS node.id).
	Node string
	// SotW selects state-of-the-world xDS instead of Delta.
	SotW bool
	// TLS is the TLS configuration towards the servers; nil means
	// plaintext, which is allowed only when every server is on loopback.
	TLS *tls.Config
	// CacheDir holds the last ACKed resources; empty disables the cache.
	CacheDir string
	// FallbackBackends are static apiserver backends, used when there is
	// no cache until a server answers.
	FallbackBackends []netip.AddrPort
	// FallbackListen is the fallback listener's address.
	FallbackListen netip.AddrPort
	// AdminListen is the admin HTTP address; AdminListener, when set, is
	// used instead (tests pass 127.0.0.1:0 listeners).
	AdminListen   string
	AdminListener net.Listener
	// Logger receives the agent's logs; nil discards them.
	Logger *slog.Logger
	// Version is reported to the servers (node.user_agent_version).
	Version string
}

// Agent is a running halo-agent.
type Agent struct {
	cfg    Config
	log    *slog.Logger
	reg    *prometheus.Registry
	relay  *relay.Engine
	proxy  *proxy.Proxy
	client *xdsclient.Client

	cacheErrors prometheus.Counter
	source      *prometheus.GaugeVec

	// Set by startConfig (in New), then read and set by update only, which
	// the xDS client calls one at a time.
	fromXDS bool                  // the running configuration came from a server
	initial []*xdsclient.Resource // the cached resources served at start
}

// New validates cfg and builds an agent; it starts nothing.
func New(cfg Config) (*Agent, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if len(cfg.Servers) > 0 {
		if cfg.Cluster == "" {
			return nil, errors.New("agent: Cluster is required with Servers")
		}
		if cfg.Node == "" {
			return nil, errors.New("agent: Node is required with Servers")
		}
		if cfg.TLS == nil {
			for _, s := range cfg.Servers {
				if !loopbackHost(s) {
					return nil, fmt.Errorf("agent: server %q is not on loopback: plaintext xDS is allowed only to loopback; give a CA (--tls-ca)", s)
				}
			}
		}
	}
	if len(cfg.Servers) == 0 && len(cfg.FallbackBackends) == 0 && cfg.CacheDir == "" {
		return nil, errors.New("agent: nothing to serve: give servers, fallback backends or a cache directory")
	}
	if len(cfg.FallbackBackends) > 0 && !cfg.FallbackListen.IsValid() {
		return nil, errors.New("agent: FallbackListen is required with FallbackBackends")
	}
	if cfg.AdminListen == "" && cfg.AdminListener == nil {
		cfg.AdminListen = DefaultAdminListen
	}
	a := &Agent{cfg: cfg, log: cfg.Logger, reg: prometheus.NewRegistry()}
	a.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a.cacheErrors = prometheus.NewCounter(prometheus.CounterOpts{Name: "halo_agent_cache_write_errors_total",
		Help: "Failed writes of the configuration cache (the configuration is applied anyway)."})
	a.source = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "halo_agent_config_source",
		Help: "1 for where the running configuration came from: xds, cache or fallback."}, []string{"source"})
	a.reg.MustRegister(a.cacheErrors, a.source)

	var err error
	if a.relay, err = relay.New(relay.Config{Logger: cfg.Logger.With("component", "relay")}); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if a.proxy, err = proxy.New(proxy.Config{Relay: a.relay, Logger: cfg.Logger.With("component", "proxy"), Registerer: a.reg}); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	a.startConfig()
	if len(cfg.Servers) > 0 {
		creds := insecure.NewCredentials()
		if cfg.TLS != nil {
			creds = credentials.NewTLS(cfg.TLS)
		}
		node := &corev3.Node{Id: cfg.Node, Cluster: cfg.Cluster, UserAgentName: "halo-agent",
			UserAgentVersionType: &corev3.Node_UserAgentVersion{UserAgentVersion: cfg.Version}}
		a.client, err = xdsclient.New(xdsclient.Config{
			Servers:     cfg.Servers,
			Node:        node,
			SotW:        cfg.SotW,
			DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(creds)},
			Initial:     a.initial,
			Update:      a.update,
			Logger:      cfg.Logger.With("component", "xds"),
			Registerer:  a.reg,
		})
		if err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
	}
	return a, nil
}

func loopbackHost(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// Run starts the agent and serves until ctx is done: the cached
// configuration (or the fallback backends) at once, then whatever the
// servers send. It returns nil after a clean stop, once everything it started
// has stopped.
func (a *Agent) Run(ctx context.Context) error {
	ln := a.cfg.AdminListener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", a.cfg.AdminListen); err != nil {
			return fmt.Errorf("agent: admin listener: %w", err)
		}
	}
	a.log.Info("admin endpoint", "address", ln.Addr().String())

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return a.relay.Run(ctx) })
	g.Go(func() error { return a.proxy.Run(ctx) })
	if a.client != nil {
		g.Go(func() error { return a.client.Run(ctx) })
	}
	srv := &http.Server{Handler: a.adminHandler(), ReadHeaderTimeout: 5 * time.Second}
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("agent: admin: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		return srv.Shutdown(sctx)
	})
	return g.Wait()
}

// Proxy returns the agent's proxy (its clusters' live state, for tests
// and status).
func (a *Agent) Proxy() *proxy.Proxy { return a.proxy }

// Ready returns nil when the agent serves a configuration on every
// listener, else why not.
func (a *Agent) Ready() error { return a.proxy.Ready() }

// startConfig applies the cached configuration, or else the fallback
// backends, so that Run serves them before any server answers.
func (a *Agent) startConfig() {
	if a.cfg.CacheDir != "" {
		rs, err := cache.Load(a.cfg.CacheDir)
		switch {
		case err != nil:
			a.log.Warn("ignoring the configuration cache", "error", err)
		case len(rs) > 0:
			set, err := buildSet(rs)
			if err == nil {
				err = a.proxy.Apply(set)
			}
			if err != nil {
				a.log.Warn("ignoring the configuration cache", "error", err)
				break
			}
			a.fromXDS = true // the cache is a complete xDS state
			a.initial = rs
			a.setSource("cache")
			a.log.Info("serving the cached configuration", "resources", len(rs), "listeners", len(set.Listeners))
			return
		}
	}
	if len(a.cfg.FallbackBackends) > 0 {
		if err := a.proxy.Apply(fallbackSet(a.cfg.FallbackListen, a.cfg.FallbackBackends)); err != nil {
			a.log.Error("fallback backends", "error", err)
			return
		}
		a.setSource("fallback")
		a.log.Info("serving the fallback backends", "listen", a.cfg.FallbackListen, "backends", len(a.cfg.FallbackBackends))
	}
}

func (a *Agent) setSource(s string) {
	a.source.Reset()
	a.source.WithLabelValues(s).Set(1)
}

// update is the xDS client's callback: the candidate state of every type.
// An error NACKs it and keeps the running configuration.
func (a *Agent) update(_ context.Context, typeURL string, state []*xdsclient.Resource) error {
	set, err := buildSet(state)
	if err != nil {
		return err
	}
	if !a.fromXDS && len(set.Listeners) == 0 && typeURL != xdscontract.ListenerType {
		// Still on the fallback backends and the servers have not sent
		// listeners yet (they send them after clusters and endpoints):
		// keep the fallback listener until they do.
		return nil
	}
	if err := a.proxy.Apply(set); err != nil {
		return err
	}
	a.fromXDS = true
	a.setSource("xds")
	if a.cfg.CacheDir != "" {
		if err := cache.Save(a.cfg.CacheDir, state); err != nil {
			a.cacheErrors.Inc()
			a.log.Warn("cannot write the configuration cache", "error", err)
		}
	}
	return nil
}

// buildSet decodes xDS resources into a validated configuration.
func buildSet(rs []*xdsclient.Resource) (*config.Set, error) {
	set := &config.Set{Listeners: map[string]*config.Listener{}, Clusters: map[string]*config.Cluster{}, Endpoints: map[string]*config.Endpoints{}}
	for _, r := range rs {
		name, v, err := config.Decode(r.Body)
		if err != nil {
			return nil, err
		}
		if name != r.Name {
			return nil, fmt.Errorf("resource %q: its body names it %q", r.Name, name)
		}
		switch v := v.(type) {
		case *config.Listener:
			set.Listeners[name] = v
		case *config.Cluster:
			set.Clusters[name] = v
		case *config.Endpoints:
			set.Endpoints[name] = v
		}
	}
	if err := set.Validate(); err != nil {
		return nil, err
	}
	return set, nil
}

// fallbackSet is the static configuration of --fallback-backends: one
// listener to one least-request cluster, with halo's failover settings
// (xdscontract).
func fallbackSet(listen netip.AddrPort, backends []netip.AddrPort) *config.Set {
	eps := &config.Endpoints{Name: FallbackCluster}
	for _, b := range backends {
		eps.Endpoints = append(eps.Endpoints, config.Endpoint{Address: b, Hostname: b.String()})
	}
	return &config.Set{
		Listeners: map[string]*config.Listener{FallbackListener: {
			Name: FallbackListener, Address: listen, Cluster: FallbackCluster, StatPrefix: FallbackListener,
			IdleTimeout: 3 * time.Hour, MaxConnectAttempts: xdscontract.MaxConnectAttempts,
		}},
		Clusters: map[string]*config.Cluster{FallbackCluster: {
			Name: FallbackCluster, StaticEndpoints: eps, LbPolicy: config.LeastRequest,
			ConnectTimeout: 5 * time.Second, PanicThreshold: xdscontract.HealthyPanicThreshold,
			Outlier: &config.Outlier{ConsecutiveFailures: xdscontract.ConsecutiveLocalOriginFailures, EnforcingPercent: 100,
				Interval: xdscontract.OutlierInterval, BaseEjectionTime: xdscontract.BaseEjectionTime,
				MaxEjectionTime: xdscontract.MaxEjectionTime, MaxEjectionPercent: xdscontract.MaxEjectionPercent},
			Keepalive: &config.Keepalive{Probes: xdscontract.KeepaliveProbes, Time: xdscontract.KeepaliveTime,
				Interval: xdscontract.KeepaliveInterval},
			MaxConnections: xdscontract.MaxConnections,
		}},
		Endpoints: map[string]*config.Endpoints{},
	}
}

// adminHandler serves /metrics, /healthz and /readyz.
func (a *Agent) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := a.proxy.Ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// Package proxy runs the agent's listeners and decides where their
// connections go. It binds each listener (retrying a busy address) and
// hands the socket to the relay engine, which accepts the clients and
// connects them upstream. For each new client the proxy picks the endpoint
// of the listener's cluster to try, with the cluster's connect timeout, and
// after a failed connect the next one, so the client never sees the
// failure; it counts connections per endpoint and ejects endpoints that
// fail. A new configuration is applied without dropping anything: a
// listener whose address is unchanged keeps its socket, and open
// connections live on in the relay whatever changes.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/halolb/halo/agent/config"
	"github.com/halolb/halo/agent/relay"
	"github.com/halolb/halo/agent/upstream"
	"github.com/halolb/halo/internal/backoff"
)

// Config configures a Proxy.
type Config struct {
	// Relay accepts on the listeners, connects upstream and moves the
	// bytes. Required.
	Relay *relay.Engine
	// Logger receives the proxy's logs; nil discards them.
	Logger *slog.Logger
	// Registerer receives the proxy's metrics; nil registers none.
	Registerer prometheus.Registerer
	// BindBackoff spaces out retries of a listener address that cannot be
	// bound (busy, or not on this host yet); zero Initial/Max mean 200 ms
	// and 5 s.
	BindBackoff backoff.Backoff
	// DownstreamKeepalive is TCP keepalive on accepted connections; the
	// zero value means idle 30 s, interval 10 s, 3 probes (a dead client
	// is noticed within a minute).
	DownstreamKeepalive net.KeepAliveConfig
}

// Proxy runs listeners and clusters from a config.Set.
type Proxy struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics

	mu        sync.Mutex
	runCtx    context.Context // set while Run runs
	applied   bool
	listeners map[listenerKey]*listener
	clusters  atomic.Pointer[map[string]*upstream.Cluster]

	wg sync.WaitGroup // listener loops

	// lastRefusalLog (unix ns) limits refused-connection warnings to one a
	// second: with every master down, each client would log one.
	lastRefusalLog atomic.Int64
}

// listenerKey identifies a listening socket: a listener keeps its socket
// across updates as long as these are unchanged, whatever its name.
type listenerKey struct {
	addr     netip.AddrPort
	freebind bool
}

// listener is one listening socket and the configuration its new
// connections follow.
type listener struct {
	key    listenerKey
	cfg    atomic.Pointer[config.Listener]
	bound  atomic.Bool
	cancel context.CancelFunc // stops the bind/accept loop and closes the socket
}

// New returns a proxy with no listeners.
func New(cfg Config) (*Proxy, error) {
	if cfg.Relay == nil {
		return nil, errors.New("proxy: Config.Relay is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.BindBackoff.Initial <= 0 {
		cfg.BindBackoff.Initial = 200 * time.Millisecond
	}
	if cfg.BindBackoff.Max <= 0 {
		cfg.BindBackoff.Max = 5 * time.Second
	}
	if cfg.BindBackoff.Jitter == 0 {
		cfg.BindBackoff.Jitter = 0.2
	}
	if cfg.DownstreamKeepalive == (net.KeepAliveConfig{}) {
		cfg.DownstreamKeepalive = net.KeepAliveConfig{Enable: true, Idle: 30 * time.Second, Interval: 10 * time.Second, Count: 3}
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	p := &Proxy{cfg: cfg, log: cfg.Logger, metrics: m, listeners: map[listenerKey]*listener{}}
	empty := map[string]*upstream.Cluster{}
	p.clusters.Store(&empty)
	return p, nil
}

// Run serves the applied configuration (and every later one) until ctx is
// done, then closes the listeners and returns once every goroutine it
// started has stopped. Established connections belong to the relay engine,
// which closes them when its own Run ends.
func (p *Proxy) Run(ctx context.Context) error {
	p.mu.Lock()
	if p.runCtx != nil {
		p.mu.Unlock()
		return errors.New("proxy: Run called twice")
	}
	p.runCtx = ctx
	for _, l := range p.listeners {
		p.startLocked(l)
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.rebalanceLoop(ctx)
	}()
	p.mu.Unlock()
	<-ctx.Done()
	p.mu.Lock()
	for _, l := range p.listeners {
		if l.cancel != nil {
			l.cancel()
		}
	}
	p.mu.Unlock()
	p.wg.Wait()
	return nil
}

// Apply makes set the running configuration. The set must be valid
// (config.Set.Validate). Clusters are updated in place (their endpoints
// keep their connection counts and ejections); a listener whose address
// is unchanged keeps its socket and picks up its new settings for new
// connections; a new address is bound in the background, retried while
// busy; a removed listener stops accepting while its connections go on.
func (p *Proxy) Apply(set *config.Set) error {
	p.mu.Lock()
	defer p.mu.Unlock()

	// Clusters first, so that listeners never point at a missing one.
	old := *p.clusters.Load()
	next := make(map[string]*upstream.Cluster, len(set.Clusters))
	for name, c := range set.Clusters {
		uc := old[name]
		if uc == nil {
			uc = upstream.NewCluster(c)
		}
		for _, ev := range uc.Update(c, endpointsOf(set, c)) {
			p.clusterEvent(name, ev)
		}
		next[name] = uc
	}
	merged := make(map[string]*upstream.Cluster, len(old)+len(next))
	for k, v := range old {
		merged[k] = v
	}
	for k, v := range next {
		merged[k] = v
	}
	p.clusters.Store(&merged)

	want := map[listenerKey]*config.Listener{}
	for _, l := range set.Listeners {
		want[listenerKey{addr: l.Address, freebind: l.Freebind}] = l
	}
	for k, l := range p.listeners {
		if _, ok := want[k]; !ok {
			if l.cancel != nil {
				l.cancel()
			}
			p.metrics.bound.DeleteLabelValues(l.cfg.Load().Name, k.addr.String())
			delete(p.listeners, k)
			p.log.Info("listener removed", "listener", l.cfg.Load().Name, "address", k.addr)
		}
	}
	for k, lc := range want {
		if l, ok := p.listeners[k]; ok {
			prev := l.cfg.Swap(lc)
			if prev.Name != lc.Name {
				p.metrics.bound.DeleteLabelValues(prev.Name, k.addr.String())
				p.metrics.setBound(lc.Name, k.addr, l.bound.Load())
			}
			continue
		}
		l := &listener{key: k}
		l.cfg.Store(lc)
		p.listeners[k] = l
		p.metrics.setBound(lc.Name, k.addr, false)
		if p.runCtx != nil {
			p.startLocked(l)
		}
	}
	// Now that no listener uses them, drop removed clusters. Their open
	// connections go on in the relay.
	p.clusters.Store(&next)
	p.applied = true
	return nil
}

// endpointsOf returns a cluster's endpoints in set.
func endpointsOf(set *config.Set, c *config.Cluster) []config.Endpoint {
	if !c.EDS {
		if c.StaticEndpoints == nil {
			return nil
		}
		return c.StaticEndpoints.Endpoints
	}
	if e := set.Endpoints[c.EDSServiceName]; e != nil {
		return e.Endpoints
	}
	return nil
}

func (p *Proxy) clusterEvent(cluster string, ev upstream.Event) {
	switch ev.Kind {
	case "closed_unhealthy":
		p.metrics.closedUnhealthy.WithLabelValues(cluster, ev.Host.String()).Add(float64(ev.Conns))
		p.log.Warn("endpoint turned unhealthy: closed its connections", "cluster", cluster, "upstream_addr", ev.Host, "connections", ev.Conns)
	case "removed":
		p.log.Info("endpoint removed: no new connections, open ones finish", "cluster", cluster, "upstream_addr", ev.Host)
	}
}

// Ready returns nil when a configuration was applied and every listener
// is bound, else why not.
func (p *Proxy) Ready() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.applied {
		return errors.New("no configuration yet")
	}
	var unbound []string
	for k, l := range p.listeners {
		if !l.bound.Load() {
			unbound = append(unbound, fmt.Sprintf("%s (%s)", l.cfg.Load().Name, k.addr))
		}
	}
	if len(unbound) > 0 {
		sort.Strings(unbound)
		return fmt.Errorf("listeners not bound yet: %s", strings.Join(unbound, ", "))
	}
	return nil
}

// Cluster returns the live state of the named cluster, or nil.
func (p *Proxy) Cluster(name string) *upstream.Cluster {
	return (*p.clusters.Load())[name]
}

// Addr returns the address the named listener is bound to, if it is.
func (p *Proxy) Addr(name string) (netip.AddrPort, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, l := range p.listeners {
		if l.cfg.Load().Name == name && l.bound.Load() {
			return k.addr, true
		}
	}
	return netip.AddrPort{}, false
}

// startLocked starts a listener's bind-and-accept loop. Called with mu
// held and runCtx set.
func (p *Proxy) startLocked(l *listener) {
	ctx, cancel := context.WithCancel(p.runCtx)
	l.cancel = cancel
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.serveListener(ctx, l)
	}()
}

// serveListener binds l (retrying with backoff while the address is busy)
// and has the relay engine accept on it until ctx is done.
func (p *Proxy) serveListener(ctx context.Context, l *listener) {
	ln := p.bind(ctx, l)
	if ln == nil {
		return
	}
	defer ln.Close()
	stop, err := p.cfg.Relay.Serve(ln.(*net.TCPListener), p.cfg.DownstreamKeepalive, func(remote netip.AddrPort) relay.Setup {
		return p.newSetup(l, remote)
	})
	if err != nil {
		p.log.Error("cannot serve listener", "listener", l.cfg.Load().Name, "address", l.key.addr, "error", err)
		return
	}
	l.bound.Store(true)
	p.metrics.setBound(l.cfg.Load().Name, l.key.addr, true)
	p.log.Info("listening", "listener", l.cfg.Load().Name, "address", l.key.addr)
	<-ctx.Done()
	stop()
	l.bound.Store(false)
	p.metrics.setBound(l.cfg.Load().Name, l.key.addr, false)
}

// bind listens on l's address, retrying with backoff; nil when ctx ended.
func (p *Proxy) bind(ctx context.Context, l *listener) net.Listener {
	// Keepalive on the accepted connections is the relay's (Serve).
	var lc net.ListenConfig
	if l.key.freebind {
		lc.Control = freebind
	}
	b := p.cfg.BindBackoff
	for attempt := 1; ; attempt++ {
		ln, err := lc.Listen(ctx, "tcp", l.key.addr.String())
		if err == nil {
			return ln
		}
		if ctx.Err() != nil {
			return nil
		}
		name := l.cfg.Load().Name
		p.metrics.bindErrors.WithLabelValues(name).Inc()
		wait := b.Next()
		level := slog.LevelWarn
		if attempt > 1 && attempt%10 != 0 {
			level = slog.LevelDebug
		}
		p.log.Log(ctx, level, "cannot bind listener, will retry", "listener", name, "address", l.key.addr, "attempt", attempt, "retry_in", wait.Round(time.Millisecond), "error", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// newSetup starts the set-up of a client accepted by listener l.
func (p *Proxy) newSetup(l *listener, remote netip.AddrPort) relay.Setup {
	lc := l.cfg.Load()
	s := &setup{p: p, lc: lc, remote: remote, left: max(1, lc.MaxConnectAttempts)}
	if s.cl = p.Cluster(lc.Cluster); s.cl != nil {
		s.cc = s.cl.Config()
	}
	return s
}

// setup chooses the endpoints of its listener's cluster that the relay
// engine connects one accepted client to: the next one after each failed
// connect, so the client never sees it. The relay engine calls its methods
// on its event loop.
type setup struct {
	p      *Proxy
	lc     *config.Listener
	remote netip.AddrPort
	cl     *upstream.Cluster
	cc     config.Cluster
	left   int              // connect attempts left
	tried  []*upstream.Host // endpoints that failed
	h      *upstream.Host   // endpoint being tried
}

// Next picks the endpoint to try, or counts why there is none.
func (s *setup) Next() (relay.Target, bool) {
	var reason string
	switch {
	case s.cl == nil:
		reason = "no_cluster"
	case s.left > 0:
		if s.h = s.cl.Pick(s.tried); s.h != nil {
			s.left--
			t := relay.Target{Addr: s.h.Address, Timeout: s.cc.ConnectTimeout}
			if k := s.cc.Keepalive; k != nil {
				t.Keepalive = net.KeepAliveConfig{Enable: true, Idle: k.Time, Interval: k.Interval, Count: k.Probes}
			}
			return t, true
		}
		fallthrough
	default:
		switch {
		case len(s.tried) > 0:
			reason = "connect_failed"
		case s.cl.Overflow():
			reason = "overflow"
		default:
			reason = "no_endpoint"
		}
	}
	s.p.metrics.failed.WithLabelValues(s.lc.Name, reason).Inc()
	level := slog.LevelDebug
	if now, last := time.Now().UnixNano(), s.p.lastRefusalLog.Load(); now-last >= int64(time.Second) && s.p.lastRefusalLog.CompareAndSwap(last, now) {
		level = slog.LevelWarn // the others of this second: debug, and halo_agent_connections_failed_total
	}
	s.p.log.Log(context.Background(), level, "connection refused: no endpoint reachable", "listener", s.lc.Name, "cluster", s.lc.Cluster, "reason", reason, "remote_addr", s.remote.String())
	return relay.Target{}, false
}

// Failed counts a failed connect and ejects the endpoint when outlier
// detection says so.
func (s *setup) Failed(t relay.Target, err error) {
	name := s.cc.Name
	s.p.metrics.connectFailures.WithLabelValues(name, t.Addr.String()).Inc()
	if ev := s.cl.Failed(s.h); ev != nil {
		s.p.metrics.ejections.WithLabelValues(name, t.Addr.String()).Inc()
		s.p.log.Warn("endpoint ejected after connect failures", "cluster", name, "upstream_addr", t.Addr, "for", ev.For, "error", err)
	} else {
		s.p.log.Debug("connect failed, trying the next endpoint", "cluster", name, "upstream_addr", t.Addr, "error", err)
	}
	s.tried = append(s.tried, s.h)
}

// Connected registers the connection with its endpoint (which can close
// it when it turns unhealthy) and in the metrics.
func (s *setup) Connected(_ relay.Target, pair *relay.Pair) relay.Options {
	cm := s.p.metrics.conn(s.lc.Name, s.h.Address)
	cm.active.Inc()
	cm.total.Inc()
	release := s.cl.Connected(s.h, pair)
	return relay.Options{
		IdleTimeout: s.lc.IdleTimeout,
		Up:          cm.up,
		Down:        cm.down,
		OnDone: func(relay.Stats) {
			release()
			cm.active.Dec()
		},
	}
}

// freebind sets IP_FREEBIND (IPV6_FREEBIND) on a listening socket, so it
// binds an address the host does not have yet.
func freebind(network, _ string, rc syscall.RawConn) error {
	return setFreebind(network, rc)
}

// rebalanceLoop runs the clusters' rebalancing rounds (halo's extension,
// off unless a cluster's metadata turns it on): every round, a cluster
// closes a bounded share of its long-lived connections on the endpoints
// above the even share, each at a random moment within half the interval,
// so that their clients reconnect, and least-request sends them to the
// endpoint that returned or joined.
func (p *Proxy) rebalanceLoop(ctx context.Context) {
	due := map[string]time.Time{}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			for name, cl := range *p.clusters.Load() {
				cc := cl.Config()
				r := cc.Rebalance
				if r == nil {
					delete(due, name)
					continue
				}
				if at, ok := due[name]; ok && now.Before(at) {
					continue
				}
				due[name] = now.Add(r.Interval)
				victims := cl.Rebalance(r.MinAge, r.MaxFraction)
				if len(victims) == 0 {
					continue
				}
				p.metrics.rebalanced.WithLabelValues(name).Add(float64(len(victims)))
				p.log.Info("rebalancing: closing long-lived connections above the even share", "cluster", name, "connections", len(victims))
				for _, v := range victims {
					time.AfterFunc(time.Duration(rand.Int64N(int64(r.Interval/2)+1)), v.Close)
				}
			}
		}
	}
}

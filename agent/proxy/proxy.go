// Package proxy runs the agent's listeners: it binds them (retrying a busy
// address), accepts connections, picks an endpoint from the listener's
// cluster, dials it with the cluster's timeout (moving on to the next
// endpoint when a connect fails, so the client never sees it) and hands
// both sockets to the relay engine. A new configuration is applied without
// dropping anything: a listener whose address is unchanged keeps its
// socket, and open connections live on in the relay whatever changes.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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
	// Relay moves the bytes of established connections. Required.
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

	wg sync.WaitGroup // listener loops and connection set-up goroutines
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
// and accepts connections until ctx is done.
func (p *Proxy) serveListener(ctx context.Context, l *listener) {
	ln := p.bind(ctx, l)
	if ln == nil {
		return
	}
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer ln.Close()
	l.bound.Store(true)
	p.metrics.setBound(l.cfg.Load().Name, l.key.addr, true)
	p.log.Info("listening", "listener", l.cfg.Load().Name, "address", l.key.addr)
	defer func() {
		l.bound.Store(false)
		p.metrics.setBound(l.cfg.Load().Name, l.key.addr, false)
	}()
	p.acceptLoop(ctx, l, ln.(*net.TCPListener))
}

// bind listens on l's address, retrying with backoff; nil when ctx ended.
func (p *Proxy) bind(ctx context.Context, l *listener) net.Listener {
	lc := net.ListenConfig{KeepAliveConfig: p.cfg.DownstreamKeepalive}
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

// acceptLoop accepts connections and sets each up in its own goroutine
// (which ends once the relay owns the connection).
func (p *Proxy) acceptLoop(ctx context.Context, l *listener, ln *net.TCPListener) {
	var delay time.Duration
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors or the like: wait a little, as
			// net/http does, instead of spinning.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			p.log.Warn("accept failed", "listener", l.cfg.Load().Name, "error", err, "retry_in", delay)
			t := time.NewTimer(delay)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		delay = 0
		p.wg.Add(1)
		go p.handle(ctx, l.cfg.Load(), c)
	}
}

// handle connects an accepted client to an endpoint of the listener's
// cluster and hands both to the relay.
func (p *Proxy) handle(ctx context.Context, lc *config.Listener, client *net.TCPConn) {
	defer p.wg.Done()
	cl := p.Cluster(lc.Cluster)
	if cl == nil {
		p.reject(lc, client, "no_cluster")
		return
	}
	cc := cl.Config()
	attempts := max(1, lc.MaxConnectAttempts)
	var tried []*upstream.Host
	for range attempts {
		h := cl.Pick(tried)
		if h == nil {
			break
		}
		up, err := p.dial(ctx, &cc, h.Address)
		if err != nil {
			if ctx.Err() != nil {
				client.Close()
				return
			}
			p.metrics.connectFailures.WithLabelValues(cc.Name, h.Address.String()).Inc()
			if ev := cl.Failed(h); ev != nil {
				p.metrics.ejections.WithLabelValues(cc.Name, h.Address.String()).Inc()
				p.log.Warn("endpoint ejected after connect failures", "cluster", cc.Name, "upstream_addr", h.Address, "for", ev.For, "error", err)
			} else {
				p.log.Debug("connect failed, trying the next endpoint", "cluster", cc.Name, "upstream_addr", h.Address, "error", err)
			}
			tried = append(tried, h)
			continue
		}
		p.relay(lc, cl, h, client, up)
		return
	}
	switch {
	case len(tried) > 0:
		p.reject(lc, client, "connect_failed")
	case cl.Overflow():
		p.reject(lc, client, "overflow")
	default:
		p.reject(lc, client, "no_endpoint")
	}
}

// dial connects to one endpoint within the cluster's connect timeout.
func (p *Proxy) dial(ctx context.Context, cc *config.Cluster, a netip.AddrPort) (*net.TCPConn, error) {
	d := net.Dialer{Timeout: cc.ConnectTimeout}
	if k := cc.Keepalive; k != nil {
		d.KeepAliveConfig = net.KeepAliveConfig{Enable: true, Idle: k.Time, Interval: k.Interval, Count: k.Probes}
	}
	c, err := d.DialContext(ctx, "tcp", a.String())
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// reject closes a client the proxy could not connect anywhere.
func (p *Proxy) reject(lc *config.Listener, client *net.TCPConn, reason string) {
	p.metrics.failed.WithLabelValues(lc.Name, reason).Inc()
	p.log.Warn("connection refused: no endpoint reachable", "listener", lc.Name, "cluster", lc.Cluster, "reason", reason, "remote_addr", client.RemoteAddr().String())
	client.SetLinger(0)
	client.Close()
}

// conn is an established proxied connection as a cluster tracks it: it
// can be closed when its endpoint turns unhealthy, also in the short time
// before the relay has taken it.
type conn struct {
	mu     sync.Mutex
	pair   *relay.Pair
	closed bool
}

// Close closes the connection now.
func (c *conn) Close() {
	c.mu.Lock()
	c.closed = true
	pair := c.pair
	c.mu.Unlock()
	if pair != nil {
		pair.Close()
	}
}

func (c *conn) set(pair *relay.Pair) {
	c.mu.Lock()
	c.pair = pair
	closed := c.closed
	c.mu.Unlock()
	if closed {
		pair.Close()
	}
}

// relay hands an established connection to the relay engine.
func (p *Proxy) relay(lc *config.Listener, cl *upstream.Cluster, h *upstream.Host, client, up *net.TCPConn) {
	cm := p.metrics.conn(lc.Name, h.Address)
	cm.active.Inc()
	cm.total.Inc()
	tc := &conn{}
	release := cl.Connected(h, tc)
	pair, err := p.cfg.Relay.Relay(client, up, relay.Options{
		IdleTimeout: lc.IdleTimeout,
		Up:          cm.up,
		Down:        cm.down,
		OnDone: func(relay.Stats) {
			release()
			cm.active.Dec()
		},
	})
	if err != nil {
		release()
		cm.active.Dec()
		p.log.Warn("relay refused a connection", "listener", lc.Name, "error", err)
		return
	}
	tc.set(pair)
}

// freebind sets IP_FREEBIND (IPV6_FREEBIND) on a listening socket, so it
// binds an address the host does not have yet.
func freebind(network, _ string, rc syscall.RawConn) error {
	return setFreebind(network, rc)
}

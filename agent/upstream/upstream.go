// Package upstream is the live state of the agent's clusters: which
// endpoints exist, how healthy they are (EDS health plus local passive
// ejection on connect failures), how many connections each holds, and
// which one a new connection goes to. It does no I/O: the proxy dials and
// reports back.
package upstream

import (
	"math/rand/v2"
	"net/netip"
	"sync"
	"time"

	"github.com/halolb/halo/agent/config"
)

// Conn is an open proxied connection, as far as a cluster cares: it can be
// closed when its endpoint turns unhealthy.
type Conn interface{ Close() }

// Host is one endpoint of a cluster with its live state. A Host keeps its
// identity across EDS updates that keep its address, so its connection
// count and ejection state survive configuration changes.
type Host struct {
	// Address is where the endpoint listens.
	Address netip.AddrPort

	// Guarded by the owning cluster's mutex.
	hostname     string
	health       config.Health
	removed      bool
	active       int
	pending      int // connects in progress (picked, not yet Connected or Failed)
	failures     int // consecutive connect failures
	ejections    int // how many times ejected (multiplies the ejection time)
	ejectedUntil time.Time
	lastEjection time.Time
	conns        map[Conn]time.Time // open connections and when they opened
	closing      map[Conn]struct{}  // picked by Rebalance, not ended yet
}

// Cluster is one cluster's endpoints and balancing state. It is safe for
// concurrent use.
type Cluster struct {
	mu    sync.Mutex
	cfg   config.Cluster
	hosts []*Host // current endpoints, in EDS order
	gone  []*Host // removed endpoints that still hold connections
	rr    int
	now   func() time.Time
	// active counts open connections over all hosts (circuit breaker).
	active int
	// away holds when Rebalance picked each connection whose client has
	// not come back yet: a new connection is taken for one of them coming
	// back (least-request places it). Rebalance counts them towards the
	// even share until then, or for ReturnWindow, so that a client slower
	// than a rebalancing round does not make the next round close more.
	away []time.Time
}

// ReturnWindow is how long Rebalance expects the client of a connection it
// closed to come back (and counts it towards the even share meanwhile).
const ReturnWindow = time.Minute

// NewCluster returns a cluster with no endpoints.
func NewCluster(cfg *config.Cluster) *Cluster {
	return &Cluster{cfg: *cfg, now: time.Now}
}

// Event is a change a cluster update or a connect result caused, for logs
// and metrics.
type Event struct {
	// Host is the endpoint concerned.
	Host netip.AddrPort
	// Kind is "ejected", "closed_unhealthy" or "removed".
	Kind string
	// Conns is how many connections were closed (closed_unhealthy).
	Conns int
	// For is the ejection time (ejected).
	For time.Duration
}

// Update applies a new cluster configuration and endpoint set. Endpoints
// whose address is unchanged keep their state; removed endpoints get no new
// connections while their open ones finish. When the cluster closes
// connections on host health failure, an endpoint that turns unhealthy has
// its open connections closed (after the lock is released).
func (c *Cluster) Update(cfg *config.Cluster, eps []config.Endpoint) []Event {
	var toClose []Conn
	var events []Event
	c.mu.Lock()
	c.cfg = *cfg
	old := make(map[netip.AddrPort]*Host, len(c.hosts))
	for _, h := range c.hosts {
		old[h.Address] = h
	}
	hosts := make([]*Host, 0, len(eps))
	for _, e := range eps {
		h := old[e.Address]
		if h == nil {
			h = c.revive(e.Address)
		}
		if h == nil {
			h = &Host{Address: e.Address}
		}
		delete(old, e.Address)
		turnedUnhealthy := e.Health == config.Unhealthy && h.health != config.Unhealthy
		h.hostname, h.health, h.removed = e.Hostname, e.Health, false
		if turnedUnhealthy && c.cfg.CloseOnHealthFailure && len(h.conns) > 0 {
			events = append(events, Event{Host: h.Address, Kind: "closed_unhealthy", Conns: len(h.conns)})
			for conn := range h.conns {
				toClose = append(toClose, conn)
			}
		}
		hosts = append(hosts, h)
	}
	for _, h := range c.hosts {
		if _, ok := old[h.Address]; ok {
			h.removed = true
			events = append(events, Event{Host: h.Address, Kind: "removed"})
			if h.active > 0 {
				c.gone = append(c.gone, h)
			}
		}
	}
	c.hosts = hosts
	c.mu.Unlock()
	for _, conn := range toClose {
		conn.Close()
	}
	return events
}

// revive takes back a removed host that still holds connections when it
// is added again, so its count stays right. Called with mu held.
func (c *Cluster) revive(a netip.AddrPort) *Host {
	for i, h := range c.gone {
		if h.Address == a {
			c.gone = append(c.gone[:i], c.gone[i+1:]...)
			return h
		}
	}
	return nil
}

// HostState is a snapshot of one endpoint, for status and tests.
type HostState struct {
	Address  netip.AddrPort
	Hostname string
	Health   config.Health
	Ejected  bool
	Active   int
}

// State returns a snapshot of the current endpoints.
func (c *Cluster) State() []HostState {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	out := make([]HostState, len(c.hosts))
	for i, h := range c.hosts {
		out[i] = HostState{Address: h.Address, Hostname: h.hostname, Health: h.health, Ejected: now.Before(h.ejectedUntil), Active: h.active}
	}
	return out
}

// Pick chooses the endpoint for a new connection, skipping those in tried
// (endpoints this connection already failed to reach). It balances over
// the best tier available: healthy and not ejected; else degraded and not
// ejected; else, in panic mode (the healthy share is below the panic
// threshold), every endpoint. It returns nil when there is nothing to try
// or the circuit breaker is open (Overflow tells which). The connect to
// the endpoint it returns counts as in progress, for least-request, until
// Connected or Failed reports its end: a burst of new connections spreads
// instead of piling onto the endpoint that had the fewest when it began.
func (c *Cluster) Pick(tried []*Host) *Host {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.hosts) == 0 || c.overflowLocked() {
		return nil
	}
	now := c.now()
	var healthy, degraded int
	for _, h := range c.hosts {
		if now.Before(h.ejectedUntil) {
			continue
		}
		switch h.health {
		case config.Healthy:
			healthy++
		case config.Degraded:
			degraded++
		}
	}
	want := func(h *Host) bool { return !now.Before(h.ejectedUntil) && h.health == config.Healthy }
	switch {
	case healthy > 0 && !c.panicLocked(healthy+degraded):
	case degraded > 0 && !c.panicLocked(healthy+degraded):
		want = func(h *Host) bool { return !now.Before(h.ejectedUntil) && h.health == config.Degraded }
	case c.cfg.PanicThreshold > 0:
		want = func(*Host) bool { return true }
	default:
		return nil // no panic mode: nothing usable
	}
	h := c.chooseLocked(want, tried)
	if h != nil {
		h.pending++
	}
	return h
}

// panicLocked reports whether usable endpoints are below the panic
// threshold (Envoy: healthy percentage < healthy_panic_threshold).
func (c *Cluster) panicLocked(usable int) bool {
	return float64(usable)*100 < c.cfg.PanicThreshold*float64(len(c.hosts))
}

// Overflow reports whether the cluster is at its connection limit.
func (c *Cluster) Overflow() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.overflowLocked()
}

func (c *Cluster) overflowLocked() bool {
	return c.cfg.MaxConnections > 0 && c.active >= c.cfg.MaxConnections
}

// chooseLocked applies the load-balancing policy to the wanted endpoints
// not yet tried.
func (c *Cluster) chooseLocked(want func(*Host) bool, tried []*Host) *Host {
	n := len(c.hosts)
	start := c.rr % n
	c.rr++
	var best *Host
	var candidates int
	for i := range n {
		h := c.hosts[(start+i)%n]
		if !want(h) || contains(tried, h) {
			continue
		}
		candidates++
		switch c.cfg.LbPolicy {
		case config.RoundRobin:
			return h
		case config.Random:
			// Reservoir sampling: each candidate equally likely.
			if rand.IntN(candidates) == 0 {
				best = h
			}
		default: // least request: fewest open and opening connections; ties rotate
			if best == nil || h.active+h.pending < best.active+best.pending {
				best = h
			}
		}
	}
	return best
}

func contains(hs []*Host, h *Host) bool {
	for _, x := range hs {
		if x == h {
			return true
		}
	}
	return false
}

// Connected records a successful connect to h and that conn now holds it;
// the returned func releases it when the connection ends.
func (c *Cluster) Connected(h *Host, conn Conn) (release func()) {
	c.mu.Lock()
	h.pending = max(0, h.pending-1)
	h.failures = 0
	h.active++
	c.active++
	if h.conns == nil {
		h.conns = map[Conn]time.Time{}
	}
	h.conns[conn] = c.now()
	if len(c.away) > 0 {
		c.away = c.away[1:] // a client closed by Rebalance is back
	}
	c.mu.Unlock()
	return func() { c.release(h, conn) }
}

func (c *Cluster) release(h *Host, conn Conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := h.conns[conn]; !ok {
		return
	}
	delete(h.conns, conn)
	delete(h.closing, conn)
	h.active--
	c.active--
	if h.removed && h.active == 0 {
		for i, g := range c.gone {
			if g == h {
				c.gone = append(c.gone[:i], c.gone[i+1:]...)
				break
			}
		}
	}
}

// Failed records a failed connect to h (refused or timed out) and ejects
// h when outlier detection says so. It returns the ejection, if any.
func (c *Cluster) Failed(h *Host) *Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	h.pending = max(0, h.pending-1)
	h.failures++
	o := c.cfg.Outlier
	if o == nil || h.failures < o.ConsecutiveFailures {
		return nil
	}
	now := c.now()
	if now.Before(h.ejectedUntil) {
		return nil
	}
	if o.EnforcingPercent < 100 && rand.IntN(100) >= o.EnforcingPercent {
		return nil
	}
	ejected := 0
	for _, x := range c.hosts {
		if now.Before(x.ejectedUntil) {
			ejected++
		}
	}
	if (ejected+1)*100 > o.MaxEjectionPercent*len(c.hosts) && ejected > 0 {
		return nil // Envoy: never above max_ejection_percent (but one may always go)
	}
	// The multiplier decays: an endpoint that stayed in for a long time
	// starts over from the base ejection time.
	if !h.lastEjection.IsZero() && now.Sub(h.lastEjection) > o.MaxEjectionTime+o.BaseEjectionTime*time.Duration(h.ejections) {
		h.ejections = 0
	}
	h.ejections++
	d := o.BaseEjectionTime * time.Duration(h.ejections)
	if limit := max(o.MaxEjectionTime, o.BaseEjectionTime); d > limit {
		d = limit
	}
	h.ejectedUntil = now.Add(d)
	h.lastEjection = now
	h.failures = 0
	return &Event{Host: h.Address, Kind: "ejected", For: d}
}

// Config returns the cluster's current configuration.
func (c *Cluster) Config() config.Cluster {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cfg
}

// Rebalance picks the connections to close so that long-lived connections
// spread evenly again after a backend returned or joined: over the usable
// endpoints (healthy, or degraded when none is, and not ejected) it counts
// their connections, young ones included, and those it closed whose
// clients have not come back yet (within ReturnWindow: the next new
// connection is taken for one of them, placed by least-request where the
// fewest are); then it takes from each endpoint above the even share
// (rounded up, so the spread ends within one connection of even) at most
// maxFraction of that count in all (at least one), never taking an
// endpoint below the share, and only connections older than minAge. It
// returns nothing once no endpoint is above the share. The caller closes
// them; their clients reconnect and least-request places them. A
// connection returned is closing from then on: it is not picked again, and
// counts as its client on the way back.
func (c *Cluster) Rebalance(minAge time.Duration, maxFraction float64) []Conn {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	for len(c.away) > 0 && now.Sub(c.away[0]) > ReturnWindow {
		c.away = c.away[1:]
	}
	tier := config.Healthy
	var usable []*Host
	for pass := 0; pass < 2 && len(usable) == 0; pass++ {
		for _, h := range c.hosts {
			if h.health == tier && !now.Before(h.ejectedUntil) {
				usable = append(usable, h)
			}
		}
		tier = config.Degraded
	}
	if len(usable) < 2 {
		return nil
	}
	staying := make([]int, len(usable))    // connections not closing
	movable := make([][]Conn, len(usable)) // those older than minAge
	total := len(c.away)
	for i, h := range usable {
		for conn, at := range h.conns {
			if _, going := h.closing[conn]; going {
				continue // counted in c.away
			}
			total++
			staying[i]++
			if now.Sub(at) >= minAge {
				movable[i] = append(movable[i], conn)
			}
		}
	}
	share := (total + len(usable) - 1) / len(usable)
	budget := max(1, int(maxFraction*float64(total)))
	var out []Conn
	for i, h := range usable {
		for staying[i] > share && len(movable[i]) > 0 && len(out) < budget {
			conn := movable[i][len(movable[i])-1]
			movable[i] = movable[i][:len(movable[i])-1]
			staying[i]--
			if h.closing == nil {
				h.closing = map[Conn]struct{}{}
			}
			h.closing[conn] = struct{}{}
			c.away = append(c.away, now)
			out = append(out, conn)
		}
	}
	return out
}

package upstream_test

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/halolb/halo/agent/config"
	"github.com/halolb/halo/agent/upstream"
)

func addr(i int) netip.AddrPort { return netip.MustParseAddrPort(fmt.Sprintf("127.0.0.%d:6443", i)) }

func endpoints(hs ...config.Health) []config.Endpoint {
	var out []config.Endpoint
	for i, h := range hs {
		out = append(out, config.Endpoint{Address: addr(i + 1), Hostname: fmt.Sprintf("m%d", i+1), Health: h})
	}
	return out
}

func cluster(p config.LbPolicy) *config.Cluster {
	return &config.Cluster{Name: "c", LbPolicy: p, PanicThreshold: 1, ConnectTimeout: time.Second,
		Outlier: &config.Outlier{ConsecutiveFailures: 1, EnforcingPercent: 100, Interval: time.Second,
			BaseEjectionTime: 5 * time.Second, MaxEjectionTime: time.Minute, MaxEjectionPercent: 100}}
}

func newCluster(t *testing.T, cfg *config.Cluster, eps []config.Endpoint) *upstream.Cluster {
	t.Helper()
	c := upstream.NewCluster(cfg)
	c.Update(cfg, eps)
	return c
}

type conn struct{ closed int }

func (c *conn) Close() { c.closed++ }

func pickCounts(c *upstream.Cluster, n int) map[netip.AddrPort]int {
	got := map[netip.AddrPort]int{}
	for range n {
		if h := c.Pick(nil); h != nil {
			got[h.Address]++
		}
	}
	return got
}

func TestRoundRobinAndRandomSpreadOverHealthy(t *testing.T) {
	for _, p := range []config.LbPolicy{config.RoundRobin, config.Random, config.LeastRequest} {
		t.Run(p.String(), func(t *testing.T) {
			c := newCluster(t, cluster(p), endpoints(config.Healthy, config.Unhealthy, config.Healthy, config.Draining))
			got := pickCounts(c, 300)
			if got[addr(2)] != 0 || got[addr(4)] != 0 {
				t.Errorf("unhealthy or draining endpoint picked: %v", got)
			}
			if got[addr(1)] < 50 || got[addr(3)] < 50 {
				t.Errorf("healthy endpoints not both used: %v", got)
			}
		})
	}
}

func TestLeastRequestPicksFewestActive(t *testing.T) {
	c := newCluster(t, cluster(config.LeastRequest), endpoints(config.Healthy, config.Healthy, config.Healthy))
	var releases []func()
	for range 6 {
		h := c.Pick(nil)
		releases = append(releases, c.Connected(h, &conn{}))
	}
	for _, s := range c.State() {
		if s.Active != 2 {
			t.Fatalf("uneven spread: %+v", c.State())
		}
	}
	releases[0]() // one endpoint now has 1
	h := c.Pick(nil)
	var low netip.AddrPort
	for _, s := range c.State() {
		if s.Active == 1 {
			low = s.Address
		}
	}
	if h.Address != low {
		t.Errorf("picked %v, want the least loaded %v", h.Address, low)
	}
}

func TestPanicFailsOpenWhenNoneHealthy(t *testing.T) {
	c := newCluster(t, cluster(config.RoundRobin), endpoints(config.Unhealthy, config.Draining))
	got := pickCounts(c, 10)
	if got[addr(1)] == 0 || got[addr(2)] == 0 {
		t.Errorf("panic mode should use every endpoint: %v", got)
	}
	cfg := cluster(config.RoundRobin)
	cfg.PanicThreshold = 0
	c.Update(cfg, endpoints(config.Unhealthy, config.Draining))
	if h := c.Pick(nil); h != nil {
		t.Errorf("panic disabled, picked %v", h.Address)
	}
}

func TestPanicThresholdPercent(t *testing.T) {
	cfg := cluster(config.RoundRobin)
	cfg.PanicThreshold = 50
	// 1 of 3 healthy = 33% < 50%: panic, all get traffic.
	c := newCluster(t, cfg, endpoints(config.Healthy, config.Unhealthy, config.Unhealthy))
	if got := pickCounts(c, 30); len(got) != 3 {
		t.Errorf("below threshold, want all three: %v", got)
	}
	// 2 of 3 healthy = 67%: only healthy.
	c.Update(cfg, endpoints(config.Healthy, config.Healthy, config.Unhealthy))
	if got := pickCounts(c, 30); got[addr(3)] != 0 {
		t.Errorf("above threshold, unhealthy used: %v", got)
	}
}

func TestDegradedOnlyWithoutHealthy(t *testing.T) {
	c := newCluster(t, cluster(config.RoundRobin), endpoints(config.Degraded, config.Healthy))
	if got := pickCounts(c, 10); got[addr(1)] != 0 {
		t.Errorf("degraded used while a healthy one exists: %v", got)
	}
	c.Update(cluster(config.RoundRobin), endpoints(config.Degraded, config.Unhealthy))
	if got := pickCounts(c, 10); got[addr(1)] != 10 {
		t.Errorf("degraded should take all: %v", got)
	}
}

func TestTriedEndpointsSkipped(t *testing.T) {
	c := newCluster(t, cluster(config.LeastRequest), endpoints(config.Healthy, config.Healthy))
	a := c.Pick(nil)
	b := c.Pick([]*upstream.Host{a})
	if b == nil || b == a {
		t.Fatalf("second pick %v", b)
	}
	if h := c.Pick([]*upstream.Host{a, b}); h != nil {
		t.Errorf("all tried, got %v", h.Address)
	}
}

func TestEjectionAfterFailuresAndExpiry(t *testing.T) {
	now := time.Unix(1000, 0)
	cfg := cluster(config.RoundRobin)
	cfg.Outlier.ConsecutiveFailures = 2
	c := newCluster(t, cfg, endpoints(config.Healthy, config.Healthy))
	c.SetClock(func() time.Time { return now })
	h := c.Pick(nil)
	if ev := c.Failed(h); ev != nil {
		t.Fatalf("ejected after one failure of two: %+v", ev)
	}
	ev := c.Failed(h)
	if ev == nil || ev.Kind != "ejected" || ev.For != 5*time.Second {
		t.Fatalf("event %+v", ev)
	}
	if got := pickCounts(c, 10); got[h.Address] != 0 {
		t.Errorf("ejected endpoint picked: %v", got)
	}
	now = now.Add(6 * time.Second)
	if got := pickCounts(c, 10); got[h.Address] == 0 {
		t.Errorf("endpoint not back after its ejection: %v", got)
	}
	// Second ejection lasts twice as long.
	c.Failed(h)
	if ev := c.Failed(h); ev == nil || ev.For != 10*time.Second {
		t.Errorf("second ejection %+v", ev)
	}
}

func TestAllEjectedFailsOpen(t *testing.T) {
	c := newCluster(t, cluster(config.RoundRobin), endpoints(config.Healthy, config.Healthy))
	c.Failed(c.Pick(nil))
	c.Failed(c.Pick(nil))
	for _, s := range c.State() {
		if !s.Ejected {
			t.Fatalf("not all ejected: %+v", c.State())
		}
	}
	if got := pickCounts(c, 10); len(got) != 2 {
		t.Errorf("all ejected: panic should use both: %v", got)
	}
}

func TestMaxEjectionPercent(t *testing.T) {
	cfg := cluster(config.RoundRobin)
	cfg.Outlier.MaxEjectionPercent = 10
	c := newCluster(t, cfg, endpoints(config.Healthy, config.Healthy, config.Healthy))
	hs := []*upstream.Host{c.Pick(nil), c.Pick(nil)}
	if ev := c.Failed(hs[0]); ev == nil {
		t.Fatal("the first ejection is always allowed")
	}
	if ev := c.Failed(hs[1]); ev != nil {
		t.Errorf("second ejection above 10%%: %+v", ev)
	}
}

func TestNoOutlierDetectionNeverEjects(t *testing.T) {
	cfg := cluster(config.RoundRobin)
	cfg.Outlier = nil
	c := newCluster(t, cfg, endpoints(config.Healthy))
	for range 10 {
		if ev := c.Failed(c.Pick(nil)); ev != nil {
			t.Fatalf("ejected without outlier detection: %+v", ev)
		}
	}
}

func TestCircuitBreaker(t *testing.T) {
	cfg := cluster(config.RoundRobin)
	cfg.MaxConnections = 2
	c := newCluster(t, cfg, endpoints(config.Healthy))
	r1 := c.Connected(c.Pick(nil), &conn{})
	c.Connected(c.Pick(nil), &conn{})
	if h := c.Pick(nil); h != nil || !c.Overflow() {
		t.Fatalf("third connection allowed over max_connections=2")
	}
	r1()
	r1() // releasing twice is harmless
	if c.Pick(nil) == nil {
		t.Error("a slot freed but Pick refused")
	}
}

func TestUpdateKeepsStateAndClosesOnUnhealthy(t *testing.T) {
	cfg := cluster(config.RoundRobin)
	cfg.CloseOnHealthFailure = true
	c := newCluster(t, cfg, endpoints(config.Healthy, config.Healthy))
	var conns []*conn
	for range 4 {
		cn := &conn{}
		conns = append(conns, cn)
		c.Connected(c.Pick(nil), cn)
	}
	evs := c.Update(cfg, endpoints(config.Healthy, config.Unhealthy))
	if len(evs) != 1 || evs[0].Kind != "closed_unhealthy" || evs[0].Host != addr(2) || evs[0].Conns != 2 {
		t.Fatalf("events %+v", evs)
	}
	closed := 0
	for _, cn := range conns {
		closed += cn.closed
	}
	if closed != 2 {
		t.Errorf("closed %d connections, want the 2 on the unhealthy endpoint", closed)
	}
	st := c.State()
	if st[0].Active != 2 {
		t.Errorf("healthy endpoint lost its count: %+v", st)
	}
	// Draining does not close connections.
	cfg2 := cluster(config.RoundRobin)
	cfg2.CloseOnHealthFailure = true
	c2 := newCluster(t, cfg2, endpoints(config.Healthy))
	cn := &conn{}
	c2.Connected(c2.Pick(nil), cn)
	c2.Update(cfg2, endpoints(config.Draining))
	if cn.closed != 0 {
		t.Error("draining closed a connection")
	}
	// Without the option nothing is closed.
	c3 := newCluster(t, cluster(config.RoundRobin), endpoints(config.Healthy))
	cn3 := &conn{}
	c3.Connected(c3.Pick(nil), cn3)
	c3.Update(cluster(config.RoundRobin), endpoints(config.Unhealthy))
	if cn3.closed != 0 {
		t.Error("closed without close_connections_on_host_health_failure")
	}
}

func TestRemovedHostFinishesButGetsNothingNew(t *testing.T) {
	c := newCluster(t, cluster(config.RoundRobin), endpoints(config.Healthy, config.Healthy))
	var rel []func()
	for range 2 {
		rel = append(rel, c.Connected(c.Pick(nil), &conn{}))
	}
	evs := c.Update(cluster(config.RoundRobin), endpoints(config.Healthy))
	if len(evs) != 1 || evs[0].Kind != "removed" || evs[0].Host != addr(2) {
		t.Fatalf("events %+v", evs)
	}
	if got := pickCounts(c, 10); got[addr(2)] != 0 {
		t.Errorf("removed endpoint picked: %v", got)
	}
	// Re-added before its connection ended: the count carries over.
	c.Update(cluster(config.RoundRobin), endpoints(config.Healthy, config.Healthy))
	for _, s := range c.State() {
		if s.Active != 1 {
			t.Errorf("counts after re-add: %+v", c.State())
		}
	}
	rel[0]()
	rel[1]()
}

func TestRebalance(t *testing.T) {
	now := time.Unix(1000, 0)
	c := newCluster(t, cluster(config.RoundRobin), endpoints(config.Healthy, config.Healthy))
	c.SetClock(func() time.Time { return now })
	// master 2 is away: all 20 connections pile onto master 1.
	c.Update(cluster(config.RoundRobin), endpoints(config.Healthy, config.Unhealthy))
	for range 20 {
		c.Connected(c.Pick(nil), &conn{})
	}
	c.Update(cluster(config.RoundRobin), endpoints(config.Healthy, config.Healthy))
	if got := c.Rebalance(time.Minute, 0.1); len(got) != 0 {
		t.Fatalf("connections younger than min_age moved: %d", len(got))
	}
	now = now.Add(2 * time.Minute)
	got := c.Rebalance(time.Minute, 0.1)
	if len(got) != 2 { // 10% of 20
		t.Fatalf("first round moves %d, want 2 (max_fraction 0.1 of 20)", len(got))
	}
	// Without a bound: down to the even share (10 each), never below; the
	// 2 already closing count as moved.
	got = c.Rebalance(time.Minute, 1)
	if len(got) != 8 {
		t.Fatalf("unbounded round moves %d, want 8", len(got))
	}
	if got := c.Rebalance(time.Minute, 1); len(got) != 0 {
		t.Fatalf("closing connections picked again: %d", len(got))
	}
}

func TestRebalanceStopsWhenEven(t *testing.T) {
	now := time.Unix(1000, 0)
	c := newCluster(t, cluster(config.LeastRequest), endpoints(config.Healthy, config.Healthy, config.Healthy))
	c.SetClock(func() time.Time { return now })
	for range 7 {
		c.Connected(c.Pick(nil), &conn{})
	}
	now = now.Add(time.Hour)
	if got := c.Rebalance(time.Minute, 1); len(got) != 0 {
		t.Fatalf("3/2/2 is within one of even, yet %d moved", len(got))
	}
	// A single usable endpoint: nothing to rebalance to.
	c.Update(cluster(config.LeastRequest), endpoints(config.Healthy, config.Unhealthy, config.Unhealthy))
	if got := c.Rebalance(time.Minute, 1); len(got) != 0 {
		t.Fatalf("rebalanced onto unhealthy endpoints: %d", len(got))
	}
}

// TestLeastRequestCountsConnectsInProgress: a burst of new connections,
// picked before any connect completes, spreads over the endpoints instead
// of piling onto the one that had the fewest when the burst began.
func TestLeastRequestCountsConnectsInProgress(t *testing.T) {
	c := newCluster(t, cluster(config.LeastRequest), endpoints(config.Healthy, config.Healthy, config.Healthy))
	// Two connections each, then the second endpoint's both end and one of
	// the third's: 2, 0, 1 open.
	release := map[netip.AddrPort][]func(){}
	for range 6 {
		h := c.Pick(nil)
		release[h.Address] = append(release[h.Address], c.Connected(h, &conn{}))
	}
	for _, a := range []netip.AddrPort{addr(2), addr(2), addr(3)} {
		release[a][0]()
		release[a] = release[a][1:]
	}
	picked := map[netip.AddrPort]int{}
	var burst []*upstream.Host
	for range 6 {
		h := c.Pick(nil)
		picked[h.Address]++
		burst = append(burst, h)
	}
	for _, h := range c.State() {
		if got := picked[h.Address] + h.Active; got != 3 {
			t.Errorf("%v: %d open + %d connecting, want 3 in all (an even spread)", h.Address, h.Active, picked[h.Address])
		}
	}
	// A failed connect ends its count as surely as a successful one.
	for i, h := range burst {
		if i%2 == 0 {
			c.Failed(h)
		} else {
			c.Connected(h, &conn{})
		}
	}
	total := 0
	for _, h := range c.State() {
		total += h.Active
	}
	if total != 3+3 {
		t.Errorf("open connections %d, want 6", total)
	}
}

// piled is a least-request cluster of three endpoints whose 12
// connections, opened while the second was away, sit 6/0/6; the second is
// healthy again. open opens one more connection where least-request puts
// it; ended releases the connections that were closed.
type piled struct {
	c     *upstream.Cluster
	now   time.Time
	conns map[*conn]func()
}

func newPiled(t *testing.T) *piled {
	p := &piled{now: time.Unix(1000, 0), conns: map[*conn]func(){}}
	p.c = newCluster(t, cluster(config.LeastRequest), endpoints(config.Healthy, config.Unhealthy, config.Healthy))
	p.c.SetClock(func() time.Time { return p.now })
	for range 12 {
		p.open()
	}
	p.now = p.now.Add(time.Hour)
	p.c.Update(cluster(config.LeastRequest), endpoints(config.Healthy, config.Healthy, config.Healthy))
	return p
}

func (p *piled) open() {
	cn := &conn{}
	p.conns[cn] = p.c.Connected(p.c.Pick(nil), cn)
}

// round runs a rebalancing round, closes what it picked, and returns how
// many that was.
func (p *piled) round(minAge time.Duration, maxFraction float64) int {
	got := p.c.Rebalance(minAge, maxFraction)
	for _, cn := range got {
		cn.Close()
	}
	return len(got)
}

// ended releases the closed connections and returns how many.
func (p *piled) ended() int {
	n := 0
	for cn, release := range p.conns {
		if cn.closed > 0 {
			release()
			delete(p.conns, cn)
			n++
		}
	}
	return n
}

func (p *piled) spread() []int {
	var out []int
	for _, h := range p.c.State() {
		out = append(out, h.Active)
	}
	return out
}

// TestRebalanceCountsClientsOnTheirWayBack: the connections a round
// closed still count towards the even share after they ended, until their
// clients are back: a client slower than a round does not make the next
// round close more than the excess.
func TestRebalanceCountsClientsOnTheirWayBack(t *testing.T) {
	p := newPiled(t)
	if got := p.round(0, 0.25); got != 3 { // 25% of 12, from the two above 4
		t.Fatalf("first round closed %d, want 3", got)
	}
	p.ended() // the clients are not back yet
	if got := p.round(0, 0.25); got != 1 {
		t.Fatalf("second round, clients still away, closed %d, want 1 (4 in all)", got)
	}
	for range p.ended() + 3 {
		p.open()
	}
	if got := p.spread(); !slices.Equal(got, []int{4, 4, 4}) {
		t.Fatalf("spread %v once the clients are back, want 4/4/4", got)
	}
	if got := p.round(0, 0.25); got != 0 {
		t.Fatalf("%d closed once even", got)
	}
}

// TestRebalanceReturnWindow: clients that never come back stop counting
// towards the share after ReturnWindow.
func TestRebalanceReturnWindow(t *testing.T) {
	p := newPiled(t)
	if got := p.round(0, 0.25); got != 3 {
		t.Fatalf("first round closed %d, want 3", got)
	}
	p.ended()
	p.now = p.now.Add(upstream.ReturnWindow / 2)
	if got := p.round(0, 0.25); got != 1 {
		t.Fatalf("within the window, clients away: closed %d, want 1", got)
	}
	p.ended()
	// 4/0/4 open, and the four clients never came back.
	p.now = p.now.Add(upstream.ReturnWindow + time.Second)
	if got := p.round(0, 1); got != 2 {
		t.Fatalf("after the window, 4/0/4 open: closed %d, want 2 (down to the share of 8, 3)", got)
	}
}

// TestRebalanceCountsYoungConnections: connections younger than minAge are
// not moved but count towards the even share, so clients that came back
// onto the returned endpoint do not make the next rounds move more than the
// excess.
func TestRebalanceCountsYoungConnections(t *testing.T) {
	p := newPiled(t)
	moved := 0
	for range 10 { // ten rounds, 10 s apart: the moved ones stay young
		p.now = p.now.Add(10 * time.Second)
		moved += p.round(time.Minute, 0.1)
		for range p.ended() {
			p.open() // the client is back at once
		}
	}
	if moved != 4 {
		t.Errorf("%d moved, want 4 (only the excess)", moved)
	}
	if got := p.spread(); !slices.Equal(got, []int{4, 4, 4}) {
		t.Errorf("spread %v, want 4/4/4", got)
	}
}

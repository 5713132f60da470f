package proxy_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"golang.org/x/sync/errgroup"

	"github.com/halolb/halo/agent/config"
	"github.com/halolb/halo/agent/proxy"
	"github.com/halolb/halo/agent/relay"
	"github.com/halolb/halo/internal/backoff"
	"github.com/halolb/halo/internal/waitfor"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// stall bounds every wait in the tests: the time in which nothing happens
// that a test waits for, generous for a 2-core machine running -race. It
// bounds a stall, never the whole of a test.
const stall = 10 * time.Second

// backend is a TCP server that greets each connection with its name, then
// echoes lines back prefixed with its name.
type backend struct {
	name  string
	ln    net.Listener
	addr  netip.AddrPort
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns []net.Conn
}

func newBackend(t *testing.T, name string) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{name: name, ln: ln, addr: netip.MustParseAddrPort(ln.Addr().String())}
	b.wg.Add(1)
	go b.serve()
	t.Cleanup(b.close)
	return b
}

func (b *backend) serve() {
	defer b.wg.Done()
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		b.mu.Lock()
		b.conns = append(b.conns, c)
		b.mu.Unlock()
		b.wg.Add(1)
		go b.echo(c)
	}
}

func (b *backend) echo(c net.Conn) {
	defer b.wg.Done()
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			if errors.Is(err, io.EOF) {
				// Half-close: the client is done sending; answer and
				// close, like a request-then-FIN protocol.
				fmt.Fprintf(c, "%s:bye\n", b.name)
			}
			return
		}
		fmt.Fprintf(c, "%s:%s", b.name, line)
	}
}

func (b *backend) close() {
	b.ln.Close()
	b.mu.Lock()
	for _, c := range b.conns {
		c.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
}

// deadAddr is a loopback address where nothing listens.
func deadAddr(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	return a
}

type harness struct {
	t    *testing.T
	p    *proxy.Proxy
	reg  *prometheus.Registry
	addr netip.AddrPort
	stop context.CancelFunc
	g    *errgroup.Group
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	e, err := relay.New(relay.Config{})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	p, err := proxy.New(proxy.Config{Relay: e, Registerer: reg, BindBackoff: backoff.Backoff{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return e.Run(ctx) })
	g.Go(func() error { return p.Run(ctx) })
	h := &harness{t: t, p: p, reg: reg, addr: deadAddr(t), stop: cancel, g: g}
	t.Cleanup(func() {
		cancel()
		if err := g.Wait(); err != nil {
			t.Error(err)
		}
	})
	return h
}

type clusterOpt func(*config.Cluster)

// set is a configuration with one listener on addr to one cluster. Its
// timeouts are long so that a slow machine cannot reach them: a connect
// that takes over a second, or an ejection that ends while a test still
// counts on it, would make a test fail by the machine's speed.
func set(addr netip.AddrPort, cluster string, eps []config.Endpoint, opts ...clusterOpt) *config.Set {
	c := &config.Cluster{Name: cluster, EDS: true, EDSServiceName: cluster, LbPolicy: config.RoundRobin,
		ConnectTimeout: stall, PanicThreshold: 1, MaxConnections: 1 << 20,
		Outlier: &config.Outlier{ConsecutiveFailures: 1, EnforcingPercent: 100, Interval: time.Second,
			BaseEjectionTime: time.Hour, MaxEjectionTime: time.Hour, MaxEjectionPercent: 100}}
	for _, o := range opts {
		o(c)
	}
	return &config.Set{
		Listeners: map[string]*config.Listener{"l": {Name: "l", Address: addr, Cluster: cluster, StatPrefix: "l", IdleTimeout: time.Hour, MaxConnectAttempts: 3}},
		Clusters:  map[string]*config.Cluster{cluster: c},
		Endpoints: map[string]*config.Endpoints{cluster: {Name: cluster, Endpoints: eps}},
	}
}

func eps(addrs ...netip.AddrPort) []config.Endpoint {
	var out []config.Endpoint
	for _, a := range addrs {
		out = append(out, config.Endpoint{Address: a})
	}
	return out
}

func (h *harness) apply(s *config.Set) {
	h.t.Helper()
	if err := h.p.Apply(s); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) waitReady() {
	h.t.Helper()
	poll(h.t, "proxy ready", h.p.Ready)
}

func poll(t *testing.T, what string, cond func() error) {
	t.Helper()
	waitfor.Nil(t, stall, what, cond)
}

// client is one connection through the proxy.
type client struct {
	c  *net.TCPConn
	br *bufio.Reader
}

func (h *harness) dial() *client {
	h.t.Helper()
	c, err := net.DialTCP("tcp", nil, net.TCPAddrFromAddrPort(h.addr))
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { c.Close() })
	return &client{c: c, br: bufio.NewReader(c)}
}

// ask sends a line and returns the answer ("name:line").
func (c *client) ask(line string) (string, error) {
	if err := c.c.SetDeadline(time.Now().Add(stall)); err != nil {
		return "", err
	}
	if _, err := io.WriteString(c.c, line+"\n"); err != nil {
		return "", err
	}
	s, err := c.br.ReadString('\n')
	return strings.TrimSuffix(s, "\n"), err
}

// waitClosed reads until the proxy closes c (a FIN or a reset), failing
// the test if it is still open after a deadline.
func waitClosed(t *testing.T, c *client, what string) {
	t.Helper()
	if err := c.c.SetDeadline(time.Now().Add(stall)); err != nil {
		t.Fatal(err)
	}
	_, err := io.Copy(io.Discard, c.br)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("%s: still open (want closed)", what)
	}
}

func (h *harness) who() string {
	h.t.Helper()
	c := h.dial()
	defer c.c.Close()
	s, err := c.ask("hi")
	if err != nil {
		h.t.Fatalf("through the proxy: %v", err)
	}
	name, _, _ := strings.Cut(s, ":")
	return name
}

func TestProxiesAndSpreads(t *testing.T) {
	h := newHarness(t)
	b1, b2 := newBackend(t, "b1"), newBackend(t, "b2")
	h.apply(set(h.addr, "c", eps(b1.addr, b2.addr)))
	h.waitReady()
	got := map[string]int{}
	for range 10 {
		got[h.who()]++
	}
	if got["b1"] != 5 || got["b2"] != 5 {
		t.Errorf("round robin over two: %v", got)
	}
	if v := metricValue(t, h.reg, "halo_agent_connections_total", "listener=l", "backend="+b1.addr.String()); v != 5 {
		t.Errorf("connections_total for b1 = %v", v)
	}
}

func TestHalfCloseBothWays(t *testing.T) {
	h := newHarness(t)
	b := newBackend(t, "b")
	h.apply(set(h.addr, "c", eps(b.addr)))
	h.waitReady()
	c := h.dial()
	if s, err := c.ask("one"); err != nil || s != "b:one" {
		t.Fatalf("%q %v", s, err)
	}
	// The client is done sending: the backend sees EOF, answers, and
	// closes; the client reads everything, then EOF.
	if err := c.c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if err := c.c.SetDeadline(time.Now().Add(stall)); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(c.br)
	if err != nil || string(rest) != "b:bye\n" {
		t.Fatalf("after half-close read %q, %v", rest, err)
	}
}

func TestConnectFailureMovesOnAndEjects(t *testing.T) {
	h := newHarness(t)
	b := newBackend(t, "b")
	dead := deadAddr(t)
	h.apply(set(h.addr, "c", eps(dead, b.addr)))
	h.waitReady()
	for range 20 {
		if w := h.who(); w != "b" {
			t.Fatalf("answered by %q", w)
		}
	}
	if v := metricValue(t, h.reg, "halo_agent_ejections_total", "cluster=c", "backend="+dead.String()); v != 1 {
		t.Errorf("ejections of the dead backend = %v, want 1 (ejected at its first failure, then skipped)", v)
	}
}

func TestAllBackendsDownClosesClient(t *testing.T) {
	h := newHarness(t)
	h.apply(set(h.addr, "c", eps(deadAddr(t), deadAddr(t))))
	h.waitReady()
	// The proxy resets the client at once: the reset may even beat the
	// end of the client's connect.
	if c, err := net.DialTCP("tcp", nil, net.TCPAddrFromAddrPort(h.addr)); err == nil {
		defer c.Close()
		waitClosed(t, &client{c: c, br: bufio.NewReader(c)}, "client of a proxy with no backend")
	}
	poll(t, "connect_failed counted", func() error {
		if v := metricValue(t, h.reg, "halo_agent_connections_failed_total", "listener=l", "reason=connect_failed"); v != 1 {
			return fmt.Errorf("connections_failed_total{connect_failed} = %v", v)
		}
		return nil
	})
}

// TestHitlessUpdates: while the configuration changes fifty times, a
// client dialing in a loop is never refused, and a connection opened
// before keeps talking to its backend.
func TestHitlessUpdates(t *testing.T) {
	h := newHarness(t)
	b1, b2 := newBackend(t, "b1"), newBackend(t, "b2")
	h.apply(set(h.addr, "c1", eps(b1.addr)))
	h.waitReady()
	old := h.dial()
	if s, err := old.ask("x"); err != nil || s != "b1:x" {
		t.Fatalf("%q %v", s, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var g errgroup.Group
	g.Go(func() error {
		for n := 0; ctx.Err() == nil && n < 100000; n++ {
			c, err := net.DialTCP("tcp", nil, net.TCPAddrFromAddrPort(h.addr))
			if err != nil {
				return fmt.Errorf("dial %d during updates: %w", n, err)
			}
			c.Close()
		}
		return nil
	})
	for i := range 50 {
		// Alternate clusters (a new cluster name each other time) and
		// listener names: the socket must stay.
		s := set(h.addr, fmt.Sprintf("c%d", i%2+1), eps(b2.addr))
		s.Listeners["l"].Name = fmt.Sprintf("l%d", i%3)
		s.Listeners[s.Listeners["l"].Name] = s.Listeners["l"]
		if s.Listeners["l"].Name != "l" {
			delete(s.Listeners, "l")
		}
		h.apply(s)
	}
	cancel()
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	if s, err := old.ask("y"); err != nil || s != "b1:y" {
		t.Fatalf("the connection opened before the updates: %q %v", s, err)
	}
	if w := h.who(); w != "b2" {
		t.Errorf("new connections go to %q, want b2", w)
	}
}

func TestRemovedBackendFinishesItsConnections(t *testing.T) {
	h := newHarness(t)
	b1, b2 := newBackend(t, "b1"), newBackend(t, "b2")
	h.apply(set(h.addr, "c", eps(b1.addr)))
	h.waitReady()
	old := h.dial()
	if _, err := old.ask("x"); err != nil {
		t.Fatal(err)
	}
	h.apply(set(h.addr, "c", eps(b2.addr)))
	for range 5 {
		if w := h.who(); w != "b2" {
			t.Fatalf("removed backend got a new connection (%s)", w)
		}
	}
	if s, err := old.ask("y"); err != nil || s != "b1:y" {
		t.Fatalf("open connection to the removed backend: %q %v", s, err)
	}
}

func TestUnhealthyClosesConnections(t *testing.T) {
	h := newHarness(t)
	b1, b2 := newBackend(t, "b1"), newBackend(t, "b2")
	closeOn := func(c *config.Cluster) { c.CloseOnHealthFailure = true }
	h.apply(set(h.addr, "c", eps(b1.addr, b2.addr), closeOn))
	h.waitReady()
	var on1, on2 *client
	for on1 == nil || on2 == nil {
		c := h.dial()
		s, err := c.ask("x")
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(s, "b1:") && on1 == nil {
			on1 = c
		} else if strings.HasPrefix(s, "b2:") && on2 == nil {
			on2 = c
		}
	}
	e := eps(b1.addr, b2.addr)
	e[0].Health = config.Unhealthy
	h.apply(set(h.addr, "c", e, closeOn))
	waitClosed(t, on1, "connection to the unhealthy backend")
	if s, err := on2.ask("y"); err != nil || s != "b2:y" {
		t.Fatalf("connection to the healthy backend: %q %v", s, err)
	}
	if w := h.who(); w != "b2" {
		t.Errorf("new connection went to %s", w)
	}
}

// TestIdleTimeout: the listener's idle timeout closes a connection with no
// traffic, not before it has passed (measured from before the last bytes
// moved, so a slow machine cannot make it look early) and within stall
// (waitClosed). The timeout is over the relay's one-second sweep so that
// a shorter timeout than configured is seen.
func TestIdleTimeout(t *testing.T) {
	const idleTimeout = 1500 * time.Millisecond
	h := newHarness(t)
	b := newBackend(t, "b")
	s := set(h.addr, "c", eps(b.addr))
	s.Listeners["l"].IdleTimeout = idleTimeout
	h.apply(s)
	h.waitReady()
	c := h.dial()
	start := time.Now()
	if _, err := c.ask("x"); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, c, "idle connection")
	if d := time.Since(start); d < idleTimeout {
		t.Errorf("closed after %v, before the %v idle timeout", d, idleTimeout)
	}
}

// TestBusyAddressRetried: a listener address held by another process (say
// nginx-proxy during a migration) is retried and reported, and taken as
// soon as it is free.
func TestBusyAddressRetried(t *testing.T) {
	h := newHarness(t)
	b := newBackend(t, "b")
	occupant, err := net.Listen("tcp", h.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	h.apply(set(h.addr, "c", eps(b.addr)))
	poll(t, "bind errors counted", func() error {
		if v := metricValue(t, h.reg, "halo_agent_listener_bind_errors_total", "listener=l"); v < 2 {
			return fmt.Errorf("bind errors %v", v)
		}
		return nil
	})
	if err := h.p.Ready(); err == nil || !strings.Contains(err.Error(), h.addr.String()) {
		t.Fatalf("ready while the address is busy: %v", err)
	}
	occupant.Close()
	h.waitReady()
	if w := h.who(); w != "b" {
		t.Fatalf("answered by %q", w)
	}
}

func TestRemovedListenerKeepsConnections(t *testing.T) {
	h := newHarness(t)
	b := newBackend(t, "b")
	h.apply(set(h.addr, "c", eps(b.addr)))
	h.waitReady()
	c := h.dial()
	if _, err := c.ask("x"); err != nil {
		t.Fatal(err)
	}
	h.apply(&config.Set{})
	poll(t, "listener closed", func() error {
		cc, err := net.Dial("tcp", h.addr.String())
		if err == nil {
			cc.Close()
			return errors.New("still accepting")
		}
		return nil
	})
	if s, err := c.ask("y"); err != nil || s != "b:y" {
		t.Fatalf("connection of a removed listener: %q %v", s, err)
	}
}

func TestFreebindBindsAnAbsentAddress(t *testing.T) {
	h := newHarness(t)
	b := newBackend(t, "b")
	s := set(netip.MustParseAddrPort("192.0.2.77:18443"), "c", eps(b.addr))
	s.Listeners["l"].Freebind = true
	h.apply(s)
	h.waitReady() // bound, though 192.0.2.77 (TEST-NET-1) is not on this host
}

// metricValue returns the value of one series of a counter or gauge
// (0 when it does not exist), matched on all its labels ("name=value").
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			var got []string
			for _, lp := range m.GetLabel() {
				got = append(got, lp.GetName()+"="+lp.GetValue())
			}
			want := slices.Clone(labels)
			slices.Sort(got)
			slices.Sort(want)
			if slices.Equal(got, want) {
				return m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return 0
}

// TestRebalanceAfterAJoin: connections that piled onto one backend move
// (are closed, to be reopened by their clients) once another joins, down
// to the even share.
func TestRebalanceAfterAJoin(t *testing.T) {
	h := newHarness(t)
	b1, b2 := newBackend(t, "b1"), newBackend(t, "b2")
	rb := func(c *config.Cluster) {
		c.LbPolicy = config.LeastRequest // what places the reconnections
		c.Rebalance = &config.Rebalance{MaxFraction: 1, MinAge: 0, Interval: 200 * time.Millisecond}
	}
	h.apply(set(h.addr, "c", eps(b1.addr), rb))
	h.waitReady()
	var clients []*client
	for range 10 {
		c := h.dial()
		if _, err := c.ask("x"); err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
	}
	h.apply(set(h.addr, "c", eps(b1.addr, b2.addr), rb))
	// Clients whose connection is closed reconnect, as kubelet's watches
	// do; least-request sends them to b2.
	poll(t, "connections rebalanced", func() error {
		for i, c := range clients {
			if err := c.c.SetReadDeadline(time.Now().Add(time.Millisecond)); err != nil {
				return err
			}
			if _, err := c.br.Peek(1); err != nil {
				var ne net.Error
				if !errors.As(err, &ne) || !ne.Timeout() {
					clients[i] = h.dial()
					if _, err := clients[i].ask("x"); err != nil {
						return err
					}
				}
			}
		}
		var active []int
		for _, st := range h.p.Cluster("c").State() {
			active = append(active, st.Active)
		}
		if len(active) != 2 || active[0] != 5 || active[1] != 5 {
			return fmt.Errorf("connections per backend %v, want [5 5]", active)
		}
		return nil
	})
	if v := metricValue(t, h.reg, "halo_agent_rebalanced_connections_total", "cluster=c"); v != 5 {
		t.Errorf("rebalanced_connections_total = %v", v)
	}
}

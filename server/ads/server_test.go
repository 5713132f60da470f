package ads_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/halolb/halo/internal/waitfor"
	"github.com/halolb/halo/server/ads"
	"github.com/halolb/halo/server/ads/adstest"
	"github.com/halolb/halo/server/snapcache"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// served is a real ads.Server on a real gRPC server on 127.0.0.1, with
// the world its cache is published from.
type served struct {
	srv   *ads.Server
	cache *snapcache.Cache
	conn  *grpc.ClientConn
	w     *world
}

// serve starts a server whose Shutdown is shutdown (nil: none); everything
// stops when the test ends.
func serve(t *testing.T, shutdown context.Context) *served {
	t.Helper()
	cache := snapcache.New()
	srv, err := ads.New(ads.Config{Cache: cache, Replica: "replica-1", Shutdown: shutdown})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	srv.Register(g)
	ctx, cancel := context.WithCancel(context.Background())
	runDone, serveDone := make(chan error, 1), make(chan error, 1)
	go func() { runDone <- srv.Run(ctx) }()
	go func() { serveDone <- g.Serve(lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		g.Stop()
		if err := <-serveDone; err != nil {
			t.Errorf("Serve: %v", err)
		}
		cancel()
		if err := <-runDone; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	s := &served{srv: srv, cache: cache, conn: conn, w: newWorld(cache, "worker-1")}
	return s
}

// run runs an ADS client until the test ends.
func run(t *testing.T, conn grpc.ClientConnInterface, c *adstest.Client) *adstest.Client {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, conn) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ads client: %v", err)
		}
	})
	return c
}

// holdsCache reports whether c holds what the cache has for worker-1.
func holdsCache(cache *snapcache.Cache, delta bool) func(c *adstest.Client) bool {
	return func(c *adstest.Client) bool {
		snap := cache.Lookup("prod", "worker-1").Snapshot
		for _, t := range types {
			h := c.Held(t)
			if len(h) != len(snap.Resources[t]) {
				return false
			}
			for n, r := range snap.Resources[t] {
				if want := map[bool]string{true: r.Version, false: snap.Versions[t]}[delta]; h[n] != want {
					return false
				}
			}
		}
		return true
	}
}

func wait(t *testing.T, c *adstest.Client, what string, cond func(c *adstest.Client) bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.WaitFor(ctx, cond); err != nil {
		t.Fatalf("waiting for %s: %v; got %s", what, err, describeAll(c))
	}
}

func describeAll(c *adstest.Client) string {
	var out []string
	for _, ev := range c.Events() {
		out = append(out, describe(c.Delta, ev))
	}
	return strings.Join(out, "; ")
}

// replay checks a network client's responses with the client model: the
// same ordering and in-flight rules as the tests without a network.
func replay(t *testing.T, c *adstest.Client) {
	t.Helper()
	m := newClient(nil, nil, c.Node, c.Delta, false, t.Errorf)
	m.open()
	for _, typ := range types {
		m.requested[typ], m.wildcard[typ] = true, true
	}
	for _, ev := range c.Events() {
		m.receive(ev)
		if ev.Nacked {
			m.nack(ev.TypeURL)
		} else {
			m.ack(ev.TypeURL)
		}
	}
}

// TestServeMakeBeforeBreak: over gRPC, turning the etcd LB on and off
// reaches both kinds of client in make-before-break order.
func TestServeMakeBeforeBreak(t *testing.T) {
	s := serve(t, nil)
	s.w.cluster.Etcd.LocalLb = false
	s.w.publish()
	for _, delta := range []bool{true, false} {
		t.Run(map[bool]string{true: "delta", false: "sotw"}[delta], func(t *testing.T) {
			c := run(t, s.conn, &adstest.Client{Node: &corev3.Node{Cluster: "prod", Id: "worker-1"}, Delta: delta})
			wait(t, c, "the first snapshot", holdsCache(s.cache, delta))
			for _, k := range []int{etcdLB, port, drain, etcdLB, rmMaster} {
				s.w.change(k)
				wait(t, c, "the change", holdsCache(s.cache, delta))
			}
			replay(t, c)
		})
	}
}

// TestServeNack: over gRPC, a refused listener is not sent again until it
// changes, and the server's status shows the refusal.
func TestServeNack(t *testing.T) {
	s := serve(t, nil)
	s.w.publish()
	refuse := func(ev adstest.Event) string {
		l := &listenerv3.Listener{}
		if a := ev.Resources["apiserver-local"]; a != nil && a.UnmarshalTo(l) == nil && l.GetAddress().GetSocketAddress().GetPortValue() == 16444 {
			return "port 16444 is taken"
		}
		return ""
	}
	for _, delta := range []bool{true, false} {
		t.Run(map[bool]string{true: "delta", false: "sotw"}[delta], func(t *testing.T) {
			s.w.cluster.Apiserver.LocalLbPort = 16443
			s.w.publish()
			c := run(t, s.conn, &adstest.Client{Node: &corev3.Node{Cluster: "prod", Id: "worker-1"}, Delta: delta, Decide: refuse})
			wait(t, c, "the first snapshot", holdsCache(s.cache, delta))
			s.w.change(port) // 16444
			wait(t, c, "the NACK", func(c *adstest.Client) bool {
				evs := c.Events()
				return len(evs) > 0 && evs[len(evs)-1].Nacked
			})
			mark := len(c.Events())
			waitfor.True(t, 20*time.Second, "the NACK in the status", func() bool {
				for _, a := range s.srv.Agents("prod") {
					for _, ts := range a.Types {
						if ts.TypeURL == ldsT && ts.NackError == "port 16444 is taken" && ts.NackVersion != "" && !ts.InSync {
							return true
						}
					}
				}
				return false
			})
			s.w.change(drain)
			wait(t, c, "the endpoints", func(c *adstest.Client) bool { return len(c.Events()) > mark })
			s.w.change(port) // 16445
			wait(t, c, "the next listener", holdsCache(s.cache, delta))
			for _, ev := range c.Events()[mark:] {
				if ev.TypeURL == ldsT && ev.Nacked {
					t.Errorf("the refused listener was sent again: %s", describeAll(c))
				}
			}
			replay(t, c)
		})
	}
}

// TestServeDeltaReconnect: over gRPC, a Delta client that reconnects
// naming what it holds gets nothing, then only what changes.
func TestServeDeltaReconnect(t *testing.T) {
	s := serve(t, nil)
	s.w.publish()
	node := &corev3.Node{Cluster: "prod", Id: "worker-1"}
	first := &adstest.Client{Node: node, Delta: true}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- first.Run(ctx, s.conn) }()
	wait(t, first, "the first snapshot", holdsCache(s.cache, true))
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	waitfor.True(t, 20*time.Second, "the first stream gone", func() bool { return len(s.srv.Agents("")) == 0 })
	held := map[string]map[string]string{}
	for _, typ := range types {
		held[typ] = first.Held(typ)
	}
	again := run(t, s.conn, &adstest.Client{Node: node, Delta: true, Initial: held})
	waitfor.True(t, 20*time.Second, "the reconnected stream in sync", func() bool {
		as := s.srv.Agents("prod")
		if len(as) != 1 || len(as[0].Types) != 3 {
			return false
		}
		for _, ts := range as[0].Types {
			if !ts.InSync {
				return false
			}
		}
		return true
	})
	if n := len(again.Events()); n != 0 {
		t.Fatalf("a reconnect naming current versions got %d responses: %s", n, describeAll(again))
	}
	s.w.change(drain)
	wait(t, again, "the change", holdsCache(s.cache, true))
	if got := describeAll(again); got != "EDS +etcd +kube-apiserver" { // master-c is an etcd member too
		t.Errorf("after the reconnect: %s; want only the change", got)
	}
}

// TestServeRefusals: a stream must name its node first, keep it, and name
// a type; a server shutting down ends its streams with UNAVAILABLE.
func TestServeRefusals(t *testing.T) {
	shutdown, stop := context.WithCancel(context.Background())
	defer stop()
	s := serve(t, shutdown)
	s.w.publish()
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(s.conn)
	node := &corev3.Node{Cluster: "prod", Id: "worker-1"}
	for _, tc := range []struct {
		name string
		reqs []*discoveryv3.DeltaDiscoveryRequest
		want codes.Code
	}{
		{"no node", []*discoveryv3.DeltaDiscoveryRequest{{TypeUrl: cdsT}}, codes.InvalidArgument},
		{"no type", []*discoveryv3.DeltaDiscoveryRequest{{Node: node}}, codes.InvalidArgument},
		{"another node", []*discoveryv3.DeltaDiscoveryRequest{{Node: node, TypeUrl: cdsT},
			{Node: &corev3.Node{Cluster: "prod", Id: "worker-2"}, TypeUrl: ldsT}}, codes.InvalidArgument},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		st, err := ads.DeltaAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range tc.reqs {
			if err := st.Send(r); err != nil {
				break
			}
		}
		for err == nil {
			_, err = st.Recv()
		}
		if status.Code(err) != tc.want {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.want)
		}
		cancel()
	}
	c := &adstest.Client{Node: node, Delta: true}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, s.conn) }()
	wait(t, c, "the first snapshot", holdsCache(s.cache, true))
	stop()
	if err := <-done; status.Code(err) != codes.Unavailable && !errors.Is(err, context.Canceled) {
		t.Errorf("at shutdown the stream ended with %v, want UNAVAILABLE", err)
	}
}

package server_test

import (
	"context"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/internal/waitfor"
	"github.com/halolb/halo/server"
	"github.com/halolb/halo/server/ads/adstest"
	"github.com/halolb/halo/server/bootstrap"
	"github.com/halolb/halo/server/servertest"
	"github.com/halolb/halo/server/store"
)

var (
	ldsT = resource.ListenerType
	cdsT = resource.ClusterType
	edsT = resource.EndpointType
)

// agent starts an ADS client for a node, stopped (and waited for) when the
// test ends.
func agent(t *testing.T, conn grpc.ClientConnInterface, c *adstest.Client) *adstest.Client {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, conn) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !strings.Contains(err.Error(), "shutting down") {
			t.Errorf("ads client %s: %v", c.Node.GetId(), err)
		}
	})
	return c
}

func nodeID(cluster, name string) *corev3.Node {
	return &corev3.Node{Cluster: cluster, Id: name, UserAgentName: "adstest"}
}

// waitFor waits for cond on c, failing the test after a deadline.
func waitFor(t *testing.T, c *adstest.Client, what string, cond func(c *adstest.Client) bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.WaitFor(ctx, cond); err != nil {
		t.Fatalf("%s: %s: %v\nheld: LDS %v CDS %v EDS %v\nevents: %s", c.Node.GetId(), what, err,
			c.Held(ldsT), c.Held(cdsT), c.Held(edsT), describeEvents(c.Events()))
	}
}

func describeEvents(evs []adstest.Event) string {
	var parts []string
	for _, e := range evs {
		parts = append(parts, describeEvent(e))
	}
	return strings.Join(parts, " | ")
}

// describeEvent renders an event as "CDS +etcd -old" (NACKed events end
// with "!").
func describeEvent(e adstest.Event) string {
	short := map[string]string{ldsT: "LDS", cdsT: "CDS", edsT: "EDS"}[e.TypeURL]
	s := short
	for _, n := range slices.Sorted(maps.Keys(e.Resources)) {
		s += " +" + n
	}
	for _, n := range e.Removed {
		s += " -" + n
	}
	if e.Nacked {
		s += "!"
	}
	return s
}

func hasAll(typeURL string, names ...string) func(c *adstest.Client) bool {
	return func(c *adstest.Client) bool {
		h := c.Held(typeURL)
		for _, n := range names {
			if _, ok := h[n]; !ok {
				return false
			}
		}
		return true
	}
}

// endpointCounts holds when the client has that many apiserver and etcd
// endpoints.
func endpointCounts(t *testing.T, apiservers, etcds int) func(c *adstest.Client) bool {
	return func(c *adstest.Client) bool {
		return len(endpointAddrs(t, c, "kube-apiserver")) == apiservers && len(endpointAddrs(t, c, "etcd")) == etcds
	}
}

func endpointAddrs(t *testing.T, c *adstest.Client, cluster string) []string {
	t.Helper()
	cla := &endpointv3.ClusterLoadAssignment{}
	if !c.Resource(edsT, cluster, cla) {
		return nil
	}
	var out []string
	for _, l := range cla.GetEndpoints() {
		for _, e := range l.GetLbEndpoints() {
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			out = append(out, net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue()))))
		}
	}
	return out
}

func listenerAddr(t *testing.T, c *adstest.Client, name string) (string, *listenerv3.Listener) {
	t.Helper()
	l := &listenerv3.Listener{}
	if !c.Resource(ldsT, name, l) {
		return "", nil
	}
	sa := l.GetAddress().GetSocketAddress()
	return net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue()))), l
}

// xdsTopology stores two clusters: "local" (the default local LB, plus an
// etcd local LB on port 12379, nsp 16443) with three masters (etcd members)
// and a worker; "vip" (a managed VIP 10.9.0.100:8383) with a master and a
// load-balancer node.
func xdsTopology(t *testing.T, tc halov1.TopologyServiceClient) {
	t.Helper()
	ctx := ctxT(t)
	for _, c := range []*halov1.Cluster{
		{Name: "local", Apiserver: &halov1.ApiServer{LocalLbPort: 16443}, Etcd: &halov1.Etcd{LocalLb: true, LocalLbPort: 12379}},
		{Name: "vip", Apiserver: &halov1.ApiServer{ExternalLb: &halov1.ExternalLB{Address: "10.9.0.100", Port: 8383}}},
	} {
		if _, err := tc.PutCluster(ctx, &halov1.PutClusterRequest{Cluster: c}); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []*halov1.Node{
		newNode("local", "master-1", "10.0.0.1", 0, cp, et),
		newNode("local", "master-2", "10.0.0.2", 1, cp, et),
		newNode("local", "master-3", "10.0.0.3", 2, cp, et),
		newNode("local", "worker-1", "10.0.1.1", 0, wk),
		newNode("vip", "vmaster-1", "10.9.0.1", 0, cp),
		newNode("vip", "lb-1", "10.9.0.50", 0, lb),
	} {
		if _, err := tc.PutNode(ctx, &halov1.PutNodeRequest{Node: n}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestXDSResourcesPerRole subscribes as a worker, a master and a
// load-balancer node, over Delta and SotW, and checks what each gets
// against what ResolveEndpoints says.
func TestXDSResourcesPerRole(t *testing.T) {
	srv := servertest.New(t)
	tc := halov1.NewTopologyServiceClient(srv.Conn)
	ec := halov1.NewEndpointServiceClient(srv.Conn)
	xdsTopology(t, tc)
	for _, delta := range []bool{true, false} {
		t.Run(map[bool]string{true: "delta", false: "sotw"}[delta], func(t *testing.T) {
			worker := agent(t, srv.Conn, &adstest.Client{Node: nodeID("local", "worker-1"), Delta: delta})
			master := agent(t, srv.Conn, &adstest.Client{Node: nodeID("local", "master-2"), Delta: delta})
			lbn := agent(t, srv.Conn, &adstest.Client{Node: nodeID("vip", "lb-1"), Delta: delta})

			// The worker: the apiserver and etcd local LBs, to the masters.
			waitFor(t, worker, "listeners", hasAll(ldsT, "apiserver-local", "etcd-local"))
			waitFor(t, worker, "endpoints", endpointCounts(t, 3, 3))
			ep, err := ec.ResolveEndpoints(ctxT(t), &halov1.ResolveEndpointsRequest{Cluster: "local", Node: "worker-1"})
			if err != nil {
				t.Fatal(err)
			}
			if addr, _ := listenerAddr(t, worker, "apiserver-local"); "https://"+strings.Replace(addr, "127.0.0.1", "localhost", 1) != ep.GetApiserverUrl() {
				t.Errorf("worker: apiserver-local on %s, but ResolveEndpoints says %s", addr, ep.GetApiserverUrl())
			}
			if addr, _ := listenerAddr(t, worker, "etcd-local"); "https://"+addr != ep.GetEtcdUrls()[0] {
				t.Errorf("worker: etcd-local on %s, but ResolveEndpoints says %v", addr, ep.GetEtcdUrls())
			}
			if got, want := endpointAddrs(t, worker, "kube-apiserver"), []string{"10.0.0.1:6443", "10.0.0.2:6443", "10.0.0.3:6443"}; !slices.Equal(got, want) {
				t.Errorf("worker: kube-apiserver endpoints %v, want %v", got, want)
			}
			if got, want := endpointAddrs(t, worker, "etcd"), []string{"10.0.0.1:2379", "10.0.0.2:2379", "10.0.0.3:2379"}; !slices.Equal(got, want) {
				t.Errorf("worker: etcd endpoints %v, want %v", got, want)
			}
			cl := &clusterv3.Cluster{}
			if !worker.Resource(cdsT, "kube-apiserver", cl) || cl.GetLbPolicy() != clusterv3.Cluster_LEAST_REQUEST {
				t.Errorf("worker: cluster %v", cl)
			}

			// The load-balancer node: the VIP, freebind, to its master.
			waitFor(t, lbn, "vip listener", hasAll(ldsT, "apiserver-vip"))
			waitFor(t, lbn, "vip endpoints", func(c *adstest.Client) bool { return len(endpointAddrs(t, c, "kube-apiserver")) == 1 })
			if addr, l := listenerAddr(t, lbn, "apiserver-vip"); addr != "10.9.0.100:8383" || !l.GetFreebind().GetValue() {
				t.Errorf("lb: apiserver-vip on %s (freebind %v)", addr, l.GetFreebind().GetValue())
			}
			if got := endpointAddrs(t, lbn, "kube-apiserver"); !slices.Equal(got, []string{"10.9.0.1:6443"}) {
				t.Errorf("lb: endpoints %v", got)
			}

			// The master (an etcd member, local LB mode) needs no proxy: an
			// empty answer for each type, so that Envoy initializes.
			waitFor(t, master, "empty answers", func(c *adstest.Client) bool {
				var types []string
				for _, e := range c.Events() {
					types = append(types, e.TypeURL)
				}
				return slices.Contains(types, ldsT) && slices.Contains(types, cdsT)
			})
			if len(master.Held(ldsT))+len(master.Held(cdsT)) != 0 {
				t.Errorf("master got %v %v", master.Held(ldsT), master.Held(cdsT))
			}
		})
	}
}

// TestXDSNewMasterAndOnlyChanges: a new master reaches a connected worker
// with no reconnect; a Delta client gets only what changed (draining moves
// only EDS); a SotW client gets the full set of that type.
func TestXDSNewMasterAndOnlyChanges(t *testing.T) {
	srv := servertest.New(t)
	tc := halov1.NewTopologyServiceClient(srv.Conn)
	xdsTopology(t, tc)
	worker := agent(t, srv.Conn, &adstest.Client{Node: nodeID("local", "worker-1"), Delta: true})
	waitFor(t, worker, "initial", hasAll(ldsT, "apiserver-local", "etcd-local"))
	waitFor(t, worker, "initial endpoints", endpointCounts(t, 3, 3))
	before := len(worker.Events())

	ctx := ctxT(t)
	if _, err := tc.PutNode(ctx, &halov1.PutNodeRequest{Node: newNode("local", "master-4", "10.0.0.4", 3, cp)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, worker, "the new master", func(c *adstest.Client) bool { return len(endpointAddrs(t, c, "kube-apiserver")) == 4 })
	after := worker.Events()[before:]
	if len(after) != 1 || describeEvent(after[0]) != "EDS +kube-apiserver" {
		t.Errorf("a new master (not an etcd member) sent %s, want only EDS +kube-apiserver", describeEvents(after))
	}

	// Draining master-4 changes its endpoint's health, and only EDS moves
	// (only kube-apiserver's: master-4 is no etcd member). A worker joining
	// just before sends this worker nothing at all (it would come first:
	// one stream, in order).
	before = len(worker.Events())
	if _, err := tc.PutNode(ctx, &halov1.PutNodeRequest{Node: newNode("local", "worker-2", "10.0.1.2", 0, wk)}); err != nil {
		t.Fatal(err)
	}
	n, err := tc.GetNode(ctx, &halov1.GetNodeRequest{Cluster: "local", Name: "master-4"})
	if err != nil {
		t.Fatal(err)
	}
	n.Draining = true
	if _, err := tc.PutNode(ctx, &halov1.PutNodeRequest{Node: n}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, worker, "draining", func(c *adstest.Client) bool {
		cla := &endpointv3.ClusterLoadAssignment{}
		return c.Resource(edsT, "kube-apiserver", cla) && cla.GetEndpoints()[0].GetLbEndpoints()[3].GetHealthStatus() == corev3.HealthStatus_DRAINING
	})
	after = worker.Events()[before:]
	if len(after) != 1 || describeEvent(after[0]) != "EDS +kube-apiserver" {
		t.Errorf("a worker joining, then a master draining, sent %s; want only EDS +kube-apiserver", describeEvents(after))
	}
}

// TestXDSMakeBeforeBreak turns the etcd local LB on and off and checks the
// order each client gets: the cluster, then its endpoints, then the listener
// that uses it; the listener gone before the cluster goes.
func TestXDSMakeBeforeBreak(t *testing.T) {
	srv := servertest.New(t)
	tc := halov1.NewTopologyServiceClient(srv.Conn)
	xdsTopology(t, tc)
	ctx := ctxT(t)
	setEtcdLB := func(on bool) {
		t.Helper()
		c := &halov1.Cluster{Name: "local", Apiserver: &halov1.ApiServer{LocalLbPort: 16443}, Etcd: &halov1.Etcd{LocalLb: on, LocalLbPort: 12379}}
		if _, err := tc.PutCluster(ctx, &halov1.PutClusterRequest{Cluster: c}); err != nil {
			t.Fatal(err)
		}
	}
	setEtcdLB(false)
	for _, delta := range []bool{true, false} {
		t.Run(map[bool]string{true: "delta", false: "sotw"}[delta], func(t *testing.T) {
			w := agent(t, srv.Conn, &adstest.Client{Node: nodeID("local", "worker-1"), Delta: delta})
			// Wait for the state with the etcd LB off (the replica may still
			// be applying the change when the client connects).
			waitFor(t, w, "initial", func(c *adstest.Client) bool {
				_, el := c.Held(ldsT)["etcd-local"]
				_, ec := c.Held(cdsT)["etcd"]
				return hasAll(edsT, "kube-apiserver")(c) && hasAll(ldsT, "apiserver-local")(c) && !el && !ec
			})

			// On: CDS +etcd, EDS etcd, then LDS etcd-local.
			mark := len(w.Events())
			setEtcdLB(true)
			waitFor(t, w, "etcd-local", hasAll(ldsT, "etcd-local"))
			order := map[string]int{}
			for i, e := range w.Events()[mark:] {
				for n := range e.Resources {
					if _, seen := order[e.TypeURL+"/"+n]; !seen {
						order[e.TypeURL+"/"+n] = i
					}
				}
			}
			c, okc := order[cdsT+"/etcd"]
			e, oke := order[edsT+"/etcd"]
			l, okl := order[ldsT+"/etcd-local"]
			if !okc || !oke || !okl || c >= e || e >= l {
				t.Errorf("turning the etcd LB on: want cluster < endpoints < listener, got %s", describeEvents(w.Events()[mark:]))
			}

			// Off: the listener goes first, then the cluster.
			mark = len(w.Events())
			setEtcdLB(false)
			waitFor(t, w, "etcd cluster gone", func(c *adstest.Client) bool { _, ok := c.Held(cdsT)["etcd"]; return !ok })
			lGone, cGone := -1, -1
			for i, ev := range w.Events()[mark:] {
				_, inL := ev.Resources["etcd-local"]
				_, inC := ev.Resources["etcd"]
				switch {
				case ev.TypeURL == ldsT && (slices.Contains(ev.Removed, "etcd-local") || (!delta && !inL)) && lGone < 0:
					lGone = i
				case ev.TypeURL == cdsT && (slices.Contains(ev.Removed, "etcd") || (!delta && !inC)) && cGone < 0:
					cGone = i
				}
			}
			if lGone < 0 || cGone < 0 || lGone > cGone {
				t.Errorf("turning the etcd LB off: want the listener removed before the cluster, got %s", describeEvents(w.Events()[mark:]))
			}
			if _, ok := w.Held(ldsT)["etcd-local"]; ok {
				t.Error("etcd-local is still held")
			}
		})
	}
}

// TestXDSNack: a refused listener shows in ListAgents and is not sent again
// until it changes; then the new version goes out.
func TestXDSNack(t *testing.T) {
	srv := servertest.New(t)
	tc := halov1.NewTopologyServiceClient(srv.Conn)
	sc := halov1.NewStatusServiceClient(srv.Conn)
	xdsTopology(t, tc)
	ctx := ctxT(t)
	// Refuse an apiserver-local on port 17443.
	refuse := func(ev adstest.Event) string {
		if ev.TypeURL != ldsT {
			return ""
		}
		l := &listenerv3.Listener{}
		if a := ev.Resources["apiserver-local"]; a != nil && a.UnmarshalTo(l) == nil && l.GetAddress().GetSocketAddress().GetPortValue() == 17443 {
			return "port 17443 is taken on this node"
		}
		return ""
	}
	setNSP := func(port uint32) {
		t.Helper()
		c := &halov1.Cluster{Name: "local", Apiserver: &halov1.ApiServer{LocalLbPort: port}, Etcd: &halov1.Etcd{LocalLb: true, LocalLbPort: 12379}}
		if _, err := tc.PutCluster(ctx, &halov1.PutClusterRequest{Cluster: c}); err != nil {
			t.Fatal(err)
		}
	}
	for _, delta := range []bool{true, false} {
		t.Run(map[bool]string{true: "delta", false: "sotw"}[delta], func(t *testing.T) {
			setNSP(16443)
			w := agent(t, srv.Conn, &adstest.Client{Node: nodeID("local", "worker-1"), Delta: delta, Decide: refuse})
			waitFor(t, w, "initial", func(c *adstest.Client) bool {
				addr, _ := listenerAddr(t, c, "apiserver-local")
				return addr == "127.0.0.1:16443" && hasAll(ldsT, "etcd-local")(c)
			})
			setNSP(17443)
			waitFor(t, w, "the NACK", func(c *adstest.Client) bool {
				for _, e := range c.Events() {
					if e.Nacked {
						return true
					}
				}
				return false
			})
			if addr, _ := listenerAddr(t, w, "apiserver-local"); addr != "127.0.0.1:16443" {
				t.Errorf("after the NACK the client holds %s", addr)
			}
			// ListAgents shows the refusal with its text.
			var nackErr, nackVersion string
			waitfor.True(t, 20*time.Second, "ListAgents shows the NACK", func() bool {
				resp, err := sc.ListAgents(ctx, &halov1.ListAgentsRequest{Cluster: "local"})
				if err != nil {
					t.Fatal(err)
				}
				for _, a := range resp.GetAgents() {
					for _, ts := range a.GetTypes() {
						if a.GetNode() == "worker-1" && ts.GetTypeUrl() == ldsT && ts.GetNackError() != "" {
							nackErr, nackVersion = ts.GetNackError(), ts.GetNackVersion()
							if a.GetInSync() {
								t.Error("an agent that refused its listeners is listed in sync")
							}
						}
					}
				}
				return nackErr != ""
			})
			if nackErr != "port 17443 is taken on this node" || nackVersion == "" {
				t.Fatalf("ListAgents: nack %q version %q", nackErr, nackVersion)
			}
			// An endpoint change goes out; the refused listener does not come
			// back with it (it would come before: one stream, in order).
			mark := len(w.Events())
			n, _ := tc.GetNode(ctx, &halov1.GetNodeRequest{Cluster: "local", Name: "master-2"})
			n.Draining = !n.GetDraining()
			if _, err := tc.PutNode(ctx, &halov1.PutNodeRequest{Node: n}); err != nil {
				t.Fatal(err)
			}
			waitFor(t, w, "an EDS update", func(c *adstest.Client) bool {
				for _, e := range c.Events()[mark:] {
					if e.TypeURL == edsT {
						return true
					}
				}
				return false
			})
			for _, e := range w.Events()[mark:] {
				if e.TypeURL == ldsT {
					t.Errorf("the refused listener was sent again: %s", describeEvent(e))
				}
			}
			// A new listener version goes out and is accepted.
			setNSP(18443)
			waitFor(t, w, "the next version", func(c *adstest.Client) bool {
				addr, _ := listenerAddr(t, c, "apiserver-local")
				return addr == "127.0.0.1:18443"
			})
		})
	}
}

// TestXDSReconnectGetsNothing: a Delta client that reconnects, to the same
// replica or to another one, naming the versions it holds, is sent nothing
// when nothing changed: its first response is the next real change.
func TestXDSReconnectGetsNothing(t *testing.T) {
	etcd := servertest.NewEtcd(t)
	a := servertest.New(t, servertest.WithEtcd(etcd))
	b := servertest.New(t, servertest.WithEtcd(etcd))
	tc := halov1.NewTopologyServiceClient(a.Conn)
	xdsTopology(t, tc)
	ctx := ctxT(t)

	first := &adstest.Client{Node: nodeID("local", "worker-1"), Delta: true}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- first.Run(runCtx, a.Conn) }()
	waitFor(t, first, "initial", hasAll(edsT, "kube-apiserver", "etcd"))
	waitFor(t, first, "initial listeners", hasAll(ldsT, "apiserver-local", "etcd-local"))
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	held := map[string]map[string]string{ldsT: first.Held(ldsT), cdsT: first.Held(cdsT), edsT: first.Held(edsT)}

	sameAsHeld := func(c *adstest.Client) bool {
		for typ, vs := range held {
			if fmt.Sprint(c.Held(typ)) != fmt.Sprint(vs) {
				return false
			}
		}
		return true
	}
	for i, to := range []*servertest.Server{a, b} {
		// First see that this replica serves what the client holds (a
		// replica applies etcd's changes in its own time).
		probe := agent(t, to.Conn, &adstest.Client{Node: nodeID("local", "worker-1"), Delta: true})
		waitFor(t, probe, "the replica caught up", sameAsHeld)
		node := nodeID("local", "worker-1")
		node.UserAgentName = fmt.Sprintf("reconnect-%d", i)
		again := agent(t, to.Conn, &adstest.Client{Node: node, Delta: true, Initial: held})
		// Wait until the replica has it in sync (it answered every request
		// with nothing), then make one change.
		waitAgentInSync(t, halov1.NewStatusServiceClient(to.Conn), "local", "worker-1", node.UserAgentName)
		if n := len(again.Events()); n != 0 {
			t.Fatalf("replica %d: a reconnect with current versions got %d responses: %s", i, n, describeEvents(again.Events()))
		}
		n, _ := tc.GetNode(ctx, &halov1.GetNodeRequest{Cluster: "local", Name: "master-3"})
		n.Draining = !n.GetDraining()
		if _, err := tc.PutNode(ctx, &halov1.PutNodeRequest{Node: n}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, again, "the change", func(c *adstest.Client) bool { return len(c.Events()) > 0 })
		// master-3 is a master and an etcd member: both endpoint sets change.
		if got := describeEvents(again.Events()); got != "EDS +etcd +kube-apiserver" {
			t.Errorf("replica %d: after a reconnect with current versions, the first responses are %s; want only the change", i, got)
		}
		held[edsT] = again.Held(edsT)
	}
}

// waitAgentInSync polls ListAgents until the node's stream whose user
// agent starts with userAgent is in sync on the replica.
func waitAgentInSync(t *testing.T, sc halov1.StatusServiceClient, cluster, node, userAgent string) {
	t.Helper()
	waitfor.Nil(t, 20*time.Second, fmt.Sprintf("node %s (%s) in sync", node, userAgent), func() error {
		resp, err := sc.ListAgents(ctxT(t), &halov1.ListAgentsRequest{Cluster: cluster, LocalOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range resp.GetAgents() {
			if a.GetNode() == node && strings.HasPrefix(a.GetUserAgent(), userAgent) && a.GetInSync() {
				return nil
			}
		}
		return fmt.Errorf("agents %v", resp.GetAgents())
	})
}

// TestXDSNeverEmpty: deleting every master does not send the worker an
// empty endpoint set; it keeps the last one, ListAgents says why, and the
// next master is the next thing it gets.
func TestXDSNeverEmpty(t *testing.T) {
	srv := servertest.New(t)
	tc := halov1.NewTopologyServiceClient(srv.Conn)
	sc := halov1.NewStatusServiceClient(srv.Conn)
	xdsTopology(t, tc)
	ctx := ctxT(t)
	w := agent(t, srv.Conn, &adstest.Client{Node: nodeID("local", "worker-1"), Delta: true})
	waitFor(t, w, "initial", func(c *adstest.Client) bool { return len(endpointAddrs(t, c, "kube-apiserver")) == 3 })
	mark := len(w.Events())
	for _, m := range []string{"master-1", "master-2", "master-3"} {
		if _, err := tc.DeleteNode(ctx, &halov1.DeleteNodeRequest{Cluster: "local", Name: m}); err != nil {
			t.Fatal(err)
		}
	}
	cond := ""
	waitfor.Nil(t, 20*time.Second, "ListAgents says the agent has no endpoints", func() error {
		resp, err := sc.ListAgents(ctx, &halov1.ListAgentsRequest{Cluster: "local"})
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range resp.GetAgents() {
			if a.GetNode() == "worker-1" {
				cond = a.GetCondition()
			}
		}
		if !strings.Contains(cond, "no endpoints") {
			return fmt.Errorf("condition %q", cond)
		}
		return nil
	})
	if !strings.Contains(cond, "kube-apiserver, which has no endpoints") {
		t.Fatalf("ListAgents condition %q", cond)
	}
	if _, err := tc.PutNode(ctx, &halov1.PutNodeRequest{Node: newNode("local", "master-9", "10.0.0.9", 0, cp, et)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, w, "the new master", func(c *adstest.Client) bool {
		return slices.Equal(endpointAddrs(t, c, "kube-apiserver"), []string{"10.0.0.9:6443"})
	})
	for _, e := range w.Events()[mark:] {
		cla := &endpointv3.ClusterLoadAssignment{}
		if a := e.Resources["kube-apiserver"]; a != nil && a.UnmarshalTo(cla) == nil && len(cla.GetEndpoints()) == 0 {
			t.Fatalf("an empty kube-apiserver was sent: %s", describeEvents(w.Events()[mark:]))
		}
	}
}

// TestListAgentsAcrossReplicas: any replica lists the agents of every live
// replica; an agent that goes away, or whose replica stops, disappears.
func TestListAgentsAcrossReplicas(t *testing.T) {
	etcd := servertest.NewEtcd(t)
	a := servertest.New(t, servertest.WithEtcd(etcd), func(c *server.Config) { c.ReplicaName = "replica-a" })
	b := servertest.New(t, servertest.WithEtcd(etcd), func(c *server.Config) { c.ReplicaName = "replica-b" })
	xdsTopology(t, halov1.NewTopologyServiceClient(a.Conn))
	agent(t, a.Conn, &adstest.Client{Node: nodeID("local", "worker-1"), Delta: true})
	bConn := dial(t, b.Addr)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	onB := &adstest.Client{Node: nodeID("vip", "lb-1"), Delta: false}
	bDone := make(chan error, 1)
	go func() { bDone <- onB.Run(ctx, bConn) }()

	list := func(from *servertest.Server) map[string]string {
		resp, err := halov1.NewStatusServiceClient(from.Conn).ListAgents(ctxT(t), &halov1.ListAgentsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, ag := range resp.GetAgents() {
			got[ag.GetCluster()+"/"+ag.GetNode()] = ag.GetReplica() + " " + ag.GetProtocol()
		}
		if len(resp.GetUnreachableReplicas()) > 0 {
			got["unreachable"] = fmt.Sprint(resp.GetUnreachableReplicas())
		}
		return got
	}
	want := map[string]string{"local/worker-1": "replica-a delta", "vip/lb-1": "replica-b sotw"}
	poll(t, "both agents listed by both replicas", func() bool {
		return fmt.Sprint(list(a)) == fmt.Sprint(want) && fmt.Sprint(list(b)) == fmt.Sprint(want)
	})

	// The agent on b goes away: gone from every list.
	cancel()
	if err := <-bDone; err != nil {
		t.Logf("the agent on b ended: %v", err)
	}
	poll(t, "the departed agent gone", func() bool { _, ok := list(a)["vip/lb-1"]; return !ok })

	// Replica b stops: a no longer tries it.
	b.Close()
	poll(t, "the stopped replica gone", func() bool {
		return fmt.Sprint(list(a)) == fmt.Sprint(map[string]string{"local/worker-1": "replica-a delta"})
	})
}

// poll checks cond until it holds, failing after a deadline.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	waitfor.True(t, 20*time.Second, what, cond)
}

// TestGetEnvoyBootstrap renders a node's bootstrap through the API and
// parses it into Envoy's Bootstrap type.
func TestGetEnvoyBootstrap(t *testing.T) {
	srv := servertest.New(t)
	tc := halov1.NewTopologyServiceClient(srv.Conn)
	ec := halov1.NewEndpointServiceClient(srv.Conn)
	xdsTopology(t, tc)
	ctx := ctxT(t)
	resp, err := ec.GetEnvoyBootstrap(ctx, &halov1.GetEnvoyBootstrapRequest{Cluster: "vip", Node: "lb-1"})
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range []string{resp.GetYaml(), resp.GetJson()} {
		b, err := bootstrap.Parse([]byte(doc))
		if err != nil {
			t.Fatalf("%v\n%s", err, doc)
		}
		if b.GetNode().GetCluster() != "vip" || b.GetNode().GetId() != "lb-1" {
			t.Errorf("node %v", b.GetNode())
		}
		sa := b.GetStaticResources().GetClusters()[0].GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
		if got := net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue()))); got != srv.Addr {
			t.Errorf("the bootstrap points at %s, not at this replica (%s)", got, srv.Addr)
		}
	}
	_, err = ec.GetEnvoyBootstrap(ctx, &halov1.GetEnvoyBootstrapRequest{Cluster: "vip", Node: "nope"})
	wantCode(t, err, codes.NotFound)
	_, err = ec.GetEnvoyBootstrap(ctx, &halov1.GetEnvoyBootstrapRequest{Cluster: "vip", Node: "lb-1", XdsServers: []string{"halo:0"}})
	wantCode(t, err, codes.InvalidArgument)
}

// TestXDSRefusesStreamsWithoutNode: a stream whose first request does not
// name its node ends with INVALID_ARGUMENT.
func TestXDSRefusesStreamsWithoutNode(t *testing.T) {
	srv := servertest.New(t)
	c := &adstest.Client{Node: &corev3.Node{Id: "worker-1"}, Delta: true}
	err := c.Run(ctxT(t), srv.Conn)
	wantCode(t, err, codes.InvalidArgument)
}

// TestDeadReplicaVanishes: a replica that died without revoking its lease
// (here a registration made by hand, pointing at a port nothing serves) is reported
// unreachable, and disappears when its lease expires.
func TestDeadReplicaVanishes(t *testing.T) {
	srv := servertest.New(t)
	ctx := ctxT(t)
	lease, err := srv.Etcd.Grant(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	// Port 1 on loopback: privileged, and nothing listens there.
	if _, err := srv.Etcd.Put(ctx, store.NewKeys(store.DefaultPrefix).Replica("ghost"), "127.0.0.1:1", clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
	sc := halov1.NewStatusServiceClient(srv.Conn)
	resp, err := sc.ListAgents(ctx, &halov1.ListAgentsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(resp.GetUnreachableReplicas(), []string{"ghost"}) {
		t.Fatalf("unreachable %v, want [ghost]", resp.GetUnreachableReplicas())
	}
	poll(t, "the dead replica's lease expiring", func() bool {
		resp, err := sc.ListAgents(ctx, &halov1.ListAgentsRequest{})
		return err == nil && len(resp.GetUnreachableReplicas()) == 0
	})
}

// TestXDSBackendHealth: a backend status the prober stores in etcd reaches
// the nodes as the EDS health of that endpoint (per kind: a master that is
// also an etcd member has one for each), and only EDS moves.
func TestXDSBackendHealth(t *testing.T) {
	srv := servertest.New(t)
	tc := halov1.NewTopologyServiceClient(srv.Conn)
	xdsTopology(t, tc)
	st, err := store.New(store.Config{Client: srv.Etcd})
	if err != nil {
		t.Fatal(err)
	}
	w := agent(t, srv.Conn, &adstest.Client{Node: nodeID("local", "worker-1"), Delta: true})
	waitFor(t, w, "endpoints", endpointCounts(t, 3, 3))
	cdsVersion := w.Version(cdsT, "kube-apiserver")
	healthOf := func(c *adstest.Client, cluster, node string) corev3.HealthStatus {
		cla := &endpointv3.ClusterLoadAssignment{}
		if !c.Resource(edsT, cluster, cla) {
			return -1
		}
		for _, l := range cla.GetEndpoints() {
			for _, e := range l.GetLbEndpoints() {
				if e.GetEndpoint().GetHostname() == node {
					return e.GetHealthStatus()
				}
			}
		}
		return -1
	}
	if err := st.PutBackendStatus(ctxT(t), &halov1.BackendStatus{Cluster: "local", Node: "master-2",
		Kind: halov1.BackendKind_BACKEND_KIND_APISERVER, State: halov1.BackendState_BACKEND_STATE_UNHEALTHY}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, w, "master-2 unhealthy", func(c *adstest.Client) bool {
		return healthOf(c, "kube-apiserver", "master-2") == corev3.HealthStatus_UNHEALTHY
	})
	if got := healthOf(w, "etcd", "master-2"); got != corev3.HealthStatus_UNKNOWN {
		t.Errorf("master-2 as an etcd member: %v, want UNKNOWN (only its apiserver is down)", got)
	}
	if w.Version(cdsT, "kube-apiserver") != cdsVersion {
		t.Error("a health change moved CDS")
	}
	if err := st.PutBackendStatus(ctxT(t), &halov1.BackendStatus{Cluster: "local", Node: "master-2",
		Kind: halov1.BackendKind_BACKEND_KIND_APISERVER, State: halov1.BackendState_BACKEND_STATE_HEALTHY}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, w, "master-2 healthy again", func(c *adstest.Client) bool {
		return healthOf(c, "kube-apiserver", "master-2") == corev3.HealthStatus_HEALTHY
	})
}

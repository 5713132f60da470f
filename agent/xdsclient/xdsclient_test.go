package xdsclient_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/halolb/halo/agent/xdsclient"
	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/internal/backoff"
	"github.com/halolb/halo/internal/waitfor"
	"github.com/halolb/halo/server/servertest"
)

var (
	ldsT = resource.ListenerType
	cdsT = resource.ClusterType
	edsT = resource.EndpointType
)

const (
	cp = halov1.Role_ROLE_CONTROL_PLANE
	et = halov1.Role_ROLE_ETCD
	wk = halov1.Role_ROLE_WORKER
)

// deadline bounds every wait of these tests.
const deadline = 20 * time.Second

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func newNode(name, ip string, ordinal int32, roles ...halov1.Role) *halov1.Node {
	return &halov1.Node{Cluster: "local", Name: name, Ip: ip, Ordinal: ordinal, Roles: roles}
}

// localCluster is cluster "local": the local apiserver LB on nsp and an
// etcd local LB on 12379 if etcdLB.
func localCluster(nsp uint32, etcdLB bool) *halov1.Cluster {
	c := &halov1.Cluster{Name: "local", Apiserver: &halov1.ApiServer{LocalLbPort: nsp}}
	if etcdLB {
		c.Etcd = &halov1.Etcd{LocalLb: true, LocalLbPort: 12379}
	}
	return c
}

// topology stores cluster "local" with three masters (also etcd members)
// and worker-1.
func topology(t *testing.T, conn grpc.ClientConnInterface) halov1.TopologyServiceClient {
	t.Helper()
	tc := halov1.NewTopologyServiceClient(conn)
	ctx := ctxT(t)
	if _, err := tc.PutCluster(ctx, &halov1.PutClusterRequest{Cluster: localCluster(16443, true)}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*halov1.Node{
		newNode("master-1", "10.0.0.1", 0, cp, et),
		newNode("master-2", "10.0.0.2", 1, cp, et),
		newNode("master-3", "10.0.0.3", 2, cp, et),
		newNode("worker-1", "10.0.1.1", 0, wk),
	} {
		if _, err := tc.PutNode(ctx, &halov1.PutNodeRequest{Node: n}); err != nil {
			t.Fatal(err)
		}
	}
	return tc
}

func putCluster(t *testing.T, tc halov1.TopologyServiceClient, c *halov1.Cluster) {
	t.Helper()
	if _, err := tc.PutCluster(ctxT(t), &halov1.PutClusterRequest{Cluster: c}); err != nil {
		t.Fatal(err)
	}
}

// agent records the Update calls of one client and decides them.
type agent struct {
	mu       sync.Mutex
	calls    []call
	accepted []*xdsclient.Resource // the last accepted state
	refuse   func(state []*xdsclient.Resource) error
	changed  chan struct{}
}

type call struct {
	typeURL string
	state   []*xdsclient.Resource
	err     error
}

func newAgent() *agent { return &agent{changed: make(chan struct{})} }

func (a *agent) update(_ context.Context, typeURL string, state []*xdsclient.Resource) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	var err error
	if a.refuse != nil {
		err = a.refuse(state)
	}
	if err == nil {
		a.accepted = state
	}
	a.calls = append(a.calls, call{typeURL: typeURL, state: state, err: err})
	close(a.changed)
	a.changed = make(chan struct{})
	return err
}

func (a *agent) setRefuse(f func([]*xdsclient.Resource) error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.refuse = f
}

func (a *agent) state() []*xdsclient.Resource {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.accepted
}

func (a *agent) callCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.calls)
}

func (a *agent) callsFrom(i int) []call {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.calls[i:])
}

// waitFor waits until cond holds for the accepted state, checked at every
// Update, failing the test after the deadline.
func (a *agent) waitFor(t *testing.T, what string, cond func(state []*xdsclient.Resource) bool) {
	t.Helper()
	timer := time.NewTimer(deadline)
	defer timer.Stop()
	for {
		a.mu.Lock()
		ch, st := a.changed, a.accepted
		a.mu.Unlock()
		if cond(st) {
			return
		}
		select {
		case <-ch:
		case <-timer.C:
			t.Fatalf("%s: not after %v; state: %s", what, deadline, describe(st))
		}
	}
}

// poll checks cond until it holds, failing after the deadline.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	waitfor.True(t, deadline, what, cond)
}

func describe(state []*xdsclient.Resource) string {
	var parts []string
	for _, r := range state {
		parts = append(parts, fmt.Sprintf("%s/%s@%s", r.TypeURL[strings.LastIndex(r.TypeURL, ".")+1:], r.Name, r.Version))
	}
	return strings.Join(parts, " ")
}

func names(state []*xdsclient.Resource, typeURL string) []string {
	var out []string
	for _, r := range state {
		if r.TypeURL == typeURL {
			out = append(out, r.Name)
		}
	}
	return out
}

func find(state []*xdsclient.Resource, typeURL, name string) *xdsclient.Resource {
	for _, r := range state {
		if r.TypeURL == typeURL && r.Name == name {
			return r
		}
	}
	return nil
}

// listenerPort is the port of a listener in state, or 0.
func listenerPort(t *testing.T, state []*xdsclient.Resource, name string) uint32 {
	r := find(state, ldsT, name)
	if r == nil {
		return 0
	}
	l := &listenerv3.Listener{}
	if err := r.Body.UnmarshalTo(l); err != nil {
		t.Fatal(err)
	}
	return l.GetAddress().GetSocketAddress().GetPortValue()
}

// endpoints are the addresses of a cluster's endpoints in state.
func endpoints(t *testing.T, state []*xdsclient.Resource, cluster string) []string {
	r := find(state, edsT, cluster)
	if r == nil {
		return nil
	}
	cla := &endpointv3.ClusterLoadAssignment{}
	if err := r.Body.UnmarshalTo(cla); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range cla.GetEndpoints() {
		for _, e := range l.GetLbEndpoints() {
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			out = append(out, net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue()))))
		}
	}
	slices.Sort(out)
	return out
}

// complete: the worker's listeners, clusters and endpoints of n masters.
func complete(t *testing.T, n int) func([]*xdsclient.Resource) bool {
	return func(st []*xdsclient.Resource) bool {
		return slices.Equal(names(st, ldsT), []string{"apiserver-local", "etcd-local"}) &&
			slices.Equal(names(st, cdsT), []string{"etcd", "kube-apiserver"}) &&
			len(endpoints(t, st, "kube-apiserver")) == n && len(endpoints(t, st, "etcd")) == n
	}
}

type options struct {
	servers  []string
	sotw     bool
	initial  []*xdsclient.Resource
	reg      prometheus.Registerer
	userAgnt string
}

// start runs a client for worker-1 until the test ends; Run must return
// nil then.
func start(t *testing.T, a *agent, o options) *xdsclient.Client {
	t.Helper()
	c, err := xdsclient.New(xdsclient.Config{
		Servers:     o.servers,
		Node:        &corev3.Node{Id: "worker-1", Cluster: "local", UserAgentName: o.userAgnt},
		SotW:        o.sotw,
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
		Backoff:     backoff.Backoff{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond, Jitter: 0.2},
		Initial:     o.initial,
		Update:      a.update,
		Logger:      servertest.Logger(t),
		Registerer:  o.reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, c)
	t.Cleanup(stop)
	return c
}

// run runs c; the function returned stops it and checks that Run returned
// nil.
func run(t *testing.T, c *xdsclient.Client) func() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if c.Connected() {
			t.Error("Connected after Run returned")
		}
	}
}

// agentStatus returns worker-1's status on a server (LocalOnly) whose user
// agent starts with userAgent, or nil.
func agentStatus(t *testing.T, conn grpc.ClientConnInterface, userAgent string) *halov1.AgentStatus {
	t.Helper()
	resp, err := halov1.NewStatusServiceClient(conn).ListAgents(ctxT(t), &halov1.ListAgentsRequest{Cluster: "local", LocalOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, ag := range resp.GetAgents() {
		if ag.GetNode() == "worker-1" && strings.HasPrefix(ag.GetUserAgent(), userAgent) {
			return ag
		}
	}
	return nil
}

// ackedVersions are the acked versions of an agent's status, by type.
func ackedVersions(ag *halov1.AgentStatus) map[string]string {
	out := map[string]string{}
	for _, ts := range ag.GetTypes() {
		if ts.GetAckedVersion() != "" {
			out[ts.GetTypeUrl()] = ts.GetAckedVersion()
		}
	}
	return out
}

// waitInSync waits until the server lists worker-1 (of that user agent) in
// sync, holding what the client says it holds (Delta: the same hashes).
func waitInSync(t *testing.T, conn grpc.ClientConnInterface, c *xdsclient.Client, userAgent string, sameVersions bool) *halov1.AgentStatus {
	t.Helper()
	var ag *halov1.AgentStatus
	poll(t, "the server lists the agent in sync", func() bool {
		ag = agentStatus(t, conn, userAgent)
		return ag != nil && ag.GetInSync() && (!sameVersions || maps.Equal(ackedVersions(ag), c.Versions()))
	})
	return ag
}

// metric returns the value of a metric with the given labels (all must
// match), summed over the rest.
func metric(t *testing.T, g prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, l := range m.GetLabel() {
				got[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if got[k] != v {
					continue next
				}
			}
			switch {
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// TestDelta: a worker gets its listeners, clusters and endpoints; a new
// master reaches it as an endpoints update; a cluster that goes away takes
// its endpoints with it. The server lists it in sync with the versions the
// client reports, and the metrics say the same.
func TestDelta(t *testing.T) {
	srv := servertest.New(t)
	tc := topology(t, srv.Conn)
	reg := prometheus.NewPedanticRegistry()
	a := newAgent()
	c := start(t, a, options{servers: []string{srv.Addr}, reg: reg})

	a.waitFor(t, "listeners, clusters and endpoints", complete(t, 3))
	if got, want := endpoints(t, a.state(), "kube-apiserver"), []string{"10.0.0.1:6443", "10.0.0.2:6443", "10.0.0.3:6443"}; !slices.Equal(got, want) {
		t.Errorf("kube-apiserver endpoints %v, want %v", got, want)
	}
	if p := listenerPort(t, a.state(), "apiserver-local"); p != 16443 {
		t.Errorf("apiserver-local on port %d, want 16443", p)
	}
	ag := waitInSync(t, srv.Conn, c, "halo-agent", true)
	if ag.GetProtocol() != "delta" {
		t.Errorf("protocol %q", ag.GetProtocol())
	}
	if !c.Connected() {
		t.Error("not Connected")
	}
	vs := c.Versions()
	if len(vs) != 3 {
		t.Errorf("Versions %v: want one per type", vs)
	}
	// What the client computes over what it holds is what the server built.
	poll(t, "the client's versions equal those of the server's snapshot", func() bool {
		return maps.Equal(c.Versions(), srv.Server().Cache().Lookup("local", "worker-1").Snapshot.Versions)
	})
	for typ, v := range vs {
		if got := metric(t, reg, "halo_agent_xds_config_info", map[string]string{"type": typ, "version": v}); got != 1 {
			t.Errorf("config_info{%s, %s} = %v", typ, v, got)
		}
	}
	if got := metric(t, reg, "halo_agent_xds_connected", nil); got != 1 {
		t.Errorf("connected = %v", got)
	}
	if got := metric(t, reg, "halo_agent_xds_updates_total", map[string]string{"result": "ack"}); got < 3 {
		t.Errorf("acks = %v, want at least one per type", got)
	}

	// A master joins: one endpoints update.
	mark := a.callCount()
	oldEDS := vs[edsT]
	if _, err := tc.PutNode(ctxT(t), &halov1.PutNodeRequest{Node: newNode("master-4", "10.0.0.4", 3, cp)}); err != nil {
		t.Fatal(err)
	}
	a.waitFor(t, "the new master", func(st []*xdsclient.Resource) bool { return len(endpoints(t, st, "kube-apiserver")) == 4 })
	for _, cl := range a.callsFrom(mark) {
		if cl.typeURL != edsT {
			t.Errorf("a new master caused an Update of %s", cl.typeURL)
		}
	}
	waitInSync(t, srv.Conn, c, "halo-agent", true)
	if got := metric(t, reg, "halo_agent_xds_config_info", map[string]string{"type": edsT, "version": oldEDS}); got != 0 {
		t.Errorf("config_info of the old endpoints version still %v", got)
	}

	// The etcd local LB goes: the listener, then the cluster and its
	// endpoints leave the state.
	putCluster(t, tc, localCluster(16443, false))
	a.waitFor(t, "no etcd", func(st []*xdsclient.Resource) bool {
		return slices.Equal(names(st, ldsT), []string{"apiserver-local"}) && slices.Equal(names(st, cdsT), []string{"kube-apiserver"}) &&
			slices.Equal(names(st, edsT), []string{"kube-apiserver"})
	})
	waitInSync(t, srv.Conn, c, "halo-agent", true)
}

// TestNack: an update the agent refuses is NACKed with its text, which the
// server lists; the old state stays; the next good update is ACKed.
func TestNack(t *testing.T) {
	srv := servertest.New(t)
	tc := topology(t, srv.Conn)
	reg := prometheus.NewPedanticRegistry()
	a := newAgent()
	c := start(t, a, options{servers: []string{srv.Addr}, reg: reg})
	a.waitFor(t, "initial", complete(t, 3))
	waitInSync(t, srv.Conn, c, "halo-agent", true)
	before, versions := a.state(), c.Versions()

	const msg = "listener apiserver-local: port 17443 is taken on this node"
	a.setRefuse(func(st []*xdsclient.Resource) error {
		if listenerPort(t, st, "apiserver-local") == 17443 {
			return errors.New(msg)
		}
		return nil
	})
	putCluster(t, tc, localCluster(17443, true))
	var nacked *halov1.ResourceTypeStatus
	poll(t, "the NACK listed", func() bool {
		ag := agentStatus(t, srv.Conn, "halo-agent")
		for _, ts := range ag.GetTypes() {
			if ts.GetTypeUrl() == ldsT && ts.GetNackError() != "" {
				nacked = ts
			}
		}
		return nacked != nil
	})
	if nacked.GetNackError() != msg {
		t.Errorf("listed NACK %q, want %q", nacked.GetNackError(), msg)
	}
	if got := metric(t, reg, "halo_agent_xds_updates_total", map[string]string{"type": ldsT, "result": "nack"}); got != 1 {
		t.Errorf("nacks = %v", got)
	}
	// The previous state stays.
	if got := a.state(); describe(got) != describe(before) {
		t.Errorf("state after the NACK:\n%s\nwant\n%s", describe(got), describe(before))
	}
	if got := c.Versions(); !maps.Equal(got, versions) {
		t.Errorf("Versions after the NACK %v, want %v", got, versions)
	}

	// The next version is accepted.
	putCluster(t, tc, localCluster(18443, true))
	a.waitFor(t, "the next version", func(st []*xdsclient.Resource) bool { return listenerPort(t, st, "apiserver-local") == 18443 })
	waitInSync(t, srv.Conn, c, "halo-agent", true)
	if c.Versions()[ldsT] == versions[ldsT] {
		t.Error("listener version unchanged after the accepted update")
	}
}

// TestDeltaResume: a client that starts from the state a previous one
// held is sent nothing (no Update, no response at all) and is in sync; the
// next change is the first thing it gets.
func TestDeltaResume(t *testing.T) {
	srv := servertest.New(t)
	tc := topology(t, srv.Conn)
	first := newAgent()
	c1, err := xdsclient.New(xdsclient.Config{Servers: []string{srv.Addr}, Node: &corev3.Node{Id: "worker-1", Cluster: "local"},
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, Update: first.update})
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, c1)
	first.waitFor(t, "initial", complete(t, 3))
	waitInSync(t, srv.Conn, c1, "halo-agent", true)
	stop()
	held, versions := first.state(), c1.Versions()

	reg := prometheus.NewPedanticRegistry()
	again := newAgent()
	c2 := start(t, again, options{servers: []string{srv.Addr}, initial: held, reg: reg, userAgnt: "resumed"})
	if got := c2.Versions(); !maps.Equal(got, versions) {
		t.Errorf("Versions from Initial %v, want %v", got, versions)
	}
	waitInSync(t, srv.Conn, c2, "resumed", true)
	if n := again.callCount(); n != 0 {
		t.Fatalf("a resumed client got %d Updates", n)
	}
	if got := metric(t, reg, "halo_agent_xds_updates_total", nil); got != 0 {
		t.Fatalf("a resumed client handled %v responses", got)
	}
	if !c2.Connected() {
		t.Error("not Connected")
	}

	n, err := tc.GetNode(ctxT(t), &halov1.GetNodeRequest{Cluster: "local", Name: "master-3"})
	if err != nil {
		t.Fatal(err)
	}
	n.Draining = true
	if _, err := tc.PutNode(ctxT(t), &halov1.PutNodeRequest{Node: n}); err != nil {
		t.Fatal(err)
	}
	poll(t, "the change", func() bool { return again.callCount() > 0 })
	if cl := again.callsFrom(0)[0]; cl.typeURL != edsT {
		t.Errorf("the first Update after resuming is of %s, want endpoints", cl.typeURL)
	}
}

// TestFailover: two replicas on one etcd; the first stops and the client
// follows the second at once.
func TestFailover(t *testing.T) {
	etcd := servertest.NewEtcd(t)
	s1 := servertest.New(t, servertest.WithEtcd(etcd))
	s2 := servertest.New(t, servertest.WithEtcd(etcd))
	topology(t, s1.Conn)
	reg := prometheus.NewPedanticRegistry()
	a := newAgent()
	c := start(t, a, options{servers: []string{s1.Addr, s2.Addr}, reg: reg})
	a.waitFor(t, "initial", complete(t, 3))
	waitInSync(t, s1.Conn, c, "halo-agent", true)

	s1.Close()
	start := time.Now()
	waitInSync(t, s2.Conn, c, "halo-agent", true)
	t.Logf("in sync on the second replica %v after the first stopped", time.Since(start).Round(time.Millisecond))
	if !c.Connected() {
		t.Error("not Connected")
	}
	if got := metric(t, reg, "halo_agent_xds_reconnects_total", nil); got != 1 {
		t.Errorf("reconnects = %v, want 1", got)
	}
	if got := metric(t, reg, "halo_agent_xds_connected", nil); got != 1 {
		t.Errorf("connected = %v", got)
	}
}

// TestSotW: the state-of-the-world protocol, end to end.
func TestSotW(t *testing.T) {
	srv := servertest.New(t)
	tc := topology(t, srv.Conn)
	a := newAgent()
	c := start(t, a, options{servers: []string{srv.Addr}, sotw: true})
	a.waitFor(t, "listeners, clusters and endpoints", complete(t, 3))
	ag := waitInSync(t, srv.Conn, c, "halo-agent", false)
	if ag.GetProtocol() != "sotw" {
		t.Errorf("protocol %q", ag.GetProtocol())
	}
	vs := c.Versions()
	for _, typ := range []string{ldsT, cdsT, edsT} {
		if vs[typ] == "" {
			t.Errorf("no version of %s: %v", typ, vs)
		}
	}
	for _, r := range a.state() {
		if r.Version != vs[r.TypeURL] {
			t.Errorf("%s %s has version %q, the type %q", r.TypeURL, r.Name, r.Version, vs[r.TypeURL])
		}
	}
	if _, err := tc.PutNode(ctxT(t), &halov1.PutNodeRequest{Node: newNode("master-4", "10.0.0.4", 3, cp)}); err != nil {
		t.Fatal(err)
	}
	a.waitFor(t, "the new master", func(st []*xdsclient.Resource) bool { return len(endpoints(t, st, "kube-apiserver")) == 4 })
	waitInSync(t, srv.Conn, c, "halo-agent", false)
	if c.Versions()[edsT] == vs[edsT] {
		t.Error("endpoints version unchanged")
	}

	// A refused update keeps the previous version_info.
	a.setRefuse(func(st []*xdsclient.Resource) error {
		if listenerPort(t, st, "apiserver-local") == 17443 {
			return errors.New("port 17443 is taken")
		}
		return nil
	})
	before := c.Versions()
	putCluster(t, tc, localCluster(17443, true))
	poll(t, "the NACK listed", func() bool {
		for _, ts := range agentStatus(t, srv.Conn, "halo-agent").GetTypes() {
			if ts.GetTypeUrl() == ldsT && ts.GetNackError() == "port 17443 is taken" {
				return true
			}
		}
		return false
	})
	if got := c.Versions(); !maps.Equal(got, before) {
		t.Errorf("Versions after a NACK %v, want %v", got, before)
	}
}

// TestUnreachableFirstServer: the first address refuses connections; the
// client moves on to the second.
func TestUnreachableFirstServer(t *testing.T) {
	srv := servertest.New(t)
	topology(t, srv.Conn)
	// A port nobody listens on: bound, then closed (another process could
	// take it in between, which would only make the first attempt fail in
	// another way).
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := lis.Addr().String()
	lis.Close()

	reg := prometheus.NewPedanticRegistry()
	a := newAgent()
	c := start(t, a, options{servers: []string{closed, srv.Addr}, reg: reg})
	a.waitFor(t, "the state from the second server", complete(t, 3))
	waitInSync(t, srv.Conn, c, "halo-agent", true)
	if got := metric(t, reg, "halo_agent_xds_reconnects_total", nil); got < 1 {
		t.Errorf("reconnects = %v", got)
	}
}

// TestClusterEDSNames: EDS clusters by service name or name; others not.
func TestClusterEDSNames(t *testing.T) {
	pack := func(cl *clusterv3.Cluster) *xdsclient.Resource {
		a, err := anypb.New(cl)
		if err != nil {
			t.Fatal(err)
		}
		return &xdsclient.Resource{TypeURL: cdsT, Name: cl.GetName(), Version: "1", Body: a}
	}
	eds := func(name, service string) *clusterv3.Cluster {
		return &clusterv3.Cluster{Name: name, ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{ServiceName: service}}
	}
	got := xdsclient.ClusterEDSNames([]*xdsclient.Resource{
		pack(eds("b", "")), pack(eds("a", "svc")), pack(eds("c", "svc")),
		pack(&clusterv3.Cluster{Name: "static", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}}),
	})
	if want := []string{"b", "svc"}; !slices.Equal(got, want) {
		t.Errorf("ClusterEDSNames = %v, want %v", got, want)
	}
}

// TestConfigValidate: New names the bad field.
func TestConfigValidate(t *testing.T) {
	body, err := anypb.New(&listenerv3.Listener{Name: "l"})
	if err != nil {
		t.Fatal(err)
	}
	good := func() xdsclient.Config {
		return xdsclient.Config{
			Servers:     []string{"127.0.0.1:18000"},
			Node:        &corev3.Node{Id: "worker-1", Cluster: "local"},
			DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
			Update:      func(context.Context, string, []*xdsclient.Resource) error { return nil },
		}
	}
	if _, err := xdsclient.New(good()); err != nil {
		t.Fatalf("a good config: %v", err)
	}
	for _, tt := range []struct {
		field  string
		change func(*xdsclient.Config)
	}{
		{"Config.Servers", func(c *xdsclient.Config) { c.Servers = nil }},
		{"Config.Servers[1]", func(c *xdsclient.Config) { c.Servers = append(c.Servers, "no-port") }},
		{"Config.Node ", func(c *xdsclient.Config) { c.Node = nil }},
		{"Config.Node.Id", func(c *xdsclient.Config) { c.Node.Id = "" }},
		{"Config.Node.Cluster", func(c *xdsclient.Config) { c.Node.Cluster = "" }},
		{"Config.Update", func(c *xdsclient.Config) { c.Update = nil }},
		{"Config.Backoff.Initial", func(c *xdsclient.Config) { c.Backoff = backoff.Backoff{Max: time.Second} }},
		{"Config.Backoff.Max", func(c *xdsclient.Config) { c.Backoff = backoff.Backoff{Initial: time.Second, Max: time.Millisecond} }},
		{"Config.Backoff.Jitter", func(c *xdsclient.Config) {
			c.Backoff = backoff.Backoff{Initial: time.Millisecond, Max: time.Second, Jitter: 1.5}
		}},
		{"Config.DialOptions", func(c *xdsclient.Config) { c.DialOptions = nil }},
		{"Config.Initial[0].TypeURL", func(c *xdsclient.Config) {
			c.Initial = []*xdsclient.Resource{{TypeURL: "x", Name: "l", Version: "1", Body: body}}
		}},
		{"Config.Initial[0].Version", func(c *xdsclient.Config) {
			c.Initial = []*xdsclient.Resource{{TypeURL: ldsT, Name: "l", Body: body}}
		}},
		{"Config.Initial[0].Body", func(c *xdsclient.Config) {
			c.Initial = []*xdsclient.Resource{{TypeURL: cdsT, Name: "l", Version: "1", Body: body}}
		}},
		{"Config.Initial[1]", func(c *xdsclient.Config) {
			r := &xdsclient.Resource{TypeURL: ldsT, Name: "l", Version: "1", Body: body}
			c.Initial = []*xdsclient.Resource{r, r}
		}},
	} {
		cfg := good()
		tt.change(&cfg)
		_, err := xdsclient.New(cfg)
		if err == nil || !strings.Contains(err.Error()+" ", tt.field) {
			t.Errorf("%s: New: %v", tt.field, err)
		}
	}
}

// TestFailedAttemptsBackOff: a closed port, and a server that ends every
// stream at once (before any response), are failed attempts: each waits
// for the backoff, so the client never loops hot.
func TestFailedAttemptsBackOff(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := lis.Addr().String()
	lis.Close()
	// A gRPC server whose ADS answers every stream with Unimplemented.
	gs := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, discoveryv3.UnimplementedAggregatedDiscoveryServiceServer{})
	refusing := servertest.Listen(t)
	served := make(chan error, 1)
	go func() { served <- gs.Serve(refusing) }()
	t.Cleanup(func() {
		gs.Stop()
		if err := <-served; err != nil {
			t.Errorf("refusing server: %v", err)
		}
	})

	const wait = 50 * time.Millisecond
	reg := prometheus.NewPedanticRegistry()
	a := newAgent()
	c, err := xdsclient.New(xdsclient.Config{
		Servers:     []string{closed, refusing.Addr().String()},
		Node:        &corev3.Node{Id: "worker-1", Cluster: "local"},
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
		Backoff:     backoff.Backoff{Initial: wait, Max: wait},
		Update:      a.update,
		Logger:      servertest.Logger(t),
		Registerer:  reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	stop := run(t, c)
	defer stop()
	const attempts = 6
	poll(t, "attempts", func() bool { return metric(t, reg, "halo_agent_xds_reconnects_total", nil) >= attempts })
	if took := time.Since(began); took < attempts*wait {
		t.Errorf("%d reconnects in %v: fewer than %v between failed attempts", attempts, took, wait)
	}
	if n := a.callCount(); n != 0 {
		t.Errorf("%d Updates", n)
	}
}

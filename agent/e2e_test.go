package agent_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"go.uber.org/goleak"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/halolb/halo/agent"
	"github.com/halolb/halo/agent/config"
	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/internal/pki"
	"github.com/halolb/halo/internal/waitfor"
	"github.com/halolb/halo/internal/xdscontract"
	"github.com/halolb/halo/server/servertest"
	"github.com/halolb/halo/server/snapcache"
	"github.com/halolb/halo/server/snapshot"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// apiserver is a fake kube-apiserver: a real TLS HTTP server that answers
// /readyz and says who it is on /whoami, on its own loopback address.
type apiserver struct {
	name     string
	addr     netip.AddrPort
	srv      *http.Server
	accepted atomic.Int64 // TLS connections accepted
	hung     atomic.Bool  // requests are accepted but never answered
	done     chan struct{}
}

func startAPIServer(t *testing.T, ca *pki.CA, name string, addr netip.AddrPort) *apiserver {
	t.Helper()
	issued, err := ca.Issue(pki.Request{CommonName: name, DNSNames: []string{"localhost", "kubernetes"},
		IPs: []net.IP{net.ParseIP("127.0.0.1"), addr.Addr().AsSlice()}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(issued.CertPEM, issued.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", addr.String())
	if err != nil {
		t.Fatalf("fake apiserver %s: %v", name, err)
	}
	a := &apiserver{name: name, addr: netip.MustParseAddrPort(ln.Addr().String()), done: make(chan struct{})}
	mux := http.NewServeMux()
	// A hung apiserver (overloaded, or its process stopped after the
	// kernel accepted): TCP and TLS go through, HTTP never answers.
	hang := func(r *http.Request) bool {
		if a.hung.Load() {
			<-r.Context().Done()
			return true
		}
		return false
	}
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !hang(r) {
			_, _ = io.WriteString(w, "ok")
		}
	})
	mux.HandleFunc("GET /whoami", func(w http.ResponseWriter, r *http.Request) {
		if !hang(r) {
			_, _ = io.WriteString(w, name)
		}
	})
	a.srv = &http.Server{
		Handler:   mux,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}},
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				a.accepted.Add(1)
			}
		},
		ErrorLog: nil,
	}
	go func() {
		defer close(a.done)
		_ = a.srv.ServeTLS(ln, "", "") // ErrServerClosed once the test closes it
	}()
	t.Cleanup(a.kill)
	return a
}

// kill stops the apiserver as a crash would: listener and connections
// closed at once.
func (a *apiserver) kill() {
	a.srv.Close()
	<-a.done
}

// env is one end-to-end setup: a halo-server on embedded etcd, fake
// apiservers, and the client side's TLS settings.
type env struct {
	t       *testing.T
	srv     *servertest.Server
	tc      halov1.TopologyServiceClient
	ca      *pki.CA
	port    uint16 // the masters' apiserver port (sp)
	nsp     uint16 // the local LB port
	masters map[string]*apiserver
	tr      *http.Transport // one TLS connection per request
}

const clusterName = "e2e"

func newEnv(t *testing.T) *env {
	t.Helper()
	ca, err := pki.NewCA("e2e-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, srv: servertest.New(t), ca: ca, masters: map[string]*apiserver{}}
	e.tc = halov1.NewTopologyServiceClient(e.srv.Conn)
	e.nsp = freePort(t, "127.0.0.1")
	e.tr = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}, DisableKeepAlives: true}
	t.Cleanup(e.tr.CloseIdleConnections)
	// The masters share one port on their own loopback addresses, like
	// real masters on their own hosts.
	m1 := startAPIServer(t, ca, "master-1", netip.MustParseAddrPort("127.0.0.11:0"))
	e.port = m1.addr.Port()
	e.masters["master-1"] = m1
	for i := 2; i <= 3; i++ {
		e.addMasterServer(fmt.Sprintf("master-%d", i), i)
	}
	ctx := ctxT(t)
	c := &halov1.Cluster{Name: clusterName, Apiserver: &halov1.ApiServer{Port: uint32(e.port), LocalLbPort: uint32(e.nsp), HealthCheck: steadyProbes()}}
	if _, err := e.tc.PutCluster(ctx, &halov1.PutClusterRequest{Cluster: c}); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		e.putMaster(fmt.Sprintf("master-%d", i), i)
	}
	worker := &halov1.Node{Cluster: clusterName, Name: "worker-1", Ip: "127.0.0.21", Roles: []halov1.Role{halov1.Role_ROLE_WORKER}}
	if _, err := e.tc.PutNode(ctx, &halov1.PutNodeRequest{Node: worker}); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) addMasterServer(name string, i int) *apiserver {
	a := startAPIServer(e.t, e.ca, name, netip.AddrPortFrom(masterIP(i), e.port))
	e.masters[name] = a
	return a
}

func masterIP(i int) netip.Addr { return netip.AddrFrom4([4]byte{127, 0, 0, byte(10 + i)}) }

func (e *env) putMaster(name string, i int) {
	e.t.Helper()
	n := &halov1.Node{Cluster: clusterName, Name: name, Ip: masterIP(i).String(), Ordinal: int32(i - 1),
		Roles: []halov1.Role{halov1.Role_ROLE_CONTROL_PLANE}}
	if _, err := e.tc.PutNode(ctxT(e.t), &halov1.PutNodeRequest{Node: n}); err != nil {
		e.t.Fatal(err)
	}
}

// freePort returns a port that was free on ip a moment ago (the agent's
// listener port comes from the topology, so it cannot be :0).
func freePort(t *testing.T, ip string) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return netip.MustParseAddrPort(ln.Addr().String()).Port()
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// runningAgent is an agent running for a test.
type runningAgent struct {
	*agent.Agent
	t      *testing.T
	cancel context.CancelFunc
	done   chan error
	admin  string // the admin listener's host:port (/metrics, /readyz)
}

func startAgent(t *testing.T, cfg agent.Config) *runningAgent {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.AdminListener = ln
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	a, err := agent.New(cfg)
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &runningAgent{Agent: a, t: t, cancel: cancel, done: make(chan error, 1), admin: ln.Addr().String()}
	go func() { r.done <- a.Run(ctx) }()
	t.Cleanup(r.stop)
	return r
}

// putMasterAndWorker registers, through tc, cluster with its local LB on
// nsp, a master "m" on 127.0.0.<base> and a worker "w" on 127.0.0.<base+1>.
func putMasterAndWorker(t *testing.T, tc halov1.TopologyServiceClient, cluster string, nsp uint16, base int) {
	t.Helper()
	ctx := ctxT(t)
	if _, err := tc.PutCluster(ctx, &halov1.PutClusterRequest{Cluster: &halov1.Cluster{Name: cluster, Apiserver: &halov1.ApiServer{LocalLbPort: uint32(nsp)}}}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*halov1.Node{
		{Cluster: cluster, Name: "m", Ip: fmt.Sprintf("127.0.0.%d", base), Roles: []halov1.Role{halov1.Role_ROLE_CONTROL_PLANE}},
		{Cluster: cluster, Name: "w", Ip: fmt.Sprintf("127.0.0.%d", base+1), Roles: []halov1.Role{halov1.Role_ROLE_WORKER}},
	} {
		if _, err := tc.PutNode(ctx, &halov1.PutNodeRequest{Node: n}); err != nil {
			t.Fatal(err)
		}
	}
}

func (r *runningAgent) stop() {
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	if err := <-r.done; err != nil {
		r.t.Errorf("agent: Run: %v", err)
	}
}

// testWriter sends logs to t.Log while the test runs.
type testWriter struct{ t *testing.T }

var logMu sync.Mutex

func (w testWriter) Write(p []byte) (int, error) {
	logMu.Lock()
	defer logMu.Unlock()
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// poll waits for cond, failing the test after a deadline.
func poll(t *testing.T, what string, cond func() error) {
	t.Helper()
	waitfor.Nil(t, 20*time.Second, what, cond)
}

// whoami opens a new TLS connection through addr and asks who answers.
func (e *env) whoami(addr string) (string, error) {
	req, err := http.NewRequest(http.MethodGet, "https://"+addr+"/whoami", nil)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := e.tr.RoundTrip(req.WithContext(ctx))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func (e *env) local() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(int(e.nsp))) }

// spread makes n new connections through the agent and counts who
// answered; any failure fails the test.
func (e *env) spread(n int) map[string]int {
	e.t.Helper()
	got := map[string]int{}
	for range n {
		who, err := e.whoami(e.local())
		if err != nil {
			e.t.Fatalf("through the agent: %v", err)
		}
		got[who]++
	}
	return got
}

// keptConn is one TLS connection through the agent that sends requests
// one after another.
type keptConn struct {
	c  *tls.Conn
	br *bufio.Reader
}

func (e *env) dialKept() *keptConn {
	e.t.Helper()
	c, err := tls.Dial("tcp", e.local(), &tls.Config{RootCAs: e.ca.Pool()})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return &keptConn{c: c, br: bufio.NewReader(c)}
}

func (k *keptConn) whoami() (string, error) {
	if err := k.c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return "", err
	}
	if _, err := io.WriteString(k.c, "GET /whoami HTTP/1.1\r\nHost: localhost\r\n\r\n"); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(k.br, nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func hostsOf(a *runningAgent) []string {
	c := a.Proxy().Cluster(snapshot.ClusterAPIServer)
	if c == nil {
		return nil
	}
	var out []string
	for _, h := range c.State() {
		out = append(out, h.Address.Addr().String())
	}
	slices.Sort(out)
	return out
}

func wantHosts(a *runningAgent, ips ...int) func() error {
	return func() error {
		var want []string
		for _, i := range ips {
			want = append(want, masterIP(i).String())
		}
		if got := hostsOf(a); !slices.Equal(got, want) {
			return fmt.Errorf("agent's apiserver endpoints %v, want %v", got, want)
		}
		return nil
	}
}

// TestEndToEnd runs the agent as a worker against a halo-server and three
// fake apiservers, and walks through what operators rely on: spread,
// masters joining and leaving without restarts or dropped connections, a
// dead master invisible to clients, the control plane going away, a
// restart from the cache, and a refused (NACKed) update.
func TestEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	for _, sotw := range []bool{false, true} {
		t.Run(map[bool]string{false: "delta", true: "sotw"}[sotw], func(t *testing.T) { endToEnd(t, sotw) })
	}
}

func endToEnd(t *testing.T, sotw bool) {
	e := newEnv(t)
	cacheDir := t.TempDir()
	a := startAgent(t, agent.Config{Servers: []string{e.srv.Addr}, Cluster: clusterName, Node: "worker-1", CacheDir: cacheDir, SotW: sotw})
	poll(t, "agent ready", func() error { return a.Ready() })
	poll(t, "three masters", wantHosts(a, 1, 2, 3))

	// Traffic through 127.0.0.1:nsp reaches all three masters.
	got := e.spread(60)
	for i := 1; i <= 3; i++ {
		if got[fmt.Sprintf("master-%d", i)] < 5 {
			t.Fatalf("spread over the masters: %v", got)
		}
	}
	t.Logf("60 connections: %v", got)

	// Connections opened now must survive every change below.
	kept := []*keptConn{e.dialKept(), e.dialKept(), e.dialKept()}
	keptBy := map[*keptConn]string{}
	for _, k := range kept {
		who, err := k.whoami()
		if err != nil {
			t.Fatal(err)
		}
		keptBy[k] = who
	}
	dead := map[string]bool{}
	checkKept := func(when string) {
		t.Helper()
		for _, k := range kept {
			if dead[keptBy[k]] {
				continue
			}
			who, err := k.whoami()
			if err != nil || who != keptBy[k] {
				t.Fatalf("%s: a connection opened before (to %s) broke: %q, %v", when, keptBy[k], who, err)
			}
		}
	}

	// A fourth master added through the admin API gets traffic, with no
	// agent restart, and the open connections stay open.
	m4 := e.addMasterServer("master-4", 4)
	e.putMaster("master-4", 4)
	poll(t, "four masters", wantHosts(a, 1, 2, 3, 4))
	checkKept("master-4 added")
	poll(t, "master-4 gets traffic", func() error {
		if who, err := e.whoami(e.local()); err != nil || who != "master-4" {
			return fmt.Errorf("answered by %q (%v)", who, err)
		}
		return nil
	})

	// A removed master gets no new connections.
	if _, err := e.tc.DeleteNode(ctxT(t), &halov1.DeleteNodeRequest{Cluster: clusterName, Name: "master-4"}); err != nil {
		t.Fatal(err)
	}
	poll(t, "master-4 removed", wantHosts(a, 1, 2, 3))
	before := m4.accepted.Load()
	if got := e.spread(30); got["master-4"] != 0 {
		t.Fatalf("removed master got connections: %v", got)
	}
	if after := m4.accepted.Load(); after != before {
		t.Fatalf("removed master accepted %d new connections", after-before)
	}
	checkKept("master-4 removed")

	// With one master's process killed, 1,000 new connections through
	// the agent all succeed.
	e.masters["master-1"].kill()
	dead["master-1"] = true
	var g errgroup.Group
	g.SetLimit(16)
	var ok atomic.Int64
	for range 1000 {
		g.Go(func() error {
			who, err := e.whoami(e.local())
			if err != nil {
				return err
			}
			if who == "master-1" {
				return errors.New("the killed master answered")
			}
			ok.Add(1)
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("with master-1 dead: %d of 1000 succeeded before: %v", ok.Load(), err)
	}
	checkKept("master-1 killed")

	// An unsupported filter pushed: the agent NACKs it, ListAgents shows
	// it, and the old configuration keeps serving.
	pushTampered(t, e, unsupportedFilter)
	waitNack(t, e, resource.ListenerType, "http_connection_manager")
	if got := e.spread(20); got["master-2"]+got["master-3"] != 20 {
		t.Fatalf("after the NACK: %v", got)
	}
	checkKept("NACK")

	// Endpoints that would leave the listener's cluster empty: NACKed,
	// the last good set keeps serving (a bad push must not black-hole
	// the node).
	pushTampered(t, e, noEndpoints)
	waitNack(t, e, resource.EndpointType, "no endpoints")
	if got := e.spread(20); got["master-2"]+got["master-3"] != 20 {
		t.Fatalf("after the empty endpoints: %v", got)
	}
	checkKept("empty endpoints")

	// halo-server stopped: the agent keeps serving.
	e.srv.Close()
	if got := e.spread(20); got["master-2"]+got["master-3"] != 20 {
		t.Fatalf("control plane down: %v", got)
	}
	checkKept("control plane down")
	if err := a.Ready(); err != nil {
		t.Errorf("not ready with the control plane down: %v", err)
	}

	// The agent restarted while the server is down serves from its cache.
	a.stop()
	a2 := startAgent(t, agent.Config{Servers: []string{e.srv.Addr}, Cluster: clusterName, Node: "worker-1", CacheDir: cacheDir, SotW: sotw})
	poll(t, "restarted agent ready", func() error { return a2.Ready() })
	poll(t, "cached endpoints", wantHosts(a2, 1, 2, 3))
	if got := e.spread(20); got["master-2"]+got["master-3"] != 20 {
		t.Fatalf("from the cache: %v", got)
	}
}

// waitNack waits until ListAgents shows worker-1 refusing typeURL with
// an error that contains text.
func waitNack(t *testing.T, e *env, typeURL, text string) {
	t.Helper()
	poll(t, "the NACK in ListAgents", func() error {
		resp, err := halov1.NewStatusServiceClient(e.srv.Conn).ListAgents(ctxT(t), &halov1.ListAgentsRequest{Cluster: clusterName})
		if err != nil {
			return err
		}
		for _, ag := range resp.GetAgents() {
			for _, ts := range ag.GetTypes() {
				if ag.GetNode() == "worker-1" && ts.GetTypeUrl() == typeURL && strings.Contains(ts.GetNackError(), text) {
					t.Logf("ListAgents: %s", ts.GetNackError())
					return nil
				}
			}
		}
		return fmt.Errorf("no NACK with %q for worker-1 in %v", text, resp.GetAgents())
	})
}

// unsupportedFilter replaces the listener's tcp_proxy by an HTTP
// connection manager, a filter halo-agent does not run.
func unsupportedFilter(t *testing.T, s *snapshot.Snapshot) *snapshot.Resource {
	old := s.Get(resource.ListenerType, snapshot.ListenerAPIServerLocal)
	l := proto.Clone(old.Message).(*listenerv3.Listener)
	hcm, err := anypb.New(&hcmv3.HttpConnectionManager{StatPrefix: "http"})
	if err != nil {
		t.Fatal(err)
	}
	l.FilterChains[0].Filters[0].Name = "envoy.filters.network.http_connection_manager"
	l.FilterChains[0].Filters[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: hcm}
	return tampered(t, l.Name, l, old.Clusters)
}

// noEndpoints empties the apiserver cluster's endpoints.
func noEndpoints(t *testing.T, _ *snapshot.Snapshot) *snapshot.Resource {
	return tampered(t, snapshot.ClusterAPIServer, &endpointv3.ClusterLoadAssignment{ClusterName: snapshot.ClusterAPIServer}, nil)
}

func tampered(t *testing.T, name string, m proto.Message, clusters []string) *snapshot.Resource {
	t.Helper()
	body, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return &snapshot.Resource{Name: name, Version: "tampered-" + name, Message: m, Any: body, Clusters: clusters}
}

// pushTampered publishes, through the server's snapshot cache, worker-1's resources
// with one resource replaced by what change returns. halo-server never
// builds such resources itself; another control plane (or a bug) could.
func pushTampered(t *testing.T, e *env, change func(*testing.T, *snapshot.Snapshot) *snapshot.Resource) {
	t.Helper()
	cache := e.srv.Server().Cache()
	view := cache.Lookup(clusterName, "worker-1")
	if view.Snapshot == nil {
		t.Fatalf("no snapshot for worker-1: %s", view.Condition)
	}
	r := change(t, view.Snapshot)
	typeURL := r.Any.GetTypeUrl()
	snap := &snapshot.Snapshot{Profile: view.Profile, Resources: map[string]map[string]*snapshot.Resource{}, Versions: map[string]string{}}
	for typ, rs := range view.Snapshot.Resources {
		snap.Resources[typ] = maps.Clone(rs)
	}
	snap.Resources[typeURL][r.Name] = r
	for typ, rs := range snap.Resources {
		versions := map[string]string{}
		for n, r := range rs {
			versions[n] = r.Version
		}
		snap.Versions[typ] = xdscontract.TypeVersion(versions)
	}
	cache.Publish(clusterName, snapcache.Update{Snapshots: map[string]*snapshot.Snapshot{view.Profile: snap}, Nodes: map[string]string{"worker-1": view.Profile}})
}

// TestFallbackHandsOverToServer: an agent with no cache serves
// --fallback-backends at once, then takes the servers' configuration on
// the same address without refusing a connection.
func TestFallbackHandsOverToServer(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	e := newEnv(t)
	listen := netip.MustParseAddrPort(e.local())
	// The first server address is dead: the agent backs off before it
	// reaches the live one, serving the fallback backend meanwhile.
	dead := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(t, "127.0.0.1")).String()
	a := startAgent(t, agent.Config{Servers: []string{dead, e.srv.Addr}, Cluster: clusterName, Node: "worker-1", CacheDir: t.TempDir(),
		FallbackBackends: []netip.AddrPort{e.masters["master-1"].addr}, FallbackListen: listen})
	poll(t, "agent ready", func() error { return a.Ready() })
	var refused atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	var g errgroup.Group
	g.Go(func() error {
		for n := 0; ctx.Err() == nil && n < 100000; n++ {
			c, err := net.Dial("tcp", listen.String())
			if err != nil {
				refused.Add(1)
				continue
			}
			c.Close()
		}
		return nil
	})
	poll(t, "the servers' configuration", wantHosts(a, 1, 2, 3))
	cancel()
	_ = g.Wait() // the dialers only count; they return no error
	if n := refused.Load(); n > 0 {
		t.Fatalf("%d connections refused while the fallback listener handed over", n)
	}
	if _, ok := a.Proxy().Addr(snapshot.ListenerAPIServerLocal); !ok {
		t.Fatal("apiserver-local not bound after the handover")
	}
	if got := e.spread(30); len(got) != 3 {
		t.Fatalf("after the handover: %v", got)
	}
}

// TestTLSToServer: an agent reaches a TLS halo-server (non-loopback
// deployments need it) with --tls-ca, and gets its configuration.
func TestTLSToServer(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	ca, err := pki.NewCA("halo-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	issued, err := ca.Issue(pki.Request{CommonName: "halo-server", DNSNames: []string{"halo.example"}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, err := issued.WriteFiles(t.TempDir(), "server")
	if err != nil {
		t.Fatal(err)
	}
	s := servertest.NewUnstarted(t)
	s.Config.TLSCertFile, s.Config.TLSKeyFile = certFile, keyFile
	s.Start()
	tlsCfg := &tls.Config{RootCAs: ca.Pool(), ServerName: "halo.example"}
	conn, err := grpc.NewClient(s.Addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	nsp := freePort(t, "127.0.0.1")
	putMasterAndWorker(t, halov1.NewTopologyServiceClient(conn), "tls", nsp, 31)
	a := startAgent(t, agent.Config{Servers: []string{s.Addr}, Cluster: "tls", Node: "w", TLS: tlsCfg.Clone()})
	poll(t, "agent ready over TLS", func() error { return a.Ready() })
	if addr, ok := a.Proxy().Addr(snapshot.ListenerAPIServerLocal); !ok || addr.Port() != nsp {
		t.Fatalf("apiserver-local on %v (bound %v), want port %d", addr, ok, nsp)
	}
}

// steadyProbes is the health check of the tests whose healthy masters must
// stay healthy: a probe timeout far above what a loaded machine running
// -race takes for a TLS handshake and a request, so only a hung master
// fails it (in about interval + fall × timeout).
func steadyProbes() *halov1.HealthCheck {
	return &halov1.HealthCheck{Interval: durationpb.New(time.Second), Timeout: durationpb.New(time.Second), Rise: 2, Fall: 2}
}

// TestHungMasterExcluded: a master whose apiserver hangs (TCP and TLS
// connect, HTTP never answers) is marked unhealthy by the central prober
// within interval + fall × timeout; the agent stops sending it new
// connections and closes the ones it had, so clients re-establish them on
// a live master at once.
func TestHungMasterExcluded(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	e := newEnv(t)
	c := &halov1.Cluster{Name: clusterName, Apiserver: &halov1.ApiServer{Port: uint32(e.port), LocalLbPort: uint32(e.nsp),
		HealthCheck: steadyProbes()}}
	if _, err := e.tc.PutCluster(ctxT(t), &halov1.PutClusterRequest{Cluster: c}); err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, agent.Config{Servers: []string{e.srv.Addr}, Cluster: clusterName, Node: "worker-1"})
	poll(t, "agent ready", func() error { return a.Ready() })
	healthOf := func(ip int) config.Health {
		for _, h := range a.Proxy().Cluster(snapshot.ClusterAPIServer).State() {
			if h.Address.Addr() == masterIP(ip) {
				return h.Health
			}
		}
		return -1
	}
	poll(t, "masters probed healthy", func() error {
		for i := 1; i <= 3; i++ {
			if h := healthOf(i); h != config.Healthy {
				return fmt.Errorf("master-%d: %v", i, h)
			}
		}
		return nil
	})
	// A connection on master-2 before it hangs.
	var onTwo *keptConn
	for onTwo == nil {
		k := e.dialKept()
		if who, err := k.whoami(); err == nil && who == "master-2" {
			onTwo = k
		}
	}
	start := time.Now()
	e.masters["master-2"].hung.Store(true)
	poll(t, "master-2 unhealthy on the agent", func() error {
		if h := healthOf(2); h != config.Unhealthy {
			return fmt.Errorf("master-2: %v", h)
		}
		return nil
	})
	t.Logf("hung master excluded on the agent after %v", time.Since(start))
	// Its connection was closed by the agent (close_connections_on_host_health_failure).
	if _, err := onTwo.whoami(); err == nil {
		t.Error("the connection to the hung master is still open")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Error("the connection to the hung master was not closed")
	}
	if got := e.spread(30); got["master-2"] != 0 || got["master-1"]+got["master-3"] != 30 {
		t.Fatalf("with master-2 hung: %v", got)
	}
	// It comes back after rise good probes.
	e.masters["master-2"].hung.Store(false)
	poll(t, "master-2 healthy again", func() error {
		if h := healthOf(2); h != config.Healthy {
			return fmt.Errorf("master-2: %v", h)
		}
		return nil
	})
}

// TestRebalanceAfterRecovery: while master-2 is down, long-lived
// connections pile onto master-1 and master-3; when it is probed healthy
// again, the agent closes only the excess (bounded per interval), and the
// clients that reconnect, as watches do, land on master-2 until the spread
// is even.
func TestRebalanceAfterRecovery(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	e := newEnv(t)
	c := &halov1.Cluster{Name: clusterName, Apiserver: &halov1.ApiServer{Port: uint32(e.port), LocalLbPort: uint32(e.nsp),
		HealthCheck: steadyProbes(),
		Rebalance:   &halov1.Rebalance{Enabled: true, MaxFraction: 0.25, MinAge: durationpb.New(time.Millisecond), Interval: durationpb.New(300 * time.Millisecond)}}}
	if _, err := e.tc.PutCluster(ctxT(t), &halov1.PutClusterRequest{Cluster: c}); err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, agent.Config{Servers: []string{e.srv.Addr}, Cluster: clusterName, Node: "worker-1"})
	poll(t, "agent ready", func() error { return a.Ready() })
	healthOf := func(name string) config.Health {
		for _, h := range a.Proxy().Cluster(snapshot.ClusterAPIServer).State() {
			if h.Address == e.masters[name].addr {
				return h.Health
			}
		}
		return -1
	}
	waitHealth := func(name string, want config.Health) {
		t.Helper()
		poll(t, name+" "+want.String(), func() error {
			if h := healthOf(name); h != want {
				return fmt.Errorf("%s: %v", name, h)
			}
			return nil
		})
	}
	e.masters["master-2"].hung.Store(true)
	waitHealth("master-2", config.Unhealthy)

	const n = 12
	conns := make([]*keptConn, n)
	on := make([]string, n)
	for i := range conns {
		conns[i] = e.dialKept()
		who, err := conns[i].whoami()
		if err != nil {
			t.Fatal(err)
		}
		on[i] = who
	}
	count := func() map[string]int {
		got := map[string]int{}
		for _, w := range on {
			got[w]++
		}
		return got
	}
	if got := count(); got["master-1"] != n/2 || got["master-3"] != n/2 {
		t.Fatalf("with master-2 down: %v", got)
	}

	e.masters["master-2"].hung.Store(false)
	waitHealth("master-2", config.Healthy)
	moved := 0
	poll(t, "connections spread evenly", func() error {
		for i, k := range conns {
			if who, err := k.whoami(); err == nil {
				on[i] = who
				continue
			}
			// Closed by the agent: reconnect, as a watch does.
			moved++
			conns[i] = e.dialKept()
			who, err := conns[i].whoami()
			if err != nil {
				return err
			}
			if who != "master-2" {
				t.Errorf("a moved connection landed on %s, not the master that came back", who)
			}
			on[i] = who
		}
		if got := count(); got["master-1"] != n/3 || got["master-2"] != n/3 || got["master-3"] != n/3 {
			return fmt.Errorf("spread %v", got)
		}
		return nil
	})
	// Only the excess moved: 2 from each of master-1 and master-3.
	if moved != n/3 {
		t.Errorf("%d connections were moved, want %d (only those above the even share)", moved, n/3)
	}
	// Even now: nothing more is closed over two rounds (the agent's
	// rounds are at least a second apart; this bounds how long it looks,
	// not how fast anything must be).
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		for i, k := range conns {
			if _, err := k.whoami(); err != nil {
				t.Fatalf("connection %d (on %s) closed after the spread was even: %v", i, on[i], err)
			}
		}
	}
}

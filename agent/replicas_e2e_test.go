package agent_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/halolb/halo/agent"
	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/internal/pki"
	"github.com/halolb/halo/server"
	"github.com/halolb/halo/server/ads/adstest"
	"github.com/halolb/halo/server/servertest"
)

// TestAgentSurvivesItsReplica runs an agent against two halo-server
// replicas that share one etcd, with clients opening a new TLS connection
// through it for every request, and stops the replica the agent is
// connected to. The agent moves to the other replica and is in sync there;
// no request fails, before, during or after; a connection opened through
// the agent before keeps working; and the agent is sent nothing again (its
// Delta reconnect names the versions it holds, the same on every replica):
// its xDS update counters do not move, and the new replica sees it holding
// the versions it held on the old one.
func TestAgentSurvivesItsReplica(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	etcd := servertest.NewEtcd(t)
	replicas := map[string]*servertest.Server{}
	for _, name := range []string{"replica-a", "replica-b"} {
		replicas[name] = servertest.New(t, servertest.WithEtcd(etcd), func(c *server.Config) { c.ReplicaName = name })
	}
	e := newReplicasEnv(t, replicas["replica-a"])
	a := startAgent(t, agent.Config{Servers: []string{replicas["replica-a"].Addr, replicas["replica-b"].Addr},
		Cluster: clusterName, Node: "worker-1"})
	poll(t, "agent ready", func() error { return a.Ready() })
	poll(t, "three masters", wantHosts(a, 1, 2, 3))
	// Every master probed healthy, stored in etcd: from now on nothing
	// changes there.
	poll(t, "masters probed healthy", func() error {
		resp, err := halov1.NewStatusServiceClient(e.srv.Conn).ListBackends(ctxT(t), &halov1.ListBackendsRequest{Cluster: clusterName})
		if err != nil {
			return err
		}
		if len(resp.GetBackends()) != 3 {
			return fmt.Errorf("backends %v", resp.GetBackends())
		}
		for _, b := range resp.GetBackends() {
			if b.GetState() != halov1.BackendState_BACKEND_STATE_HEALTHY {
				return fmt.Errorf("%s: %v", b.GetNode(), b.GetState())
			}
		}
		return nil
	})

	// Which replica the agent is on; the other one stays.
	var on *halov1.AgentStatus
	poll(t, "the agent on a replica", func() error {
		var err error
		on, err = agentStatus(t, replicas["replica-b"], false, "halo-agent")
		return err
	})
	from := replicas[on.GetReplica()]
	var toName string
	for name := range replicas {
		if name != on.GetReplica() {
			toName = name
		}
	}
	to := replicas[toName]
	t.Logf("the agent is on %s; %s stays", on.GetReplica(), toName)

	// Wait until the agent holds what both replicas serve now (with the
	// health above): a stand-in for the node on the other replica is in
	// sync there, with the versions the agent has ACKed on its own.
	standIn := &adstest.Client{Node: &corev3.Node{Cluster: clusterName, Id: "worker-1", UserAgentName: "stand-in"}, Delta: true}
	standInCtx, cancelStandIn := context.WithCancel(context.Background())
	standInDone := make(chan error, 1)
	go func() { standInDone <- standIn.Run(standInCtx, to.Conn) }()
	stopStandIn := sync.OnceValue(func() error { cancelStandIn(); return <-standInDone })
	t.Cleanup(func() { _ = stopStandIn() })
	poll(t, "the agent in sync with what both replicas serve", func() error {
		var err error
		if on, err = agentStatus(t, from, true, "halo-agent"); err != nil {
			return err
		}
		other, err := agentStatus(t, to, true, "stand-in")
		if err != nil {
			return err
		}
		if !on.GetInSync() || !other.GetInSync() || fmt.Sprint(ackedVersions(on)) != fmt.Sprint(ackedVersions(other)) {
			return fmt.Errorf("the agent on %s: %v; the stand-in on %s: %v", on.GetReplica(), on, toName, other)
		}
		return nil
	})
	if err := stopStandIn(); err != nil {
		t.Fatal(err)
	}
	acked := ackedVersions(on)
	updates, reconnects := agentMetric(t, a.admin, "halo_agent_xds_updates_total"), agentMetric(t, a.admin, "halo_agent_xds_reconnects_total")

	// A connection opened before.
	kept := e.dialKept()
	keptBy, err := kept.whoami()
	if err != nil {
		t.Fatal(err)
	}

	// Clients open a new TLS connection through the agent for every request.
	const before, after = 20, 20
	var (
		phase     atomic.Int32    // 0 before the replica stops, 1 until the agent is in sync on the other, 2 after
		succeeded [3]atomic.Int64 // requests by the phase they began in
		failed    atomic.Int64
		firstErr  error
		errMu     sync.Mutex
		stop      = make(chan struct{})
		done      = make(chan struct{})
	)
	go func() {
		defer close(done)
		for range 100000 {
			select {
			case <-stop:
				return
			default:
			}
			p := phase.Load()
			who, err := e.whoami(e.local())
			if err == nil && !strings.HasPrefix(who, "master-") {
				err = fmt.Errorf("answered %q", who)
			}
			if err != nil {
				failed.Add(1)
				errMu.Lock()
				if firstErr == nil {
					firstErr = fmt.Errorf("phase %d: %w", p, err)
				}
				errMu.Unlock()
				continue
			}
			succeeded[p].Add(1)
		}
	}()
	stopLoop := sync.OnceFunc(func() { close(stop); <-done })
	t.Cleanup(stopLoop)
	poll(t, fmt.Sprintf("%d requests before", before), func() error {
		if n := succeeded[0].Load(); n < before {
			return fmt.Errorf("%d", n)
		}
		return nil
	})

	phase.Store(1)
	start := time.Now()
	from.Close()
	poll(t, "the agent in sync on "+toName, func() error {
		st, err := agentStatus(t, to, true, "halo-agent")
		if err != nil {
			return err
		}
		if st.GetReplica() != toName || !st.GetInSync() {
			return fmt.Errorf("not in sync on %s: %v", toName, st)
		}
		if n := agentMetric(t, a.admin, "halo_agent_xds_reconnects_total"); n <= reconnects {
			return fmt.Errorf("reconnects %v", n)
		}
		if n := agentMetric(t, a.admin, "halo_agent_xds_connected"); n != 1 {
			return fmt.Errorf("halo_agent_xds_connected %v", n)
		}
		return nil
	})
	t.Logf("in sync on %s %v after %s stopped", toName, time.Since(start).Round(time.Millisecond), on.GetReplica())
	phase.Store(2)
	poll(t, fmt.Sprintf("%d requests after", after), func() error {
		if n := succeeded[2].Load(); n < after {
			return fmt.Errorf("%d", n)
		}
		return nil
	})
	stopLoop()

	t.Logf("requests: %d before, %d during the move, %d after; %d failed", succeeded[0].Load(), succeeded[1].Load(), succeeded[2].Load(), failed.Load())
	if n := failed.Load(); n > 0 {
		t.Errorf("%d requests through the agent failed while its replica stopped; the first: %v", n, firstErr)
	}
	if n := agentMetric(t, a.admin, "halo_agent_xds_updates_total"); n != updates {
		t.Errorf("the agent handled %v xDS updates after moving to %s: it was sent again what it had", n-updates, toName)
	}
	st, err := agentStatus(t, to, true, "halo-agent")
	if err != nil {
		t.Fatal(err)
	}
	if got := ackedVersions(st); fmt.Sprint(got) != fmt.Sprint(acked) {
		t.Errorf("acked versions on %s %v, on %s before %v", toName, got, on.GetReplica(), acked)
	}
	if who, err := kept.whoami(); err != nil || who != keptBy {
		t.Errorf("the connection opened before the replica stopped (to %s): %q, %v", keptBy, who, err)
	}
}

// newReplicasEnv is newEnv with servers of the test's own: the fake
// masters, the cluster and its nodes, written through srv. Its health
// checks are fast, so that every master is soon probed healthy.
func newReplicasEnv(t *testing.T, srv *servertest.Server) *env {
	t.Helper()
	ca, err := pki.NewCA("e2e-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, srv: srv, tc: halov1.NewTopologyServiceClient(srv.Conn), ca: ca, masters: map[string]*apiserver{}}
	e.nsp = freePort(t, "127.0.0.1")
	e.tr = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}, DisableKeepAlives: true}
	t.Cleanup(e.tr.CloseIdleConnections)
	m1 := startAPIServer(t, ca, "master-1", netip.MustParseAddrPort(masterIP(1).String()+":0"))
	e.port = m1.addr.Port()
	e.masters["master-1"] = m1
	for i := 2; i <= 3; i++ {
		e.addMasterServer(fmt.Sprintf("master-%d", i), i)
	}
	hc := &halov1.HealthCheck{Interval: durationpb.New(time.Second), Timeout: durationpb.New(time.Second), Rise: 1, Fall: 5}
	c := &halov1.Cluster{Name: clusterName, Apiserver: &halov1.ApiServer{Port: uint32(e.port), LocalLbPort: uint32(e.nsp), HealthCheck: hc}}
	if _, err := e.tc.PutCluster(ctxT(t), &halov1.PutClusterRequest{Cluster: c}); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		e.putMaster(fmt.Sprintf("master-%d", i), i)
	}
	worker := &halov1.Node{Cluster: clusterName, Name: "worker-1", Ip: "127.0.0.21", Roles: []halov1.Role{halov1.Role_ROLE_WORKER}}
	if _, err := e.tc.PutNode(ctxT(t), &halov1.PutNodeRequest{Node: worker}); err != nil {
		t.Fatal(err)
	}
	return e
}

// agentStatus is worker-1's one stream whose user agent starts with ua, as
// replica srv lists it (only its own streams with localOnly).
func agentStatus(t *testing.T, srv *servertest.Server, localOnly bool, ua string) (*halov1.AgentStatus, error) {
	resp, err := halov1.NewStatusServiceClient(srv.Conn).ListAgents(ctxT(t), &halov1.ListAgentsRequest{Cluster: clusterName, LocalOnly: localOnly})
	if err != nil {
		return nil, err
	}
	var found []*halov1.AgentStatus
	for _, ag := range resp.GetAgents() {
		if ag.GetNode() == "worker-1" && strings.HasPrefix(ag.GetUserAgent(), ua) {
			found = append(found, ag)
		}
	}
	if len(found) != 1 {
		return nil, fmt.Errorf("worker-1 has %d streams: %v (unreachable replicas %v)", len(found), found, resp.GetUnreachableReplicas())
	}
	return found[0], nil
}

// ackedVersions is what a stream has ACKed, by type.
func ackedVersions(st *halov1.AgentStatus) map[string]string {
	out := map[string]string{}
	for _, ts := range st.GetTypes() {
		out[ts.GetTypeUrl()] = ts.GetAckedVersion()
	}
	return out
}

// agentMetric is the sum of a metric's series on the agent's /metrics (0
// when it has none yet).
func agentMetric(t *testing.T, admin, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		sum += v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return sum
}

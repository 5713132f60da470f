package server_test

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/internal/waitfor"
	"github.com/halolb/halo/server"
	"github.com/halolb/halo/server/ads/adstest"
	"github.com/halolb/halo/server/servertest"
)

// fakeAPIServer is a real TLS server on addr answering /readyz with code.
func fakeAPIServer(t *testing.T, addr string, code int) string {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(code)
		fmt.Fprint(w, map[int]string{200: "ok", 401: "Unauthorized"}[code])
	}))
	s.Listener = ln
	s.StartTLS()
	t.Cleanup(s.Close)
	return ln.Addr().String()
}

// steadyProbes is the health check of the tests whose healthy masters must
// read (and stay) healthy: a probe timeout far above what a TLS handshake
// and a request take on a loaded machine running -race, so only a hung
// master times out (found in about interval + fall × timeout, 2 to 3 s).
func steadyProbes() *halov1.HealthCheck {
	return &halov1.HealthCheck{Interval: durationpb.New(time.Second), Timeout: durationpb.New(time.Second), Rise: 2, Fall: 2}
}

// TestProberMarksBackends: one replica probes the masters; a hung one is
// marked unhealthy (the probe times out), a 401 one alive but unverified,
// and ListBackends shows it all with the prober's name.
func TestProberMarksBackends(t *testing.T) {
	srv := servertest.New(t)
	tc := halov1.NewTopologyServiceClient(srv.Conn)
	sc := halov1.NewStatusServiceClient(srv.Conn)
	ctx := ctxT(t)
	ok := fakeAPIServer(t, "127.0.0.51:0", 200)
	_, port, _ := net.SplitHostPort(ok)
	servertest.Hung(t, "127.0.0.52:"+port)
	fakeAPIServer(t, "127.0.0.53:"+port, 401)
	p, _ := strconv.Atoi(port)
	hc := steadyProbes()
	if _, err := tc.PutCluster(ctx, &halov1.PutClusterRequest{Cluster: &halov1.Cluster{Name: "probed",
		Apiserver: &halov1.ApiServer{Port: uint32(p), HealthCheck: hc}}}); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		n := &halov1.Node{Cluster: "probed", Name: fmt.Sprintf("m%d", i), Ip: fmt.Sprintf("127.0.0.5%d", i), Ordinal: int32(i),
			Roles: []halov1.Role{halov1.Role_ROLE_CONTROL_PLANE}}
		if _, err := tc.PutNode(ctx, &halov1.PutNodeRequest{Node: n}); err != nil {
			t.Fatal(err)
		}
	}
	want := map[string]halov1.BackendState{"m1": halov1.BackendState_BACKEND_STATE_HEALTHY,
		"m2": halov1.BackendState_BACKEND_STATE_UNHEALTHY, "m3": halov1.BackendState_BACKEND_STATE_HEALTHY}
	var last *halov1.ListBackendsResponse
	waitfor.Nil(t, 20*time.Second, "m1 and m3 healthy, m2 unhealthy", func() error {
		resp, err := sc.ListBackends(ctxT(t), &halov1.ListBackendsRequest{Cluster: "probed"})
		if err != nil {
			t.Fatal(err)
		}
		last = resp
		good := len(resp.GetBackends()) == 3
		for _, b := range resp.GetBackends() {
			good = good && b.GetState() == want[b.GetNode()]
		}
		if !good {
			return fmt.Errorf("backends %v", resp.GetBackends())
		}
		return nil
	})
	if last.GetProber() == "" {
		t.Error("no prober named")
	}
	for _, b := range last.GetBackends() {
		switch b.GetNode() {
		case "m2":
			if !strings.Contains(b.GetLastError(), "timeout") {
				t.Errorf("hung master's error %q", b.GetLastError())
			}
		case "m3":
			if !b.GetReadinessUnverified() {
				t.Error("401 master not flagged readiness unverified")
			}
		}
	}
}

// uaCounter is a TLS apiserver that counts probes by User-Agent (the
// prober sends halo-prober/<replica>).
type uaCounter struct {
	mu  sync.Mutex
	got map[string]int
}

func (u *uaCounter) count(ua string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.got[ua]
}

func (u *uaCounter) agents() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []string
	for ua := range u.got {
		out = append(out, ua)
	}
	return out
}

// TestOneReplicaProbesAndFailover: with two replicas on one etcd, only one
// probes the masters; when it stops, the other takes over.
func TestOneReplicaProbesAndFailover(t *testing.T) {
	e := servertest.NewEtcd(t)
	a := servertest.New(t, servertest.WithEtcd(e), func(c *server.Config) { c.ReplicaName = "replica-a" })
	ctx := ctxT(t)
	tc := halov1.NewTopologyServiceClient(a.Conn)
	u := &uaCounter{got: map[string]int{}}
	ln, err := net.Listen("tcp", "127.0.0.61:0")
	if err != nil {
		t.Fatal(err)
	}
	s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.got[r.UserAgent()]++
		u.mu.Unlock()
		fmt.Fprint(w, "ok")
	}))
	s.Listener = ln
	s.StartTLS()
	t.Cleanup(s.Close)
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	p, _ := strconv.Atoi(port)
	hc := &halov1.HealthCheck{Interval: durationpb.New(50 * time.Millisecond), Timeout: durationpb.New(40 * time.Millisecond)}
	if _, err := tc.PutCluster(ctx, &halov1.PutClusterRequest{Cluster: &halov1.Cluster{Name: "two",
		Apiserver: &halov1.ApiServer{Port: uint32(p), HealthCheck: hc}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := tc.PutNode(ctx, &halov1.PutNodeRequest{Node: &halov1.Node{Cluster: "two", Name: "m1", Ip: "127.0.0.61",
		Roles: []halov1.Role{halov1.Role_ROLE_CONTROL_PLANE}}}); err != nil {
		t.Fatal(err)
	}
	waitProbes := func(ua string, n int) {
		t.Helper()
		waitfor.Nil(t, 20*time.Second, fmt.Sprintf("%d probes by %s", n, ua), func() error {
			if got := u.count(ua); got < n {
				return fmt.Errorf("%d probes; probes by %v", got, u.agents())
			}
			return nil
		})
	}
	waitProbes("halo-prober/replica-a", 5)
	b := servertest.New(t, servertest.WithEtcd(e), func(c *server.Config) { c.ReplicaName = "replica-b" })
	// 50 agents (workers) on both replicas: probe traffic does not grow
	// with them; agents never probe, only the leading replica does.
	conns := map[bool]*grpc.ClientConn{}
	for odd, addr := range map[bool]string{false: a.Addr, true: b.Addr} {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		conns[odd] = cc
	}
	for i := range 50 {
		name := fmt.Sprintf("w%d", i)
		if _, err := tc.PutNode(ctx, &halov1.PutNodeRequest{Node: &halov1.Node{Cluster: "two", Name: name, Ip: fmt.Sprintf("10.1.%d.%d", i/200, i%200+1),
			Roles: []halov1.Role{halov1.Role_ROLE_WORKER}}}); err != nil {
			t.Fatal(err)
		}
		agent(t, conns[i%2 == 1], &adstest.Client{Node: nodeID("two", name), Delta: true})
	}
	// While a leads, b (running, campaigning) never probes.
	mark := u.count("halo-prober/replica-a")
	waitProbes("halo-prober/replica-a", mark+10)
	if n := u.count("halo-prober/replica-b"); n != 0 {
		t.Fatalf("replica-b probed %d times while replica-a leads", n)
	}
	if agents := u.agents(); len(agents) != 1 {
		t.Fatalf("the master was probed by %v, want only halo-prober/replica-a", agents)
	}
	resp, err := halov1.NewStatusServiceClient(b.Conn).ListBackends(ctxT(t), &halov1.ListBackendsRequest{Cluster: "two"})
	if err != nil || resp.GetProber() != "replica-a" {
		t.Fatalf("ListBackends on b: prober %q, %v", resp.GetProber(), err)
	}
	// a stops: b takes over.
	a.Close()
	waitProbes("halo-prober/replica-b", 5)
	stopped := u.count("halo-prober/replica-a")
	waitProbes("halo-prober/replica-b", u.count("halo-prober/replica-b")+5)
	if n := u.count("halo-prober/replica-a"); n != stopped {
		t.Errorf("replica-a probed after it stopped")
	}
}

// TestProbeCredentials: with a bearer token file, a master that answers
// 401 to anonymous probes is verified ready (and not flagged); with a wrong
// token it is unhealthy (credentials given: only "ok" counts).
func TestProbeCredentials(t *testing.T) {
	srv := servertest.New(t)
	tc := halov1.NewTopologyServiceClient(srv.Conn)
	sc := halov1.NewStatusServiceClient(srv.Conn)
	ctx := ctxT(t)
	ln, err := net.Listen("tcp", "127.0.0.71:0")
	if err != nil {
		t.Fatal(err)
	}
	s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer s3cret" {
			http.Error(w, "Unauthorized", http.StatusUnauthorized)
			return
		}
		fmt.Fprint(w, "ok")
	}))
	s.Listener = ln
	s.StartTLS()
	t.Cleanup(s.Close)
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	p, _ := strconv.Atoi(port)
	dir := t.TempDir()
	good, bad := dir+"/good", dir+"/bad"
	if err := os.WriteFile(good, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte("wrong"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := tc.PutNode(ctx, &halov1.PutNodeRequest{Node: &halov1.Node{Cluster: "creds", Name: "m1", Ip: "127.0.0.71",
		Roles: []halov1.Role{halov1.Role_ROLE_CONTROL_PLANE}}}); err == nil {
		t.Fatal("node of a missing cluster stored")
	}
	for _, tc2 := range []struct {
		token string
		want  halov1.BackendState
	}{{good, halov1.BackendState_BACKEND_STATE_HEALTHY}, {bad, halov1.BackendState_BACKEND_STATE_UNHEALTHY}} {
		hc := steadyProbes()
		hc.BearerTokenFile = tc2.token
		ctx := ctxT(t)
		if _, err := tc.PutCluster(ctx, &halov1.PutClusterRequest{Cluster: &halov1.Cluster{Name: "creds",
			Apiserver: &halov1.ApiServer{Port: uint32(p), HealthCheck: hc}}}); err != nil {
			t.Fatal(err)
		}
		if _, err := tc.PutNode(ctx, &halov1.PutNodeRequest{Node: &halov1.Node{Cluster: "creds", Name: "m1", Ip: "127.0.0.71",
			Roles: []halov1.Role{halov1.Role_ROLE_CONTROL_PLANE}}}); err != nil {
			t.Fatal(err)
		}
		waitfor.Nil(t, 20*time.Second, fmt.Sprintf("token %s: m1 %v", tc2.token, tc2.want), func() error {
			resp, err := sc.ListBackends(ctxT(t), &halov1.ListBackendsRequest{Cluster: "creds"})
			if err != nil {
				t.Fatal(err)
			}
			b := resp.GetBackends()
			if len(b) != 1 || b[0].GetState() != tc2.want {
				return fmt.Errorf("backends %v", b)
			}
			if b[0].GetReadinessUnverified() {
				t.Errorf("token %s: flagged unverified though the probe has credentials", tc2.token)
			}
			return nil
		})
	}
}

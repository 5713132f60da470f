package server_test

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	halov1 "github.com/halolb/halo/gen/halo/v1"
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

// hungAPIServer accepts TCP on addr and never answers: a stopped
// apiserver whose socket the kernel still accepts on.
func hungAPIServer(t *testing.T, addr string) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
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
	hungAPIServer(t, "127.0.0.52:"+port)
	fakeAPIServer(t, "127.0.0.53:"+port, 401)
	p, _ := strconv.Atoi(port)
	hc := &halov1.HealthCheck{Interval: durationpb.New(100 * time.Millisecond), Timeout: durationpb.New(80 * time.Millisecond), Rise: 2, Fall: 2}
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
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := sc.ListBackends(ctx, &halov1.ListBackendsRequest{Cluster: "probed"})
		if err != nil {
			t.Fatal(err)
		}
		last = resp
		good := len(resp.GetBackends()) == 3
		for _, b := range resp.GetBackends() {
			good = good && b.GetState() == want[b.GetNode()]
		}
		if good {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("backends %v", resp.GetBackends())
		}
		time.Sleep(20 * time.Millisecond)
	}
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

package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// grpcurlPath finds the grpcurl binary: on PATH, else in the repository's
// .bin (where `make tools` puts it). Without it the test skips, unless
// HALO_REQUIRE_GRPCURL is set (CI sets it), and then it fails.
func grpcurlPath(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("grpcurl"); err == nil {
		return p
	}
	_, file, _, _ := runtime.Caller(0)
	p := filepath.Join(filepath.Dir(file), "..", "..", "..", ".bin", "grpcurl")
	if _, err := os.Stat(p); err == nil {
		return p
	}
	if os.Getenv("HALO_REQUIRE_GRPCURL") != "" {
		t.Fatal("grpcurl is not installed and HALO_REQUIRE_GRPCURL is set: run `make tools`")
	}
	t.Skip("grpcurl not installed (run `make tools`); CI runs this test")
	return ""
}

// TestGrpcurl drives a real halo-server with the real grpcurl binary through
// server reflection, as the README does: list services, put a cluster and
// nodes, resolve a worker's endpoints, and see a bad request refused.
func TestGrpcurl(t *testing.T) {
	grpcurl := grpcurlPath(t)
	p := start(t, t.TempDir(), "--listen", "127.0.0.1:0", "--metrics-listen", "", "--log-format", "json")
	addr := p.addr()
	// call runs grpcurl -plaintext [-d data] addr rest...
	call := func(wantOK bool, data string, rest ...string) string {
		t.Helper()
		args := []string{"-plaintext"}
		if data != "" {
			args = append(args, "-d", data)
		}
		args = append(append(args, addr), rest...)
		out, err := exec.Command(grpcurl, args...).CombinedOutput()
		if (err == nil) != wantOK {
			t.Fatalf("grpcurl %s: err %v:\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}

	services := strings.Fields(call(true, "", "list"))
	for _, want := range []string{"halo.v1.TopologyService", "halo.v1.EndpointService", "grpc.health.v1.Health"} {
		if !slices.Contains(services, want) {
			t.Errorf("grpcurl list: %q missing from %q", want, services)
		}
	}
	if out := call(true, "", "describe", "halo.v1.ApiServer"); !strings.Contains(out, "local_lb_port") {
		t.Errorf("describe: %s", out)
	}

	call(true, `{"cluster": {"name": "prod", "lbDomainName": "my-apiserver-lb.example.com", "apiserver": {"port": 6443, "localLbPort": 16443}}}`,
		"halo.v1.TopologyService/PutCluster")
	for _, n := range []string{
		`{"node": {"cluster": "prod", "name": "master-1", "roles": ["ROLE_CONTROL_PLANE", "ROLE_ETCD"], "ip": "10.0.0.1", "accessIp": "192.0.2.1"}}`,
		`{"node": {"cluster": "prod", "name": "master-2", "roles": ["ROLE_CONTROL_PLANE", "ROLE_ETCD"], "ip": "10.0.0.2", "ordinal": 1}}`,
		`{"node": {"cluster": "prod", "name": "worker-1", "roles": ["ROLE_WORKER"], "ip": "10.0.1.1"}}`,
	} {
		call(true, n, "halo.v1.TopologyService/PutNode")
	}
	out := call(true, `{"cluster": "prod", "node": "worker-1"}`, "halo.v1.EndpointService/ResolveEndpoints")
	var ep struct {
		ApiserverURL string   `json:"apiserverUrl"`
		ExternalURL  string   `json:"externalUrl"`
		EtcdURLs     []string `json:"etcdUrls"`
		Mode         string   `json:"mode"`
	}
	if err := json.Unmarshal([]byte(out), &ep); err != nil {
		t.Fatalf("resolve output: %v\n%s", err, out)
	}
	if ep.ApiserverURL != "https://localhost:16443" || ep.ExternalURL != "https://192.0.2.1:6443" || ep.Mode != "LOAD_BALANCER_MODE_LOCAL" ||
		!slices.Equal(ep.EtcdURLs, []string{"https://192.0.2.1:2379", "https://10.0.0.2:2379"}) {
		t.Errorf("resolve: %+v", ep)
	}

	bad := call(false, `{"cluster": {"name": "prod", "apiserver": {"port": 70000}}}`, "halo.v1.TopologyService/PutCluster")
	if !strings.Contains(bad, "InvalidArgument") || !strings.Contains(bad, "cluster.apiserver.port") {
		t.Errorf("bad request output:\n%s", bad)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

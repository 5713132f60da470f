package bootstrap_test

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/halolb/halo/server/bootstrap"
)

// The parameters deploy/envoy/bootstrap.yaml was rendered with.
var deployParams = bootstrap.Params{Cluster: "prod", Node: "worker-1", XDSServers: []string{"127.0.0.1:18000"}}

func TestRenderParsesBack(t *testing.T) {
	for name, p := range map[string]bootstrap.Params{
		"plaintext": deployParams,
		"several servers, mTLS": {Cluster: "prod", Node: "lb-1", XDSServers: []string{"10.0.0.1:18000", "halo.example.com:18000", "[2001:db8::1]:18000"},
			AdminPort: 19901, CAFile: "/etc/halo/ca.crt", CertFile: "/etc/halo/node.crt", KeyFile: "/etc/halo/node.key"},
	} {
		t.Run(name, func(t *testing.T) {
			b, err := bootstrap.Render(p)
			if err != nil {
				t.Fatal(err)
			}
			if b.GetNode().GetId() != p.Node || b.GetNode().GetCluster() != p.Cluster {
				t.Errorf("node %v", b.GetNode())
			}
			ads := b.GetDynamicResources().GetAdsConfig()
			if ads.GetApiType() != corev3.ApiConfigSource_DELTA_GRPC || ads.GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName() != bootstrap.XDSCluster {
				t.Errorf("ads %v", ads)
			}
			if b.GetDynamicResources().GetLdsConfig().GetAds() == nil || b.GetDynamicResources().GetCdsConfig().GetAds() == nil {
				t.Error("LDS and CDS must come over ADS")
			}
			eps := b.GetStaticResources().GetClusters()[0].GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()
			if len(eps) != len(p.XDSServers) {
				t.Errorf("%d halo-server endpoints", len(eps))
			}
			if (b.GetStaticResources().GetClusters()[0].GetTransportSocket() != nil) != (p.CAFile != "") {
				t.Error("TLS transport socket does not follow ca_file")
			}
			for _, enc := range []func() ([]byte, error){func() ([]byte, error) { return bootstrap.YAML(b) }, func() ([]byte, error) { return bootstrap.JSON(b) }} {
				data, err := enc()
				if err != nil {
					t.Fatal(err)
				}
				back, err := bootstrap.Parse(data)
				if err != nil {
					t.Fatalf("parse: %v\n%s", err, data)
				}
				if diff := cmp.Diff(b, back, protocmp.Transform()); diff != "" {
					t.Errorf("round trip (-want +got):\n%s", diff)
				}
			}
		})
	}
}

func TestRenderRefuses(t *testing.T) {
	for name, p := range map[string]bootstrap.Params{
		"no node":         {Cluster: "prod", XDSServers: []string{"127.0.0.1:18000"}},
		"no server":       {Cluster: "prod", Node: "w"},
		"bad server":      {Cluster: "prod", Node: "w", XDSServers: []string{"127.0.0.1"}},
		"port 0":          {Cluster: "prod", Node: "w", XDSServers: []string{"127.0.0.1:0"}},
		"cert without ca": {Cluster: "prod", Node: "w", XDSServers: []string{"127.0.0.1:18000"}, CertFile: "/c", KeyFile: "/k"},
	} {
		if _, err := bootstrap.Render(p); err == nil {
			t.Errorf("%s: rendered", name)
		}
	}
}

func TestParseRejects(t *testing.T) {
	for name, doc := range map[string]string{
		"unknown field": "node: {id: w, cluster: prod}\nbogus: 1\n",
		"invalid":       "node: {id: w, cluster: prod}\nadmin: {address: {socket_address: {address: 127.0.0.1, port_value: 70000}}}\n",
		"not yaml":      "node: [",
	} {
		if _, err := bootstrap.Parse([]byte(doc)); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

// TestDeployBootstrap: deploy/envoy/bootstrap.yaml parses into Envoy's
// Bootstrap type, validates, and is what the RPC renders for it (so the two
// cannot drift). HALO_UPDATE_DEPLOY=1 rewrites it.
func TestDeployBootstrap(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	path := filepath.Join(filepath.Dir(file), "..", "..", "deploy", "envoy", "bootstrap.yaml")
	want, err := bootstrap.Render(deployParams)
	if err != nil {
		t.Fatal(err)
	}
	if os.Getenv("HALO_UPDATE_DEPLOY") != "" {
		y, err := bootstrap.YAML(want)
		if err != nil {
			t.Fatal(err)
		}
		header := "# Envoy standing in for the halo agent on node worker-1 of cluster prod.\n" +
			"# Rendered by halo: grpcurl -plaintext -d '{\"cluster\": \"prod\", \"node\": \"worker-1\"}' \\\n" +
			"#   127.0.0.1:18000 halo.v1.EndpointService/GetEnvoyBootstrap\n" +
			"# Run: envoy -c bootstrap.yaml (Delta ADS to halo-server; listeners and clusters from halo).\n"
		if err := os.WriteFile(path, append([]byte(header), y...), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	got, err := bootstrap.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, want) {
		t.Errorf("deploy/envoy/bootstrap.yaml differs from what halo renders; HALO_UPDATE_DEPLOY=1 go test ./server/bootstrap/ rewrites it:\n%s",
			cmp.Diff(want, got, protocmp.Transform()))
	}
	if !strings.Contains(string(data), "DELTA_GRPC") {
		t.Error("the deployed bootstrap does not use Delta ADS")
	}
}

package auth

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/halolb/halo/internal/waitfor"
)

func TestAccessOf(t *testing.T) {
	for m, want := range map[string]Access{
		"/grpc.health.v1.Health/Check":                                                    Open,
		"/grpc.health.v1.Health/Watch":                                                    Open,
		"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo":                       Open,
		"/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources": XDS,
		"/halo.v1.TopologyService/PutCluster":                                             Write,
		"/halo.v1.TopologyService/DeleteNode":                                             Write,
		"/halo.v1.TopologyService/GetNode":                                                Read,
		"/halo.v1.TopologyService/ListClusters":                                           Read,
		"/halo.v1.TopologyService/Watch":                                                  Read,
		"/halo.v1.EndpointService/ResolveEndpoints":                                       Read,
		"/halo.v1.StatusService/ListBackends":                                             Read,
		"/halo.v1.TopologyService/SomethingNew":                                           Write,
		"/other.Service/Get":                                                              Write,
	} {
		if got := AccessOf(m); got != want {
			t.Errorf("AccessOf(%s) = %v, want %v", m, got, want)
		}
	}
}

func TestParsePolicy(t *testing.T) {
	p, err := ParsePolicy([]byte("# comment\nadmin: [alice, ci-deploy]\nread-only:\n  - bob\n"))
	if err != nil {
		t.Fatal(err)
	}
	for u, want := range map[string]Role{"alice": Admin, "ci-deploy": Admin, "bob": ReadOnly, "carol": NoRole} {
		if got := p.RoleOf(u); got != want {
			t.Errorf("RoleOf(%s) = %v, want %v", u, got, want)
		}
	}
	star, err := ParsePolicy([]byte("admin: [alice]\nread-only: ['*']\n"))
	if err != nil {
		t.Fatal(err)
	}
	if star.RoleOf("anyone") != ReadOnly || star.RoleOf("alice") != Admin {
		t.Errorf("with *: anyone %v, alice %v", star.RoleOf("anyone"), star.RoleOf("alice"))
	}
	for _, bad := range []string{
		"admins: [alice]",                    // unknown key
		"admin: alice",                       // not a list
		"admin: [Alice]",                     // not a user name
		"admin: [alice]\nread-only: [alice]", // two roles
		"admin: [a/b]",
	} {
		if _, err := ParsePolicy([]byte(bad)); err == nil {
			t.Errorf("ParsePolicy(%q) accepted", bad)
		}
	}
}

func TestPolicyFileReloads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, []byte("admin: [alice]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := LoadPolicyFile(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if f.Policy().RoleOf("bob") != NoRole {
		t.Fatal("bob has a role")
	}
	if err := os.WriteFile(path, []byte("admin: [alice]\nread-only: [bob, carol]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitfor.True(t, 10*time.Second, "bob read-only after the edit", func() bool { return f.Policy().RoleOf("bob") == ReadOnly })
	// A broken edit keeps the policy in force.
	if err := os.WriteFile(path, []byte("admin: [alice\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	before := f.current()
	waitfor.True(t, 10*time.Second, "the broken file looked at", func() bool {
		f.Policy()
		f.mu.Lock()
		defer f.mu.Unlock()
		return time.Since(f.checked) < time.Second && f.checked.After(time.Now().Add(-500*time.Millisecond))
	})
	if f.Policy() != before || f.Policy().RoleOf("bob") != ReadOnly {
		t.Fatal("a broken policy file replaced a good one")
	}
	if _, err := LoadPolicyFile(path, nil); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("LoadPolicyFile of a broken file: %v", err)
	}
}

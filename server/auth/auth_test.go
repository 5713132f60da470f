package auth_test

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/halolb/halo/internal/waitfor"
	"github.com/halolb/halo/server/auth"
)

func TestAccessOf(t *testing.T) {
	for m, want := range map[string]auth.Access{
		"/grpc.health.v1.Health/Check":                                                    auth.Open,
		"/grpc.health.v1.Health/Watch":                                                    auth.Open,
		"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo":                       auth.Open,
		"/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources": auth.XDS,
		"/halo.v1.TopologyService/PutCluster":                                             auth.Write,
		"/halo.v1.TopologyService/DeleteNode":                                             auth.Write,
		"/halo.v1.TopologyService/GetNode":                                                auth.Read,
		"/halo.v1.TopologyService/ListClusters":                                           auth.Read,
		"/halo.v1.TopologyService/Watch":                                                  auth.Read,
		"/halo.v1.EndpointService/ResolveEndpoints":                                       auth.Read,
		"/halo.v1.StatusService/ListBackends":                                             auth.Read,
		"/halo.v1.TopologyService/SomethingNew":                                           auth.Write,
		"/other.Service/Get":                                                              auth.Write,
	} {
		if got := auth.AccessOf(m); got != want {
			t.Errorf("AccessOf(%s) = %v, want %v", m, got, want)
		}
	}
}

func TestParsePolicy(t *testing.T) {
	p, err := auth.ParsePolicy([]byte("# comment\nadmin: [alice, ci-deploy]\nread-only:\n  - bob\n"))
	if err != nil {
		t.Fatal(err)
	}
	for u, want := range map[string]auth.Role{"alice": auth.Admin, "ci-deploy": auth.Admin, "bob": auth.ReadOnly, "carol": auth.NoRole} {
		if got := p.RoleOf(u); got != want {
			t.Errorf("RoleOf(%s) = %v, want %v", u, got, want)
		}
	}
	star, err := auth.ParsePolicy([]byte("admin: [alice]\nread-only: ['*']\n"))
	if err != nil {
		t.Fatal(err)
	}
	if star.RoleOf("anyone") != auth.ReadOnly || star.RoleOf("alice") != auth.Admin {
		t.Errorf("with *: anyone %v, alice %v", star.RoleOf("anyone"), star.RoleOf("alice"))
	}
	for _, bad := range []string{
		"admins: [alice]",                    // unknown key
		"admin: alice",                       // not a list
		"admin: [Alice]",                     // not a user name
		"admin: [alice]\nread-only: [alice]", // two roles
		"admin: [a/b]",
	} {
		if _, err := auth.ParsePolicy([]byte(bad)); err == nil {
			t.Errorf("ParsePolicy(%q) accepted", bad)
		}
	}
}

// stall bounds every wait: the file is looked at once a second, when the
// policy is asked for.
const stall = 10 * time.Second

// logBuffer collects a logger's output; the policy file logs from the
// goroutine that asks for the policy.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestPolicyFileReloads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, []byte("admin: [alice]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{}
	f, err := auth.LoadPolicyFile(path, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if f.Policy().RoleOf("bob") != auth.NoRole {
		t.Fatal("bob has a role")
	}
	if err := os.WriteFile(path, []byte("admin: [alice]\nread-only: [bob, carol]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitfor.True(t, stall, "bob read-only after the edit", func() bool { return f.Policy().RoleOf("bob") == auth.ReadOnly })
	// A broken edit keeps the policy in force. The failed reload's warning
	// shows the broken file has been read; only then is the policy looked
	// at, so a reload that dropped the policy cannot pass unseen.
	before := f.Policy()
	if err := os.WriteFile(path, []byte("admin: [alice\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitfor.True(t, stall, "the broken file read and refused", func() bool {
		f.Policy()
		return strings.Contains(logs.String(), "policy file not reloaded")
	})
	if got := f.Policy(); got != before || got.RoleOf("bob") != auth.ReadOnly || got.RoleOf("alice") != auth.Admin {
		t.Fatalf("after a broken edit: bob %v, alice %v; want the previous policy (read-only, admin)", got.RoleOf("bob"), got.RoleOf("alice"))
	}
	if _, err := auth.LoadPolicyFile(path, nil); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("LoadPolicyFile of a broken file: %v", err)
	}
}

package config_test

import (
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/halolb/halo/agent/config"
	"github.com/halolb/halo/internal/xdscontract"
)

var updateCorpus = flag.Bool("update-corpus", false, "rewrite testdata/fuzz/* from halo's snapshots and the test fixtures")

// seeds returns the marshaled resources of one type that halo-server
// builds (deduplicated, sorted), plus a few hand-made ones exercising the
// defaults, a STATIC cluster and unknown fields.
func seeds(tb testing.TB, typeURL string) [][]byte {
	tb.Helper()
	var out [][]byte
	add := func(m proto.Message) {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if err != nil {
			tb.Fatal(err)
		}
		if !slices.ContainsFunc(out, func(o []byte) bool { return string(o) == string(b) }) {
			out = append(out, b)
		}
	}
	for _, s := range haloSnapshots(tb) {
		for _, name := range s.Names(typeURL) {
			add(s.Get(typeURL, name).Message)
		}
	}
	switch typeURL {
	case resource.ListenerType:
		add(minimalListener(tb, nil))
	case resource.ClusterType:
		add(edsCluster(nil))
		c := edsCluster(func(c *clusterv3.Cluster) { c.OutlierDetection = quietOutlier(true) })
		withUnknown(c.OutlierDetection)
		add(c)
		add(&clusterv3.Cluster{Name: "static", LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: "static",
			Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{lbEndpoint("192.0.2.1", 80), lbEndpoint("::1", 80)}}}}})
	case resource.EndpointType:
		e := lbEndpoint("192.0.2.7", 443)
		e.LoadBalancingWeight = wrapperspb.UInt32(1)
		add(&endpointv3.ClusterLoadAssignment{ClusterName: "e", Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{e}, Priority: 1}}})
	}
	slices.SortFunc(out, func(a, b []byte) int { return len(a) - len(b) })
	return out
}

// TestUpdateCorpus writes the seeds into testdata/fuzz when run with
// -update-corpus (go test -run TestUpdateCorpus -update-corpus).
func TestUpdateCorpus(t *testing.T) {
	if !*updateCorpus {
		t.Skip("run with -update-corpus to rewrite testdata/fuzz")
	}
	for target, typ := range map[string]string{
		"FuzzDecodeListener":  resource.ListenerType,
		"FuzzDecodeCluster":   resource.ClusterType,
		"FuzzDecodeEndpoints": resource.EndpointType,
	} {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, b := range seeds(t, typ) {
			sum := sha256.Sum256(b)
			body := "go test fuzz v1\n[]byte(" + strconv.Quote(string(b)) + ")\n"
			if err := os.WriteFile(filepath.Join(dir, "halo-"+hex.EncodeToString(sum[:8])), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func FuzzDecodeListener(f *testing.F) {
	fuzzDecode(f, resource.ListenerType, func(t *testing.T, v any) {
		l := v.(*config.Listener)
		check(t, l.Name != "", "empty name")
		checkAddr(t, l.Address)
		check(t, l.Cluster != "", "empty cluster")
		check(t, l.IdleTimeout >= 0, "negative idle timeout")
		check(t, l.MaxConnectAttempts >= 1, "max connect attempts %d", l.MaxConnectAttempts)
	})
}

func FuzzDecodeCluster(f *testing.F) {
	fuzzDecode(f, resource.ClusterType, func(t *testing.T, v any) {
		c := v.(*config.Cluster)
		check(t, c.Name != "", "empty name")
		if c.EDS {
			check(t, c.EDSServiceName != "" && c.StaticEndpoints == nil, "EDS cluster %q with service %q, static %v", c.Name, c.EDSServiceName, c.StaticEndpoints)
		} else {
			check(t, c.EDSServiceName == "" && c.StaticEndpoints != nil, "STATIC cluster with service %q, static %v", c.EDSServiceName, c.StaticEndpoints)
			checkEndpoints(t, c.StaticEndpoints)
		}
		check(t, c.LbPolicy >= config.LeastRequest && c.LbPolicy <= config.Random, "policy %v", c.LbPolicy)
		check(t, c.ConnectTimeout > 0, "connect timeout %v", c.ConnectTimeout)
		check(t, c.PanicThreshold >= 0 && c.PanicThreshold <= 100 && c.PanicThreshold == float64(int(c.PanicThreshold)), "panic threshold %v", c.PanicThreshold)
		if o := c.Outlier; o != nil {
			check(t, o.ConsecutiveFailures > 0, "consecutive failures %d", o.ConsecutiveFailures)
			check(t, o.EnforcingPercent > 0 && o.EnforcingPercent <= 100, "enforcing %d", o.EnforcingPercent)
			check(t, o.Interval > 0 && o.BaseEjectionTime > 0 && o.MaxEjectionTime >= o.BaseEjectionTime, "outlier times %+v", o)
			check(t, o.MaxEjectionPercent >= 0 && o.MaxEjectionPercent <= 100, "max ejection percent %d", o.MaxEjectionPercent)
		}
		if k := c.Keepalive; k != nil {
			check(t, k.Probes >= 0 && k.Probes <= 127 && k.Time >= 0 && k.Interval >= 0, "keepalive %+v", k)
		}
		check(t, c.MaxConnections > 0, "max connections %d", c.MaxConnections)
	})
}

func FuzzDecodeEndpoints(f *testing.F) {
	fuzzDecode(f, resource.EndpointType, func(t *testing.T, v any) {
		checkEndpoints(t, v.(*config.Endpoints))
	})
}

// fuzzDecode feeds bytes, as a resource of type typeURL, to Decode: it must
// not panic; it returns either an error and no value, or a value of the
// right type that satisfies invariants.
func fuzzDecode(f *testing.F, typeURL string, invariants func(*testing.T, any)) {
	for _, b := range seeds(f, typeURL) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		name, v, err := config.Decode(&anypb.Any{TypeUrl: typeURL, Value: b})
		if err != nil {
			if v != nil {
				t.Fatalf("error %v with a value %v", err, v)
			}
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		if name == "" {
			t.Fatal("accepted with an empty name")
		}
		invariants(t, v)
		// Translation is a function of the bytes.
		_, again, err := config.Decode(&anypb.Any{TypeUrl: typeURL, Value: b})
		if err != nil {
			t.Fatalf("second decode: %v", err)
		}
		if d := cmp.Diff(v, again, addrs); d != "" {
			t.Fatalf("second decode differs (-first +second):\n%s", d)
		}
	})
}

func checkEndpoints(t *testing.T, e *config.Endpoints) {
	t.Helper()
	check(t, e.Name != "", "empty name")
	seen := map[string]bool{}
	for _, ep := range e.Endpoints {
		checkAddr(t, ep.Address)
		check(t, !seen[ep.Address.String()], "duplicate %v", ep.Address)
		seen[ep.Address.String()] = true
		check(t, ep.Health >= config.Healthy && ep.Health <= config.Draining, "health %v", ep.Health)
	}
}

func checkAddr(t *testing.T, a netip.AddrPort) {
	t.Helper()
	check(t, a.IsValid() && a.Port() != 0 && a.Addr().Zone() == "", "address %v", a)
}

func check(t *testing.T, ok bool, format string, args ...any) {
	t.Helper()
	if !ok {
		t.Fatalf("accepted, but "+format, args...)
	}
}

// TestSeedsAccepted: the halo seeds are accepted (so the fuzzers start
// from the interesting side of the allowlist).
func TestSeedsAccepted(t *testing.T) {
	for _, typ := range xdscontract.Types {
		var ok int
		for _, b := range seeds(t, typ) {
			if _, _, err := config.Decode(&anypb.Any{TypeUrl: typ, Value: b}); err == nil {
				ok++
			}
		}
		if ok < 3 {
			t.Errorf("%s: only %d seeds accepted", typ, ok)
		}
	}
}

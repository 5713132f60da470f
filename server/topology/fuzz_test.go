package topology_test

import (
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/server/endpoints"
	"github.com/halolb/halo/server/topology"
)

// fuzzNodes is a small cluster every fuzzed cluster is evaluated against.
func fuzzNodes() []*halov1.Node {
	return []*halov1.Node{
		{Cluster: "prod", Name: "m0", Ip: "10.0.0.1", AccessIp: "2001:db8::1", Roles: []halov1.Role{halov1.Role_ROLE_CONTROL_PLANE, halov1.Role_ROLE_ETCD}},
		{Cluster: "prod", Name: "m1", Ip: "10.0.0.2", Ordinal: 1, Roles: []halov1.Role{halov1.Role_ROLE_CONTROL_PLANE}},
		{Cluster: "prod", Name: "w0", Ip: "10.0.1.1", Roles: []halov1.Role{halov1.Role_ROLE_WORKER}},
	}
}

// seedClusters are the fuzzers' seed corpus: one cluster per load-balancer
// mode and one with every field set.
func seedClusters() []*halov1.Cluster {
	return []*halov1.Cluster{
		{Name: "prod"},
		{Name: "prod", Apiserver: &halov1.ApiServer{UnmanagedLbUrl: "https://k8s.example.com:8443"}},
		{Name: "prod", LbDomainName: "my-apiserver-lb.example.com", Apiserver: &halov1.ApiServer{ExternalLb: &halov1.ExternalLB{Address: "203.0.113.10", Port: 8383}}},
		{Name: "prod", Apiserver: &halov1.ApiServer{LocalhostLb: proto.Bool(false), BindAddress: "::"}},
		{Name: "prod", DnsDomain: "corp.local", ServiceCidr: "fd85::/112",
			Apiserver: &halov1.ApiServer{Port: 7443, LocalLbPort: 16443, SupplementaryAddresses: []string{"*.example.com", "2001:db8::9"},
				ConnectTimeout: dur(time.Second), HealthCheck: &halov1.HealthCheck{Interval: dur(time.Second), Path: "/readyz"}},
			Etcd: &halov1.Etcd{AccessAddresses: []string{"https://[2001:db8::2]:2379"}, LocalLb: true, CertAltIps: []string{"2.3.7.9"}}},
	}
}

// checkEvaluates asserts what a valid cluster promises: its defaults are
// valid too, it is in one of the four modes, every node resolves to URLs that
// parse, and every IP SAN is an IP.
func checkEvaluates(t *testing.T, c *halov1.Cluster) {
	t.Helper()
	if err := topology.ValidateCluster(topology.WithDefaults(c)); err != nil {
		t.Fatalf("defaults of a valid cluster are invalid: %v\ncluster: %v", err, c)
	}
	if topology.Mode(c) == halov1.LoadBalancerMode_LOAD_BALANCER_MODE_UNSPECIFIED {
		t.Fatalf("valid cluster has no mode: %v", c)
	}
	for _, n := range fuzzNodes() {
		ep, err := endpoints.Resolve(c, fuzzNodes(), n.GetName())
		if err != nil {
			t.Fatalf("resolve %s: %v", n.GetName(), err)
		}
		for _, u := range append([]string{ep.GetApiserverUrl(), ep.GetExternalUrl(), ep.GetEtcdClientUrl()}, ep.GetEtcdUrls()...) {
			if u == "" {
				continue
			}
			p, err := url.Parse(u)
			if err != nil || p.Hostname() == "" || !strings.HasPrefix(p.Scheme, "http") {
				t.Fatalf("resolve %s: bad URL %q (%v)", n.GetName(), u, err)
			}
		}
	}
	sans := endpoints.CertificateSANs(c, fuzzNodes())
	for _, ip := range append(sans.GetApiserverIps(), sans.GetEtcdIps()...) {
		if _, err := netip.ParseAddr(ip); err != nil {
			t.Fatalf("IP SAN %q is not an IP", ip)
		}
	}
}

// checkInvalid asserts what a rejection promises: named fields and a message.
func checkInvalid(t *testing.T, err error, prefix string) {
	t.Helper()
	fields := violated(t, err)
	if len(fields) == 0 || err.Error() == "" {
		t.Fatalf("empty rejection: %v", err)
	}
	for _, f := range fields {
		if !strings.HasPrefix(f, prefix) {
			t.Fatalf("violation field %q outside %q", f, prefix)
		}
	}
}

// FuzzValidateClusterProto feeds arbitrary wire bytes to the validator.
func FuzzValidateClusterProto(f *testing.F) {
	for _, c := range seedClusters() {
		b, err := proto.Marshal(c)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c := &halov1.Cluster{}
		if proto.Unmarshal(b, c) != nil {
			return
		}
		if err := topology.ValidateCluster(c); err != nil {
			checkInvalid(t, err, "cluster")
			return
		}
		checkEvaluates(t, c)
	})
}

// FuzzValidateClusterFields mutates the string and port fields directly,
// which reaches the syntax checks faster than wire bytes do.
func FuzzValidateClusterFields(f *testing.F) {
	f.Add("prod", "", "", "", uint32(0), uint32(0), "", "", "", "")
	f.Add("prod", "my-apiserver-lb.example.com", "cluster.local", "10.233.0.0/18", uint32(6443), uint32(8383), "0.0.0.0", "203.0.113.10", "", "https://etcd.example.com:2379")
	f.Add("p", "lb.example.com", "corp", "fd00::/64", uint32(7443), uint32(0), "::", "", "https://[2001:db8::1]:443", "http://10.0.0.1:2379")
	f.Add("bad_name", "LB", "x..y", "10.0.0.1/8", uint32(70000), uint32(65536), "0.0.0.0%x", "::ffff:1.2.3.4", "http://x", "https://a:1,https://b:2")
	f.Fuzz(func(t *testing.T, name, lbDomain, dnsDomain, cidr string, port, lbPort uint32, bip, vip, unmanaged, etcdURL string) {
		c := &halov1.Cluster{Name: name, LbDomainName: lbDomain, DnsDomain: dnsDomain, ServiceCidr: cidr,
			Apiserver: &halov1.ApiServer{Port: port, BindAddress: bip, UnmanagedLbUrl: unmanaged,
				SupplementaryAddresses: []string{lbDomain, vip}}}
		if vip != "" {
			c.Apiserver.ExternalLb = &halov1.ExternalLB{Address: vip, Port: lbPort}
		}
		if etcdURL != "" {
			c.Etcd = &halov1.Etcd{AccessAddresses: []string{etcdURL}, ClientUrl: etcdURL}
		}
		if err := topology.ValidateCluster(c); err != nil {
			checkInvalid(t, err, "cluster")
			return
		}
		checkEvaluates(t, c)
	})
}

// FuzzValidateNode feeds arbitrary wire bytes to the node validators.
func FuzzValidateNode(f *testing.F) {
	for _, n := range fuzzNodes() {
		n.Labels = map[string]string{"zone": "a"}
		b, err := proto.Marshal(n)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	clusters := seedClusters()
	f.Fuzz(func(t *testing.T, b []byte) {
		n := &halov1.Node{}
		if proto.Unmarshal(b, n) != nil {
			return
		}
		if err := topology.ValidateNode(n); err != nil {
			checkInvalid(t, err, "node")
			return
		}
		for _, c := range clusters {
			if err := topology.ValidateNodeInCluster(c, n); err != nil {
				checkInvalid(t, err, "node")
				continue
			}
			// The store keeps names and unique values unique; so does this.
			nodes := slices.DeleteFunc(fuzzNodes(), func(o *halov1.Node) bool { return o.GetName() == n.GetName() })
			nodes = append(nodes, n)
			if _, err := endpoints.Resolve(c, nodes, n.GetName()); err != nil {
				t.Fatalf("a node accepted into %v does not resolve: %v", c, err)
			}
		}
	})
}

package topology_test

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/internal/pki"
	"github.com/halolb/halo/server/topology"
)

// violated returns the fields err names, failing the test if err is not a
// *topology.Error.
func violated(t *testing.T, err error) []string {
	t.Helper()
	var verr *topology.Error
	if !errors.As(err, &verr) {
		t.Fatalf("err = %v (%T), want *topology.Error", err, err)
	}
	var fields []string
	for _, v := range verr.Violations {
		if v.Description == "" {
			t.Errorf("violation of %s has no description", v.Field)
		}
		fields = append(fields, v.Field)
	}
	return fields
}

func dur(d time.Duration) *durationpb.Duration { return durationpb.New(d) }

// testCA returns a freshly made CA certificate in PEM.
func testCA(t *testing.T) string {
	t.Helper()
	ca, err := pki.NewCA("halo-test-ca", 0)
	if err != nil {
		t.Fatal(err)
	}
	return string(ca.CertPEM)
}

func TestValidateClusterGood(t *testing.T) {
	good := map[string]*halov1.Cluster{
		"minimal (local LB)": {Name: "prod"},
		"every field": {
			Name: "prod-1", LbDomainName: "my-apiserver-lb.example.com", DnsDomain: "corp.local", ServiceCidr: "10.96.0.0/12",
			Apiserver: &halov1.ApiServer{
				Port: 6443, BindAddress: "0.0.0.0", LocalhostLb: proto.Bool(false),
				ExternalLb:             &halov1.ExternalLB{Address: "203.0.113.10", Port: 8383},
				SupplementaryAddresses: []string{"k8s.example.com", "*.k8s.example.com", "198.51.100.7", "2001:db8::1"},
				LbPolicy:               halov1.LbPolicy_LB_POLICY_ROUND_ROBIN,
				ConnectTimeout:         dur(2 * time.Second), IdleTimeout: dur(time.Hour),
				HealthCheck: &halov1.HealthCheck{Interval: dur(2 * time.Second), Timeout: dur(time.Second), Rise: 3, Fall: 1,
					Path: "/readyz?verbose", CaCertPem: testCA(t), ClientCertFile: "/etc/halo/probe.crt", ClientKeyFile: "/etc/halo/probe.key",
					BearerTokenFile: "/etc/halo/token"},
				Rebalance: &halov1.Rebalance{Enabled: true, MaxFraction: 1, MinAge: dur(time.Minute), Interval: dur(time.Second)},
			},
			Etcd: &halov1.Etcd{
				AccessAddresses: []string{"https://etcd.example.com:2379", "http://[2001:db8::2]:2379", "https://10.0.0.1:2379"},
				ClientPort:      2379, ClientUrl: "https://etcd.example.com:2379",
				CertAltNames: []string{"etcd.example.com"}, CertAltIps: []string{"2.3.7.9", "2001:db8::9"},
				LocalLb: true, LocalLbPort: 12379,
				HealthCheck: &halov1.HealthCheck{Path: "/health"},
			},
		},
		"local + unmanaged":  {Name: "a", Apiserver: &halov1.ApiServer{UnmanagedLbUrl: "https://k8s.example.com:8443"}},
		"unmanaged, no port": {Name: "a", Apiserver: &halov1.ApiServer{UnmanagedLbUrl: "https://203.0.113.9"}},
		"managed, lp unset":  {Name: "a", Apiserver: &halov1.ApiServer{ExternalLb: &halov1.ExternalLB{Address: "2001:db8::10"}}},
		"neither":            {Name: "a", Apiserver: &halov1.ApiServer{LocalhostLb: proto.Bool(false)}},
		"IPv6 bind":          {Name: "a", Apiserver: &halov1.ApiServer{BindAddress: "::"}},
		"IPv6 services":      {Name: "a", ServiceCidr: "fd85:ee78:d8a6:8607::1:0/112"},
		"etcd local LB apart from the apiserver's": {Name: "a", Etcd: &halov1.Etcd{LocalLb: true}},
		"63-char name": {Name: strings.Repeat("a", 63)},
	}
	for name, c := range good {
		t.Run(name, func(t *testing.T) {
			if err := topology.ValidateCluster(c); err != nil {
				t.Fatalf("ValidateCluster: %v", err)
			}
		})
	}
}

func TestValidateClusterBad(t *testing.T) {
	api := func(a *halov1.ApiServer) *halov1.Cluster { return &halov1.Cluster{Name: "prod", Apiserver: a} }
	etcd := func(e *halov1.Etcd) *halov1.Cluster { return &halov1.Cluster{Name: "prod", Etcd: e} }
	hc := func(h *halov1.HealthCheck) *halov1.Cluster { return api(&halov1.ApiServer{HealthCheck: h}) }
	bad := []struct {
		name  string
		c     *halov1.Cluster
		field string
	}{
		{"nil", nil, "cluster"},
		{"no name", &halov1.Cluster{}, "cluster.name"},
		{"uppercase name", &halov1.Cluster{Name: "Prod"}, "cluster.name"},
		{"name with slash", &halov1.Cluster{Name: "a/b"}, "cluster.name"},
		{"name with dot", &halov1.Cluster{Name: "a.b"}, "cluster.name"},
		{"name too long", &halov1.Cluster{Name: strings.Repeat("a", 64)}, "cluster.name"},
		{"name ends in dash", &halov1.Cluster{Name: "prod-"}, "cluster.name"},
		{"lb domain with underscore", &halov1.Cluster{Name: "a", LbDomainName: "lb_api.example.com"}, "cluster.lb_domain_name"},
		{"lb domain trailing dot", &halov1.Cluster{Name: "a", LbDomainName: "lb.example.com."}, "cluster.lb_domain_name"},
		{"lb domain is an IP", &halov1.Cluster{Name: "a", LbDomainName: "10.0.0.1"}, "cluster.lb_domain_name"},
		{"dns domain empty label", &halov1.Cluster{Name: "a", DnsDomain: "cluster..local"}, "cluster.dns_domain"},
		{"service cidr not a cidr", &halov1.Cluster{Name: "a", ServiceCidr: "10.233.0.0"}, "cluster.service_cidr"},
		{"service cidr host bits", &halov1.Cluster{Name: "a", ServiceCidr: "10.233.0.5/18"}, "cluster.service_cidr"},
		{"service cidr /32", &halov1.Cluster{Name: "a", ServiceCidr: "10.0.0.1/32"}, "cluster.service_cidr"},
		{"port too big", api(&halov1.ApiServer{Port: 65536}), "cluster.apiserver.port"},
		{"port way too big", api(&halov1.ApiServer{Port: math.MaxUint32}), "cluster.apiserver.port"},
		{"bind address not an IP", api(&halov1.ApiServer{BindAddress: "localhost"}), "cluster.apiserver.bind_address"},
		{"bind address with zone", api(&halov1.ApiServer{BindAddress: "fe80::1%eth0"}), "cluster.apiserver.bind_address"},
		{"bind address 4in6", api(&halov1.ApiServer{BindAddress: "::ffff:10.0.0.1"}), "cluster.apiserver.bind_address"},
		{"local lb port", api(&halov1.ApiServer{LocalLbPort: 70000}), "cluster.apiserver.local_lb_port"},
		{"external lb without address", api(&halov1.ApiServer{ExternalLb: &halov1.ExternalLB{Port: 8383}}), "cluster.apiserver.external_lb.address"},
		{"external lb address bad", api(&halov1.ApiServer{ExternalLb: &halov1.ExternalLB{Address: "10.0.0.300"}}), "cluster.apiserver.external_lb.address"},
		{"external lb address unspecified", api(&halov1.ApiServer{ExternalLb: &halov1.ExternalLB{Address: "0.0.0.0"}}), "cluster.apiserver.external_lb.address"},
		{"external lb address multicast", api(&halov1.ApiServer{ExternalLb: &halov1.ExternalLB{Address: "224.0.0.1"}}), "cluster.apiserver.external_lb.address"},
		{"external lb port", api(&halov1.ApiServer{ExternalLb: &halov1.ExternalLB{Address: "10.0.0.1", Port: 100000}}), "cluster.apiserver.external_lb.port"},
		{"unmanaged url http", api(&halov1.ApiServer{UnmanagedLbUrl: "http://k8s.example.com"}), "cluster.apiserver.unmanaged_lb_url"},
		{"unmanaged url no scheme", api(&halov1.ApiServer{UnmanagedLbUrl: "k8s.example.com:8443"}), "cluster.apiserver.unmanaged_lb_url"},
		{"unmanaged url path", api(&halov1.ApiServer{UnmanagedLbUrl: "https://k8s.example.com/api"}), "cluster.apiserver.unmanaged_lb_url"},
		{"unmanaged url port 0", api(&halov1.ApiServer{UnmanagedLbUrl: "https://k8s.example.com:0"}), "cluster.apiserver.unmanaged_lb_url"},
		{"unmanaged url port big", api(&halov1.ApiServer{UnmanagedLbUrl: "https://k8s.example.com:65536"}), "cluster.apiserver.unmanaged_lb_url"},
		{"unmanaged url user", api(&halov1.ApiServer{UnmanagedLbUrl: "https://me@k8s.example.com"}), "cluster.apiserver.unmanaged_lb_url"},
		{"supplementary bad", api(&halov1.ApiServer{SupplementaryAddresses: []string{"ok.example.com", "not ok"}}), "cluster.apiserver.supplementary_addresses[1]"},
		{"supplementary empty", api(&halov1.ApiServer{SupplementaryAddresses: []string{""}}), "cluster.apiserver.supplementary_addresses[0]"},
		{"supplementary repeat", api(&halov1.ApiServer{SupplementaryAddresses: []string{"10.0.0.1", "10.0.0.1"}}), "cluster.apiserver.supplementary_addresses[1]"},
		{"lb policy unknown", api(&halov1.ApiServer{LbPolicy: 42}), "cluster.apiserver.lb_policy"},
		{"connect timeout negative", api(&halov1.ApiServer{ConnectTimeout: dur(-time.Second)}), "cluster.apiserver.connect_timeout"},
		{"connect timeout huge", api(&halov1.ApiServer{ConnectTimeout: dur(time.Hour)}), "cluster.apiserver.connect_timeout"},
		{"connect timeout malformed", api(&halov1.ApiServer{ConnectTimeout: &durationpb.Duration{Seconds: 1, Nanos: -5}}), "cluster.apiserver.connect_timeout"},
		{"idle timeout negative", api(&halov1.ApiServer{IdleTimeout: dur(-time.Minute)}), "cluster.apiserver.idle_timeout"},
		{"probe interval too long", hc(&halov1.HealthCheck{Interval: dur(2 * time.Hour)}), "cluster.apiserver.health_check.interval"},
		{"probe timeout over interval", hc(&halov1.HealthCheck{Interval: dur(time.Second), Timeout: dur(2 * time.Second)}), "cluster.apiserver.health_check.timeout"},
		{"probe timeout over default interval", hc(&halov1.HealthCheck{Timeout: dur(5 * time.Second)}), "cluster.apiserver.health_check.timeout"},
		{"rise too big", hc(&halov1.HealthCheck{Rise: 1000}), "cluster.apiserver.health_check.rise"},
		{"fall too big", hc(&halov1.HealthCheck{Fall: 1000}), "cluster.apiserver.health_check.fall"},
		{"path relative", hc(&halov1.HealthCheck{Path: "readyz"}), "cluster.apiserver.health_check.path"},
		{"path with space", hc(&halov1.HealthCheck{Path: "/ready z"}), "cluster.apiserver.health_check.path"},
		{"ca not pem", hc(&halov1.HealthCheck{CaCertPem: "hello"}), "cluster.apiserver.health_check.ca_cert_pem"},
		{"ca is a key", hc(&halov1.HealthCheck{CaCertPem: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}), "cluster.apiserver.health_check.ca_cert_pem"},
		{"ca garbage cert", hc(&halov1.HealthCheck{CaCertPem: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}), "cluster.apiserver.health_check.ca_cert_pem"},
		{"cert without key", hc(&halov1.HealthCheck{ClientCertFile: "/etc/halo/c.crt"}), "cluster.apiserver.health_check.client_key_file"},
		{"key without cert", hc(&halov1.HealthCheck{ClientKeyFile: "/etc/halo/c.key"}), "cluster.apiserver.health_check.client_cert_file"},
		{"relative cert path", hc(&halov1.HealthCheck{ClientCertFile: "c.crt", ClientKeyFile: "/c.key"}), "cluster.apiserver.health_check.client_cert_file"},
		{"unclean token path", hc(&halov1.HealthCheck{BearerTokenFile: "/etc/../token"}), "cluster.apiserver.health_check.bearer_token_file"},
		{"rebalance fraction", api(&halov1.ApiServer{Rebalance: &halov1.Rebalance{MaxFraction: 1.5}}), "cluster.apiserver.rebalance.max_fraction"},
		{"rebalance fraction NaN", api(&halov1.ApiServer{Rebalance: &halov1.Rebalance{MaxFraction: math.NaN()}}), "cluster.apiserver.rebalance.max_fraction"},
		{"rebalance interval negative", api(&halov1.ApiServer{Rebalance: &halov1.Rebalance{Interval: dur(-1)}}), "cluster.apiserver.rebalance.interval"},
		{"etcd access not a URL", etcd(&halov1.Etcd{AccessAddresses: []string{"etcd.example.com:2379"}}), "cluster.etcd.access_addresses[0]"},
		{"etcd access comma list", etcd(&halov1.Etcd{AccessAddresses: []string{"https://a:2379,https://b:2379"}}), "cluster.etcd.access_addresses[0]"},
		{"etcd access without port", etcd(&halov1.Etcd{AccessAddresses: []string{"https://etcd.example.com"}}), "cluster.etcd.access_addresses[0]"},
		{"etcd access unbracketed v6", etcd(&halov1.Etcd{AccessAddresses: []string{"https://2001:db8::1:2379"}}), "cluster.etcd.access_addresses[0]"},
		{"etcd access repeat", etcd(&halov1.Etcd{AccessAddresses: []string{"https://a.b:1", "https://a.b:1"}}), "cluster.etcd.access_addresses[1]"},
		{"etcd access ftp", etcd(&halov1.Etcd{AccessAddresses: []string{"ftp://a.b:1"}}), "cluster.etcd.access_addresses[0]"},
		{"etcd client port", etcd(&halov1.Etcd{ClientPort: 65536}), "cluster.etcd.client_port"},
		{"etcd client url", etcd(&halov1.Etcd{ClientUrl: "https://x:2379/path"}), "cluster.etcd.client_url"},
		{"etcd alt name", etcd(&halov1.Etcd{CertAltNames: []string{"ETCD"}}), "cluster.etcd.cert_alt_names[0]"},
		{"etcd alt ip", etcd(&halov1.Etcd{CertAltIps: []string{"etcd.example.com"}}), "cluster.etcd.cert_alt_ips[0]"},
		{"etcd local lb port", etcd(&halov1.Etcd{LocalLbPort: 99999}), "cluster.etcd.local_lb_port"},
		{"etcd health timeout", etcd(&halov1.Etcd{HealthCheck: &halov1.HealthCheck{Timeout: dur(-1)}}), "cluster.etcd.health_check.timeout"},
		{"etcd local lb on the apiserver local lb port", &halov1.Cluster{Name: "a", Apiserver: &halov1.ApiServer{LocalLbPort: 2379},
			Etcd: &halov1.Etcd{LocalLb: true}}, "cluster.etcd.local_lb_port"},
		// The seed's four modes, and nothing else.
		{"managed LB with local LB on", api(&halov1.ApiServer{LocalhostLb: proto.Bool(true), ExternalLb: &halov1.ExternalLB{Address: "10.0.0.1"}}), "cluster.apiserver.localhost_lb"},
		{"managed LB with unmanaged LB", api(&halov1.ApiServer{UnmanagedLbUrl: "https://x.example.com", ExternalLb: &halov1.ExternalLB{Address: "10.0.0.1"}}), "cluster.apiserver.unmanaged_lb_url"},
		{"unmanaged LB without local LB", api(&halov1.ApiServer{UnmanagedLbUrl: "https://x.example.com", LocalhostLb: proto.Bool(false)}), "cluster.apiserver.unmanaged_lb_url"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			fields := violated(t, topology.ValidateCluster(tc.c))
			if len(fields) != 1 || fields[0] != tc.field {
				t.Errorf("violations %q, want exactly %q", fields, tc.field)
			}
		})
	}
}

func TestValidateClusterReportsEveryField(t *testing.T) {
	c := &halov1.Cluster{Name: "Bad", ServiceCidr: "x", Apiserver: &halov1.ApiServer{Port: 70000}, Etcd: &halov1.Etcd{ClientPort: 70000}}
	fields := violated(t, topology.ValidateCluster(c))
	want := []string{"cluster.name", "cluster.service_cidr", "cluster.apiserver.port", "cluster.etcd.client_port"}
	if strings.Join(fields, ",") != strings.Join(want, ",") {
		t.Errorf("got %q, want %q", fields, want)
	}
	if msg := topology.ValidateCluster(c).Error(); !strings.Contains(msg, "cluster.apiserver.port: 70000 is out of range") {
		t.Errorf("message %q does not name the port", msg)
	}
}

func TestValidateClusterUnknownFields(t *testing.T) {
	c := &halov1.Cluster{Name: "prod", Apiserver: &halov1.ApiServer{}}
	// A field number this schema does not define, as a newer client would send.
	c.Apiserver.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 1))
	fields := violated(t, topology.ValidateCluster(c))
	if len(fields) != 1 || fields[0] != "cluster.apiserver" {
		t.Errorf("got %q", fields)
	}
}

func node(name string, roles ...halov1.Role) *halov1.Node {
	return &halov1.Node{Cluster: "prod", Name: name, Ip: "10.0.0.1", Roles: roles}
}

func TestValidateNode(t *testing.T) {
	good := []*halov1.Node{
		node("m1", halov1.Role_ROLE_CONTROL_PLANE),
		node("worker-1.example.com", halov1.Role_ROLE_WORKER, halov1.Role_ROLE_ETCD),
		{Cluster: "prod", Name: "m", Ip: "2001:db8::1", AccessIp: "192.0.2.1", Ordinal: 7, Roles: []halov1.Role{halov1.Role_ROLE_CONTROL_PLANE},
			ApiserverBindAddress: "2001:db8::1", Labels: map[string]string{"topology.kubernetes.io/zone": "a", "rack": "", "x_y.z": "V-1"}},
	}
	for _, n := range good {
		if err := topology.ValidateNode(n); err != nil {
			t.Errorf("%s: %v", n.GetName(), err)
		}
	}
	mod := func(f func(n *halov1.Node)) *halov1.Node {
		n := node("m1", halov1.Role_ROLE_CONTROL_PLANE)
		f(n)
		return n
	}
	bad := []struct {
		name  string
		n     *halov1.Node
		field string
	}{
		{"nil", nil, "node"},
		{"no cluster", mod(func(n *halov1.Node) { n.Cluster = "" }), "node.cluster"},
		{"bad cluster", mod(func(n *halov1.Node) { n.Cluster = "A" }), "node.cluster"},
		{"no name", mod(func(n *halov1.Node) { n.Name = "" }), "node.name"},
		{"bad name", mod(func(n *halov1.Node) { n.Name = "m_1" }), "node.name"},
		{"name with slash", mod(func(n *halov1.Node) { n.Name = "a/b" }), "node.name"},
		{"no roles", mod(func(n *halov1.Node) { n.Roles = nil }), "node.roles"},
		{"unspecified role", mod(func(n *halov1.Node) { n.Roles = []halov1.Role{0} }), "node.roles[0]"},
		{"unknown role", mod(func(n *halov1.Node) { n.Roles = append(n.Roles, 9) }), "node.roles[1]"},
		{"repeated role", mod(func(n *halov1.Node) { n.Roles = append(n.Roles, halov1.Role_ROLE_CONTROL_PLANE) }), "node.roles[1]"},
		{"no ip", mod(func(n *halov1.Node) { n.Ip = "" }), "node.ip"},
		{"bad ip", mod(func(n *halov1.Node) { n.Ip = "10.0.0" }), "node.ip"},
		{"unspecified ip", mod(func(n *halov1.Node) { n.Ip = "::" }), "node.ip"},
		{"ip with zone", mod(func(n *halov1.Node) { n.Ip = "fe80::1%eth0" }), "node.ip"},
		{"bad access ip", mod(func(n *halov1.Node) { n.AccessIp = "host.example.com" }), "node.access_ip"},
		{"negative ordinal", mod(func(n *halov1.Node) { n.Ordinal = -1 }), "node.ordinal"},
		{"bad bind address", mod(func(n *halov1.Node) { n.ApiserverBindAddress = "x" }), "node.apiserver_bind_address"},
		{"bind address on a worker", mod(func(n *halov1.Node) {
			n.Roles = []halov1.Role{halov1.Role_ROLE_WORKER}
			n.ApiserverBindAddress = "10.0.0.1"
		}), "node.apiserver_bind_address"},
		{"bad label key", mod(func(n *halov1.Node) { n.Labels = map[string]string{"-x": "y"} }), "node.labels"},
		{"bad label prefix", mod(func(n *halov1.Node) { n.Labels = map[string]string{"Example.com/x": "y"} }), "node.labels"},
		{"bad label value", mod(func(n *halov1.Node) { n.Labels = map[string]string{"x": "a b"} }), "node.labels[x]"},
		{"long label value", mod(func(n *halov1.Node) { n.Labels = map[string]string{"x": strings.Repeat("v", 64)} }), "node.labels[x]"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			fields := violated(t, topology.ValidateNode(tc.n))
			if len(fields) != 1 || fields[0] != tc.field {
				t.Errorf("violations %q, want exactly %q", fields, tc.field)
			}
		})
	}
}

func TestValidateNodeInCluster(t *testing.T) {
	managed := &halov1.Cluster{Name: "prod", Apiserver: &halov1.ApiServer{ExternalLb: &halov1.ExternalLB{Address: "10.0.0.100"}}}
	managedOtherPort := &halov1.Cluster{Name: "prod", Apiserver: &halov1.ApiServer{ExternalLb: &halov1.ExternalLB{Address: "10.0.0.100", Port: 8383}}}
	local := &halov1.Cluster{Name: "prod"}
	tests := []struct {
		name  string
		c     *halov1.Cluster
		n     *halov1.Node
		field string // "" for valid
	}{
		{"a master", local, &halov1.Node{Name: "m1", Ip: "10.0.0.3", Roles: []halov1.Role{halov1.Role_ROLE_CONTROL_PLANE}}, ""},
		{"load balancer without external LB", local, &halov1.Node{Name: "lb", Ip: "10.0.0.9", Roles: []halov1.Role{halov1.Role_ROLE_LOAD_BALANCER}}, "node.roles"},
		{"load balancer with external LB", managed, &halov1.Node{Name: "lb", Ip: "10.0.0.9", Roles: []halov1.Role{halov1.Role_ROLE_LOAD_BALANCER}}, ""},
		{"LB master, wildcard bind, lp = sp (the seed's collision)", managed, &halov1.Node{Name: "m1", Ip: "10.0.0.9", Ordinal: 1,
			Roles: []halov1.Role{halov1.Role_ROLE_CONTROL_PLANE, halov1.Role_ROLE_LOAD_BALANCER}}, "node.roles"},
		{"LB master binding the VIP itself, lp = sp", managed, &halov1.Node{Name: "m1", Ip: "10.0.0.9", Ordinal: 1, ApiserverBindAddress: "10.0.0.100",
			Roles: []halov1.Role{halov1.Role_ROLE_CONTROL_PLANE, halov1.Role_ROLE_LOAD_BALANCER}}, "node.roles"},
		{"LB master binding its own IP", managed, &halov1.Node{Name: "m1", Ip: "10.0.0.9", Ordinal: 1, ApiserverBindAddress: "10.0.0.9",
			Roles: []halov1.Role{halov1.Role_ROLE_CONTROL_PLANE, halov1.Role_ROLE_LOAD_BALANCER}}, ""},
		{"LB master, another VIP port", managedOtherPort, &halov1.Node{Name: "m1", Ip: "10.0.0.9", Ordinal: 1,
			Roles: []halov1.Role{halov1.Role_ROLE_CONTROL_PLANE, halov1.Role_ROLE_LOAD_BALANCER}}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.n.Cluster = "prod"
			if err := topology.ValidateNode(tc.n); err != nil {
				t.Fatalf("fixture invalid: %v", err)
			}
			err := topology.ValidateNodeInCluster(tc.c, tc.n)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("unexpected: %v", err)
				}
				return
			}
			fields := violated(t, err)
			if len(fields) != 1 || fields[0] != tc.field {
				t.Errorf("violations %q, want exactly %q", fields, tc.field)
			}
		})
	}
}

func TestUniqueValues(t *testing.T) {
	master := &halov1.Node{Name: "m", Ip: "2001:DB8:0::1", Ordinal: 3, Roles: []halov1.Role{halov1.Role_ROLE_ETCD, halov1.Role_ROLE_CONTROL_PLANE}}
	got := topology.UniqueValues(master)
	if len(got) != 2 || got[0].Kind != "ip" || got[0].Value != "2001:db8::1" || got[1].Kind != "master-ordinal" || got[1].Value != "3" {
		t.Fatalf("master: %+v", got)
	}
	// A worker's ordinal is free: only its ip is unique.
	worker := &halov1.Node{Name: "w", Ip: "10.0.0.1", Ordinal: 3, Roles: []halov1.Role{halov1.Role_ROLE_WORKER}}
	if got := topology.UniqueValues(worker); len(got) != 1 || got[0].Value != "10.0.0.1" {
		t.Fatalf("worker: %+v", got)
	}
	f := violated(t, got[1].Conflict("other-master"))
	if len(f) != 1 || f[0] != "node.ordinal" || !strings.Contains(got[1].Conflict("other-master").Error(), `"other-master"`) {
		t.Errorf("conflict: %v", got[1].Conflict("other-master"))
	}
}

func TestValidateClusterNodes(t *testing.T) {
	lbMaster := &halov1.Node{Cluster: "prod", Name: "m1", Ip: "10.0.0.9", Roles: []halov1.Role{halov1.Role_ROLE_CONTROL_PLANE, halov1.Role_ROLE_LOAD_BALANCER}}
	lb := &halov1.Node{Cluster: "prod", Name: "lb", Ip: "10.0.0.8", Roles: []halov1.Role{halov1.Role_ROLE_LOAD_BALANCER}}
	ok := &halov1.Cluster{Name: "prod", Apiserver: &halov1.ApiServer{ExternalLb: &halov1.ExternalLB{Address: "10.0.0.100", Port: 8383}}}
	if err := topology.ValidateClusterNodes(ok, []*halov1.Node{lbMaster, lb}); err != nil {
		t.Fatal(err)
	}
	// Moving the VIP onto the apiserver's port breaks the LB master.
	samePort := &halov1.Cluster{Name: "prod", Apiserver: &halov1.ApiServer{ExternalLb: &halov1.ExternalLB{Address: "10.0.0.100", Port: 6443}}}
	if f := violated(t, topology.ValidateClusterNodes(samePort, []*halov1.Node{lbMaster, lb})); len(f) != 1 || f[0] != "cluster.apiserver" {
		t.Errorf("got %q", f)
	}
	// Dropping the external LB leaves two load-balancer nodes with nothing to serve.
	none := &halov1.Cluster{Name: "prod"}
	if f := violated(t, topology.ValidateClusterNodes(none, []*halov1.Node{lbMaster, lb})); len(f) != 2 || f[0] != "cluster.apiserver.external_lb" {
		t.Errorf("got %q", f)
	}
}

func TestWithDefaults(t *testing.T) {
	d := topology.WithDefaults(&halov1.Cluster{Name: "prod", Revision: 9})
	a, e := d.GetApiserver(), d.GetEtcd()
	checks := []struct {
		what      string
		got, want any
	}{
		{"revision", d.GetRevision(), int64(0)},
		{"lb domain", d.GetLbDomainName(), "lb-apiserver.kubernetes.local"},
		{"dns domain", d.GetDnsDomain(), "cluster.local"},
		{"service cidr", d.GetServiceCidr(), "10.233.0.0/18"},
		{"sp", a.GetPort(), uint32(6443)},
		{"bip", a.GetBindAddress(), "0.0.0.0"},
		{"localhost lb", a.GetLocalhostLb(), true},
		{"nsp", a.GetLocalLbPort(), uint32(6443)},
		{"external lb", a.GetExternalLb() == nil, true},
		{"policy", a.GetLbPolicy(), halov1.LbPolicy_LB_POLICY_LEAST_REQUEST},
		{"connect timeout", a.GetConnectTimeout().AsDuration(), time.Second},
		{"idle timeout", a.GetIdleTimeout().AsDuration(), 3 * time.Hour},
		{"probe interval", a.GetHealthCheck().GetInterval().AsDuration(), time.Second},
		{"probe timeout", a.GetHealthCheck().GetTimeout().AsDuration(), 750 * time.Millisecond},
		{"rise", a.GetHealthCheck().GetRise(), uint32(2)},
		{"fall", a.GetHealthCheck().GetFall(), uint32(2)},
		{"apiserver path", a.GetHealthCheck().GetPath(), "/readyz"},
		{"rebalance off", a.GetRebalance().GetEnabled(), false},
		{"etcd port", e.GetClientPort(), uint32(2379)},
		{"etcd local lb port", e.GetLocalLbPort(), uint32(2379)},
		{"etcd path", e.GetHealthCheck().GetPath(), "/health"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
		}
	}
	// Follow: nsp and lp follow sp; the local LB is off with a managed LB.
	d = topology.WithDefaults(&halov1.Cluster{Name: "p", Apiserver: &halov1.ApiServer{Port: 7443, ExternalLb: &halov1.ExternalLB{Address: "10.0.0.1"}}})
	if d.GetApiserver().GetLocalLbPort() != 7443 || d.GetApiserver().GetExternalLb().GetPort() != 7443 || d.GetApiserver().GetLocalhostLb() {
		t.Errorf("follow: %v", d.GetApiserver())
	}
	// The input is not changed.
	in := &halov1.Cluster{Name: "p"}
	topology.WithDefaults(in)
	if in.GetApiserver() != nil {
		t.Error("WithDefaults changed its input")
	}
}

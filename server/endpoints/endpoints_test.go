package endpoints_test

import (
	"errors"
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/server/endpoints"
	"github.com/halolb/halo/server/topology"
)

const (
	cp   = halov1.Role_ROLE_CONTROL_PLANE
	etcd = halov1.Role_ROLE_ETCD
	wk   = halov1.Role_ROLE_WORKER
	lbr  = halov1.Role_ROLE_LOAD_BALANCER
)

func node(name, ip, aip string, ordinal int32, roles ...halov1.Role) *halov1.Node {
	return &halov1.Node{Cluster: "prod", Name: name, Ip: ip, AccessIp: aip, Ordinal: ordinal, Roles: roles}
}

// nodes is a cluster with three masters listed out of order (m[0] is
// master-a, the lowest ordinal, not the first listed), whose access IPs differ
// from their IPs, three etcd members on the masters, and two workers.
func nodes() []*halov1.Node {
	return []*halov1.Node{
		node("master-c", "10.0.0.3", "192.0.2.3", 2, cp, etcd),
		node("master-b", "10.0.0.2", "192.0.2.2", 1, cp, etcd),
		node("master-a", "10.0.0.1", "192.0.2.1", 0, cp, etcd),
		node("worker-1", "10.0.1.1", "", 0, wk),
		node("worker-2", "10.0.1.2", "", 0, wk),
	}
}

func cluster(mod func(a *halov1.ApiServer)) *halov1.Cluster {
	c := &halov1.Cluster{Name: "prod", Apiserver: &halov1.ApiServer{}}
	if mod != nil {
		mod(c.Apiserver)
	}
	return c
}

// The four rows of the seed's table, as configured in the tests below.
var (
	modeLocal          = func(a *halov1.ApiServer) {}
	modeLocalUnmanaged = func(a *halov1.ApiServer) {
		a.UnmanagedLbUrl = "https://k8s.example.com:8443"
	}
	modeManaged = func(a *halov1.ApiServer) {
		a.ExternalLb = &halov1.ExternalLB{Address: "203.0.113.10", Port: 8383}
	}
	modeNeither = func(a *halov1.ApiServer) { a.LocalhostLb = proto.Bool(false) }
)

// TestSeedTable has one case per cell of the seed's endpoint table:
// 4 load-balancer modes x {master, non-master, external}.
func TestSeedTable(t *testing.T) {
	type cell struct {
		name string
		mod  func(*halov1.ApiServer)
		mode halov1.LoadBalancerMode
		node string // whose apiserver_url is checked, or "" for the external column
		want string
	}
	cells := []cell{
		// local LB (default): https://bip:sp | https://lc:nsp | https://m[0].aip:sp
		{name: "local/master", mod: modeLocal, mode: halov1.LoadBalancerMode_LOAD_BALANCER_MODE_LOCAL, node: "master-b", want: "https://127.0.0.1:6443"},
		{name: "local/non-master", mod: modeLocal, mode: halov1.LoadBalancerMode_LOAD_BALANCER_MODE_LOCAL, node: "worker-1", want: "https://localhost:6443"},
		{name: "local/external", mod: modeLocal, mode: halov1.LoadBalancerMode_LOAD_BALANCER_MODE_LOCAL, want: "https://192.0.2.1:6443"},
		// local LB + unmanaged external LB: https://bip:sp | https://lc:nsp | https://ext
		{name: "local+unmanaged/master", mod: modeLocalUnmanaged, mode: halov1.LoadBalancerMode_LOAD_BALANCER_MODE_LOCAL_AND_UNMANAGED_EXTERNAL, node: "master-a", want: "https://127.0.0.1:6443"},
		{name: "local+unmanaged/non-master", mod: modeLocalUnmanaged, mode: halov1.LoadBalancerMode_LOAD_BALANCER_MODE_LOCAL_AND_UNMANAGED_EXTERNAL, node: "worker-2", want: "https://localhost:6443"},
		{name: "local+unmanaged/external", mod: modeLocalUnmanaged, mode: halov1.LoadBalancerMode_LOAD_BALANCER_MODE_LOCAL_AND_UNMANAGED_EXTERNAL, want: "https://k8s.example.com:8443"},
		// external LB (no internal LB): https://bip:sp | https://lb:lp | https://lb:lp
		{name: "managed/master", mod: modeManaged, mode: halov1.LoadBalancerMode_LOAD_BALANCER_MODE_MANAGED_EXTERNAL, node: "master-c", want: "https://127.0.0.1:6443"},
		{name: "managed/non-master", mod: modeManaged, mode: halov1.LoadBalancerMode_LOAD_BALANCER_MODE_MANAGED_EXTERNAL, node: "worker-1", want: "https://lb-apiserver.kubernetes.local:8383"},
		{name: "managed/external", mod: modeManaged, mode: halov1.LoadBalancerMode_LOAD_BALANCER_MODE_MANAGED_EXTERNAL, want: "https://lb-apiserver.kubernetes.local:8383"},
		// neither: https://bip:sp | https://m[0].aip:sp | https://m[0].aip:sp
		{name: "neither/master", mod: modeNeither, mode: halov1.LoadBalancerMode_LOAD_BALANCER_MODE_NONE, node: "master-a", want: "https://127.0.0.1:6443"},
		{name: "neither/non-master", mod: modeNeither, mode: halov1.LoadBalancerMode_LOAD_BALANCER_MODE_NONE, node: "worker-1", want: "https://192.0.2.1:6443"},
		{name: "neither/external", mod: modeNeither, mode: halov1.LoadBalancerMode_LOAD_BALANCER_MODE_NONE, want: "https://192.0.2.1:6443"},
	}
	for _, tc := range cells {
		t.Run(tc.name, func(t *testing.T) {
			c := cluster(tc.mod)
			if err := topology.ValidateCluster(c); err != nil {
				t.Fatalf("fixture invalid: %v", err)
			}
			who := tc.node
			if who == "" {
				who = "worker-1"
			}
			got, err := endpoints.Resolve(c, nodes(), who)
			if err != nil {
				t.Fatal(err)
			}
			if got.GetMode() != tc.mode {
				t.Errorf("mode = %v, want %v", got.GetMode(), tc.mode)
			}
			value := got.GetApiserverUrl()
			if tc.node == "" {
				value = got.GetExternalUrl()
			}
			if value != tc.want {
				t.Errorf("got %q, want %q", value, tc.want)
			}
		})
	}
}

// TestSeedTableCustomPorts checks the variables behind each cell: sp, nsp,
// lp and the LB domain, with nsp and lp set apart from sp.
func TestSeedTableCustomPorts(t *testing.T) {
	tests := []struct {
		name                     string
		c                        *halov1.Cluster
		master, worker, external string
	}{
		{
			name:   "local LB with sp and nsp",
			c:      &halov1.Cluster{Name: "prod", Apiserver: &halov1.ApiServer{Port: 7443, LocalLbPort: 16443}},
			master: "https://127.0.0.1:7443", worker: "https://localhost:16443", external: "https://192.0.2.1:7443",
		},
		{
			name:   "local LB, nsp follows sp",
			c:      &halov1.Cluster{Name: "prod", Apiserver: &halov1.ApiServer{Port: 7443}},
			master: "https://127.0.0.1:7443", worker: "https://localhost:7443", external: "https://192.0.2.1:7443",
		},
		{
			name: "managed LB with domain and lp (the seed's example)",
			c: &halov1.Cluster{Name: "prod", LbDomainName: "my-apiserver-lb.example.com", Apiserver: &halov1.ApiServer{
				ExternalLb: &halov1.ExternalLB{Address: "203.0.113.10", Port: 8383}}},
			master: "https://127.0.0.1:6443", worker: "https://my-apiserver-lb.example.com:8383", external: "https://my-apiserver-lb.example.com:8383",
		},
		{
			name: "managed LB, lp follows sp",
			c: &halov1.Cluster{Name: "prod", Apiserver: &halov1.ApiServer{Port: 7443, LocalhostLb: proto.Bool(false),
				ExternalLb: &halov1.ExternalLB{Address: "203.0.113.10"}}},
			master: "https://127.0.0.1:7443", worker: "https://lb-apiserver.kubernetes.local:7443", external: "https://lb-apiserver.kubernetes.local:7443",
		},
		{
			name:   "neither, custom sp",
			c:      &halov1.Cluster{Name: "prod", Apiserver: &halov1.ApiServer{Port: 7443, LocalLbPort: 9999, LocalhostLb: proto.Bool(false)}},
			master: "https://127.0.0.1:7443", worker: "https://192.0.2.1:7443", external: "https://192.0.2.1:7443",
		},
		{
			name:   "custom bind address",
			c:      &halov1.Cluster{Name: "prod", Apiserver: &halov1.ApiServer{BindAddress: "10.0.0.250"}},
			master: "https://10.0.0.250:6443", worker: "https://localhost:6443", external: "https://192.0.2.1:6443",
		},
		{
			name:   "IPv6 wildcard bind address",
			c:      &halov1.Cluster{Name: "prod", Apiserver: &halov1.ApiServer{BindAddress: "::"}},
			master: "https://[::1]:6443", worker: "https://localhost:6443", external: "https://192.0.2.1:6443",
		},
		{
			name:   "IPv6 bind address, non-canonical",
			c:      &halov1.Cluster{Name: "prod", Apiserver: &halov1.ApiServer{BindAddress: "2001:DB8:0::7"}},
			master: "https://[2001:db8::7]:6443", worker: "https://localhost:6443", external: "https://192.0.2.1:6443",
		},
		{
			name:   "IPv6 VIP",
			c:      &halov1.Cluster{Name: "prod", Apiserver: &halov1.ApiServer{ExternalLb: &halov1.ExternalLB{Address: "2001:db8::10"}}},
			master: "https://127.0.0.1:6443", worker: "https://lb-apiserver.kubernetes.local:6443", external: "https://lb-apiserver.kubernetes.local:6443",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := topology.ValidateCluster(tc.c); err != nil {
				t.Fatalf("fixture invalid: %v", err)
			}
			m, err := endpoints.Resolve(tc.c, nodes(), "master-a")
			if err != nil {
				t.Fatal(err)
			}
			w, err := endpoints.Resolve(tc.c, nodes(), "worker-1")
			if err != nil {
				t.Fatal(err)
			}
			if m.GetApiserverUrl() != tc.master || w.GetApiserverUrl() != tc.worker || w.GetExternalUrl() != tc.external || m.GetExternalUrl() != tc.external {
				t.Errorf("master %q worker %q external %q/%q; want %q %q %q",
					m.GetApiserverUrl(), w.GetApiserverUrl(), w.GetExternalUrl(), m.GetExternalUrl(), tc.master, tc.worker, tc.external)
			}
			if !m.GetControlPlane() || w.GetControlPlane() {
				t.Errorf("control_plane: master %v worker %v", m.GetControlPlane(), w.GetControlPlane())
			}
		})
	}
}

func TestFirstMaster(t *testing.T) {
	c := cluster(modeNeither)
	t.Run("lowest ordinal, not list order or name", func(t *testing.T) {
		ns := []*halov1.Node{
			node("a-master", "10.0.0.1", "", 5, cp),
			node("z-master", "10.0.0.9", "", 1, cp),
			node("worker", "10.0.1.1", "", 0, wk),
		}
		got, err := endpoints.Resolve(c, ns, "worker")
		if err != nil {
			t.Fatal(err)
		}
		if want := "https://10.0.0.9:6443"; got.GetApiserverUrl() != want {
			t.Errorf("got %q, want %q", got.GetApiserverUrl(), want)
		}
	})
	t.Run("access_ip follows ip", func(t *testing.T) {
		ns := []*halov1.Node{node("m", "10.0.0.1", "", 0, cp), node("w", "10.0.1.1", "", 0, wk)}
		got, err := endpoints.Resolve(c, ns, "w")
		if err != nil {
			t.Fatal(err)
		}
		if want := "https://10.0.0.1:6443"; got.GetApiserverUrl() != want {
			t.Errorf("got %q, want %q", got.GetApiserverUrl(), want)
		}
	})
	t.Run("IPv6 access ip is bracketed", func(t *testing.T) {
		ns := []*halov1.Node{node("m", "fd00::1", "2001:db8:0:0::1", 0, cp), node("w", "fd00::2", "", 0, wk)}
		got, err := endpoints.Resolve(c, ns, "w")
		if err != nil {
			t.Fatal(err)
		}
		if want := "https://[2001:db8::1]:6443"; got.GetApiserverUrl() != want || got.GetExternalUrl() != want {
			t.Errorf("got %q / %q, want %q", got.GetApiserverUrl(), got.GetExternalUrl(), want)
		}
	})
	t.Run("per-master bind address override", func(t *testing.T) {
		m := node("m", "10.0.0.1", "", 0, cp)
		m.ApiserverBindAddress = "10.0.0.1"
		ns := []*halov1.Node{m, node("m2", "10.0.0.2", "", 1, cp)}
		got, err := endpoints.Resolve(cluster(modeLocal), ns, "m")
		if err != nil {
			t.Fatal(err)
		}
		if want := "https://10.0.0.1:6443"; got.GetApiserverUrl() != want {
			t.Errorf("got %q, want %q", got.GetApiserverUrl(), want)
		}
		got2, _ := endpoints.Resolve(cluster(modeLocal), ns, "m2")
		if want := "https://127.0.0.1:6443"; got2.GetApiserverUrl() != want {
			t.Errorf("other master: got %q, want %q", got2.GetApiserverUrl(), want)
		}
	})
}

func TestNoMasters(t *testing.T) {
	ns := []*halov1.Node{node("w", "10.0.1.1", "", 0, wk)}
	t.Run("local LB still resolves, external is empty with a warning", func(t *testing.T) {
		got, err := endpoints.Resolve(cluster(modeLocal), ns, "w")
		if err != nil {
			t.Fatal(err)
		}
		if got.GetApiserverUrl() != "https://localhost:6443" || got.GetExternalUrl() != "" || len(got.GetWarnings()) == 0 {
			t.Errorf("got %v", got)
		}
	})
	t.Run("managed LB does not need a master", func(t *testing.T) {
		got, err := endpoints.Resolve(cluster(modeManaged), ns, "w")
		if err != nil {
			t.Fatal(err)
		}
		if got.GetApiserverUrl() != "https://lb-apiserver.kubernetes.local:8383" {
			t.Errorf("got %v", got)
		}
	})
	t.Run("neither: a non-master cannot be resolved", func(t *testing.T) {
		_, err := endpoints.Resolve(cluster(modeNeither), ns, "w")
		if !errors.Is(err, endpoints.ErrNoControlPlane) {
			t.Fatalf("err = %v, want ErrNoControlPlane", err)
		}
	})
}

func TestUnknownNode(t *testing.T) {
	_, err := endpoints.Resolve(cluster(nil), nodes(), "nope")
	if !errors.Is(err, endpoints.ErrNodeNotFound) {
		t.Fatalf("err = %v, want ErrNodeNotFound", err)
	}
}

func TestHostsEntries(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    *halov1.Cluster
		want []string
	}{
		{"local LB: none", cluster(modeLocal), nil},
		{"unmanaged LB: none", cluster(modeLocalUnmanaged), nil},
		{"neither: none", cluster(modeNeither), nil},
		{"managed, default domain", cluster(modeManaged), []string{"203.0.113.10 lb-apiserver.kubernetes.local"}},
		{"managed, own domain", &halov1.Cluster{Name: "prod", LbDomainName: "my-apiserver-lb.example.com",
			Apiserver: &halov1.ApiServer{ExternalLb: &halov1.ExternalLB{Address: "2001:db8::a"}}},
			[]string{"2001:db8::a my-apiserver-lb.example.com"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, n := range []string{"master-a", "worker-1"} {
				got, err := endpoints.Resolve(tc.c, nodes(), n)
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(got.GetHostsEntries(), tc.want) {
					t.Errorf("%s: hosts = %q, want %q", n, got.GetHostsEntries(), tc.want)
				}
			}
		})
	}
}

func TestEtcdURLs(t *testing.T) {
	members := []string{"https://192.0.2.1:2379", "https://192.0.2.2:2379", "https://192.0.2.3:2379"}
	for _, tc := range []struct {
		name       string
		etcd       *halov1.Etcd
		node       string
		wantURLs   []string
		wantClient string
	}{
		{name: "default: every member's https://aip:2379, in ordinal order", node: "worker-1", wantURLs: members},
		{name: "a member gets its own client url", node: "master-b", wantURLs: members, wantClient: "https://192.0.2.2:2379"},
		{name: "client port", etcd: &halov1.Etcd{ClientPort: 4001}, node: "master-a",
			wantURLs: []string{"https://192.0.2.1:4001", "https://192.0.2.2:4001", "https://192.0.2.3:4001"}, wantClient: "https://192.0.2.1:4001"},
		{name: "the seed's VIP with FQDN", etcd: &halov1.Etcd{AccessAddresses: []string{"https://etcd.example.com:2379"}, ClientUrl: "https://etcd.example.com:2379"},
			node: "master-c", wantURLs: []string{"https://etcd.example.com:2379"}, wantClient: "https://etcd.example.com:2379"},
		{name: "the seed's VIP without FQDN", etcd: &halov1.Etcd{AccessAddresses: []string{"https://2.3.7.9:2379"}, ClientUrl: "https://2.3.7.9:2379"},
			node: "worker-2", wantURLs: []string{"https://2.3.7.9:2379"}},
		{name: "local etcd LB on a non-member", etcd: &halov1.Etcd{LocalLb: true, LocalLbPort: 12379}, node: "worker-1",
			wantURLs: []string{"https://127.0.0.1:12379"}},
		{name: "local etcd LB port follows the client port", etcd: &halov1.Etcd{LocalLb: true}, node: "worker-1",
			wantURLs: []string{"https://127.0.0.1:2379"}},
		{name: "local etcd LB: members use the members", etcd: &halov1.Etcd{LocalLb: true}, node: "master-a",
			wantURLs: members, wantClient: "https://192.0.2.1:2379"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &halov1.Cluster{Name: "prod", Etcd: tc.etcd}
			if tc.etcd.GetLocalLb() {
				c.Apiserver = &halov1.ApiServer{LocalLbPort: 16443}
			}
			if err := topology.ValidateCluster(c); err != nil {
				t.Fatalf("fixture invalid: %v", err)
			}
			got, err := endpoints.Resolve(c, nodes(), tc.node)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got.GetEtcdUrls(), tc.wantURLs) || got.GetEtcdClientUrl() != tc.wantClient {
				t.Errorf("etcd urls %q client %q; want %q %q", got.GetEtcdUrls(), got.GetEtcdClientUrl(), tc.wantURLs, tc.wantClient)
			}
		})
	}
	t.Run("no etcd members", func(t *testing.T) {
		ns := []*halov1.Node{node("m", "10.0.0.1", "", 0, cp)}
		got, err := endpoints.Resolve(cluster(nil), ns, "m")
		if err != nil {
			t.Fatal(err)
		}
		if len(got.GetEtcdUrls()) != 0 || len(got.GetWarnings()) == 0 {
			t.Errorf("got %v", got)
		}
	})
}

func TestCertificateSANs(t *testing.T) {
	c := &halov1.Cluster{
		Name: "prod", LbDomainName: "my-apiserver-lb.example.com", DnsDomain: "corp.local", ServiceCidr: "10.96.0.0/12",
		Apiserver: &halov1.ApiServer{
			ExternalLb:             &halov1.ExternalLB{Address: "203.0.113.10", Port: 8383},
			SupplementaryAddresses: []string{"k8s.example.com", "198.51.100.7", "192.0.2.1"},
		},
		Etcd: &halov1.Etcd{
			AccessAddresses: []string{"https://etcd.example.com:2379"},
			CertAltNames:    []string{"etcd.example.com", "etcd-vip.example.com"},
			CertAltIps:      []string{"2.3.7.9"},
		},
	}
	if err := topology.ValidateCluster(c); err != nil {
		t.Fatal(err)
	}
	ns := nodes()
	ns = append(ns, node("etcd-4", "10.0.2.4", "", 3, etcd))
	ns[1].ApiserverBindAddress = "10.0.0.2" // master-b binds its own IP
	got := endpoints.CertificateSANs(c, ns)

	wantAPIDNS := []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.corp.local",
		"localhost", "master-a", "master-b", "master-c", "my-apiserver-lb.example.com", "k8s.example.com"}
	wantAPIIPs := []string{"10.96.0.1", "127.0.0.1", "::1", "203.0.113.10", "198.51.100.7", "192.0.2.1", "192.0.2.2", "192.0.2.3",
		"10.0.0.1", "10.0.0.2", "10.0.0.3"}
	wantEtcdDNS := []string{"localhost", "master-a", "master-b", "master-c", "etcd-4", "my-apiserver-lb.example.com",
		"etcd.kube-system.svc.corp.local", "etcd.kube-system.svc", "etcd.kube-system", "etcd", "etcd.example.com", "etcd-vip.example.com"}
	wantEtcdIPs := []string{"192.0.2.1", "10.0.0.1", "192.0.2.2", "10.0.0.2", "192.0.2.3", "10.0.0.3", "10.0.2.4", "2.3.7.9", "127.0.0.1", "::1"}
	check := func(what string, got, want []string) {
		t.Helper()
		if !slices.Equal(got, want) {
			t.Errorf("%s:\n got  %q\n want %q", what, got, want)
		}
	}
	check("apiserver DNS", got.GetApiserverDnsNames(), wantAPIDNS)
	check("apiserver IPs", got.GetApiserverIps(), wantAPIIPs)
	check("etcd DNS", got.GetEtcdDnsNames(), wantEtcdDNS)
	check("etcd IPs", got.GetEtcdIps(), wantEtcdIPs)

	t.Run("defaults", func(t *testing.T) {
		got := endpoints.CertificateSANs(&halov1.Cluster{Name: "prod"}, nil)
		check("apiserver DNS", got.GetApiserverDnsNames(), []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local", "localhost", "lb-apiserver.kubernetes.local"})
		check("apiserver IPs", got.GetApiserverIps(), []string{"10.233.0.1", "127.0.0.1", "::1"})
		check("etcd DNS", got.GetEtcdDnsNames(), []string{"localhost", "lb-apiserver.kubernetes.local",
			"etcd.kube-system.svc.cluster.local", "etcd.kube-system.svc", "etcd.kube-system", "etcd"})
		check("etcd IPs", got.GetEtcdIps(), []string{"127.0.0.1", "::1"})
	})
	t.Run("IPv6 service network", func(t *testing.T) {
		got := endpoints.CertificateSANs(&halov1.Cluster{Name: "prod", ServiceCidr: "fd85:ee78:d8a6:8607::1:0/112"}, nil)
		if got.GetApiserverIps()[0] != "fd85:ee78:d8a6:8607::1:1" {
			t.Errorf("service IP = %q", got.GetApiserverIps()[0])
		}
	})
}

package config_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/halolb/halo/agent/config"
)

func TestSetValidate(t *testing.T) {
	ep := func(name string, addrs ...string) *config.Endpoints {
		e := &config.Endpoints{Name: name}
		for _, a := range addrs {
			e.Endpoints = append(e.Endpoints, config.Endpoint{Address: netip.MustParseAddrPort(a)})
		}
		return e
	}
	listener := func(name, addr, cluster string) *config.Listener {
		return &config.Listener{Name: name, Address: netip.MustParseAddrPort(addr), Cluster: cluster, MaxConnectAttempts: 1}
	}
	// good is a set with an EDS cluster (service name differs from the
	// cluster's), a STATIC cluster, and a warming EDS cluster no listener
	// uses.
	good := func() *config.Set {
		return &config.Set{
			Listeners: map[string]*config.Listener{
				"api":  listener("api", "127.0.0.1:6443", "kube-apiserver"),
				"etcd": listener("etcd", "127.0.0.1:2379", "etcd"),
			},
			Clusters: map[string]*config.Cluster{
				"kube-apiserver": {Name: "kube-apiserver", EDS: true, EDSServiceName: "apiservers"},
				"etcd":           {Name: "etcd", StaticEndpoints: ep("etcd", "192.0.2.1:2379")},
				"warming":        {Name: "warming", EDS: true, EDSServiceName: "warming"},
			},
			Endpoints: map[string]*config.Endpoints{"apiservers": ep("apiservers", "192.0.2.1:6443")},
		}
	}
	for _, tc := range []struct {
		name string
		edit func(*config.Set)
		want []string // substrings of the error; none: valid
	}{
		{"valid, warming cluster OK", func(*config.Set) {}, nil},
		{"empty set", func(s *config.Set) { *s = config.Set{} }, nil},
		{"missing cluster", func(s *config.Set) { delete(s.Clusters, "kube-apiserver") },
			[]string{`listener "api": cluster "kube-apiserver" does not exist`}},
		{"missing EDS resource", func(s *config.Set) { delete(s.Endpoints, "apiservers") },
			[]string{`listener "api": cluster "kube-apiserver" has no endpoints (EDS resource "apiservers" missing)`}},
		{"empty EDS resource", func(s *config.Set) { s.Endpoints["apiservers"] = ep("apiservers") },
			[]string{`listener "api": cluster "kube-apiserver" has no endpoints (EDS resource "apiservers" is empty)`}},
		{"EDS resource under the cluster's name, not the service name", func(s *config.Set) {
			s.Endpoints = map[string]*config.Endpoints{"kube-apiserver": ep("kube-apiserver", "192.0.2.1:6443")}
		}, []string{`cluster "kube-apiserver" has no endpoints (EDS resource "apiservers" missing)`}},
		{"empty static cluster", func(s *config.Set) { s.Clusters["etcd"].StaticEndpoints = ep("etcd") },
			[]string{`listener "etcd": cluster "etcd" has no endpoints`}},
		{"static cluster without endpoints", func(s *config.Set) { s.Clusters["etcd"].StaticEndpoints = nil },
			[]string{`listener "etcd": cluster "etcd" has no endpoints`}},
		{"same address", func(s *config.Set) { s.Listeners["etcd"].Address = netip.MustParseAddrPort("127.0.0.1:6443") },
			[]string{`listener "api" on 127.0.0.1:6443 and listener "etcd" on 127.0.0.1:6443: overlapping addresses`}},
		{"v4 wildcard", func(s *config.Set) { s.Listeners["etcd"].Address = netip.MustParseAddrPort("0.0.0.0:6443") },
			[]string{`listener "api" on 127.0.0.1:6443 and listener "etcd" on 0.0.0.0:6443`}},
		{"v6 wildcard overlaps v4", func(s *config.Set) { s.Listeners["etcd"].Address = netip.MustParseAddrPort("[::]:6443") },
			[]string{`listener "etcd" on [::]:6443`}},
		{"v4-mapped is the same address", func(s *config.Set) { s.Listeners["etcd"].Address = netip.MustParseAddrPort("[::ffff:127.0.0.1]:6443") },
			[]string{"overlapping"}},
		{"same port, other address", func(s *config.Set) { s.Listeners["etcd"].Address = netip.MustParseAddrPort("127.0.0.2:6443") }, nil},
		{"wildcard, other port", func(s *config.Set) { s.Listeners["etcd"].Address = netip.MustParseAddrPort("[::]:2379") }, nil},
		{"listener key", func(s *config.Set) { s.Listeners["x"] = s.Listeners["api"]; delete(s.Listeners, "api") },
			[]string{`listener "api": keyed as "x"`}},
		{"cluster key", func(s *config.Set) { s.Clusters["x"] = s.Clusters["warming"]; delete(s.Clusters, "warming") },
			[]string{`cluster "warming": keyed as "x"`}},
		{"endpoints key", func(s *config.Set) { s.Endpoints["x"] = ep("y", "192.0.2.1:1") },
			[]string{`endpoints "y": keyed as "x"`}},
		{"nil values", func(s *config.Set) { s.Listeners["n"] = nil; s.Clusters["n"] = nil },
			[]string{`listener "n": nil`, `cluster "n": nil`}},
		{"several problems, all reported in order", func(s *config.Set) {
			delete(s.Clusters, "kube-apiserver")
			s.Clusters["etcd"].StaticEndpoints = nil
		}, []string{`listener "api": cluster "kube-apiserver" does not exist`, `listener "etcd": cluster "etcd" has no endpoints`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := good()
			tc.edit(s)
			err := s.Validate()
			if len(tc.want) == 0 {
				if err != nil {
					t.Errorf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate accepted it, want %q", tc.want)
			}
			at := 0
			for _, w := range tc.want {
				i := strings.Index(err.Error()[at:], w)
				if i < 0 {
					t.Fatalf("error %q lacks %q (in order)", err, w)
				}
				at += i + len(w)
			}
		})
	}
}

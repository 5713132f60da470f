package endpoints

import (
	"net/netip"
	"net/url"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/server/topology"
)

// CertificateSANs returns the SANs the apiserver and etcd certificates of
// cluster c need, in Kubespray's order, without repeats.
//
// Apiserver (Kubespray's kubeadm certSANs): kubernetes,
// kubernetes.default, kubernetes.default.svc,
// kubernetes.default.svc.<dns_domain>, the kubernetes service IP, localhost,
// 127.0.0.1, ::1, every master's name, the LB domain, the LB address,
// supplementary_addresses_in_ssl_keys, every master's access_ip and ip; halo
// adds a master's bind address when it is not a wildcard, since masters dial
// https://bip:sp.
//
// etcd (Kubespray's etcd openssl.conf): localhost, every member's name, the
// LB domain, the default etcd_cert_alt_names and the configured ones, every
// member's access_ip and ip, etcd_cert_alt_ips, 127.0.0.1; halo adds ::1 and
// the hosts of etcd_access_addresses and etcd_client_url, which clients
// verify.
func CertificateSANs(c *halov1.Cluster, nodes []*halov1.Node) *halov1.CertificateSANs {
	d := topology.WithDefaults(c)
	masters := topology.Masters(nodes)
	members := topology.EtcdMembers(nodes)

	var api sanList
	api.add("kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc."+d.GetDnsDomain())
	if p, err := netip.ParsePrefix(d.GetServiceCidr()); err == nil {
		api.add(p.Addr().Next().String())
	}
	api.add("localhost", "127.0.0.1", "::1")
	for _, m := range masters {
		api.add(m.GetName())
	}
	api.add(d.GetLbDomainName())
	if lb := d.GetApiserver().GetExternalLb(); lb != nil {
		api.add(lb.GetAddress())
	}
	api.add(d.GetApiserver().GetSupplementaryAddresses()...)
	for _, m := range masters {
		api.add(topology.AccessIP(m))
	}
	for _, m := range masters {
		api.add(m.GetIp())
	}
	for _, m := range masters {
		if a, err := netip.ParseAddr(topology.BindAddress(c, m)); err == nil && !a.IsUnspecified() {
			api.add(a.String())
		}
	}

	var etcd sanList
	etcd.add("localhost")
	for _, m := range members {
		etcd.add(m.GetName())
	}
	etcd.add(d.GetLbDomainName())
	etcd.add(topology.DefaultEtcdCertAltNames(d.GetDnsDomain())...)
	etcd.add(d.GetEtcd().GetCertAltNames()...)
	for _, m := range members {
		etcd.add(topology.AccessIP(m), m.GetIp())
	}
	etcd.add(d.GetEtcd().GetCertAltIps()...)
	etcd.add("127.0.0.1", "::1")
	for _, s := range append(d.GetEtcd().GetAccessAddresses(), d.GetEtcd().GetClientUrl()) {
		if u, err := url.Parse(s); err == nil && u.Hostname() != "" {
			etcd.add(u.Hostname())
		}
	}

	return &halov1.CertificateSANs{
		ApiserverDnsNames: api.dns,
		ApiserverIps:      api.ips,
		EtcdDnsNames:      etcd.dns,
		EtcdIps:           etcd.ips,
	}
}

// sanList collects SANs in order, IPs (canonical) apart from DNS names,
// without repeats.
type sanList struct {
	dns, ips []string
	seen     map[string]bool
}

func (l *sanList) add(names ...string) {
	if l.seen == nil {
		l.seen = map[string]bool{}
	}
	for _, s := range names {
		if s == "" {
			continue
		}
		a, err := netip.ParseAddr(s)
		if err == nil {
			s = a.String()
		}
		if l.seen[s] {
			continue
		}
		l.seen[s] = true
		if err == nil {
			l.ips = append(l.ips, s)
		} else {
			l.dns = append(l.dns, s)
		}
	}
}

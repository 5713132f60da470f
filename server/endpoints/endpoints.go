// Package endpoints evaluates a cluster's topology the way Kubespray's "HA
// endpoints" document does: for each node, the apiserver URL its kubelet and
// kube-proxy use (the seed table's master and non-master columns), the
// external URL (its last column), the etcd client URLs and the /etc/hosts
// lines; for the cluster, the certificate SANs. Everything here is a pure
// function of a cluster and its nodes, which must be valid (see topology).
package endpoints

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/server/topology"
)

var (
	// ErrNodeNotFound is returned for a node that is not in the cluster.
	ErrNodeNotFound = errors.New("node not found")
	// ErrNoControlPlane is returned when a node's apiserver URL names the
	// first master (mode "neither", on a non-master) and there is none.
	ErrNoControlPlane = errors.New("the cluster has no control-plane node")
)

// Resolve returns the endpoints of the node called name, in cluster c whose
// nodes are nodes.
func Resolve(c *halov1.Cluster, nodes []*halov1.Node, name string) (*halov1.NodeEndpoints, error) {
	i := slices.IndexFunc(nodes, func(n *halov1.Node) bool { return n.GetName() == name })
	if i < 0 {
		return nil, fmt.Errorf("endpoints: node %q of cluster %q: %w", name, c.GetName(), ErrNodeNotFound)
	}
	n := nodes[i]
	d := topology.WithDefaults(c)
	a := d.GetApiserver()
	mode := topology.Mode(c)
	out := &halov1.NodeEndpoints{
		Mode:         mode,
		ControlPlane: topology.HasRole(n, halov1.Role_ROLE_CONTROL_PLANE),
	}

	firstMaster := ""
	if masters := topology.Masters(nodes); len(masters) > 0 {
		firstMaster = "https://" + hostPort(topology.AccessIP(masters[0]), a.GetPort())
	}
	lbURL := "https://" + hostPort(d.GetLbDomainName(), a.GetExternalLb().GetPort())

	// The seed's master and non-master columns.
	switch {
	case out.ControlPlane:
		out.ApiserverUrl = "https://" + hostPort(urlBindHost(topology.BindAddress(c, n)), a.GetPort())
	case mode == halov1.LoadBalancerMode_LOAD_BALANCER_MODE_LOCAL,
		mode == halov1.LoadBalancerMode_LOAD_BALANCER_MODE_LOCAL_AND_UNMANAGED_EXTERNAL:
		out.ApiserverUrl = "https://" + hostPort("localhost", a.GetLocalLbPort())
	case mode == halov1.LoadBalancerMode_LOAD_BALANCER_MODE_MANAGED_EXTERNAL:
		out.ApiserverUrl = lbURL
	case firstMaster == "":
		return nil, fmt.Errorf("endpoints: node %q: with neither a local nor an external LB it uses the first master, and %w", name, ErrNoControlPlane)
	default:
		out.ApiserverUrl = firstMaster
	}

	// The seed's external column.
	switch mode {
	case halov1.LoadBalancerMode_LOAD_BALANCER_MODE_LOCAL_AND_UNMANAGED_EXTERNAL:
		out.ExternalUrl = a.GetUnmanagedLbUrl()
	case halov1.LoadBalancerMode_LOAD_BALANCER_MODE_MANAGED_EXTERNAL:
		out.ExternalUrl = lbURL
	default:
		out.ExternalUrl = firstMaster
		if firstMaster == "" {
			out.Warnings = append(out.Warnings, "external_url is empty: it names the first master (m[0]) and the cluster has no control-plane node")
		}
	}

	if lb := a.GetExternalLb(); lb != nil {
		out.HostsEntries = []string{canonicalIP(lb.GetAddress()) + " " + d.GetLbDomainName()}
	}

	e := d.GetEtcd()
	members := topology.EtcdMembers(nodes)
	isMember := topology.HasRole(n, halov1.Role_ROLE_ETCD)
	access := accessAddresses(d, members)
	switch {
	case e.GetLocalLb() && !isMember && len(members) > 0:
		out.EtcdUrls = []string{schemeOf(access) + "://" + hostPort("127.0.0.1", e.GetLocalLbPort())}
	case e.GetLocalLb() && !isMember:
		out.EtcdUrls = access
		out.Warnings = append(out.Warnings, "etcd.local_lb is on but the cluster has no etcd member to balance: using the etcd access addresses")
	default:
		out.EtcdUrls = access
	}
	if len(out.EtcdUrls) == 0 {
		out.Warnings = append(out.Warnings, "etcd_urls is empty: the cluster has no etcd member and no etcd.access_addresses")
	}
	if isMember {
		out.EtcdClientUrl = memberClientURL(d, n)
	}
	return out, nil
}

// accessAddresses is etcd_access_addresses: as configured, else every etcd
// member's https://aip:client_port.
func accessAddresses(d *halov1.Cluster, members []*halov1.Node) []string {
	if aa := d.GetEtcd().GetAccessAddresses(); len(aa) > 0 {
		return slices.Clone(aa)
	}
	var out []string
	for _, m := range members {
		out = append(out, "https://"+hostPort(topology.AccessIP(m), d.GetEtcd().GetClientPort()))
	}
	return out
}

// memberClientURL is etcd_client_url for member n.
func memberClientURL(d *halov1.Cluster, n *halov1.Node) string {
	if u := d.GetEtcd().GetClientUrl(); u != "" {
		return u
	}
	return "https://" + hostPort(topology.AccessIP(n), d.GetEtcd().GetClientPort())
}

func schemeOf(urls []string) string {
	if len(urls) > 0 {
		if u, err := url.Parse(urls[0]); err == nil && u.Scheme != "" {
			return u.Scheme
		}
	}
	return "https"
}

// urlBindHost turns a bind address into the host a local client dials, as
// Kubespray does: 0.0.0.0 becomes 127.0.0.1 and :: becomes ::1.
func urlBindHost(bip string) string {
	a, err := netip.ParseAddr(bip)
	switch {
	case err != nil:
		return bip
	case a.IsUnspecified() && a.Is4():
		return "127.0.0.1"
	case a.IsUnspecified():
		return "::1"
	}
	return a.String()
}

// hostPort joins a host and port for a URL: IPv6 in brackets, IPs in their
// canonical form.
func hostPort(host string, port uint32) string {
	return net.JoinHostPort(canonicalIP(host), strconv.FormatUint(uint64(port), 10))
}

// canonicalIP returns an IP address in its canonical form, and anything else
// as it is.
func canonicalIP(s string) string {
	if a, err := netip.ParseAddr(s); err == nil {
		return a.String()
	}
	return s
}

// Package topology holds the rules of halo's topology model: the defaults
// Kubespray gives every variable, which of its load-balancer modes a cluster
// is in, who the masters are, and the validation that keeps bad input out of
// etcd. It is pure: no I/O, no clock.
package topology

import (
	"cmp"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	halov1 "github.com/halolb/halo/gen/halo/v1"
)

// The defaults of the topology model, as Kubespray's.
const (
	DefaultLBDomainName   = "lb-apiserver.kubernetes.local" // apiserver_loadbalancer_domain_name
	DefaultDNSDomain      = "cluster.local"                 // dns_domain
	DefaultServiceCIDR    = "10.233.0.0/18"                 // kube_service_addresses
	DefaultAPIServerPort  = 6443                            // kube_apiserver_port
	DefaultBindAddress    = "0.0.0.0"                       // kube_apiserver_bind_address
	DefaultEtcdClientPort = 2379

	DefaultConnectTimeout = time.Second   // nginx-proxy's proxy_connect_timeout
	DefaultIdleTimeout    = 3 * time.Hour // the seed's HAProxy timeout client/server
	DefaultProbeInterval  = time.Second   // HealthCheck.interval
	DefaultProbeTimeout   = 750 * time.Millisecond
	DefaultRise           = 2
	DefaultFall           = 2
	DefaultAPIServerPath  = "/readyz"
	DefaultEtcdHealthPath = "/health"

	DefaultRebalanceMaxFraction = 0.1
	DefaultRebalanceMinAge      = time.Minute
	DefaultRebalanceInterval    = 10 * time.Second
)

// DefaultEtcdCertAltNames returns Kubespray's default etcd_cert_alt_names.
func DefaultEtcdCertAltNames(dnsDomain string) []string {
	return []string{
		"etcd.kube-system.svc." + dnsDomain,
		"etcd.kube-system.svc",
		"etcd.kube-system",
		"etcd",
	}
}

// WithDefaults returns a copy of c in which every unset field holds its
// default, evaluated from the fields that are set (nsp and lp follow sp, the
// local LB is on unless a managed external LB is set, and so on). c is not
// changed. Etcd.cert_alt_names is left as given: the defaults are added to it
// when SANs are computed.
func WithDefaults(c *halov1.Cluster) *halov1.Cluster {
	c = proto.Clone(c).(*halov1.Cluster)
	c.Revision = 0
	setString(&c.LbDomainName, DefaultLBDomainName)
	setString(&c.DnsDomain, DefaultDNSDomain)
	setString(&c.ServiceCidr, DefaultServiceCIDR)

	if c.Apiserver == nil {
		c.Apiserver = &halov1.ApiServer{}
	}
	a := c.Apiserver
	setUint(&a.Port, DefaultAPIServerPort)
	setString(&a.BindAddress, DefaultBindAddress)
	if a.LocalhostLb == nil {
		a.LocalhostLb = proto.Bool(a.ExternalLb == nil)
	}
	setUint(&a.LocalLbPort, a.Port)
	if a.ExternalLb != nil {
		setUint(&a.ExternalLb.Port, a.Port)
	}
	if a.LbPolicy == halov1.LbPolicy_LB_POLICY_UNSPECIFIED {
		a.LbPolicy = halov1.LbPolicy_LB_POLICY_LEAST_REQUEST
	}
	setDuration(&a.ConnectTimeout, DefaultConnectTimeout)
	setDuration(&a.IdleTimeout, DefaultIdleTimeout)
	a.HealthCheck = healthCheckWithDefaults(a.HealthCheck, DefaultAPIServerPath)
	if a.Rebalance == nil {
		a.Rebalance = &halov1.Rebalance{}
	}
	if a.Rebalance.MaxFraction == 0 {
		a.Rebalance.MaxFraction = DefaultRebalanceMaxFraction
	}
	setDuration(&a.Rebalance.MinAge, DefaultRebalanceMinAge)
	setDuration(&a.Rebalance.Interval, DefaultRebalanceInterval)

	if c.Etcd == nil {
		c.Etcd = &halov1.Etcd{}
	}
	e := c.Etcd
	setUint(&e.ClientPort, DefaultEtcdClientPort)
	setUint(&e.LocalLbPort, e.ClientPort)
	e.HealthCheck = healthCheckWithDefaults(e.HealthCheck, DefaultEtcdHealthPath)
	return c
}

func healthCheckWithDefaults(h *halov1.HealthCheck, path string) *halov1.HealthCheck {
	if h == nil {
		h = &halov1.HealthCheck{}
	}
	setDuration(&h.Interval, DefaultProbeInterval)
	setDuration(&h.Timeout, DefaultProbeTimeout)
	setUint(&h.Rise, DefaultRise)
	setUint(&h.Fall, DefaultFall)
	setString(&h.Path, path)
	return h
}

func setString(p *string, def string) {
	if *p == "" {
		*p = def
	}
}

func setUint(p *uint32, def uint32) {
	if *p == 0 {
		*p = def
	}
}

func setDuration(p **durationpb.Duration, def time.Duration) {
	if *p == nil || (*p).AsDuration() == 0 {
		*p = durationpb.New(def)
	}
}

// Mode returns which of the seed's four load-balancer modes c is in, or
// LOAD_BALANCER_MODE_UNSPECIFIED for a combination the seed does not allow.
func Mode(c *halov1.Cluster) halov1.LoadBalancerMode {
	a := c.GetApiserver()
	managed := a.GetExternalLb() != nil
	unmanaged := a.GetUnmanagedLbUrl() != ""
	local := !managed
	if a != nil && a.LocalhostLb != nil {
		local = a.GetLocalhostLb()
	}
	switch {
	case local && !managed && !unmanaged:
		return halov1.LoadBalancerMode_LOAD_BALANCER_MODE_LOCAL
	case local && !managed && unmanaged:
		return halov1.LoadBalancerMode_LOAD_BALANCER_MODE_LOCAL_AND_UNMANAGED_EXTERNAL
	case !local && managed && !unmanaged:
		return halov1.LoadBalancerMode_LOAD_BALANCER_MODE_MANAGED_EXTERNAL
	case !local && !managed && !unmanaged:
		return halov1.LoadBalancerMode_LOAD_BALANCER_MODE_NONE
	}
	return halov1.LoadBalancerMode_LOAD_BALANCER_MODE_UNSPECIFIED
}

// HasRole reports whether n has role r.
func HasRole(n *halov1.Node, r halov1.Role) bool {
	return slices.Contains(n.GetRoles(), r)
}

// AccessIP returns n's access IP (aip): access_ip, or ip when that is unset.
func AccessIP(n *halov1.Node) string {
	if n.GetAccessIp() != "" {
		return n.GetAccessIp()
	}
	return n.GetIp()
}

// BindAddress returns the apiserver bind address (bip) of master n in
// cluster c: the node's own override, else the cluster's, else 0.0.0.0.
func BindAddress(c *halov1.Cluster, n *halov1.Node) string {
	if n.GetApiserverBindAddress() != "" {
		return n.GetApiserverBindAddress()
	}
	if b := c.GetApiserver().GetBindAddress(); b != "" {
		return b
	}
	return DefaultBindAddress
}

// Masters returns the control-plane nodes in order: by ordinal, then by name.
// Masters(nodes)[0] is the seed's m[0].
func Masters(nodes []*halov1.Node) []*halov1.Node {
	return withRole(nodes, halov1.Role_ROLE_CONTROL_PLANE)
}

// EtcdMembers returns the etcd nodes in order: by ordinal, then by name.
func EtcdMembers(nodes []*halov1.Node) []*halov1.Node {
	return withRole(nodes, halov1.Role_ROLE_ETCD)
}

func withRole(nodes []*halov1.Node, r halov1.Role) []*halov1.Node {
	var out []*halov1.Node
	for _, n := range nodes {
		if HasRole(n, r) {
			out = append(out, n)
		}
	}
	slices.SortFunc(out, func(a, b *halov1.Node) int {
		return cmp.Or(cmp.Compare(a.GetOrdinal(), b.GetOrdinal()), cmp.Compare(a.GetName(), b.GetName()))
	})
	return out
}

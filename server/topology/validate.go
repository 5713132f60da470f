package topology

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	halov1 "github.com/halolb/halo/gen/halo/v1"
)

// FieldViolation names one bad field and says what is wrong with it.
type FieldViolation struct {
	// Field is the field's path in the request, with proto field names:
	// "cluster.apiserver.port", "node.roles[1]".
	Field string
	// Description says what is wrong and, where it helps, what to do.
	Description string
}

// Error is a failed validation: every bad field that was found. Nothing is
// stored when a write fails validation.
type Error struct {
	Violations []FieldViolation
}

func (e *Error) Error() string {
	parts := make([]string, len(e.Violations))
	for i, v := range e.Violations {
		parts[i] = v.Field + ": " + v.Description
	}
	return strings.Join(parts, "; ")
}

// MaxObjectSize is the largest encoded cluster or node accepted, well under
// etcd's request limit.
const MaxObjectSize = 256 << 10

// Limits on values, beyond which a setting is surely a mistake.
const (
	maxConnectTimeout = 5 * time.Minute
	maxIdleTimeout    = 365 * 24 * time.Hour
	maxProbeInterval  = time.Hour
	maxRiseFall       = 100
	maxRebalanceDelay = 24 * time.Hour
	maxListLen        = 1000
)

type violations []FieldViolation

func (v *violations) add(field, format string, args ...any) {
	*v = append(*v, FieldViolation{Field: field, Description: fmt.Sprintf(format, args...)})
}

// check adds a violation when reason is not empty.
func (v *violations) check(field, reason string) {
	if reason != "" {
		v.add(field, "%s", reason)
	}
}

func (v violations) err() error {
	if len(v) == 0 {
		return nil
	}
	return &Error{Violations: v}
}

// ValidateCluster checks every field of a cluster on its own, and that its
// settings form one of the seed's four load-balancer modes. Field paths start
// with "cluster.".
func ValidateCluster(c *halov1.Cluster) error {
	var v violations
	if c == nil {
		v.add("cluster", "required")
		return v.err()
	}
	if size := proto.Size(c); size > MaxObjectSize {
		v.add("cluster", "is %d bytes encoded, more than the limit of %d", size, MaxObjectSize)
	}
	if f := unknownFields("cluster", c.ProtoReflect()); f != "" {
		v.add(f, "has fields this server does not know; upgrade halo-server before using them")
	}
	v.check("cluster.name", checkDNSLabel(c.GetName()))
	if c.GetLbDomainName() != "" {
		v.check("cluster.lb_domain_name", checkDNSName(c.GetLbDomainName(), false))
	}
	if c.GetDnsDomain() != "" {
		v.check("cluster.dns_domain", checkDNSName(c.GetDnsDomain(), false))
	}
	if c.GetServiceCidr() != "" {
		v.check("cluster.service_cidr", checkServiceCIDR(c.GetServiceCidr()))
	}
	v.apiServer(c.GetApiserver())
	v.etcd(c.GetEtcd())
	if len(v) == 0 {
		v.mode(c)
	}
	return v.err()
}

func checkServiceCIDR(s string) string {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return fmt.Sprintf("%q is not a CIDR (e.g. %s)", s, DefaultServiceCIDR)
	}
	if p.Addr().Zone() != "" || p.Addr().Is4In6() {
		return fmt.Sprintf("%q: give a plain IPv4 or IPv6 network", s)
	}
	if p.Masked() != p {
		return fmt.Sprintf("%q is not a network address; did you mean %s?", s, p.Masked())
	}
	if p.Bits() >= p.Addr().BitLen()-1 {
		return fmt.Sprintf("%q is too small: the service network needs room for the kubernetes service IP and more", s)
	}
	return ""
}

func (v *violations) apiServer(a *halov1.ApiServer) {
	const f = "cluster.apiserver"
	if a == nil {
		return
	}
	v.check(f+".port", checkPort(a.GetPort()))
	if a.GetBindAddress() != "" {
		_, reason := parseIP(a.GetBindAddress())
		v.check(f+".bind_address", reason)
	}
	v.check(f+".local_lb_port", checkPort(a.GetLocalLbPort()))
	if lb := a.GetExternalLb(); lb != nil {
		if lb.GetAddress() == "" {
			v.add(f+".external_lb.address", "required when external_lb is set (the VIP of loadbalancer_apiserver)")
		} else {
			v.check(f+".external_lb.address", checkHostIP(lb.GetAddress()))
		}
		v.check(f+".external_lb.port", checkPort(lb.GetPort()))
	}
	if a.GetUnmanagedLbUrl() != "" {
		_, reason := checkURL(a.GetUnmanagedLbUrl(), false, "https")
		v.check(f+".unmanaged_lb_url", reason)
	}
	v.list(f+".supplementary_addresses", a.GetSupplementaryAddresses(), checkSAN)
	if _, ok := halov1.LbPolicy_name[int32(a.GetLbPolicy())]; !ok {
		v.add(f+".lb_policy", "%d is not a known policy (LB_POLICY_LEAST_REQUEST, LB_POLICY_ROUND_ROBIN, LB_POLICY_RANDOM)", a.GetLbPolicy())
	}
	v.duration(f+".connect_timeout", a.GetConnectTimeout(), maxConnectTimeout)
	v.duration(f+".idle_timeout", a.GetIdleTimeout(), maxIdleTimeout)
	v.healthCheck(f+".health_check", a.GetHealthCheck())
	if r := a.GetRebalance(); r != nil {
		fr := r.GetMaxFraction()
		if math.IsNaN(fr) || fr < 0 || fr > 1 {
			v.add(f+".rebalance.max_fraction", "%v is out of range: a fraction 0 < f <= 1 (0 for the default %v)", fr, DefaultRebalanceMaxFraction)
		}
		v.duration(f+".rebalance.min_age", r.GetMinAge(), maxRebalanceDelay)
		v.duration(f+".rebalance.interval", r.GetInterval(), maxRebalanceDelay)
	}
}

func (v *violations) etcd(e *halov1.Etcd) {
	const f = "cluster.etcd"
	if e == nil {
		return
	}
	v.list(f+".access_addresses", e.GetAccessAddresses(), func(s string) string {
		_, reason := checkURL(s, true, "https", "http")
		return reason
	})
	v.check(f+".client_port", checkPort(e.GetClientPort()))
	if e.GetClientUrl() != "" {
		_, reason := checkURL(e.GetClientUrl(), true, "https", "http")
		v.check(f+".client_url", reason)
	}
	v.list(f+".cert_alt_names", e.GetCertAltNames(), func(s string) string { return checkDNSName(s, true) })
	v.list(f+".cert_alt_ips", e.GetCertAltIps(), func(s string) string { _, r := parseIP(s); return r })
	v.check(f+".local_lb_port", checkPort(e.GetLocalLbPort()))
	v.healthCheck(f+".health_check", e.GetHealthCheck())
}

// mode checks that the cluster is in one of the seed's four modes and that
// its local listeners do not collide. It runs on an otherwise valid cluster.
func (v *violations) mode(c *halov1.Cluster) {
	const f = "cluster.apiserver"
	a := c.GetApiserver()
	if Mode(c) == halov1.LoadBalancerMode_LOAD_BALANCER_MODE_UNSPECIFIED {
		managed := a.GetExternalLb() != nil
		switch {
		case managed && a.GetUnmanagedLbUrl() != "":
			v.add(f+".unmanaged_lb_url", "cannot be combined with a managed external LB (external_lb): the seed allows an unmanaged external LB only next to the local LB")
		case managed:
			v.add(f+".localhost_lb", "must be false or unset with a managed external LB (external_lb): loadbalancer_apiserver and loadbalancer_apiserver_localhost are mutually exclusive")
		default:
			v.add(f+".unmanaged_lb_url", "an unmanaged external LB is used only together with the local LB; set localhost_lb to true (or unset) or remove unmanaged_lb_url")
		}
		return
	}
	d := WithDefaults(c)
	if d.GetApiserver().GetLocalhostLb() && d.GetEtcd().GetLocalLb() && d.GetApiserver().GetLocalLbPort() == d.GetEtcd().GetLocalLbPort() {
		v.add("cluster.etcd.local_lb_port", "%d is also the apiserver local LB's port (apiserver.local_lb_port): both listen on 127.0.0.1 of every non-master node", d.GetEtcd().GetLocalLbPort())
	}
}

func (v *violations) healthCheck(f string, h *halov1.HealthCheck) {
	if h == nil {
		return
	}
	interval := v.duration(f+".interval", h.GetInterval(), maxProbeInterval)
	timeout := v.duration(f+".timeout", h.GetTimeout(), maxProbeInterval)
	if interval == 0 {
		interval = DefaultProbeInterval
	}
	if timeout > interval {
		v.add(f+".timeout", "%v is longer than the interval %v: probes would overlap", timeout, interval)
	}
	if h.GetRise() > maxRiseFall {
		v.add(f+".rise", "%d is out of range 1-%d (0 for the default %d)", h.GetRise(), maxRiseFall, DefaultRise)
	}
	if h.GetFall() > maxRiseFall {
		v.add(f+".fall", "%d is out of range 1-%d (0 for the default %d)", h.GetFall(), maxRiseFall, DefaultFall)
	}
	if h.GetPath() != "" {
		v.check(f+".path", checkHTTPPath(h.GetPath()))
	}
	if h.GetCaCertPem() != "" {
		v.check(f+".ca_cert_pem", checkCertPEM(h.GetCaCertPem()))
	}
	cert, key := h.GetClientCertFile(), h.GetClientKeyFile()
	switch {
	case cert != "" && key == "":
		v.add(f+".client_key_file", "required with client_cert_file")
	case cert == "" && key != "":
		v.add(f+".client_cert_file", "required with client_key_file")
	}
	if cert != "" {
		v.check(f+".client_cert_file", checkAbsPath(cert))
	}
	if key != "" {
		v.check(f+".client_key_file", checkAbsPath(key))
	}
	if h.GetBearerTokenFile() != "" {
		v.check(f+".bearer_token_file", checkAbsPath(h.GetBearerTokenFile()))
	}
}

func checkCertPEM(s string) string {
	rest := []byte(s)
	n := 0
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return fmt.Sprintf("holds a %q PEM block; only CERTIFICATE blocks belong here (never a key)", b.Type)
		}
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			return fmt.Sprintf("certificate %d does not parse: %v", n+1, err)
		}
		n++
	}
	if n == 0 {
		return "holds no PEM certificate"
	}
	if strings.TrimSpace(string(rest)) != "" {
		return "has text after the last PEM certificate"
	}
	return ""
}

// duration checks an optional duration: unset or zero (the default), else
// positive and at most max. It returns the value.
func (v *violations) duration(f string, d *durationpb.Duration, max time.Duration) time.Duration {
	if d == nil {
		return 0
	}
	if err := d.CheckValid(); err != nil {
		v.add(f, "not a valid duration: %v", err)
		return 0
	}
	x := d.AsDuration()
	switch {
	case x < 0:
		v.add(f, "%v is negative (0 or unset for the default)", x)
	case x > max:
		v.add(f, "%v is longer than the limit %v", x, max)
	}
	return x
}

// list checks every element of a repeated string field, and that no element
// repeats.
func (v *violations) list(f string, items []string, check func(string) string) {
	if len(items) > maxListLen {
		v.add(f, "has %d elements; at most %d", len(items), maxListLen)
		return
	}
	for i, s := range items {
		fi := fmt.Sprintf("%s[%d]", f, i)
		if reason := check(s); reason != "" {
			v.add(fi, "%s", reason)
			continue
		}
		if j := slices.Index(items[:i], s); j >= 0 {
			v.add(fi, "%q repeats element %d", s, j)
		}
	}
}

// ValidateNode checks every field of a node on its own. Field paths start
// with "node.".
func ValidateNode(n *halov1.Node) error {
	var v violations
	if n == nil {
		v.add("node", "required")
		return v.err()
	}
	if size := proto.Size(n); size > MaxObjectSize {
		v.add("node", "is %d bytes encoded, more than the limit of %d", size, MaxObjectSize)
	}
	if f := unknownFields("node", n.ProtoReflect()); f != "" {
		v.add(f, "has fields this server does not know; upgrade halo-server before using them")
	}
	v.check("node.cluster", checkDNSLabel(n.GetCluster()))
	v.nodeName("node.name", n.GetName())
	if len(n.GetRoles()) == 0 {
		v.add("node.roles", "needs at least one role (ROLE_CONTROL_PLANE, ROLE_ETCD, ROLE_WORKER, ROLE_LOAD_BALANCER)")
	}
	for i, r := range n.GetRoles() {
		fi := fmt.Sprintf("node.roles[%d]", i)
		if _, ok := halov1.Role_name[int32(r)]; !ok || r == halov1.Role_ROLE_UNSPECIFIED {
			v.add(fi, "%v is not a role (ROLE_CONTROL_PLANE, ROLE_ETCD, ROLE_WORKER, ROLE_LOAD_BALANCER)", r)
		} else if j := slices.Index(n.GetRoles()[:i], r); j >= 0 {
			v.add(fi, "%v repeats roles[%d]", r, j)
		}
	}
	v.check("node.ip", checkHostIP(n.GetIp()))
	if n.GetAccessIp() != "" {
		v.check("node.access_ip", checkHostIP(n.GetAccessIp()))
	}
	if n.GetOrdinal() < 0 {
		v.add("node.ordinal", "%d is negative", n.GetOrdinal())
	}
	if b := n.GetApiserverBindAddress(); b != "" {
		_, reason := parseIP(b)
		v.check("node.apiserver_bind_address", reason)
		if reason == "" && !HasRole(n, halov1.Role_ROLE_CONTROL_PLANE) {
			v.add("node.apiserver_bind_address", "only a control-plane node runs an apiserver to bind")
		}
	}
	keys := make([]string, 0, len(n.GetLabels()))
	for k := range n.GetLabels() {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		v.check("node.labels", checkLabelKey(k))
		v.check("node.labels["+k+"]", checkLabelValue(n.GetLabels()[k]))
	}
	return v.err()
}

// ValidateNodeInCluster checks a valid node against its valid cluster: a
// load-balancer node needs the managed external LB, and a load-balancer
// master must not collide with the VIP's port. (Uniqueness among the
// cluster's nodes is UniqueValues' business.) Field paths start with "node.".
func ValidateNodeInCluster(c *halov1.Cluster, n *halov1.Node) error {
	var v violations
	if reason := loadBalancerRole(c, n); reason != "" {
		v.add("node.roles", "%s", reason)
	}
	if reason := portCollision(c, n); reason != "" {
		v.add("node.roles", "%s", reason)
	}
	return v.err()
}

// UniqueValue is a value that at most one node of a cluster may hold.
type UniqueValue struct {
	// Kind names the rule: "ip" or "master-ordinal".
	Kind string
	// Value is the value in canonical form.
	Value       string
	field, what string
}

// Conflict is the validation error for a node whose value other already
// holds.
func (u UniqueValue) Conflict(other string) error {
	var v violations
	v.add(u.field, "%s is already the %s of node %q", u.Value, u.what, other)
	return v.err()
}

// UniqueValues returns the values of a valid node that no other node of its
// cluster may share: its ip, and a master's ordinal (which orders the
// masters: m[0] has the lowest).
func UniqueValues(n *halov1.Node) []UniqueValue {
	var out []UniqueValue
	if a, err := netip.ParseAddr(n.GetIp()); err == nil {
		out = append(out, UniqueValue{Kind: "ip", Value: a.String(), field: "node.ip", what: "ip"})
	}
	if HasRole(n, halov1.Role_ROLE_CONTROL_PLANE) {
		out = append(out, UniqueValue{Kind: "master-ordinal", Value: strconv.Itoa(int(n.GetOrdinal())), field: "node.ordinal",
			what: "ordinal (ordinals order the masters, m[0] has the lowest, and must be unique among them)"})
	}
	return out
}

// ValidateClusterNodes checks a valid cluster against the nodes it already
// has, so that a cluster update cannot break them. Field paths start with
// "cluster.".
func ValidateClusterNodes(c *halov1.Cluster, nodes []*halov1.Node) error {
	var v violations
	for _, n := range nodes {
		if reason := loadBalancerRole(c, n); reason != "" {
			v.add("cluster.apiserver.external_lb", "node %q: %s", n.GetName(), reason)
		}
		if reason := portCollision(c, n); reason != "" {
			v.add("cluster.apiserver", "node %q: %s", n.GetName(), reason)
		}
	}
	return v.err()
}

func loadBalancerRole(c *halov1.Cluster, n *halov1.Node) string {
	if HasRole(n, halov1.Role_ROLE_LOAD_BALANCER) && c.GetApiserver().GetExternalLb() == nil {
		return "ROLE_LOAD_BALANCER serves the managed external LB's VIP, and the cluster has none (set apiserver.external_lb first)"
	}
	return ""
}

// portCollision applies the seed's note: a load-balancer node that is also a
// master cannot bind the VIP's port when its apiserver binds the same port on
// every address (or on the VIP itself).
func portCollision(c *halov1.Cluster, n *halov1.Node) string {
	if !HasRole(n, halov1.Role_ROLE_LOAD_BALANCER) || !HasRole(n, halov1.Role_ROLE_CONTROL_PLANE) {
		return ""
	}
	d := WithDefaults(c)
	lb := d.GetApiserver().GetExternalLb()
	if lb == nil || lb.GetPort() != d.GetApiserver().GetPort() {
		return ""
	}
	bip, err := netip.ParseAddr(BindAddress(c, n))
	if err != nil {
		return ""
	}
	if bip.IsUnspecified() || sameIP(bip.String(), lb.GetAddress()) {
		return fmt.Sprintf("this load-balancer node is also a master whose apiserver binds %s port %d, the VIP's port (external_lb.port): the two would collide; use another external_lb.port or set the master's apiserver_bind_address to its own IP",
			bip, lb.GetPort())
	}
	return ""
}

func sameIP(a, b string) bool {
	x, err1 := netip.ParseAddr(a)
	y, err2 := netip.ParseAddr(b)
	return err1 == nil && err2 == nil && x == y
}

func (v *violations) nodeName(field, name string) {
	if name == "" {
		v.add(field, "must not be empty")
		return
	}
	v.check(field, checkDNSName(name, false))
}

// ValidateClusterName checks a cluster name given in a request; field names
// it in the error.
func ValidateClusterName(field, name string) error {
	var v violations
	v.check(field, checkDNSLabel(name))
	return v.err()
}

// ValidateNodeName checks a node name given in a request; field names it in
// the error.
func ValidateNodeName(field, name string) error {
	var v violations
	v.nodeName(field, name)
	return v.err()
}

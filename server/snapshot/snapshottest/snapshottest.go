// Package snapshottest holds the topologies that the tests of the xDS
// snapshots and of their consumers (the agent's translation of them) are
// built from, so both sides test the same inputs.
package snapshottest

import (
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	halov1 "github.com/halolb/halo/gen/halo/v1"
)

const (
	cp = halov1.Role_ROLE_CONTROL_PLANE
	et = halov1.Role_ROLE_ETCD
	wk = halov1.Role_ROLE_WORKER
	lb = halov1.Role_ROLE_LOAD_BALANCER
)

// Node returns a node of cluster "prod".
func Node(name, ip, aip string, ordinal int32, roles ...halov1.Role) *halov1.Node {
	return &halov1.Node{Cluster: "prod", Name: name, Ip: ip, AccessIp: aip, Ordinal: ordinal, Roles: roles}
}

// Nodes are cluster prod's nodes: masters (some etcd members, one on
// IPv6), an etcd-only member, a worker, and load-balancer nodes (one also
// a master).
func Nodes() []*halov1.Node {
	return []*halov1.Node{
		Node("master-c", "10.0.0.3", "192.0.2.3", 2, cp, et),
		Node("master-a", "10.0.0.1", "192.0.2.1", 0, cp, et),
		Node("master-b", "10.0.0.2", "192.0.2.2", 1, cp),
		Node("master-6", "fd00::6", "", 3, cp),
		Node("etcd-4", "10.0.0.4", "", 3, et),
		Node("worker-1", "10.0.1.1", "", 0, wk),
		Node("lb-1", "10.0.2.1", "", 0, lb),
		Node("lb-master", "10.0.2.2", "", 9, lb, cp),
	}
}

// Clusters are prod in each load-balancer mode, with and without the etcd
// local LB, an IPv6 VIP, every lb policy and custom timeouts, by a name
// that says so.
func Clusters() map[string]*halov1.Cluster {
	vip := &halov1.ExternalLB{Address: "203.0.113.10", Port: 8383}
	return map[string]*halov1.Cluster{
		"local":           {Name: "prod"},
		"local, etcd LB":  {Name: "prod", Apiserver: &halov1.ApiServer{LocalLbPort: 16443}, Etcd: &halov1.Etcd{LocalLb: true, LocalLbPort: 12379}},
		"local+unmanaged": {Name: "prod", Apiserver: &halov1.ApiServer{UnmanagedLbUrl: "https://k8s.example.com:8443", Port: 7443}},
		"managed":         {Name: "prod", Apiserver: &halov1.ApiServer{ExternalLb: vip, LbPolicy: halov1.LbPolicy_LB_POLICY_RANDOM}},
		"managed, IPv6 VIP, etcd LB, round robin": {Name: "prod", Apiserver: &halov1.ApiServer{
			ExternalLb: &halov1.ExternalLB{Address: "2001:db8::10"}, LbPolicy: halov1.LbPolicy_LB_POLICY_ROUND_ROBIN,
			ConnectTimeout: durationpb.New(2 * time.Second), IdleTimeout: durationpb.New(time.Hour)},
			Etcd: &halov1.Etcd{LocalLb: true, ClientPort: 4001}},
		"least request, no idle timeout": {Name: "prod", Apiserver: &halov1.ApiServer{
			LbPolicy: halov1.LbPolicy_LB_POLICY_LEAST_REQUEST, IdleTimeout: durationpb.New(0)}},
		"local, rebalance": {Name: "prod", Apiserver: &halov1.ApiServer{Rebalance: &halov1.Rebalance{Enabled: true, MaxFraction: 0.25,
			MinAge: durationpb.New(30 * time.Second), Interval: durationpb.New(5 * time.Second)}}},
		"neither": {Name: "prod", Apiserver: &halov1.ApiServer{LocalhostLb: proto.Bool(false)}},
	}
}

package store

import (
	"fmt"
	"strings"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/server/topology"
)

// Keys is the layout of halo's keys in etcd. Every key halo writes or reads
// (the store, the replica registry, the prober's election, the server's etcd
// health check) is built here from one prefix, so that the layout is in one
// place and a change to it is deliberate (keys_test.go pins every key).
//
// Under the prefix:
//
//	key                                   value                                      written by
//	clusters/<cluster>                    halov1.Cluster (proto)                     Store.PutCluster
//	nodes/<cluster>/<node>                halov1.Node (proto)                        Store.PutNode
//	index/<cluster>/ip/<ip>               name of the node with that ip              Store.PutNode
//	index/<cluster>/master-ordinal/<n>    name of the master with that ordinal       Store.PutNode
//	index/<cluster>/load-balancer/<node>  <node>                                     Store.PutNode
//	health/<cluster>/<kind>/<node>        halov1.BackendStatus (proto);              Store.PutBackendStatus
//	                                      kind: apiserver or etcd
//	replicas/<replica>                    host:port of the replica's gRPC API,       replicas.Registration
//	                                      under the replica's lease
//	prober-election//<lease, hex>         the campaigning replica's name, under      prober.Election
//	                                      its lease (etcd's concurrency.Election
//	                                      adds the second '/')
//
// The index keys let a node write check uniqueness by comparing a few keys
// instead of reading (and racing with) every node of its cluster, so that
// nodes can be registered in parallel; they are deleted with their node.
// A node's health keys are deleted with it, a cluster's nodes, index and
// health keys with it.
//
// Names cannot hold '/' (topology validation for clusters and nodes,
// replicas.New for replicas), and the first segment names the kind, so no
// key of one kind equals another's or lies under another kind's prefix:
// Parse recovers what every key is.
type Keys struct {
	prefix string
}

// NewKeys returns the layout under prefix; "" means DefaultPrefix. The
// prefix must end in '/' (CheckPrefix): a prefix "/halo" would also cover
// another installation's "/halo2/...". store.New, replicas.New, prober's
// Election and the server's configuration reject one that does not.
func NewKeys(prefix string) Keys {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return Keys{prefix: prefix}
}

// CheckPrefix says why prefix cannot be halo's key prefix, or nil.
func CheckPrefix(prefix string) error {
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		return fmt.Errorf("key prefix %q must end in /", prefix)
	}
	return nil
}

// Prefix is the prefix of every key: watching it watches all of halo.
func (k Keys) Prefix() string { return k.prefix }

// ClustersPrefix holds every cluster.
func (k Keys) ClustersPrefix() string { return k.prefix + "clusters/" }

// Cluster is a cluster's key.
func (k Keys) Cluster(name string) string { return k.ClustersPrefix() + name }

// AllNodesPrefix holds every node of every cluster.
func (k Keys) AllNodesPrefix() string { return k.prefix + "nodes/" }

// NodesPrefix holds a cluster's nodes.
func (k Keys) NodesPrefix(cluster string) string { return k.AllNodesPrefix() + cluster + "/" }

// Node is a node's key.
func (k Keys) Node(cluster, name string) string { return k.NodesPrefix(cluster) + name }

// IndexPrefix holds a cluster's index keys.
func (k Keys) IndexPrefix(cluster string) string { return k.prefix + "index/" + cluster + "/" }

// Unique is the index key of a value at most one node of cluster may hold.
func (k Keys) Unique(cluster string, u topology.UniqueValue) string {
	return k.IndexPrefix(cluster) + u.Kind + "/" + u.Value
}

// LoadBalancersPrefix holds the index keys of a cluster's load-balancer
// nodes.
func (k Keys) LoadBalancersPrefix(cluster string) string {
	return k.IndexPrefix(cluster) + loadBalancerIndex + "/"
}

// LoadBalancer is the index key of a load-balancer node.
func (k Keys) LoadBalancer(cluster, node string) string {
	return k.LoadBalancersPrefix(cluster) + node
}

// NodeIndex returns the index keys a stored node owns.
func (k Keys) NodeIndex(n *halov1.Node) []string {
	var keys []string
	for _, u := range topology.UniqueValues(n) {
		keys = append(keys, k.Unique(n.GetCluster(), u))
	}
	if topology.HasRole(n, halov1.Role_ROLE_LOAD_BALANCER) {
		keys = append(keys, k.LoadBalancer(n.GetCluster(), n.GetName()))
	}
	return keys
}

// AllHealthPrefix holds the health of every cluster's backends.
func (k Keys) AllHealthPrefix() string { return k.prefix + "health/" }

// HealthPrefix holds the health of a cluster's backends.
func (k Keys) HealthPrefix(cluster string) string { return k.AllHealthPrefix() + cluster + "/" }

// Health is the key of one backend's health.
func (k Keys) Health(cluster string, kind halov1.BackendKind, node string) string {
	return k.HealthPrefix(cluster) + backendKindName(kind) + "/" + node
}

// NodeHealth returns a node's health keys (one per kind).
func (k Keys) NodeHealth(cluster, node string) []string {
	return []string{
		k.Health(cluster, halov1.BackendKind_BACKEND_KIND_APISERVER, node),
		k.Health(cluster, halov1.BackendKind_BACKEND_KIND_ETCD, node),
	}
}

// ReplicasPrefix holds the registered halo-server replicas.
func (k Keys) ReplicasPrefix() string { return k.prefix + "replicas/" }

// Replica is a replica's key.
func (k Keys) Replica(name string) string { return k.ReplicasPrefix() + name }

// ProberElectionPrefix is the prefix of the prober's etcd election (given
// to concurrency.NewElection, which puts its keys under it + "/").
func (k Keys) ProberElectionPrefix() string { return k.prefix + "prober-election/" }

const loadBalancerIndex = "load-balancer"

func backendKindName(kind halov1.BackendKind) string {
	if kind == halov1.BackendKind_BACKEND_KIND_ETCD {
		return "etcd"
	}
	return "apiserver"
}

// KeyType says what a key holds.
type KeyType int

// The types of halo's keys.
const (
	KeyUnknown KeyType = iota
	KeyCluster
	KeyNode
	KeyIndex
	KeyHealth
	KeyReplica
	KeyProberElection
)

func (t KeyType) String() string {
	switch t {
	case KeyCluster:
		return "cluster"
	case KeyNode:
		return "node"
	case KeyIndex:
		return "index"
	case KeyHealth:
		return "health"
	case KeyReplica:
		return "replica"
	case KeyProberElection:
		return "prober-election"
	}
	return "unknown"
}

// Key is what Parse found a key to be. Only the fields of its type are set.
type Key struct {
	Type KeyType
	// Cluster: of a cluster, node, index or health key.
	Cluster string
	// Name: the node of a node, health or load-balancer index key; the
	// replica of a replica key; the lease of a prober-election key.
	Name string
	// Backend: of a health key.
	Backend halov1.BackendKind
	// Index and Value: of an index key ("ip", "master-ordinal" or
	// "load-balancer", and the ip, ordinal or node).
	Index, Value string
}

// Parse says what a key of this layout is; false if it is none of halo's
// keys (outside the prefix, or not of any shape above).
func (k Keys) Parse(key string) (Key, bool) {
	rest, ok := strings.CutPrefix(key, k.prefix)
	if !ok {
		return Key{}, false
	}
	kind, rest, _ := strings.Cut(rest, "/")
	parts := strings.Split(rest, "/")
	for _, p := range parts {
		if p == "" && kind != "prober-election" {
			return Key{}, false
		}
	}
	switch {
	case kind == "clusters" && len(parts) == 1:
		return Key{Type: KeyCluster, Cluster: parts[0]}, true
	case kind == "nodes" && len(parts) == 2:
		return Key{Type: KeyNode, Cluster: parts[0], Name: parts[1]}, true
	case kind == "index" && len(parts) == 3:
		out := Key{Type: KeyIndex, Cluster: parts[0], Index: parts[1], Value: parts[2]}
		if out.Index == loadBalancerIndex {
			out.Name = out.Value
		}
		return out, true
	case kind == "health" && len(parts) == 3:
		b := halov1.BackendKind_BACKEND_KIND_APISERVER
		switch parts[1] {
		case backendKindName(halov1.BackendKind_BACKEND_KIND_ETCD):
			b = halov1.BackendKind_BACKEND_KIND_ETCD
		case backendKindName(b):
		default:
			return Key{}, false
		}
		return Key{Type: KeyHealth, Cluster: parts[0], Backend: b, Name: parts[2]}, true
	case kind == "replicas" && len(parts) == 1:
		return Key{Type: KeyReplica, Name: parts[0]}, true
	case kind == "prober-election" && len(parts) == 2 && parts[0] == "" && parts[1] != "":
		return Key{Type: KeyProberElection, Name: parts[1]}, true
	}
	return Key{}, false
}

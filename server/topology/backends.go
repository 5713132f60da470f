package topology

import halov1 "github.com/halolb/halo/gen/halo/v1"

// BackendRole is the role that makes a node a backend of kind k: the
// control plane for the apiserver, etcd for etcd (ROLE_UNSPECIFIED, which no
// node has, for any other kind).
func BackendRole(k halov1.BackendKind) halov1.Role {
	switch k {
	case halov1.BackendKind_BACKEND_KIND_APISERVER:
		return halov1.Role_ROLE_CONTROL_PLANE
	case halov1.BackendKind_BACKEND_KIND_ETCD:
		return halov1.Role_ROLE_ETCD
	}
	return halov1.Role_ROLE_UNSPECIFIED
}

// IsBackend reports whether n is a backend of kind k: a master is an
// apiserver backend, an etcd member an etcd backend. A nil n is none.
func IsBackend(n *halov1.Node, k halov1.BackendKind) bool {
	r := BackendRole(k)
	return r != halov1.Role_ROLE_UNSPECIFIED && HasRole(n, r)
}

// IsAnyBackend reports whether n is a backend of some kind: a master or an
// etcd member. The other roles (worker, load balancer) only choose which
// resources a node gets, never what the backends are.
func IsAnyBackend(n *halov1.Node) bool {
	return IsBackend(n, halov1.BackendKind_BACKEND_KIND_APISERVER) || IsBackend(n, halov1.BackendKind_BACKEND_KIND_ETCD)
}

// Backends returns the backends of kind k among nodes, in order (by
// ordinal, then by name): Masters for the apiserver, EtcdMembers for etcd.
func Backends(nodes []*halov1.Node, k halov1.BackendKind) []*halov1.Node {
	r := BackendRole(k)
	if r == halov1.Role_ROLE_UNSPECIFIED {
		return nil
	}
	return withRole(nodes, r)
}

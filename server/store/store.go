// Package store keeps halo's topology in etcd: one key per cluster and one
// per node under a prefix, laid out by Keys (keys.go), which also places the
// keys of the other etcd users of halo-server. Every write is one etcd
// transaction (update, txn.go) validated against what it read at one
// revision and that only commits if nothing it relied on has changed since,
// so concurrent admins never silently overwrite each other and a write is
// stored completely or not at all.
package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/server/topology"
)

// Errors of the store, to be checked with errors.Is. The wrapping error says
// which object and why.
var (
	// ErrNotFound: the cluster or node does not exist.
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists: a create-only write (expected revision -1) found the
	// object already there.
	ErrAlreadyExists = errors.New("already exists")
	// ErrConflict: the stored revision is not the expected one, or concurrent
	// writes kept winning the race.
	ErrConflict = errors.New("revision conflict")
	// ErrFailedPrecondition: the write needs the store in another state first
	// (a node's cluster must exist; a cluster with nodes needs force).
	ErrFailedPrecondition = errors.New("failed precondition")
	// ErrCompacted: a watch asked for revisions etcd has compacted away.
	ErrCompacted = errors.New("revision compacted")
	// ErrUnavailable: etcd did not answer, or answered with an error the
	// same call may not get next time.
	ErrUnavailable = errors.New("etcd unavailable")
)

// CompactedError is returned (wrapping ErrCompacted) when a watch starts
// below etcd's compaction point.
type CompactedError struct {
	Requested, Compacted int64
}

func (e *CompactedError) Error() string {
	return fmt.Sprintf("revision %d has been compacted; the oldest revision still available is %d", e.Requested, e.Compacted)
}

func (e *CompactedError) Unwrap() error { return ErrCompacted }

// DefaultPrefix is where halo keeps its keys unless told otherwise.
const DefaultPrefix = "/halo/v1/"

// DefaultRequestTimeout bounds each etcd request.
const DefaultRequestTimeout = 5 * time.Second

// Config configures a Store.
type Config struct {
	// Client is the etcd client. Required; the caller closes it.
	Client *clientv3.Client
	// Prefix is put before every key. Default DefaultPrefix; it must end in "/".
	Prefix string
	// RequestTimeout bounds each etcd request; when it runs out the call
	// fails with ErrUnavailable. Zero: DefaultRequestTimeout.
	RequestTimeout time.Duration
	// Logger receives the store's logs. Nil: discard.
	Logger *slog.Logger
}

// Store reads and writes the topology in etcd. It is safe for concurrent use.
type Store struct {
	client  *clientv3.Client
	keys    Keys
	timeout time.Duration
	log     *slog.Logger
}

// New returns a Store. It does not contact etcd.
func New(cfg Config) (*Store, error) {
	if cfg.Client == nil {
		return nil, errors.New("store: Config.Client is required")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if err := CheckPrefix(cfg.Prefix); err != nil {
		return nil, fmt.Errorf("store: Config.Prefix: %w", err)
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Store{client: cfg.Client, keys: NewKeys(cfg.Prefix), timeout: cfg.RequestTimeout, log: cfg.Logger}, nil
}

// Keys is the layout of the store's keys.
func (s *Store) Keys() Keys { return s.keys }

// read runs read-only operations at one revision.
func (s *Store) read(ctx context.Context, op string, ops ...clientv3.Op) (*clientv3.TxnResponse, error) {
	rctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	resp, err := s.client.Txn(rctx).Then(ops...).Commit()
	if err != nil {
		return nil, s.etcdErr(ctx, op, err)
	}
	return resp, nil
}

// commit runs a conditional write: then when every comparison holds, else
// otherwise.
func (s *Store) commit(ctx context.Context, op string, cmps []clientv3.Cmp, then []clientv3.Op, els ...clientv3.Op) (*clientv3.TxnResponse, error) {
	wctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	resp, err := s.client.Txn(wctx).If(cmps...).Then(then...).Else(els...).Commit()
	if err != nil {
		return nil, s.etcdErr(ctx, op, err)
	}
	return resp, nil
}

// etcdErr wraps an error of the etcd client: the caller's own cancellation
// stays a context error, anything else is ErrUnavailable.
func (s *Store) etcdErr(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("store: %s: %w", op, ctx.Err())
	}
	s.log.Warn("etcd request failed", "op", op, "error", err)
	return fmt.Errorf("store: %s: %w: %v", op, ErrUnavailable, err)
}

var marshal = proto.MarshalOptions{Deterministic: true}

func encode(m proto.Message) (string, error) {
	b, err := marshal.Marshal(m)
	if err != nil {
		return "", fmt.Errorf("store: encode: %w", err)
	}
	return string(b), nil
}

func decodeCluster(kv *mvccpb.KeyValue) (*halov1.Cluster, error) {
	c := &halov1.Cluster{}
	if err := proto.Unmarshal(kv.Value, c); err != nil {
		return nil, fmt.Errorf("store: decode %s: %w", kv.Key, err)
	}
	c.Revision = kv.ModRevision
	return c, nil
}

func decodeNode(kv *mvccpb.KeyValue) (*halov1.Node, error) {
	n := &halov1.Node{}
	if err := proto.Unmarshal(kv.Value, n); err != nil {
		return nil, fmt.Errorf("store: decode %s: %w", kv.Key, err)
	}
	n.Revision = kv.ModRevision
	return n, nil
}

func decodeNodes(kvs []*mvccpb.KeyValue) ([]*halov1.Node, error) {
	nodes := make([]*halov1.Node, 0, len(kvs))
	for _, kv := range kvs {
		n, err := decodeNode(kv)
		if err != nil {
			return nil, err
		}
		nodes = append(nodes, n)
	}
	return nodes, nil
}

// checkExpected applies the expected-revision rule of a write: 0 accepts
// anything, -1 only a missing object, > 0 only that revision.
func checkExpected(what string, expected, stored int64) error {
	switch {
	case expected == 0:
		return nil
	case expected == -1 && stored != 0:
		return fmt.Errorf("store: %s exists (revision %d) and expected_revision -1 asks to create it: %w", what, stored, ErrAlreadyExists)
	case expected == -1:
		return nil
	case expected < -1:
		return fmt.Errorf("store: %s: expected_revision %d is neither 0, -1 nor a revision: %w", what, expected, ErrConflict)
	case stored == 0:
		return fmt.Errorf("store: %s does not exist, expected revision %d: %w", what, expected, ErrConflict)
	case stored != expected:
		return fmt.Errorf("store: %s is at revision %d, not the expected %d: someone else changed it; read it again: %w", what, stored, expected, ErrConflict)
	}
	return nil
}

// Topology returns a cluster and all its nodes (sorted by name), read at one
// revision, and that revision.
func (s *Store) Topology(ctx context.Context, cluster string) (*halov1.Cluster, []*halov1.Node, int64, error) {
	resp, err := s.read(ctx, "read cluster "+cluster,
		clientv3.OpGet(s.keys.Cluster(cluster)),
		clientv3.OpGet(s.keys.NodesPrefix(cluster), clientv3.WithPrefix()))
	if err != nil {
		return nil, nil, 0, err
	}
	kvs := resp.Responses[0].GetResponseRange().GetKvs()
	if len(kvs) == 0 {
		return nil, nil, 0, fmt.Errorf("store: cluster %q: %w", cluster, ErrNotFound)
	}
	c, err := decodeCluster(kvs[0])
	if err != nil {
		return nil, nil, 0, err
	}
	nodes, err := decodeNodes(resp.Responses[1].GetResponseRange().GetKvs())
	if err != nil {
		return nil, nil, 0, err
	}
	return c, nodes, resp.Header.Revision, nil
}

// ClusterTopology is a cluster and its nodes.
type ClusterTopology struct {
	Cluster *halov1.Cluster
	Nodes   []*halov1.Node
	// Backends are the stored health of its backends.
	Backends []*halov1.BackendStatus
}

// LoadAll returns every cluster with its nodes, read at one revision, and
// that revision: the starting point of a Watch from revision + 1.
func (s *Store) LoadAll(ctx context.Context) (map[string]*ClusterTopology, int64, error) {
	resp, err := s.read(ctx, "load all",
		clientv3.OpGet(s.keys.ClustersPrefix(), clientv3.WithPrefix()),
		clientv3.OpGet(s.keys.AllNodesPrefix(), clientv3.WithPrefix()),
		clientv3.OpGet(s.keys.AllHealthPrefix(), clientv3.WithPrefix()))
	if err != nil {
		return nil, 0, err
	}
	out := map[string]*ClusterTopology{}
	for _, kv := range resp.Responses[0].GetResponseRange().GetKvs() {
		c, err := decodeCluster(kv)
		if err != nil {
			return nil, 0, err
		}
		out[c.GetName()] = &ClusterTopology{Cluster: c}
	}
	nodes, err := decodeNodes(resp.Responses[1].GetResponseRange().GetKvs())
	if err != nil {
		return nil, 0, err
	}
	for _, n := range nodes {
		if t := out[n.GetCluster()]; t != nil {
			t.Nodes = append(t.Nodes, n)
		}
	}
	for _, kv := range resp.Responses[2].GetResponseRange().GetKvs() {
		st := s.decodeBackendStatus(kv)
		if st == nil {
			continue
		}
		if t := out[st.GetCluster()]; t != nil {
			t.Backends = append(t.Backends, st)
		}
	}
	return out, resp.Header.Revision, nil
}

// PutCluster validates and stores c (see PutClusterRequest for expected).
// It returns the stored cluster with its revision.
func (s *Store) PutCluster(ctx context.Context, c *halov1.Cluster, expected int64) (*halov1.Cluster, error) {
	if err := topology.ValidateCluster(c); err != nil {
		return nil, err
	}
	c = proto.Clone(c).(*halov1.Cluster)
	c.Revision = 0
	val, err := encode(c)
	if err != nil {
		return nil, err
	}
	key, what := s.keys.Cluster(c.GetName()), fmt.Sprintf("cluster %q", c.GetName())
	nodesPrefix := s.keys.NodesPrefix(c.GetName())
	wr, err := s.update(ctx, "put "+what, []clientv3.Op{clientv3.OpGet(key), clientv3.OpGet(nodesPrefix, clientv3.WithPrefix())},
		func(t *txn) error {
			var stored int64
			if kv := t.get(key); kv != nil {
				stored = kv.ModRevision
			}
			if err := checkExpected(what, expected, stored); err != nil {
				return err
			}
			nodes, err := decodeNodes(t.list(nodesPrefix))
			if err != nil {
				return err
			}
			if err := topology.ValidateClusterNodes(c, nodes); err != nil {
				return err
			}
			// The cluster was checked against the stored load-balancer nodes
			// (the others do not depend on it): none has joined since (its
			// index key would be newer), and none has changed or gone.
			t.guardRange(s.keys.LoadBalancersPrefix(c.GetName()))
			for _, n := range nodes {
				if topology.HasRole(n, halov1.Role_ROLE_LOAD_BALANCER) {
					t.guard(s.keys.Node(c.GetName(), n.GetName()), n.GetRevision())
				}
			}
			t.write(clientv3.OpPut(key, val))
			return nil
		})
	if err != nil {
		return nil, err
	}
	out := proto.Clone(c).(*halov1.Cluster)
	out.Revision = wr.Header.Revision
	s.log.Info("cluster stored", "cluster", c.GetName(), "revision", out.Revision)
	return out, nil
}

// GetCluster returns one cluster.
func (s *Store) GetCluster(ctx context.Context, name string) (*halov1.Cluster, error) {
	resp, err := s.read(ctx, "get cluster "+name, clientv3.OpGet(s.keys.Cluster(name)))
	if err != nil {
		return nil, err
	}
	kvs := resp.Responses[0].GetResponseRange().GetKvs()
	if len(kvs) == 0 {
		return nil, fmt.Errorf("store: cluster %q: %w", name, ErrNotFound)
	}
	return decodeCluster(kvs[0])
}

// ListClusters returns every cluster, sorted by name, and the revision they
// were read at.
func (s *Store) ListClusters(ctx context.Context) ([]*halov1.Cluster, int64, error) {
	resp, err := s.read(ctx, "list clusters", clientv3.OpGet(s.keys.ClustersPrefix(), clientv3.WithPrefix()))
	if err != nil {
		return nil, 0, err
	}
	kvs := resp.Responses[0].GetResponseRange().GetKvs()
	out := make([]*halov1.Cluster, 0, len(kvs))
	for _, kv := range kvs {
		c, err := decodeCluster(kv)
		if err != nil {
			return nil, 0, err
		}
		out = append(out, c)
	}
	return out, resp.Header.Revision, nil
}

// DeleteCluster deletes a cluster; with force, its nodes too, in the same
// write. It returns the revision of the deletion and how many nodes went.
func (s *Store) DeleteCluster(ctx context.Context, name string, force bool, expected int64) (int64, int, error) {
	key, what := s.keys.Cluster(name), fmt.Sprintf("cluster %q", name)
	nodesPrefix := s.keys.NodesPrefix(name)
	wr, err := s.update(ctx, "delete "+what, []clientv3.Op{clientv3.OpGet(key), clientv3.OpGet(nodesPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())},
		func(t *txn) error {
			kv := t.get(key)
			if kv == nil {
				return fmt.Errorf("store: delete %s: %w", what, ErrNotFound)
			}
			if expected == -1 {
				return fmt.Errorf("store: delete %s: expected_revision -1 (create only) makes no sense for a delete: %w", what, ErrConflict)
			}
			if err := checkExpected(what, expected, kv.ModRevision); err != nil {
				return err
			}
			if nodeKVs := t.list(nodesPrefix); len(nodeKVs) > 0 && !force {
				names := make([]string, 0, len(nodeKVs))
				for _, kv := range nodeKVs {
					k, _ := s.keys.Parse(string(kv.Key))
					names = append(names, k.Name)
				}
				return fmt.Errorf("store: delete %s: it still has %d nodes (%s); delete them first, or set force to delete them with it: %w",
					what, len(names), summarize(names), ErrFailedPrecondition)
			}
			// The node set is the one we decided on: none added since the read.
			t.guardRange(nodesPrefix)
			t.write(clientv3.OpDelete(key),
				clientv3.OpDelete(nodesPrefix, clientv3.WithPrefix()),
				clientv3.OpDelete(s.keys.IndexPrefix(name), clientv3.WithPrefix()),
				clientv3.OpDelete(s.keys.HealthPrefix(name), clientv3.WithPrefix()))
			return nil
		})
	if err != nil {
		return 0, 0, err
	}
	deleted := int(wr.Responses[1].GetResponseDeleteRange().GetDeleted())
	s.log.Info("cluster deleted", "cluster", name, "revision", wr.Header.Revision, "deleted_nodes", deleted)
	return wr.Header.Revision, deleted, nil
}

func summarize(names []string) string {
	if len(names) > 5 {
		return strings.Join(names[:5], ", ") + fmt.Sprintf(" and %d more", len(names)-5)
	}
	return strings.Join(names, ", ")
}

// PutNode validates and stores n, checked against its cluster and, through
// the index keys, against the values other nodes hold (see PutNodeRequest
// for expected). It returns the stored node with its revision.
func (s *Store) PutNode(ctx context.Context, n *halov1.Node, expected int64) (*halov1.Node, error) {
	if err := topology.ValidateNode(n); err != nil {
		return nil, err
	}
	n = proto.Clone(n).(*halov1.Node)
	n.Revision = 0
	val, err := encode(n)
	if err != nil {
		return nil, err
	}
	ckey, nkey := s.keys.Cluster(n.GetCluster()), s.keys.Node(n.GetCluster(), n.GetName())
	what := fmt.Sprintf("node %q of cluster %q", n.GetName(), n.GetCluster())
	uniques := topology.UniqueValues(n)
	reads := []clientv3.Op{clientv3.OpGet(ckey), clientv3.OpGet(nkey)}
	for _, u := range uniques {
		reads = append(reads, clientv3.OpGet(s.keys.Unique(n.GetCluster(), u)))
	}
	wr, err := s.update(ctx, "put "+what, reads, func(t *txn) error {
		ckv := t.get(ckey)
		if ckv == nil {
			return fmt.Errorf("store: put %s: cluster %q does not exist; create it with PutCluster first: %w", what, n.GetCluster(), ErrFailedPrecondition)
		}
		c, err := decodeCluster(ckv)
		if err != nil {
			return err
		}
		var old *halov1.Node
		if kv := t.get(nkey); kv != nil {
			if old, err = decodeNode(kv); err != nil {
				return err
			}
		}
		if err := checkExpected(what, expected, old.GetRevision()); err != nil {
			return err
		}
		if err := topology.ValidateNodeInCluster(c, n); err != nil {
			return err
		}
		// The index keys read are guarded: no other node takes a value
		// between this check and the commit.
		var conflicts topology.Error
		for _, u := range uniques {
			if kv := t.get(s.keys.Unique(n.GetCluster(), u)); kv != nil {
				if owner := string(kv.Value); owner != n.GetName() {
					var verr *topology.Error
					errors.As(u.Conflict(owner), &verr)
					conflicts.Violations = append(conflicts.Violations, verr.Violations...)
				}
			}
		}
		if len(conflicts.Violations) > 0 {
			return &conflicts
		}
		t.write(clientv3.OpPut(nkey, val))
		keys := s.keys.NodeIndex(n)
		for _, k := range keys {
			t.write(clientv3.OpPut(k, n.GetName()))
		}
		if old != nil {
			for _, k := range s.keys.NodeIndex(old) {
				if !slices.Contains(keys, k) {
					t.write(clientv3.OpDelete(k))
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := proto.Clone(n).(*halov1.Node)
	out.Revision = wr.Header.Revision
	s.log.Info("node stored", "cluster", n.GetCluster(), "node", n.GetName(), "revision", out.Revision)
	return out, nil
}

// GetNode returns one node.
func (s *Store) GetNode(ctx context.Context, cluster, name string) (*halov1.Node, error) {
	resp, err := s.read(ctx, "get node "+name, clientv3.OpGet(s.keys.Node(cluster, name)))
	if err != nil {
		return nil, err
	}
	kvs := resp.Responses[0].GetResponseRange().GetKvs()
	if len(kvs) == 0 {
		return nil, fmt.Errorf("store: node %q of cluster %q: %w", name, cluster, ErrNotFound)
	}
	return decodeNode(kvs[0])
}

// ListNodes returns a cluster's nodes, sorted by name, and the revision they
// were read at.
func (s *Store) ListNodes(ctx context.Context, cluster string) ([]*halov1.Node, int64, error) {
	resp, err := s.read(ctx, "list nodes of "+cluster,
		clientv3.OpGet(s.keys.Cluster(cluster), clientv3.WithCountOnly()),
		clientv3.OpGet(s.keys.NodesPrefix(cluster), clientv3.WithPrefix()))
	if err != nil {
		return nil, 0, err
	}
	if resp.Responses[0].GetResponseRange().GetCount() == 0 {
		return nil, 0, fmt.Errorf("store: cluster %q: %w", cluster, ErrNotFound)
	}
	nodes, err := decodeNodes(resp.Responses[1].GetResponseRange().GetKvs())
	if err != nil {
		return nil, 0, err
	}
	return nodes, resp.Header.Revision, nil
}

// DeleteNode deletes one node, and its index and health keys, and returns
// the revision of the deletion.
func (s *Store) DeleteNode(ctx context.Context, cluster, name string, expected int64) (int64, error) {
	key, what := s.keys.Node(cluster, name), fmt.Sprintf("node %q of cluster %q", name, cluster)
	if expected == -1 {
		return 0, fmt.Errorf("store: delete %s: expected_revision -1 (create only) makes no sense for a delete: %w", what, ErrConflict)
	}
	wr, err := s.update(ctx, "delete "+what, []clientv3.Op{clientv3.OpGet(key)}, func(t *txn) error {
		kv := t.get(key)
		if kv == nil {
			return fmt.Errorf("store: delete %s: %w", what, ErrNotFound)
		}
		old, err := decodeNode(kv)
		if err != nil {
			return err
		}
		if err := checkExpected(what, expected, old.GetRevision()); err != nil {
			return err
		}
		t.write(clientv3.OpDelete(key))
		for _, k := range append(s.keys.NodeIndex(old), s.keys.NodeHealth(cluster, name)...) {
			t.write(clientv3.OpDelete(k))
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	s.log.Info("node deleted", "cluster", cluster, "node", name, "revision", wr.Header.Revision)
	return wr.Header.Revision, nil
}

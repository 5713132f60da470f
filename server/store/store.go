// Package store keeps halo's topology in etcd: one key per cluster and one
// per node under a prefix. Every write is one etcd transaction that is
// validated against the whole cluster as read at one revision and that only
// commits if nothing it read has changed since, so concurrent admins never
// silently overwrite each other and a write is stored completely or not at
// all.
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

// maxAttempts bounds the retries of a write that lost a race it did not ask
// to detect (expected revision 0).
const maxAttempts = 16

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
	prefix  string
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
	if !strings.HasSuffix(cfg.Prefix, "/") {
		return nil, fmt.Errorf("store: Config.Prefix %q must end in /", cfg.Prefix)
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Store{client: cfg.Client, prefix: cfg.Prefix, timeout: cfg.RequestTimeout, log: cfg.Logger}, nil
}

// Keys, under the prefix (names cannot hold '/', which validation
// guarantees):
//
//	clusters/<cluster>                  a Cluster
//	nodes/<cluster>/<node>              a Node
//	index/<cluster>/ip/<ip>             the node holding that ip
//	index/<cluster>/master-ordinal/<n>  the master holding that ordinal
//	index/<cluster>/load-balancer/<node>
//	health/<cluster>/<kind>/<node>      a BackendStatus (health.go)
//
// The index keys let a node write check uniqueness and commit by comparing
// a few keys, instead of reading (and racing with) every node of the
// cluster, so that nodes can be registered in parallel.
func (s *Store) clusterKey(name string) string     { return s.prefix + "clusters/" + name }
func (s *Store) clustersPrefix() string            { return s.prefix + "clusters/" }
func (s *Store) nodesPrefix(cluster string) string { return s.prefix + "nodes/" + cluster + "/" }
func (s *Store) nodeKey(cluster, name string) string {
	return s.nodesPrefix(cluster) + name
}
func (s *Store) indexPrefix(cluster string) string { return s.prefix + "index/" + cluster + "/" }
func (s *Store) lbIndexPrefix(cluster string) string {
	return s.indexPrefix(cluster) + "load-balancer/"
}
func (s *Store) uniqueKey(cluster string, u topology.UniqueValue) string {
	return s.indexPrefix(cluster) + u.Kind + "/" + u.Value
}

// indexKeys are the index keys a stored node owns.
func (s *Store) indexKeys(n *halov1.Node) []string {
	var keys []string
	for _, u := range topology.UniqueValues(n) {
		keys = append(keys, s.uniqueKey(n.GetCluster(), u))
	}
	if topology.HasRole(n, halov1.Role_ROLE_LOAD_BALANCER) {
		keys = append(keys, s.lbIndexPrefix(n.GetCluster())+n.GetName())
	}
	return keys
}

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
		clientv3.OpGet(s.clusterKey(cluster)),
		clientv3.OpGet(s.nodesPrefix(cluster), clientv3.WithPrefix()))
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
		clientv3.OpGet(s.clustersPrefix(), clientv3.WithPrefix()),
		clientv3.OpGet(s.prefix+"nodes/", clientv3.WithPrefix()),
		clientv3.OpGet(s.prefix+"health/", clientv3.WithPrefix()))
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
		st := &halov1.BackendStatus{}
		if err := proto.Unmarshal(kv.Value, st); err != nil {
			s.log.Error("undecodable backend status in etcd", "key", string(kv.Key), "error", err)
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
	key, what := s.clusterKey(c.GetName()), fmt.Sprintf("cluster %q", c.GetName())
	for range maxAttempts {
		resp, err := s.read(ctx, "put "+what,
			clientv3.OpGet(key),
			clientv3.OpGet(s.nodesPrefix(c.GetName()), clientv3.WithPrefix()))
		if err != nil {
			return nil, err
		}
		var stored int64
		if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
			stored = kvs[0].ModRevision
		}
		if err := checkExpected(what, expected, stored); err != nil {
			return nil, err
		}
		nodes, err := decodeNodes(resp.Responses[1].GetResponseRange().GetKvs())
		if err != nil {
			return nil, err
		}
		if err := topology.ValidateClusterNodes(c, nodes); err != nil {
			return nil, err
		}
		cmps := []clientv3.Cmp{
			clientv3.Compare(clientv3.ModRevision(key), "=", stored),
			// The cluster was checked against the stored load-balancer
			// nodes: none has joined since (its index key would be newer)
			// and none has changed.
			clientv3.Compare(clientv3.ModRevision(s.lbIndexPrefix(c.GetName())).WithPrefix(), "<", resp.Header.Revision+1),
		}
		for _, n := range nodes {
			if topology.HasRole(n, halov1.Role_ROLE_LOAD_BALANCER) {
				cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(s.nodeKey(c.GetName(), n.GetName())), "=", n.GetRevision()))
			}
		}
		wr, err := s.commit(ctx, "put "+what, cmps, []clientv3.Op{clientv3.OpPut(key, val)})
		if err != nil {
			return nil, err
		}
		if wr.Succeeded {
			out := proto.Clone(c).(*halov1.Cluster)
			out.Revision = wr.Header.Revision
			s.log.Info("cluster stored", "cluster", c.GetName(), "revision", out.Revision)
			return out, nil
		}
	}
	return nil, fmt.Errorf("store: put %s: concurrent writes kept changing it; try again: %w", what, ErrConflict)
}

// GetCluster returns one cluster.
func (s *Store) GetCluster(ctx context.Context, name string) (*halov1.Cluster, error) {
	resp, err := s.read(ctx, "get cluster "+name, clientv3.OpGet(s.clusterKey(name)))
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
	resp, err := s.read(ctx, "list clusters", clientv3.OpGet(s.clustersPrefix(), clientv3.WithPrefix()))
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
	key, what := s.clusterKey(name), fmt.Sprintf("cluster %q", name)
	for range maxAttempts {
		resp, err := s.read(ctx, "delete "+what,
			clientv3.OpGet(key),
			clientv3.OpGet(s.nodesPrefix(name), clientv3.WithPrefix(), clientv3.WithKeysOnly()))
		if err != nil {
			return 0, 0, err
		}
		kvs := resp.Responses[0].GetResponseRange().GetKvs()
		if len(kvs) == 0 {
			return 0, 0, fmt.Errorf("store: delete %s: %w", what, ErrNotFound)
		}
		stored := kvs[0].ModRevision
		if expected == -1 {
			return 0, 0, fmt.Errorf("store: delete %s: expected_revision -1 (create only) makes no sense for a delete: %w", what, ErrConflict)
		}
		if err := checkExpected(what, expected, stored); err != nil {
			return 0, 0, err
		}
		nodeKVs := resp.Responses[1].GetResponseRange().GetKvs()
		if len(nodeKVs) > 0 && !force {
			names := make([]string, 0, len(nodeKVs))
			for _, kv := range nodeKVs {
				names = append(names, strings.TrimPrefix(string(kv.Key), s.nodesPrefix(name)))
			}
			return 0, 0, fmt.Errorf("store: delete %s: it still has %d nodes (%s); delete them first, or set force to delete them with it: %w",
				what, len(names), summarize(names), ErrFailedPrecondition)
		}
		wr, err := s.commit(ctx, "delete "+what, []clientv3.Cmp{
			clientv3.Compare(clientv3.ModRevision(key), "=", stored),
			// The node set is the one we decided on: none added since the read.
			clientv3.Compare(clientv3.ModRevision(s.nodesPrefix(name)).WithPrefix(), "<", resp.Header.Revision+1),
		}, []clientv3.Op{
			clientv3.OpDelete(key),
			clientv3.OpDelete(s.nodesPrefix(name), clientv3.WithPrefix()),
			clientv3.OpDelete(s.indexPrefix(name), clientv3.WithPrefix()),
			clientv3.OpDelete(s.healthPrefix(name), clientv3.WithPrefix()),
		})
		if err != nil {
			return 0, 0, err
		}
		if wr.Succeeded {
			deleted := int(wr.Responses[1].GetResponseDeleteRange().GetDeleted())
			s.log.Info("cluster deleted", "cluster", name, "revision", wr.Header.Revision, "deleted_nodes", deleted)
			return wr.Header.Revision, deleted, nil
		}
	}
	return 0, 0, fmt.Errorf("store: delete %s: concurrent writes kept changing it; try again: %w", what, ErrConflict)
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
	ckey, nkey := s.clusterKey(n.GetCluster()), s.nodeKey(n.GetCluster(), n.GetName())
	what := fmt.Sprintf("node %q of cluster %q", n.GetName(), n.GetCluster())
	uniques := topology.UniqueValues(n)
	reads := []clientv3.Op{clientv3.OpGet(ckey), clientv3.OpGet(nkey)}
	for _, u := range uniques {
		reads = append(reads, clientv3.OpGet(s.uniqueKey(n.GetCluster(), u)))
	}
	for range maxAttempts {
		resp, err := s.read(ctx, "put "+what, reads...)
		if err != nil {
			return nil, err
		}
		ckvs := resp.Responses[0].GetResponseRange().GetKvs()
		if len(ckvs) == 0 {
			return nil, fmt.Errorf("store: put %s: cluster %q does not exist; create it with PutCluster first: %w", what, n.GetCluster(), ErrFailedPrecondition)
		}
		c, err := decodeCluster(ckvs[0])
		if err != nil {
			return nil, err
		}
		var old *halov1.Node
		if kvs := resp.Responses[1].GetResponseRange().GetKvs(); len(kvs) > 0 {
			if old, err = decodeNode(kvs[0]); err != nil {
				return nil, err
			}
		}
		if err := checkExpected(what, expected, old.GetRevision()); err != nil {
			return nil, err
		}
		if err := topology.ValidateNodeInCluster(c, n); err != nil {
			return nil, err
		}
		cmps := []clientv3.Cmp{
			clientv3.Compare(clientv3.ModRevision(ckey), "=", c.GetRevision()),
			clientv3.Compare(clientv3.ModRevision(nkey), "=", old.GetRevision()),
		}
		var conflicts topology.Error
		for i, u := range uniques {
			var mod int64
			if kvs := resp.Responses[2+i].GetResponseRange().GetKvs(); len(kvs) > 0 {
				if owner := string(kvs[0].Value); owner != n.GetName() {
					var verr *topology.Error
					errors.As(u.Conflict(owner), &verr)
					conflicts.Violations = append(conflicts.Violations, verr.Violations...)
				}
				mod = kvs[0].ModRevision
			}
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(s.uniqueKey(n.GetCluster(), u)), "=", mod))
		}
		if len(conflicts.Violations) > 0 {
			return nil, &conflicts
		}
		then := []clientv3.Op{clientv3.OpPut(nkey, val)}
		keys := s.indexKeys(n)
		for _, k := range keys {
			then = append(then, clientv3.OpPut(k, n.GetName()))
		}
		if old != nil {
			for _, k := range s.indexKeys(old) {
				if !slices.Contains(keys, k) {
					then = append(then, clientv3.OpDelete(k))
				}
			}
		}
		wr, err := s.commit(ctx, "put "+what, cmps, then)
		if err != nil {
			return nil, err
		}
		if wr.Succeeded {
			out := proto.Clone(n).(*halov1.Node)
			out.Revision = wr.Header.Revision
			s.log.Info("node stored", "cluster", n.GetCluster(), "node", n.GetName(), "revision", out.Revision)
			return out, nil
		}
	}
	return nil, fmt.Errorf("store: put %s: concurrent writes kept changing the cluster; try again: %w", what, ErrConflict)
}

// GetNode returns one node.
func (s *Store) GetNode(ctx context.Context, cluster, name string) (*halov1.Node, error) {
	resp, err := s.read(ctx, "get node "+name, clientv3.OpGet(s.nodeKey(cluster, name)))
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
		clientv3.OpGet(s.clusterKey(cluster), clientv3.WithCountOnly()),
		clientv3.OpGet(s.nodesPrefix(cluster), clientv3.WithPrefix()))
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

// DeleteNode deletes one node, and its index keys, and returns the
// revision of the deletion.
func (s *Store) DeleteNode(ctx context.Context, cluster, name string, expected int64) (int64, error) {
	key, what := s.nodeKey(cluster, name), fmt.Sprintf("node %q of cluster %q", name, cluster)
	if expected == -1 {
		return 0, fmt.Errorf("store: delete %s: expected_revision -1 (create only) makes no sense for a delete: %w", what, ErrConflict)
	}
	for range maxAttempts {
		resp, err := s.read(ctx, "delete "+what, clientv3.OpGet(key))
		if err != nil {
			return 0, err
		}
		kvs := resp.Responses[0].GetResponseRange().GetKvs()
		if len(kvs) == 0 {
			return 0, fmt.Errorf("store: delete %s: %w", what, ErrNotFound)
		}
		old, err := decodeNode(kvs[0])
		if err != nil {
			return 0, err
		}
		if err := checkExpected(what, expected, old.GetRevision()); err != nil {
			return 0, err
		}
		then := []clientv3.Op{clientv3.OpDelete(key)}
		for _, k := range append(s.indexKeys(old), s.healthKeys(cluster, name)...) {
			then = append(then, clientv3.OpDelete(k))
		}
		wr, err := s.commit(ctx, "delete "+what, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", old.GetRevision())}, then)
		if err != nil {
			return 0, err
		}
		if wr.Succeeded {
			s.log.Info("node deleted", "cluster", cluster, "node", name, "revision", wr.Header.Revision)
			return wr.Header.Revision, nil
		}
	}
	return 0, fmt.Errorf("store: delete %s: concurrent writes kept changing it; try again: %w", what, ErrConflict)
}

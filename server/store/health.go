package store

import (
	"context"
	"fmt"
	"sort"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	halov1 "github.com/halolb/halo/gen/halo/v1"
)

// PutBackendStatus stores a backend's health (the prober calls it at each
// transition), unless the node no longer exists: a status never outlives
// its node.
func (s *Store) PutBackendStatus(ctx context.Context, st *halov1.BackendStatus) error {
	v, err := proto.Marshal(st)
	if err != nil {
		return fmt.Errorf("store: encode backend status: %w", err)
	}
	node := s.keys.Node(st.GetCluster(), st.GetNode())
	wr, err := s.commit(ctx, "put backend status",
		[]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(node), ">", 0)},
		[]clientv3.Op{clientv3.OpPut(s.keys.Health(st.GetCluster(), st.GetKind(), st.GetNode()), string(v))})
	if err != nil {
		return err
	}
	if !wr.Succeeded {
		return fmt.Errorf("store: backend status of node %q of cluster %q: %w", st.GetNode(), st.GetCluster(), ErrNotFound)
	}
	return nil
}

// BackendStatuses returns the stored health of a cluster's backends
// (every cluster's with cluster ""), sorted by cluster, node and kind.
func (s *Store) BackendStatuses(ctx context.Context, cluster string) ([]*halov1.BackendStatus, int64, error) {
	prefix := s.keys.AllHealthPrefix()
	if cluster != "" {
		prefix = s.keys.HealthPrefix(cluster)
	}
	resp, err := s.read(ctx, "list backend statuses", clientv3.OpGet(prefix, clientv3.WithPrefix()))
	if err != nil {
		return nil, 0, err
	}
	var out []*halov1.BackendStatus
	for _, kv := range resp.Responses[0].GetResponseRange().GetKvs() {
		if st := s.decodeBackendStatus(kv); st != nil {
			out = append(out, st)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.GetCluster() != b.GetCluster() {
			return a.GetCluster() < b.GetCluster()
		}
		if a.GetNode() != b.GetNode() {
			return a.GetNode() < b.GetNode()
		}
		return a.GetKind() < b.GetKind()
	})
	return out, resp.Header.Revision, nil
}

// decodeBackendStatus decodes a health key's value; nil (and logged) if it
// cannot: one bad status must not hide the topology or the other statuses.
func (s *Store) decodeBackendStatus(kv *mvccpb.KeyValue) *halov1.BackendStatus {
	st := &halov1.BackendStatus{}
	if err := proto.Unmarshal(kv.Value, st); err != nil {
		s.log.Error("undecodable backend status in etcd", "key", string(kv.Key), "error", err)
		return nil
	}
	return st
}

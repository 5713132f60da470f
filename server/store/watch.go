package store

import (
	"context"
	"fmt"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	halov1 "github.com/halolb/halo/gen/halo/v1"
)

// Watch calls send with every committed change to cluster (every cluster if
// cluster is ""), from revision from on, one WatchEvent per etcd revision, in
// revision order. With from 0 it starts after the current revision and first
// sends an event with no changes that names it. It also passes on etcd's
// progress notifications as events with no changes. It returns when ctx ends
// (ctx's error), when send fails (send's error), or when the watch cannot go
// on: a *CompactedError if from has been compacted, ErrUnavailable if etcd
// lost its leader or went away.
func (s *Store) Watch(ctx context.Context, cluster string, from int64, send func(*halov1.WatchEvent) error) error {
	if from < 0 {
		return fmt.Errorf("store: watch from revision %d: %w", from, ErrCompacted)
	}
	if from == 0 {
		resp, err := s.read(ctx, "watch: read revision", clientv3.OpGet(s.keys.Cluster(cluster), clientv3.WithCountOnly()))
		if err != nil {
			return err
		}
		from = resp.Header.Revision + 1
		if err := send(&halov1.WatchEvent{Revision: resp.Header.Revision}); err != nil {
			return err
		}
	}
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := s.client.Watch(wctx, s.keys.Prefix(), clientv3.WithPrefix(), clientv3.WithRev(from),
		clientv3.WithPrevKV(), clientv3.WithProgressNotify())
	for resp := range wch {
		if resp.CompactRevision != 0 {
			return fmt.Errorf("store: watch: %w", &CompactedError{Requested: from, Compacted: resp.CompactRevision})
		}
		if err := resp.Err(); err != nil {
			return s.etcdErr(ctx, "watch", err)
		}
		if resp.IsProgressNotify() {
			if err := send(&halov1.WatchEvent{Revision: resp.Header.Revision}); err != nil {
				return err
			}
			continue
		}
		// One response may hold several revisions; one revision is never
		// split across responses.
		var ev *halov1.WatchEvent
		flush := func() error {
			if ev == nil || len(ev.Changes) == 0 {
				return nil
			}
			from = ev.Revision + 1
			return send(ev)
		}
		for _, e := range resp.Events {
			if ev == nil || ev.Revision != e.Kv.ModRevision {
				if err := flush(); err != nil {
					return err
				}
				ev = &halov1.WatchEvent{Revision: e.Kv.ModRevision}
			}
			if ch := s.change(e, cluster); ch != nil {
				ev.Changes = append(ev.Changes, ch)
			}
		}
		if err := flush(); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("store: watch: etcd closed the watch: %w", ErrUnavailable)
}

// change turns an etcd event into a Change, or nil if the key is not a
// cluster, node or backend status of the watched cluster.
func (s *Store) change(e *clientv3.Event, cluster string) *halov1.Change {
	key, ok := s.keys.Parse(string(e.Kv.Key))
	if !ok || (cluster != "" && key.Cluster != cluster) {
		return nil
	}
	kv, typ := e.Kv, halov1.ChangeType_CHANGE_TYPE_PUT
	if e.Type == mvccpb.DELETE {
		typ = halov1.ChangeType_CHANGE_TYPE_DELETE
		kv = e.PrevKv
	}
	switch key.Type {
	case KeyCluster:
		c := &halov1.Cluster{Name: key.Cluster}
		if kv != nil {
			if d, err := decodeCluster(kv); err == nil {
				c = d
			} else {
				s.log.Error("undecodable cluster in etcd", "key", string(e.Kv.Key), "error", err)
			}
		}
		return &halov1.Change{Type: typ, Object: &halov1.Change_Cluster{Cluster: c}}
	case KeyNode:
		n := &halov1.Node{Cluster: key.Cluster, Name: key.Name}
		if kv != nil {
			if d, err := decodeNode(kv); err == nil {
				n = d
			} else {
				s.log.Error("undecodable node in etcd", "key", string(e.Kv.Key), "error", err)
			}
		}
		return &halov1.Change{Type: typ, Object: &halov1.Change_Node{Node: n}}
	case KeyHealth:
		if kv == nil {
			return nil
		}
		st := s.decodeBackendStatus(kv)
		if st == nil {
			return nil
		}
		return &halov1.Change{Type: typ, Object: &halov1.Change_BackendStatus{BackendStatus: st}}
	}
	return nil
}

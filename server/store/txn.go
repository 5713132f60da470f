package store

import (
	"context"
	"fmt"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// maxAttempts bounds the attempts of an update whose commit keeps losing
// races it did not ask to detect (expected revision 0). Each lost attempt
// means another write committed, so N writers racing on the same keys all
// finish within N attempts.
const maxAttempts = 16

// txn is one attempt of an update: what it read, at one revision, and the
// guards and writes its apply function adds.
type txn struct {
	// rev is the revision every read was made at.
	rev   int64
	reads map[string][]*mvccpb.KeyValue
	cmps  []clientv3.Cmp
	ops   []clientv3.Op
}

// get returns what the read of key (a single-key read) found, nil if the
// key does not exist. update guarded it already.
func (t *txn) get(key string) *mvccpb.KeyValue {
	kvs, ok := t.reads[key]
	if !ok {
		panic(fmt.Sprintf("store: txn: %q was not read", key))
	}
	if len(kvs) == 0 {
		return nil
	}
	return kvs[0]
}

// list returns what the read of prefix (a range read) found. It is not
// guarded: apply guards what it relies on, with guard or guardRange.
func (t *txn) list(prefix string) []*mvccpb.KeyValue {
	kvs, ok := t.reads[prefix]
	if !ok {
		panic(fmt.Sprintf("store: txn: %q was not read", prefix))
	}
	return kvs
}

// guard makes the commit fail unless key is still at revision mod (still
// missing if mod is 0): nobody wrote or deleted it since.
func (t *txn) guard(key string, mod int64) {
	t.cmps = append(t.cmps, clientv3.Compare(clientv3.ModRevision(key), "=", mod))
}

// guardRange makes the commit fail if a key under prefix was written
// (created or changed) since the read. A deletion under prefix does not
// fail it: guard the keys whose deletion matters one by one.
func (t *txn) guardRange(prefix string) {
	t.cmps = append(t.cmps, clientv3.Compare(clientv3.ModRevision(prefix).WithPrefix(), "<", t.rev+1))
}

// write adds writes to the commit, in order.
func (t *txn) write(ops ...clientv3.Op) { t.ops = append(t.ops, ops...) }

// update is the store's compare-and-swap, in the manner of etcd's
// concurrency.STM: it makes reads (clientv3.OpGet) at one revision, lets
// apply check what they found and say what to write, and commits the writes
// only if nothing apply relied on has changed since the read. When something
// has, it reads again and calls apply again, at most maxAttempts times in
// all, then fails with ErrConflict. It returns the committed transaction's
// response (its Responses are those of apply's writes, in order).
//
// Every single-key read is guarded (see txn.guard) before apply sees it, at
// the revision it was found at (so a single-key read must return the key:
// no count-only or keys-only options); range reads are not (see txn.list). An error of apply ends the update at
// once with that error: a caller's expected revision that does not hold, or
// a failed validation, is an answer, not a race to retry.
//
// concurrency.STM itself does not fit: it reads and compares single keys
// only (no range reads, "nothing written under this prefix" guards or
// prefix deletions, which the cluster writes need), reads key by key, and
// retries without bound.
func (s *Store) update(ctx context.Context, op string, reads []clientv3.Op, apply func(t *txn) error) (*clientv3.TxnResponse, error) {
	for range maxAttempts {
		resp, err := s.read(ctx, op, reads...)
		if err != nil {
			return nil, err
		}
		t := &txn{rev: resp.Header.Revision, reads: make(map[string][]*mvccpb.KeyValue, len(reads))}
		for i, r := range reads {
			kvs := resp.Responses[i].GetResponseRange().GetKvs()
			key := string(r.KeyBytes())
			t.reads[key] = kvs
			if len(r.RangeBytes()) == 0 {
				var mod int64
				if len(kvs) > 0 {
					mod = kvs[0].ModRevision
				}
				t.guard(key, mod)
			}
		}
		if err := apply(t); err != nil {
			return nil, err
		}
		wr, err := s.commit(ctx, op, t.cmps, t.ops)
		if err != nil {
			return nil, err
		}
		if wr.Succeeded {
			return wr, nil
		}
	}
	return nil, fmt.Errorf("store: %s: concurrent writes kept changing it; try again: %w", op, ErrConflict)
}

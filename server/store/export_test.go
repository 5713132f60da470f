package store

import (
	"context"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// MaxAttempts is how many times an update tries before ErrConflict.
const MaxAttempts = maxAttempts

// Swap runs one update that reads key and the range under prefix (which it
// guards), calls during with the attempt's number (from 1) between the read
// and the commit, stops with during's error if any, and else writes val to
// key. It returns what key held when read (on the successful attempt).
func (s *Store) Swap(ctx context.Context, key, prefix string, during func(attempt int) error, val string) (string, error) {
	var attempt int
	var old string
	_, err := s.update(ctx, "swap "+key, []clientv3.Op{clientv3.OpGet(key), clientv3.OpGet(prefix, clientv3.WithPrefix())},
		func(t *txn) error {
			attempt++
			old = ""
			if kv := t.get(key); kv != nil {
				old = string(kv.Value)
			}
			t.guardRange(prefix)
			if err := during(attempt); err != nil {
				return err
			}
			t.write(clientv3.OpPut(key, val))
			return nil
		})
	return old, err
}

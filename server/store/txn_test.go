package store_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/halolb/halo/server/servertest"
	"github.com/halolb/halo/server/store"
)

func newStore(t *testing.T) (*store.Store, *clientv3.Client) {
	t.Helper()
	if testing.Short() {
		t.Skip("embedded etcd")
	}
	e := servertest.NewEtcd(t)
	client := servertest.EtcdClient(t, e.Endpoint)
	s, err := store.New(store.Config{Client: client})
	if err != nil {
		t.Fatal(err)
	}
	return s, client
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestUpdateRetriesWhatItReadChanging: the compare-and-swap under every
// store write commits only if nothing it relied on changed since its read,
// reads again when something did, and gives up with ErrConflict after
// MaxAttempts attempts; an error of its own ends it at once.
func TestUpdateRetriesWhatItReadChanging(t *testing.T) {
	s, client := newStore(t)
	ctx := testCtx(t)
	put := func(k, v string) {
		t.Helper()
		if _, err := client.Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	get := func(k string) string {
		t.Helper()
		resp, err := client.Get(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) == 0 {
			return "<none>"
		}
		return string(resp.Kvs[0].Value)
	}
	t.Run("key changed once", func(t *testing.T) {
		put("/t1/k", "a")
		attempts := 0
		old, err := s.Swap(ctx, "/t1/k", "/t1/r/", func(n int) error {
			attempts = n
			if n == 1 {
				put("/t1/k", "b")
			}
			return nil
		}, "c")
		if err != nil || attempts != 2 || old != "b" || get("/t1/k") != "c" {
			t.Fatalf("err %v, %d attempts, read %q, stored %q; want success on attempt 2 over b", err, attempts, old, get("/t1/k"))
		}
	})
	t.Run("missing key created", func(t *testing.T) {
		attempts := 0
		_, err := s.Swap(ctx, "/t2/k", "/t2/r/", func(n int) error {
			attempts = n
			if n == 1 {
				put("/t2/k", "other")
			}
			return nil
		}, "mine")
		if err != nil || attempts != 2 {
			t.Fatalf("err %v after %d attempts; want success on attempt 2", err, attempts)
		}
	})
	t.Run("key always changing", func(t *testing.T) {
		put("/t3/k", "a")
		attempts := 0
		_, err := s.Swap(ctx, "/t3/k", "/t3/r/", func(n int) error {
			attempts = n
			put("/t3/k", fmt.Sprint("other-", n))
			return nil
		}, "mine")
		if !errors.Is(err, store.ErrConflict) || attempts != store.MaxAttempts {
			t.Fatalf("err %v after %d attempts; want ErrConflict after %d", err, attempts, store.MaxAttempts)
		}
		if got, want := get("/t3/k"), fmt.Sprint("other-", store.MaxAttempts); got != want {
			t.Fatalf("stored %q, want the last interfering write %q", got, want)
		}
	})
	t.Run("guarded range written", func(t *testing.T) {
		put("/t4/r/x", "1")
		attempts := 0
		_, err := s.Swap(ctx, "/t4/k", "/t4/r/", func(n int) error {
			attempts = n
			switch n {
			case 1:
				put("/t4/r/x", "2") // changed
			case 2:
				put("/t4/r/y", "1") // added
			}
			return nil
		}, "mine")
		if err != nil || attempts != 3 {
			t.Fatalf("err %v after %d attempts; want success on attempt 3", err, attempts)
		}
	})
	t.Run("deletion under guarded range", func(t *testing.T) {
		put("/t5/r/x", "1")
		attempts := 0
		_, err := s.Swap(ctx, "/t5/k", "/t5/r/", func(n int) error {
			attempts = n
			if _, err := client.Delete(ctx, "/t5/r/x"); err != nil {
				return err
			}
			return nil
		}, "mine")
		if err != nil || attempts != 1 {
			t.Fatalf("err %v after %d attempts; a deletion under the range is documented not to conflict", err, attempts)
		}
	})
	t.Run("apply error", func(t *testing.T) {
		put("/t6/k", "a")
		attempts := 0
		boom := errors.New("boom")
		_, err := s.Swap(ctx, "/t6/k", "/t6/r/", func(n int) error {
			attempts = n
			put("/t6/k", "b")
			return boom
		}, "mine")
		if !errors.Is(err, boom) || attempts != 1 || get("/t6/k") != "b" {
			t.Fatalf("err %v after %d attempts, stored %q; want boom at once, nothing written", err, attempts, get("/t6/k"))
		}
	})
}

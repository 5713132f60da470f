package store_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/server/store"
	"github.com/halolb/halo/server/topology"
)

// race runs f(0..n-1) in n goroutines released together, and returns their
// errors.
func race(n int, f func(i int) error) []error {
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			errs[i] = f(i)
		})
	}
	close(start)
	wg.Wait()
	return errs
}

func worker(name, ip string) *halov1.Node {
	return &halov1.Node{Cluster: "prod", Name: name, Ip: ip, Roles: []halov1.Role{halov1.Role_ROLE_WORKER}}
}

// TestConcurrentNodeWrites races PutNode calls against one etcd: a unique
// value goes to exactly one node and the losers get the validation error
// naming the winner; concurrent updates of one node lose nothing (its index
// keys follow its last write) and, being at most MaxAttempts, all finish
// within the retry bound; writers holding the same expected revision get
// exactly one success and ErrConflict for the rest.
func TestConcurrentNodeWrites(t *testing.T) {
	s, client := newStore(t)
	ctx := testCtx(t)
	if _, err := s.PutCluster(ctx, &halov1.Cluster{Name: "prod"}, 0); err != nil {
		t.Fatal(err)
	}
	ipIndex := func() map[string]string {
		t.Helper()
		prefix := s.Keys().IndexPrefix("prod") + "ip/"
		resp, err := client.Get(ctx, prefix, clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, kv := range resp.Kvs {
			out[strings.TrimPrefix(string(kv.Key), prefix)] = string(kv.Value)
		}
		return out
	}

	t.Run("one ip, many nodes", func(t *testing.T) {
		const rounds, writers = 4, 8
		for r := range rounds {
			ip := fmt.Sprintf("10.1.%d.1", r)
			errs := race(writers, func(i int) error {
				_, err := s.PutNode(ctx, worker(fmt.Sprintf("n%d-%d", r, i), ip), 0)
				return err
			})
			var winner string
			for i, err := range errs {
				var verr *topology.Error
				switch {
				case err == nil && winner == "":
					winner = fmt.Sprintf("n%d-%d", r, i)
				case err == nil:
					t.Fatalf("round %d: %s and n%d-%d both got ip %s", r, winner, r, i, ip)
				case !errors.As(err, &verr) || !strings.Contains(err.Error(), "node.ip"):
					t.Fatalf("round %d: writer %d: %v; want the topology error on node.ip", r, i, err)
				}
			}
			if winner == "" {
				t.Fatalf("round %d: no writer got ip %s: %v", r, ip, errs)
			}
			for _, err := range errs {
				if err != nil && !strings.Contains(err.Error(), fmt.Sprintf("%q", winner)) {
					t.Errorf("round %d: %v does not name the winner %s", r, err, winner)
				}
			}
			if owner := ipIndex()[ip]; owner != winner {
				t.Fatalf("round %d: ip %s indexed to %q, want %s", r, ip, owner, winner)
			}
		}
		nodes, _, err := s.ListNodes(ctx, "prod")
		if err != nil || len(nodes) != rounds {
			t.Fatalf("%d nodes stored (%v), want %d", len(nodes), err, rounds)
		}
	})

	t.Run("one node, many updates", func(t *testing.T) {
		const rounds, writers = 3, store.MaxAttempts
		for r := range rounds {
			errs := race(writers, func(i int) error {
				_, err := s.PutNode(ctx, worker("mover", fmt.Sprintf("10.2.%d.%d", r, i+1)), 0)
				return err
			})
			for i, err := range errs {
				if err != nil {
					t.Fatalf("round %d: writer %d: %v; %d writers must all finish within %d attempts", r, i, err, writers, store.MaxAttempts)
				}
			}
			n, err := s.GetNode(ctx, "prod", "mover")
			if err != nil {
				t.Fatal(err)
			}
			var held []string
			for ip, owner := range ipIndex() {
				if owner == "mover" {
					held = append(held, ip)
				}
			}
			if len(held) != 1 || held[0] != n.GetIp() {
				t.Fatalf("round %d: mover is stored with ip %s and indexed with %v: a lost update left index keys behind", r, n.GetIp(), held)
			}
		}
	})

	t.Run("one expected revision, many writers", func(t *testing.T) {
		n, err := s.PutNode(ctx, worker("pinned", "10.3.0.1"), 0)
		if err != nil {
			t.Fatal(err)
		}
		const writers = 8
		errs := race(writers, func(i int) error {
			w := worker("pinned", "10.3.0.1")
			w.Labels = map[string]string{"writer": fmt.Sprint(i)}
			_, err := s.PutNode(ctx, w, n.GetRevision())
			return err
		})
		ok := 0
		for i, err := range errs {
			switch {
			case err == nil:
				ok++
			case !errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), "not the expected"):
				t.Errorf("writer %d: %v; want ErrConflict", i, err)
			}
		}
		if ok != 1 {
			t.Fatalf("%d writers succeeded with the same expected revision, want 1", ok)
		}
	})
}

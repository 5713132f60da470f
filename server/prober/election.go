package prober

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/halolb/halo/internal/backoff"
	"github.com/halolb/halo/server/store"
)

// DefaultElectionTTL is the election session's TTL: a leader that dies
// without resigning is replaced within it (the etcd library's default is
// 60 s, far too long for health checking).
const DefaultElectionTTL = 3 * time.Second

// Election makes exactly one replica at a time run the prober.
type Election struct {
	// Client is the etcd client.
	Client *clientv3.Client
	// Prefix is halo's etcd key prefix (store.Keys says where the election
	// lives under it). Default store.DefaultPrefix; it must end in "/".
	Prefix string
	// Name is this replica's name, shown as the prober's leader.
	Name string
	// TTL is the session's TTL; zero means DefaultElectionTTL.
	TTL time.Duration
	// Logger receives the election's logs; nil discards them.
	Logger *slog.Logger
}

// Run campaigns until ctx is done. While this replica leads it runs
// lead(lctx), where lctx ends when leadership is lost (the session's lease
// expired: etcd unreachable for longer than the TTL) or ctx ends; then it
// resigns, so another replica takes over at once, and campaigns again.
// It returns nil after ctx ends, once lead has returned.
func (e *Election) Run(ctx context.Context, lead func(ctx context.Context)) error {
	if e.Client == nil || e.Name == "" {
		return errors.New("prober: election: Client and Name are required")
	}
	if err := store.CheckPrefix(e.Prefix); err != nil {
		return fmt.Errorf("prober: election: Prefix: %w", err)
	}
	log := e.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ttl := e.TTL
	if ttl <= 0 {
		ttl = DefaultElectionTTL
	}
	retry := backoff.Backoff{Initial: 200 * time.Millisecond, Max: 5 * time.Second, Jitter: 0.2}
	for ctx.Err() == nil {
		if err := e.term(ctx, ttl, log, lead); err != nil {
			log.Warn("prober election", "error", err)
			if !retry.Wait(ctx) {
				break
			}
			continue
		}
		retry.Reset()
	}
	return nil
}

// term is one session: campaign, lead, resign.
func (e *Election) term(ctx context.Context, ttl time.Duration, log *slog.Logger, lead func(context.Context)) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sess, err := concurrency.NewSession(e.Client, concurrency.WithTTL(max(1, int(ttl/time.Second))), concurrency.WithContext(sctx))
	if err != nil {
		return fmt.Errorf("session: %w", err)
	}
	defer func() {
		// Revoke the lease so the next leader need not wait for its TTL;
		// briefly, as a lease etcd cannot be told about expires anyway.
		sess.Orphan()
		rctx, rcancel := context.WithTimeout(context.Background(), time.Second)
		_, _ = e.Client.Revoke(rctx, sess.Lease())
		rcancel()
	}()
	el := concurrency.NewElection(sess, store.NewKeys(e.Prefix).ProberElectionPrefix())
	if err := el.Campaign(sctx, e.Name); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("campaign: %w", err)
	}
	log.Info("leading the health probes", "replica", e.Name)
	lctx, lcancel := context.WithCancel(sctx)
	stop := context.AfterFunc(ctx, lcancel)
	go func() {
		select {
		case <-sess.Done():
			log.Warn("lost the probe leadership (etcd session ended)", "replica", e.Name)
			lcancel()
		case <-lctx.Done():
		}
	}()
	lead(lctx)
	lcancel()
	stop()
	return nil
}

// Leader returns the name of the replica leading the probes, or "".
func Leader(ctx context.Context, client *clientv3.Client, prefix string) (string, error) {
	resp, err := client.Get(ctx, store.NewKeys(prefix).ProberElectionPrefix(), clientv3.WithFirstCreate()...)
	if err != nil {
		return "", fmt.Errorf("prober: leader: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return "", nil
	}
	return string(resp.Kvs[0].Value), nil
}

// Package replicas registers each halo-server replica in etcd under a lease,
// so that any replica can find the live ones (to fan status queries out to
// them) and a dead replica disappears when its lease expires.
package replicas

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/halolb/halo/internal/backoff"
	"github.com/halolb/halo/server/store"
)

// DefaultTTL is how long a replica stays listed after it stops renewing.
const DefaultTTL = 5 * time.Second

// Replica is one registered replica.
type Replica struct {
	// Name identifies it in status.
	Name string
	// Address is where other replicas reach its gRPC API (host:port).
	Address string
}

// Config configures a Registration.
type Config struct {
	// Client is the etcd client. Required.
	Client *clientv3.Client
	// Prefix is halo's key prefix (store.Keys says where the replicas
	// live under it). Default store.DefaultPrefix; it must end in "/".
	Prefix string
	// Self is this replica. Required.
	Self Replica
	// TTL is the lease's time to live (whole seconds, at least 1).
	// Zero: DefaultTTL.
	TTL time.Duration
	// Logger receives its logs. Nil: discard.
	Logger *slog.Logger
}

// Registration keeps one replica registered while it runs.
type Registration struct {
	cfg Config
	key string
}

// New returns a Registration. It starts nothing.
func New(cfg Config) (*Registration, error) {
	if cfg.Client == nil || cfg.Self.Name == "" {
		return nil, errors.New("replicas: Config.Client and Config.Self.Name are required")
	}
	if strings.Contains(cfg.Self.Name, "/") {
		return nil, fmt.Errorf("replicas: name %q must not contain /", cfg.Self.Name)
	}
	if err := store.CheckPrefix(cfg.Prefix); err != nil {
		return nil, fmt.Errorf("replicas: Config.Prefix: %w", err)
	}
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Registration{cfg: cfg, key: store.NewKeys(cfg.Prefix).Replica(cfg.Self.Name)}, nil
}

// Run registers the replica and keeps the lease alive until ctx ends, then
// revokes it so the replica disappears at once. If etcd loses the lease
// (unreachable for longer than the TTL), Run registers again when it can.
func (r *Registration) Run(ctx context.Context) error {
	ttl := max(1, int(r.cfg.TTL/time.Second))
	retry := backoff.Backoff{Initial: 200 * time.Millisecond, Max: 5 * time.Second, Jitter: 0.2}
	for {
		// The session (its grant and keepalive) ends with ctx, or after a
		// lost lease is revoked.
		sctx, cancel := context.WithCancel(ctx)
		sess, err := concurrency.NewSession(r.cfg.Client, concurrency.WithTTL(ttl), concurrency.WithContext(sctx))
		if err == nil {
			pctx, pcancel := context.WithTimeout(ctx, r.cfg.TTL)
			_, err = r.cfg.Client.Put(pctx, r.key, r.cfg.Self.Address, clientv3.WithLease(sess.Lease()))
			pcancel()
			if err == nil {
				r.cfg.Logger.Debug("replica registered", "replica", r.cfg.Self.Name, "address", r.cfg.Self.Address)
				retry.Reset()
				select {
				case <-ctx.Done():
				case <-sess.Done():
					r.cfg.Logger.Warn("replica registration lost (etcd unreachable); registering again", "replica", r.cfg.Self.Name)
				}
			}
			// Revoke, so that the replica disappears at once; briefly, as a
			// lease etcd cannot be told about expires by itself.
			sess.Orphan()
			rctx, rcancel := context.WithTimeout(context.Background(), time.Second)
			_, _ = r.cfg.Client.Revoke(rctx, sess.Lease())
			rcancel()
		}
		cancel()
		if ctx.Err() != nil || !retry.Wait(ctx) {
			return nil
		}
	}
}

// List returns the replicas registered under halo's key prefix, sorted by
// name.
func List(ctx context.Context, client *clientv3.Client, prefix string) ([]Replica, error) {
	keys := store.NewKeys(prefix)
	resp, err := client.Get(ctx, keys.ReplicasPrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("replicas: list: %w", err)
	}
	out := make([]Replica, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		if k, ok := keys.Parse(string(kv.Key)); ok && k.Type == store.KeyReplica {
			out = append(out, Replica{Name: k.Name, Address: string(kv.Value)})
		}
	}
	return out, nil
}

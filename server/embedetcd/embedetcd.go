// Package embedetcd runs a single-member etcd inside the halo-server process
// (go.etcd.io/etcd/server/v3/embed), for the quick start and for tests. It
// listens for clients on a unix socket in its data directory and for no
// peers, so it opens no TCP port: `etcdctl --endpoints unix://<dir>/etcd.sock`
// reaches it.
package embedetcd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap/zapcore"

	"github.com/halolb/halo/internal/slogzap"
)

// Config configures an embedded etcd.
type Config struct {
	// Dir is the data directory; it is created if missing. Required.
	Dir string
	// Logger receives etcd's logs (its Info as Debug). Nil: discard.
	Logger *slog.Logger
	// UnsafeNoFsync turns fsync off: for tests only, a crash loses data.
	UnsafeNoFsync bool
	// StartTimeout bounds the wait for etcd to be ready. Zero: 1 minute.
	StartTimeout time.Duration
	// CompactionRetention is how much history etcd keeps (periodic
	// auto-compaction). Zero: 1 hour. Watches that fall further behind must
	// relist.
	CompactionRetention time.Duration
	// TLS, if set, serves clients over TLS (a unixs:// endpoint; clients
	// verify the server certificate against the name "etcd.sock").
	TLS *TLS
}

// TLS configures the client listener's TLS.
type TLS struct {
	// CertFile and KeyFile are the server certificate and key.
	CertFile, KeyFile string
	// TrustedCAFile verifies client certificates.
	TrustedCAFile string
	// ClientCertAuth requires every client to present a certificate signed
	// by TrustedCAFile.
	ClientCertAuth bool
}

// Etcd is a running embedded etcd.
type Etcd struct {
	e        *embed.Etcd
	endpoint string
	closing  *atomic.Bool
}

// socketName is the client socket's file name inside Dir.
const socketName = "etcd.sock"

// Start starts etcd and waits until it serves. The caller must Close it.
func Start(ctx context.Context, cfg Config) (_ *Etcd, err error) {
	if cfg.Dir == "" {
		return nil, errors.New("embedetcd: Config.Dir is required")
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("embedetcd: data dir: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("embedetcd: data dir: %w", err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = time.Minute
	}
	if cfg.CompactionRetention <= 0 {
		cfg.CompactionRetention = time.Hour
	}
	sock := filepath.Join(dir, socketName)
	// A socket left by a process that died stops the listener.
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("embedetcd: remove stale socket: %w", err)
	}
	// The client listener is a unix socket (etcd reads host+path); peers get
	// none, as a single member never dials itself. The advertised peer URL
	// only names the member.
	client := url.URL{Scheme: "unix", Path: sock}
	if cfg.TLS != nil {
		client.Scheme = "unixs"
	}
	peer := url.URL{Scheme: "http", Host: "localhost:2380"}

	ec := embed.NewConfig()
	ec.Name = "halo"
	ec.Dir = filepath.Join(dir, "etcd")
	ec.ListenClientUrls = []url.URL{client}
	ec.AdvertiseClientUrls = []url.URL{client}
	ec.ListenPeerUrls = nil
	ec.AdvertisePeerUrls = []url.URL{peer}
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)
	ec.UnsafeNoFsync = cfg.UnsafeNoFsync
	if t := cfg.TLS; t != nil {
		ec.ClientTLSInfo = transport.TLSInfo{CertFile: t.CertFile, KeyFile: t.KeyFile, TrustedCAFile: t.TrustedCAFile, ClientCertAuth: t.ClientCertAuth}
	}
	ec.AutoCompactionMode = embed.CompactorModePeriodic
	ec.AutoCompactionRetention = cfg.CompactionRetention.String()
	ec.Logger = "zap"
	closing := &atomic.Bool{}
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(slogzap.New(cfg.Logger.Handler(), slogzap.Options{
		InfoAsDebug: true,
		Attrs:       []slog.Attr{slog.String("component", "etcd")},
		Level: func(e zapcore.Entry, l slog.Level) slog.Level {
			// While halo stops etcd, etcd reports its listeners closing as
			// errors; and two start-up warnings do not apply to a member
			// that serves one local halo-server over a unix socket.
			if closing.Load() || quietMessages[e.Message] {
				return slog.LevelDebug
			}
			return l
		},
	}))
	// Under 2 s, so that losing the (only) member is noticed quickly, and
	// well above the tick for a single member.
	ec.TickMs = 100
	ec.ElectionMs = 1000

	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("embedetcd: start in %s: %w", dir, err)
	}
	defer func() {
		if err != nil {
			e.Close()
		}
	}()
	timer := time.NewTimer(cfg.StartTimeout)
	defer timer.Stop()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		return nil, fmt.Errorf("embedetcd: start: %w", err)
	case <-e.Server.StopNotify():
		return nil, errors.New("embedetcd: etcd stopped while starting")
	case <-timer.C:
		return nil, fmt.Errorf("embedetcd: not ready after %v", cfg.StartTimeout)
	case <-ctx.Done():
		return nil, fmt.Errorf("embedetcd: start: %w", ctx.Err())
	}
	return &Etcd{e: e, endpoint: client.String(), closing: closing}, nil
}

// quietMessages are etcd warnings that say nothing to a halo operator.
var quietMessages = map[string]bool{
	"Running http and grpc server on single port. This is not recommended for production.": true,
	"simple token is not cryptographically signed":                                         true,
}

// Endpoint is the client URL to give an etcd client (unix:///…/etcd.sock,
// or unixs:// with TLS).
func (e *Etcd) Endpoint() string { return e.endpoint }

// Err reports a fatal error of a running etcd.
func (e *Etcd) Err() <-chan error { return e.e.Err() }

// Close stops etcd and waits until it has stopped.
func (e *Etcd) Close() {
	e.closing.Store(true)
	e.e.Close()
	<-e.e.Server.StopNotify()
}

// Package server is halo's control plane: it stores the endpoint topology in
// etcd (embedded, or an external cluster), streams every node's Envoy
// resources over ADS (Delta and SotW), and serves the admin gRPC API with
// server reflection, gRPC health and Prometheus metrics, all on one port. cmd/halo-server
// only parses flags into a Config and calls Run.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"sync"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/internal/slogzap"
	"github.com/halolb/halo/server/ads"
	"github.com/halolb/halo/server/api"
	"github.com/halolb/halo/server/auth"
	"github.com/halolb/halo/server/embedetcd"
	"github.com/halolb/halo/server/prober"
	"github.com/halolb/halo/server/publisher"
	"github.com/halolb/halo/server/replicas"
	"github.com/halolb/halo/server/snapcache"
	"github.com/halolb/halo/server/store"
	"github.com/halolb/halo/server/topowatch"
)

// Server is a halo-server. Create it with New and start it with Run.
type Server struct {
	cfg   Config
	tls   *tls.Config
	log   *slog.Logger
	ready chan struct{}
	cache *snapcache.Cache

	mu          sync.Mutex
	addr        net.Addr
	metricsAddr net.Addr
	etcdEP      []string
}

// New checks cfg and returns a Server. It starts nothing.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	cfg = cfg.withDefaults()
	tlsCfg, err := cfg.serverTLS(cfg.Logger.With("component", "tls"))
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	return &Server{cfg: cfg, tls: tlsCfg, log: cfg.Logger, ready: make(chan struct{}), cache: snapcache.New()}, nil
}

// Cache holds what the server's xDS streams serve. The publisher keeps it
// in step with the topology; an embedder (or a test) may publish a
// snapshot of its own through it, which lasts until the cluster's next
// topology change.
func (s *Server) Cache() *snapcache.Cache { return s.cache }

// Ready is closed once the server accepts gRPC calls.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addr is the gRPC listener's address; nil before Ready.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// MetricsAddr is the metrics listener's address; nil before Ready or
// without metrics.
func (s *Server) MetricsAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.metricsAddr
}

// EtcdEndpoints are the etcd client URLs the server uses (the embedded
// etcd's socket in the quick start); nil before Ready.
func (s *Server) EtcdEndpoints() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.etcdEP
}

// Run binds the listeners, starts etcd (embedded) or connects to it, serves
// until ctx is done, then shuts down gracefully: health turns NOT_SERVING,
// open watches end, in-flight calls finish (up to ShutdownTimeout), and etcd
// stops. It returns nil after a clean shutdown, else the first fatal error,
// and only once everything it started has stopped.
func (s *Server) Run(ctx context.Context) (err error) {
	lis := s.cfg.Listener
	if lis == nil {
		if lis, err = net.Listen("tcp", s.cfg.ListenAddress); err != nil {
			return fmt.Errorf("server: listen (--listen): %w", err)
		}
	}
	defer lis.Close()
	mlis := s.cfg.MetricsListener
	if mlis == nil && s.cfg.MetricsAddress != "" {
		if mlis, err = net.Listen("tcp", s.cfg.MetricsAddress); err != nil {
			return fmt.Errorf("server: listen (--metrics-listen): %w", err)
		}
	}
	if mlis != nil {
		defer mlis.Close()
	}

	endpoints := s.cfg.EtcdEndpoints
	var etcdErr <-chan error
	if len(endpoints) == 0 {
		e, err := embedetcd.Start(ctx, embedetcd.Config{Dir: s.cfg.DataDir, Logger: s.log, UnsafeNoFsync: s.cfg.EtcdUnsafeNoFsync})
		if err != nil {
			if ctx.Err() != nil {
				return nil // cancelled while starting: a clean stop
			}
			return fmt.Errorf("server: %w", err)
		}
		defer e.Close()
		endpoints, etcdErr = []string{e.Endpoint()}, e.Err()
		s.log.Info("embedded etcd started", "data_dir", s.cfg.DataDir, "endpoint", e.Endpoint())
	}
	client, err := s.etcdClient(endpoints)
	if err != nil {
		return err
	}
	defer client.Close()

	st, err := store.New(store.Config{Client: client, Prefix: s.cfg.EtcdPrefix, RequestTimeout: s.cfg.EtcdRequestTimeout, Logger: s.log.With("component", "store")})
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	shutdown, endStreams := context.WithCancel(context.Background())
	defer endStreams()
	registry := prometheus.NewRegistry()
	replica, advertise := s.cfg.identity(lis.Addr())
	cache := s.cache
	var authz *auth.Authorizer
	if s.cfg.ClientCAFile != "" {
		policy, err := auth.LoadPolicyFile(s.cfg.PolicyFile, s.log.With("component", "auth"))
		if err != nil {
			return fmt.Errorf("server: --policy: %w", err)
		}
		if authz, err = auth.New(auth.Config{TrustDomain: s.cfg.TrustDomain, Policy: policy, Logger: s.log.With("component", "auth")}); err != nil {
			return fmt.Errorf("server: %w", err)
		}
	}
	adsCfg := ads.Config{Cache: cache, Replica: replica, Logger: s.log.With("component", "xds"), Shutdown: shutdown, Registerer: registry}
	if authz != nil {
		adsCfg.Authorize = authz.CheckNode
	}
	adsSrv, err := ads.New(adsCfg)
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	// One topology watch per replica: the publisher follows it always, the
	// prober's controller only while it leads the probes.
	topo, err := topowatch.New(topowatch.Config{Store: st, Logger: s.log.With("component", "topology"), Registerer: registry})
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	pub, err := publisher.New(publisher.Config{Cache: cache, Logger: s.log.With("component", "publisher"), Registerer: registry})
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	topo.Subscribe(pub)
	reg, err := replicas.New(replicas.Config{Client: client, Prefix: s.cfg.EtcdPrefix, Self: replicas.Replica{Name: replica, Address: advertise},
		TTL: s.cfg.ReplicaTTL, Logger: s.log.With("component", "replicas")})
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	probes, err := prober.NewController(prober.ControllerConfig{Store: st, Topology: topo, Logger: s.log.With("component", "prober"),
		Election: &prober.Election{Client: client, Prefix: s.cfg.EtcdPrefix, Name: replica, TTL: s.cfg.ProbeElectionTTL, Logger: s.log.With("component", "prober")}})
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	peerOpts, err := s.cfg.peerDialOptions(s.log.With("component", "tls"))
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	services, err := api.New(api.Config{Store: st, Logger: s.log.With("component", "api"), Shutdown: shutdown, ADS: adsSrv,
		Replica: replica, XDSAddress: advertise, PeerDialOptions: peerOpts,
		Replicas: func(ctx context.Context) ([]replicas.Replica, error) {
			return replicas.List(ctx, client, s.cfg.EtcdPrefix)
		},
		ProbeLeader: func(ctx context.Context) (string, error) {
			return prober.Leader(ctx, client, s.cfg.EtcdPrefix)
		}})
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}

	// Namespaced: the embedded etcd registers its own grpc_server_* metrics
	// in the default registry, which /metrics serves too.
	grpcMetrics := grpcprom.NewServerMetrics(
		grpcprom.WithServerCounterOptions(grpcprom.WithNamespace("halo")),
		grpcprom.WithServerHandlingTimeHistogram(grpcprom.WithHistogramNamespace("halo")))
	registry.MustRegister(grpcMetrics)
	opts := []grpc.ServerOption{
		// Thousands of mostly idle agent connections (gRPC releases each
		// one's write buffer between writes by default): notice dead peers.
		// Fixed flow-control windows turn off BDP estimation, whose pings
		// would add a write and a read per small xDS message.
		grpc.InitialWindowSize(1 << 20),
		grpc.InitialConnWindowSize(1 << 20),
		// gRPC reads a TLS connection through a bufio.Reader of this size,
		// held for the connection's life (plaintext ones share a pooled
		// buffer): 8 KiB instead of 32 saves 24 KiB per agent in production
		// mode; xDS messages are a few hundred bytes.
		grpc.ReadBufferSize(8 << 10),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
	}
	unary := []grpc.UnaryServerInterceptor{grpcMetrics.UnaryServerInterceptor(), logging.UnaryServerInterceptor(rpcLogger(s.log), rpcLogOptions...)}
	stream := []grpc.StreamServerInterceptor{skipADS(grpcMetrics.StreamServerInterceptor()), skipADS(logging.StreamServerInterceptor(rpcLogger(s.log), rpcLogOptions...))}
	if authz != nil {
		// After metrics and logging, so that refused calls are counted and logged.
		unary = append(unary, authz.UnaryInterceptor())
		stream = append(stream, authz.StreamInterceptor())
	}
	opts = append(opts, grpc.ChainUnaryInterceptor(unary...), grpc.ChainStreamInterceptor(stream...))
	if s.tls != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(s.tls)))
	}
	gs := grpc.NewServer(opts...)
	services.Register(gs)
	adsSrv.Register(gs)
	healthSrv := health.NewServer()
	healthpb.RegisterHealthServer(gs, healthSrv)
	if !s.cfg.DisableReflection {
		reflection.Register(gs)
	}
	grpcMetrics.InitializeMetrics(gs)
	setHealth(healthSrv, healthpb.HealthCheckResponse_NOT_SERVING)

	var metricsSrv *http.Server
	if mlis != nil {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(prometheus.Gatherers{prometheus.DefaultGatherer, registry}, promhttp.HandlerOpts{}))
		if s.cfg.EnablePprof {
			mux.HandleFunc("/debug/pprof/", pprof.Index)
			mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
			mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
			mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
			mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		}
		metricsSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	}

	s.mu.Lock()
	s.addr, s.etcdEP = lis.Addr(), endpoints
	if mlis != nil {
		s.metricsAddr = mlis.Addr()
	}
	s.mu.Unlock()

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := gs.Serve(lis); err != nil {
			return fmt.Errorf("server: serve gRPC: %w", err)
		}
		return nil
	})
	if metricsSrv != nil {
		g.Go(func() error {
			if err := metricsSrv.Serve(mlis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("server: serve metrics: %w", err)
			}
			return nil
		})
	}
	if etcdErr != nil {
		g.Go(func() error {
			select {
			case err := <-etcdErr:
				return fmt.Errorf("server: embedded etcd failed: %w", err)
			case <-gctx.Done():
				return nil
			}
		})
	}
	g.Go(func() error {
		s.watchEtcdHealth(gctx, client, healthSrv)
		return nil
	})
	g.Go(func() error { return topo.Run(gctx) })
	g.Go(func() error { return adsSrv.Run(gctx) })
	g.Go(func() error { return reg.Run(gctx) })
	g.Go(func() error { return probes.Run(gctx) })
	g.Go(func() error {
		<-gctx.Done()
		s.log.Info("shutting down")
		healthSrv.Shutdown()
		endStreams()
		s.gracefulStop(gs)
		if metricsSrv != nil {
			sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
			defer cancel()
			_ = metricsSrv.Shutdown(sctx)
		}
		return nil
	})
	close(s.ready)
	s.log.Info("serving", "address", lis.Addr().String(), "replica", replica, "advertise", advertise, "tls", s.tls != nil, "client_certificates", authz != nil,
		"reflection", !s.cfg.DisableReflection, "etcd", endpoints, "metrics", addrString(s.MetricsAddr()))
	err = g.Wait()
	s.log.Info("stopped", "error", err)
	return err
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

// gracefulStop lets in-flight calls finish, then cuts what is left after
// ShutdownTimeout (grpc-go's GracefulStop alone waits forever for streams).
func (s *Server) gracefulStop(gs *grpc.Server) {
	done := make(chan struct{})
	go func() {
		gs.GracefulStop()
		close(done)
	}()
	timer := time.NewTimer(s.cfg.ShutdownTimeout)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		s.log.Warn("graceful stop timed out; closing the remaining connections", "timeout", s.cfg.ShutdownTimeout)
		gs.Stop()
		<-done
	}
}

// etcdClient connects to etcd; clientv3 dials lazily, so an etcd that is
// down now shows up as NOT_SERVING health and UNAVAILABLE calls, not as a
// failed start.
func (s *Server) etcdClient(endpoints []string) (*clientv3.Client, error) {
	cfg := clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: s.cfg.EtcdDialTimeout,
		Logger: slogzap.New(s.log.Handler(), slogzap.Options{InfoAsDebug: true,
			Attrs: []slog.Attr{slog.String("component", "etcd-client")}}),
		// Keepalives notice a dead etcd connection and move to another endpoint.
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
	}
	if s.cfg.EtcdCAFile != "" || s.cfg.EtcdCertFile != "" {
		info := transport.TLSInfo{TrustedCAFile: s.cfg.EtcdCAFile, CertFile: s.cfg.EtcdCertFile, KeyFile: s.cfg.EtcdKeyFile}
		tc, err := info.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("server: etcd TLS (--etcd-cacert/--etcd-cert/--etcd-key): %w", err)
		}
		cfg.TLS = tc
	}
	c, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("server: etcd client for %v: %w", endpoints, err)
	}
	return c, nil
}

// watchEtcdHealth sets the gRPC health status from etcd's availability: a
// linearizable read (which needs a quorum) every HealthInterval.
func (s *Server) watchEtcdHealth(ctx context.Context, client *clientv3.Client, hs *health.Server) {
	serving := false
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		cctx, cancel := context.WithTimeout(ctx, s.cfg.HealthInterval)
		_, err := client.Get(clientv3.WithRequireLeader(cctx), store.NewKeys(s.cfg.EtcdPrefix).ClustersPrefix(), clientv3.WithCountOnly())
		cancel()
		if ctx.Err() != nil {
			return
		}
		switch {
		case err == nil && !serving:
			s.log.Info("etcd is available: serving")
			setHealth(hs, healthpb.HealthCheckResponse_SERVING)
		case err != nil && serving:
			s.log.Warn("etcd is unavailable: not serving", "error", err)
			setHealth(hs, healthpb.HealthCheckResponse_NOT_SERVING)
		}
		serving = err == nil
		timer.Reset(s.cfg.HealthInterval)
	}
}

// setHealth sets the whole server's status and each halo service's.
func setHealth(hs *health.Server, st healthpb.HealthCheckResponse_ServingStatus) {
	hs.SetServingStatus("", st)
	for _, svc := range []string{halov1.TopologyService_ServiceDesc.ServiceName, halov1.EndpointService_ServiceDesc.ServiceName,
		halov1.StatusService_ServiceDesc.ServiceName, discoveryv3.AggregatedDiscoveryService_ServiceDesc.ServiceName} {
		hs.SetServingStatus(svc, st)
	}
}

// rpcLogger logs gRPC calls through slog.
func rpcLogger(l *slog.Logger) logging.Logger {
	l = l.With("component", "grpc")
	return logging.LoggerFunc(func(ctx context.Context, lvl logging.Level, msg string, fields ...any) {
		l.Log(ctx, slog.Level(lvl), msg, fields...)
	})
}

// rpcLogOptions log each finished call: client mistakes at Debug (the store
// logs every accepted write at Info), server-side failures louder.
var rpcLogOptions = []logging.Option{
	logging.WithLogOnEvents(logging.FinishCall),
	logging.WithLevels(func(c codes.Code) logging.Level {
		switch c {
		case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted:
			return logging.LevelWarn
		case codes.Internal, codes.Unknown, codes.DataLoss, codes.Unimplemented:
			return logging.LevelError
		}
		return logging.LevelDebug
	}),
}

// skipADS runs an interceptor on every stream but ADS streams.
func skipADS(i grpc.StreamServerInterceptor) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if strings.HasPrefix(info.FullMethod, "/envoy.service.discovery.v3.AggregatedDiscoveryService/") {
			return handler(srv, ss)
		}
		return i(srv, ss, info, handler)
	}
}

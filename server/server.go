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
func (s *Server) Run(ctx context.Context) error {
	r, err := s.start(ctx)
	if err != nil {
		if errors.Is(err, errCancelledStart) {
			return nil // cancelled while starting: a clean stop
		}
		return err
	}
	defer r.close()
	return s.serve(ctx, r)
}

// errCancelledStart is start's error when ctx ended while etcd started.
var errCancelledStart = errors.New("server: cancelled while starting")

// running is what start built and serve runs: the listeners, etcd, the
// components, and the gRPC and metrics servers around them.
type running struct {
	lis, mlis  net.Listener // mlis is nil without metrics
	endpoints  []string     // the etcd client URLs in use
	etcdErr    <-chan error // the embedded etcd's fatal errors; nil for an external etcd
	client     *clientv3.Client
	replica    string // this replica's name
	advertise  string // the xDS address it registers
	authz      *auth.Authorizer
	topo       *topowatch.Watcher
	ads        *ads.Server
	reg        *replicas.Registration
	probes     *prober.Controller
	grpc       *grpc.Server
	health     *health.Server
	metrics    *http.Server // nil without metrics
	endStreams context.CancelFunc

	// undo releases what start acquired, last first.
	undo []func()
}

// close releases everything start acquired, in the reverse order.
func (r *running) close() {
	for i := len(r.undo) - 1; i >= 0; i-- {
		r.undo[i]()
	}
	r.undo = nil
}

// start builds every part of the server and starts none of its loops; on
// an error it releases what it had acquired (as etcd's embed.StartEtcd
// does), so a failed start leaves no listener, etcd or client behind.
func (s *Server) start(ctx context.Context) (_ *running, err error) {
	r := &running{}
	defer func() {
		if err != nil {
			r.close()
		}
	}()
	if r.lis = s.cfg.Listener; r.lis == nil {
		if r.lis, err = net.Listen("tcp", s.cfg.ListenAddress); err != nil {
			return nil, fmt.Errorf("server: listen (--listen): %w", err)
		}
	}
	r.undo = append(r.undo, func() { _ = r.lis.Close() })
	if r.mlis = s.cfg.MetricsListener; r.mlis == nil && s.cfg.MetricsAddress != "" {
		if r.mlis, err = net.Listen("tcp", s.cfg.MetricsAddress); err != nil {
			return nil, fmt.Errorf("server: listen (--metrics-listen): %w", err)
		}
	}
	if r.mlis != nil {
		r.undo = append(r.undo, func() { _ = r.mlis.Close() })
	}

	r.endpoints = s.cfg.EtcdEndpoints
	if len(r.endpoints) == 0 {
		e, err := embedetcd.Start(ctx, embedetcd.Config{Dir: s.cfg.DataDir, Logger: s.log, UnsafeNoFsync: s.cfg.EtcdUnsafeNoFsync})
		if err != nil {
			if ctx.Err() != nil {
				return nil, errCancelledStart
			}
			return nil, fmt.Errorf("server: %w", err)
		}
		r.undo = append(r.undo, e.Close)
		r.endpoints, r.etcdErr = []string{e.Endpoint()}, e.Err()
		s.log.Info("embedded etcd started", "data_dir", s.cfg.DataDir, "endpoint", e.Endpoint())
	}
	if r.client, err = s.etcdClient(r.endpoints); err != nil {
		return nil, err
	}
	r.undo = append(r.undo, func() { _ = r.client.Close() })
	shutdown, endStreams := context.WithCancel(context.Background())
	r.endStreams = endStreams
	r.undo = append(r.undo, endStreams)

	registry := prometheus.NewRegistry()
	services, err := s.components(shutdown, r, registry)
	if err != nil {
		return nil, err
	}
	r.grpc, r.health = s.grpcServer(r, services, registry)
	if r.mlis != nil {
		r.metrics = s.metricsServer(registry)
	}
	return r, nil
}

// components builds halo's parts on r's etcd client: the store, the
// topology watch and its consumers (the publisher, the prober's
// controller), the ADS server, the replica registration and the admin
// services, which it returns. Streams end when shutdown does.
func (s *Server) components(shutdown context.Context, r *running, registry *prometheus.Registry) (*api.Services, error) {
	wrap := func(err error) error { return fmt.Errorf("server: %w", err) }
	st, err := store.New(store.Config{Client: r.client, Prefix: s.cfg.EtcdPrefix, RequestTimeout: s.cfg.EtcdRequestTimeout, Logger: s.log.With("component", "store")})
	if err != nil {
		return nil, wrap(err)
	}
	r.replica, r.advertise = s.cfg.identity(r.lis.Addr())
	if s.cfg.ClientCAFile != "" {
		policy, err := auth.LoadPolicyFile(s.cfg.PolicyFile, s.log.With("component", "auth"))
		if err != nil {
			return nil, fmt.Errorf("server: --policy: %w", err)
		}
		if r.authz, err = auth.New(auth.Config{TrustDomain: s.cfg.TrustDomain, Policy: policy, Logger: s.log.With("component", "auth")}); err != nil {
			return nil, wrap(err)
		}
	}
	adsCfg := ads.Config{Cache: s.cache, Replica: r.replica, Logger: s.log.With("component", "xds"), Shutdown: shutdown, Registerer: registry}
	if r.authz != nil {
		adsCfg.Authorize = r.authz.CheckNode
	}
	if r.ads, err = ads.New(adsCfg); err != nil {
		return nil, wrap(err)
	}
	// One topology watch per replica: the publisher follows it always, the
	// prober's controller only while it leads the probes.
	if r.topo, err = topowatch.New(topowatch.Config{Store: st, Logger: s.log.With("component", "topology"), Registerer: registry}); err != nil {
		return nil, wrap(err)
	}
	pub, err := publisher.New(publisher.Config{Cache: s.cache, Logger: s.log.With("component", "publisher"), Registerer: registry})
	if err != nil {
		return nil, wrap(err)
	}
	r.topo.Subscribe(pub)
	if r.reg, err = replicas.New(replicas.Config{Client: r.client, Prefix: s.cfg.EtcdPrefix, Self: replicas.Replica{Name: r.replica, Address: r.advertise},
		TTL: s.cfg.ReplicaTTL, Logger: s.log.With("component", "replicas")}); err != nil {
		return nil, wrap(err)
	}
	proberLog := s.log.With("component", "prober")
	if r.probes, err = prober.NewController(prober.ControllerConfig{Store: st, Topology: r.topo, Logger: proberLog,
		Election: &prober.Election{Client: r.client, Prefix: s.cfg.EtcdPrefix, Name: r.replica, TTL: s.cfg.ProbeElectionTTL, Logger: proberLog}}); err != nil {
		return nil, wrap(err)
	}
	peerOpts, err := s.cfg.peerDialOptions(s.log.With("component", "tls"))
	if err != nil {
		return nil, wrap(err)
	}
	client := r.client
	services, err := api.New(api.Config{Store: st, Logger: s.log.With("component", "api"), Shutdown: shutdown, ADS: r.ads,
		Replica: r.replica, XDSAddress: r.advertise, PeerDialOptions: peerOpts,
		Replicas: func(ctx context.Context) ([]replicas.Replica, error) {
			return replicas.List(ctx, client, s.cfg.EtcdPrefix)
		},
		ProbeLeader: func(ctx context.Context) (string, error) {
			return prober.Leader(ctx, client, s.cfg.EtcdPrefix)
		}})
	if err != nil {
		return nil, wrap(err)
	}
	return services, nil
}

// grpcServer builds the gRPC server of r's services on one port: the admin
// services, ADS, health (NOT_SERVING until etcd answers) and reflection,
// with metrics, logging and, in production mode, authorization.
func (s *Server) grpcServer(r *running, services *api.Services, registry *prometheus.Registry) (*grpc.Server, *health.Server) {
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
	if r.authz != nil {
		// After metrics and logging, so that refused calls are counted and logged.
		unary = append(unary, r.authz.UnaryInterceptor())
		stream = append(stream, r.authz.StreamInterceptor())
	}
	opts = append(opts, grpc.ChainUnaryInterceptor(unary...), grpc.ChainStreamInterceptor(stream...))
	if s.tls != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(s.tls)))
	}
	gs := grpc.NewServer(opts...)
	services.Register(gs)
	r.ads.Register(gs)
	healthSrv := health.NewServer()
	healthpb.RegisterHealthServer(gs, healthSrv)
	if !s.cfg.DisableReflection {
		reflection.Register(gs)
	}
	grpcMetrics.InitializeMetrics(gs)
	setHealth(healthSrv, healthpb.HealthCheckResponse_NOT_SERVING)
	return gs, healthSrv
}

// metricsServer serves /metrics (halo's registry and the default one,
// where the embedded etcd registers) and, when enabled, pprof.
func (s *Server) metricsServer(registry *prometheus.Registry) *http.Server {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(prometheus.Gatherers{prometheus.DefaultGatherer, registry}, promhttp.HandlerOpts{}))
	if s.cfg.EnablePprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
}

// serve runs what start built until ctx ends, then drains: health turns
// NOT_SERVING, streams end, in-flight calls finish (up to
// ShutdownTimeout). It returns once every loop has stopped.
func (s *Server) serve(ctx context.Context, r *running) error {
	s.mu.Lock()
	s.addr, s.etcdEP = r.lis.Addr(), r.endpoints
	if r.mlis != nil {
		s.metricsAddr = r.mlis.Addr()
	}
	s.mu.Unlock()

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := r.grpc.Serve(r.lis); err != nil {
			return fmt.Errorf("server: serve gRPC: %w", err)
		}
		return nil
	})
	if r.metrics != nil {
		g.Go(func() error {
			if err := r.metrics.Serve(r.mlis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("server: serve metrics: %w", err)
			}
			return nil
		})
	}
	if r.etcdErr != nil {
		g.Go(func() error {
			select {
			case err := <-r.etcdErr:
				return fmt.Errorf("server: embedded etcd failed: %w", err)
			case <-gctx.Done():
				return nil
			}
		})
	}
	g.Go(func() error {
		s.watchEtcdHealth(gctx, r.client, r.health)
		return nil
	})
	g.Go(func() error { return r.topo.Run(gctx) })
	g.Go(func() error { return r.ads.Run(gctx) })
	g.Go(func() error { return r.reg.Run(gctx) })
	g.Go(func() error { return r.probes.Run(gctx) })
	g.Go(func() error {
		<-gctx.Done()
		s.log.Info("shutting down")
		r.health.Shutdown()
		r.endStreams()
		s.gracefulStop(r.grpc)
		if r.metrics != nil {
			sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
			defer cancel()
			_ = r.metrics.Shutdown(sctx)
		}
		return nil
	})
	close(s.ready)
	s.log.Info("serving", "address", r.lis.Addr().String(), "replica", r.replica, "advertise", r.advertise, "tls", s.tls != nil,
		"client_certificates", r.authz != nil, "reflection", !s.cfg.DisableReflection, "etcd", r.endpoints, "metrics", addrString(s.MetricsAddr()))
	err := g.Wait()
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

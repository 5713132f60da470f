// Package servertest starts real halo-servers, backed by a real embedded
// etcd, for other packages' tests, the way net/http/httptest starts HTTP
// servers: one line of setup, real sockets, cleanup registered on the test.
//
//	srv := servertest.New(t)
//	client := halov1.NewTopologyServiceClient(srv.Conn)
package servertest

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/halolb/halo/internal/pki"
	"github.com/halolb/halo/internal/slogzap"
	"github.com/halolb/halo/server"
	"github.com/halolb/halo/server/embedetcd"
)

// startTimeout bounds how long New waits for a server to be ready.
const startTimeout = 60 * time.Second

// Server is a halo-server running for a test.
type Server struct {
	// Config is the server's configuration. Change it between
	// NewUnstarted and Start.
	Config server.Config
	// Addr is the gRPC address (host:port), set by Start.
	Addr string
	// Conn is a plaintext gRPC client connection to Addr, set by Start.
	Conn *grpc.ClientConn
	// Etcd is a client of the server's etcd (the embedded one, or
	// Config.EtcdEndpoints), for tests that look at what is stored.
	Etcd *clientv3.Client

	t      testing.TB
	srv    *server.Server
	cancel context.CancelFunc
	done   chan error
	closed bool
}

// Option changes the Config of a server before it starts.
type Option func(*server.Config)

// New starts a halo-server with an embedded etcd in a fresh temporary
// directory and a gRPC listener on 127.0.0.1:0, and stops it when the test
// ends.
func New(t testing.TB, opts ...Option) *Server {
	t.Helper()
	s := NewUnstarted(t, opts...)
	s.Start()
	return s
}

// NewUnstarted returns a Server whose Config is ready but that has not
// started. Call Start.
func NewUnstarted(t testing.TB, opts ...Option) *Server {
	t.Helper()
	cfg := server.Config{
		DataDir:           t.TempDir(),
		EtcdUnsafeNoFsync: true,
		HealthInterval:    200 * time.Millisecond,
		ShutdownTimeout:   5 * time.Second,
		Logger:            Logger(t),
	}
	for _, o := range opts {
		o(&cfg)
	}
	return &Server{Config: cfg, t: t}
}

// Start starts the server and waits until it serves. The server stops when
// the test ends, or at Close.
func (s *Server) Start() {
	s.t.Helper()
	if s.Config.Listener == nil {
		s.Config.Listener = Listen(s.t)
	}
	srv, err := server.New(s.Config)
	if err != nil {
		s.t.Fatalf("servertest: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.srv, s.cancel, s.done, s.closed = srv, cancel, make(chan error, 1), false
	go func() { s.done <- srv.Run(ctx) }()
	s.t.Cleanup(s.Close)

	timer := time.NewTimer(startTimeout)
	defer timer.Stop()
	select {
	case <-srv.Ready():
	case err := <-s.done:
		s.done <- err
		s.t.Fatalf("servertest: server stopped while starting: %v", err)
	case <-timer.C:
		s.t.Fatalf("servertest: server not ready after %v", startTimeout)
	}
	s.Addr = srv.Addr().String()
	s.Conn, err = grpc.NewClient(s.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		s.t.Fatalf("servertest: dial %s: %v", s.Addr, err)
	}
	s.Etcd = EtcdClient(s.t, srv.EtcdEndpoints()...)
}

// Server returns the running server.
func (s *Server) Server() *server.Server { return s.srv }

// Close stops the server and waits until it has stopped (its etcd too). It
// logs what it is waiting for if that takes long, and fails the test if Run
// returned an error. Calling it again does nothing.
func (s *Server) Close() {
	s.t.Helper()
	if s.closed || s.srv == nil {
		return
	}
	s.closed = true
	if s.Conn != nil {
		s.Conn.Close()
	}
	if s.Etcd != nil {
		s.Etcd.Close()
	}
	s.cancel()
	timer := time.NewTimer(5 * time.Second)
	defer timer.Stop()
	for {
		select {
		case err := <-s.done:
			if err != nil {
				s.t.Errorf("servertest: server at %s stopped with: %v", s.Addr, err)
			}
			// The next Start needs a fresh listener: this one is closed.
			s.Config.Listener = nil
			return
		case <-timer.C:
			s.t.Logf("servertest: still waiting for the server at %s to stop (gRPC streams, etcd)", s.Addr)
			timer.Reset(5 * time.Second)
		}
	}
}

// Listen returns a TCP listener on 127.0.0.1 on a free port, closed when the
// test ends if nobody else closed it.
func Listen(t testing.TB) net.Listener {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("servertest: listen: %v", err)
	}
	t.Cleanup(func() { lis.Close() })
	return lis
}

// Logger returns a slog logger that writes to the test's output (warnings
// and errors; every level with HALO_TEST_DEBUG=1).
func Logger(t testing.TB) *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("HALO_TEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: level}))
}

// EtcdClient returns an etcd client of endpoints, closed when the test ends.
func EtcdClient(t testing.TB, endpoints ...string) *clientv3.Client {
	t.Helper()
	return etcdClient(t, nil, endpoints...)
}

func etcdClient(t testing.TB, tc *tls.Config, endpoints ...string) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		TLS:         tc,
		Logger:      slogzap.New(Logger(t).Handler(), slogzap.Options{InfoAsDebug: true}),
	})
	if err != nil {
		t.Fatalf("servertest: etcd client: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Etcd is an embedded etcd on its own, for tests that run halo-servers
// against an external etcd (WithEtcd) or take etcd away.
type Etcd struct {
	// Endpoint is the etcd client URL.
	Endpoint string
	// Client is a client of it.
	Client *clientv3.Client

	// TLS is set for an etcd that requires TLS client certificates.
	TLS *EtcdTLS

	t      testing.TB
	dir    string
	e      *embedetcd.Etcd
	srvTLS *embedetcd.TLS
}

// EtcdTLS is the PKI of an etcd started by NewEtcdTLS: files a halo-server
// is configured with.
type EtcdTLS struct {
	// CAFile verifies the etcd server (and signed the client certificate).
	CAFile string
	// ClientCertFile and ClientKeyFile are a client certificate it accepts.
	ClientCertFile, ClientKeyFile string
	// CA issues more certificates, e.g. from another CA for negative tests.
	CA *pki.CA
}

// NewEtcd starts an embedded etcd in a temporary directory, stopped when the
// test ends.
func NewEtcd(t testing.TB) *Etcd {
	t.Helper()
	e := &Etcd{t: t, dir: filepath.Join(t.TempDir(), "etcd")}
	e.Start()
	t.Cleanup(e.Stop)
	return e
}

// NewEtcdTLS starts an embedded etcd that serves TLS and requires client
// certificates from its own CA; e.TLS names the files a client needs.
func NewEtcdTLS(t testing.TB) *Etcd {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.NewCA("etcd-ca", 0)
	if err != nil {
		t.Fatal(err)
	}
	caFile, err := ca.WriteCertFile(dir, "etcd-ca")
	if err != nil {
		t.Fatal(err)
	}
	// etcd's client names a unix socket's server by the socket's file name.
	srv, err := ca.Issue(pki.Request{CommonName: "etcd", DNSNames: []string{"etcd.sock"}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	srvCert, srvKey, err := srv.WriteFiles(dir, "etcd-server")
	if err != nil {
		t.Fatal(err)
	}
	cli, err := ca.Issue(pki.Request{CommonName: "halo-server", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	cliCert, cliKey, err := cli.WriteFiles(dir, "etcd-client")
	if err != nil {
		t.Fatal(err)
	}
	e := &Etcd{t: t, dir: filepath.Join(dir, "etcd"),
		TLS:    &EtcdTLS{CAFile: caFile, ClientCertFile: cliCert, ClientKeyFile: cliKey, CA: ca},
		srvTLS: &embedetcd.TLS{CertFile: srvCert, KeyFile: srvKey, TrustedCAFile: caFile, ClientCertAuth: true}}
	e.Start()
	t.Cleanup(e.Stop)
	return e
}

// Start (re)starts the etcd on its data directory.
func (e *Etcd) Start() {
	e.t.Helper()
	if e.e != nil {
		return
	}
	ee, err := embedetcd.Start(context.Background(), embedetcd.Config{Dir: e.dir, UnsafeNoFsync: true, Logger: Logger(e.t), TLS: e.srvTLS})
	if err != nil {
		e.t.Fatalf("servertest: %v", err)
	}
	e.e, e.Endpoint = ee, ee.Endpoint()
	if e.Client == nil {
		var tc *tls.Config
		if e.TLS != nil {
			info := transport.TLSInfo{CertFile: e.TLS.ClientCertFile, KeyFile: e.TLS.ClientKeyFile, TrustedCAFile: e.TLS.CAFile}
			if tc, err = info.ClientConfig(); err != nil {
				e.t.Fatal(err)
			}
		}
		e.Client = etcdClient(e.t, tc, e.Endpoint)
	}
}

// Stop stops the etcd; Start brings it back with its data.
func (e *Etcd) Stop() {
	if e.e != nil {
		e.e.Close()
		e.e = nil
	}
}

// WithEtcd points a server at e instead of an embedded etcd of its own,
// with e's client certificate if it requires one.
func WithEtcd(e *Etcd) Option {
	return func(c *server.Config) {
		c.EtcdEndpoints = []string{e.Endpoint}
		if e.TLS != nil {
			c.EtcdCAFile, c.EtcdCertFile, c.EtcdKeyFile = e.TLS.CAFile, e.TLS.ClientCertFile, e.TLS.ClientKeyFile
		}
	}
}

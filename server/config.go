package server

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/halolb/halo/internal/certfile"
	"github.com/halolb/halo/internal/identity"
	"github.com/halolb/halo/server/prober"
	"github.com/halolb/halo/server/replicas"
	"github.com/halolb/halo/server/store"
)

// Defaults of Config.
const (
	DefaultListenAddress   = "127.0.0.1:18000"
	DefaultDataDir         = "halo-data"
	DefaultShutdownTimeout = 10 * time.Second
	DefaultEtcdDialTimeout = 5 * time.Second
	DefaultHealthInterval  = 2 * time.Second
)

// Config configures a halo-server. The zero value is the quick start:
// plaintext gRPC on 127.0.0.1:18000, an embedded etcd in ./halo-data.
type Config struct {
	// ListenAddress is where gRPC (admin API, health, reflection) listens.
	// Default DefaultListenAddress. A non-loopback address needs TLS.
	ListenAddress string
	// Listener, if set, is used instead of ListenAddress (tests pass one
	// bound to 127.0.0.1:0). Run closes it.
	Listener net.Listener
	// TLSCertFile and TLSKeyFile turn on server TLS. Both or neither.
	TLSCertFile, TLSKeyFile string
	// PeerCAFile verifies the other replicas' certificates when this one
	// asks them for status (with TLS). Empty: ClientCAFile when set, else
	// the system's roots.
	PeerCAFile string
	// ClientCAFile turns on production mode: every caller must present a
	// certificate that this CA bundle verifies, carrying a SPIFFE-style
	// identity of TrustDomain, and is authorized by it (nodes subscribe to
	// xDS as themselves only; users by their role in PolicyFile; replicas
	// read). Needs TLSCertFile and PolicyFile. The certificate files and
	// the CA bundle are read again when they change.
	ClientCAFile string
	// TrustDomain is the trust domain of the identities accepted in
	// production mode. Default identity.DefaultTrustDomain.
	TrustDomain string
	// PolicyFile gives user identities their roles (admin, read-only); see
	// package auth. Read again when it changes.
	PolicyFile string

	// ReplicaName names this replica in agent status and in etcd's replica
	// registry. Default: <hostname>:<gRPC port>.
	ReplicaName string
	// AdvertiseAddress is where other replicas and Envoy bootstraps reach
	// this replica's gRPC port. Default: the listen address, or
	// <hostname>:<port> when it listens on every address.
	AdvertiseAddress string
	// ReplicaTTL is how long a replica that stopped stays registered.
	// Default replicas.DefaultTTL.
	ReplicaTTL time.Duration
	// ProbeElectionTTL is the TTL of the session with which replicas elect
	// the one that probes the backends: a prober that dies without a word
	// is replaced within it. Default health.DefaultElectionTTL.
	ProbeElectionTTL time.Duration

	// DataDir holds the embedded etcd when EtcdEndpoints is empty.
	// Default DefaultDataDir.
	DataDir string
	// EtcdEndpoints are the client URLs of an external etcd cluster. Empty:
	// run an embedded single-member etcd in DataDir.
	EtcdEndpoints []string
	// EtcdCAFile, EtcdCertFile and EtcdKeyFile configure TLS to the external
	// etcd: the CA to verify it, and a client certificate (both or neither).
	EtcdCAFile, EtcdCertFile, EtcdKeyFile string
	// EtcdPrefix is put before every key. Default store.DefaultPrefix.
	EtcdPrefix string
	// EtcdDialTimeout bounds the first connection to etcd. Default
	// DefaultEtcdDialTimeout.
	EtcdDialTimeout time.Duration
	// EtcdRequestTimeout bounds each etcd request. Default
	// store.DefaultRequestTimeout.
	EtcdRequestTimeout time.Duration
	// EtcdUnsafeNoFsync turns fsync off in the embedded etcd: tests only.
	EtcdUnsafeNoFsync bool

	// MetricsAddress is where Prometheus metrics are served (/metrics).
	// Empty: no metrics listener (unless MetricsListener is set).
	MetricsAddress string
	// MetricsListener, if set, is used instead of MetricsAddress.
	MetricsListener net.Listener
	// DisableReflection turns gRPC server reflection off.
	DisableReflection bool
	// EnablePprof serves Go's profiler at /debug/pprof/ on the metrics
	// listener.
	EnablePprof bool
	// HealthInterval is how often etcd's availability is checked for the
	// gRPC health service. Default DefaultHealthInterval.
	HealthInterval time.Duration
	// ShutdownTimeout bounds the graceful stop; then connections are cut.
	// Default DefaultShutdownTimeout.
	ShutdownTimeout time.Duration
	// Logger receives every log. Nil: discard.
	Logger *slog.Logger
}

// withDefaults fills every unset field with its default.
func (c Config) withDefaults() Config {
	if c.ListenAddress == "" {
		c.ListenAddress = DefaultListenAddress
	}
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	if c.EtcdPrefix == "" {
		c.EtcdPrefix = store.DefaultPrefix
	}
	if c.EtcdDialTimeout == 0 {
		c.EtcdDialTimeout = DefaultEtcdDialTimeout
	}
	if c.EtcdRequestTimeout == 0 {
		c.EtcdRequestTimeout = store.DefaultRequestTimeout
	}
	if c.HealthInterval == 0 {
		c.HealthInterval = DefaultHealthInterval
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.ReplicaTTL == 0 {
		c.ReplicaTTL = replicas.DefaultTTL
	}
	if c.TrustDomain == "" {
		c.TrustDomain = identity.DefaultTrustDomain
	}
	if c.ProbeElectionTTL == 0 {
		c.ProbeElectionTTL = prober.DefaultElectionTTL
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate checks the configuration (with defaults applied) and names the
// bad setting by its flag.
func (c Config) Validate() error {
	c = c.withDefaults()
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		return errors.New("--tls-cert and --tls-key go together: give both or neither")
	}
	addr := c.ListenAddress
	if c.Listener != nil {
		addr = c.Listener.Addr().String()
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("--listen %q is not host:port: %w", addr, err)
	}
	if c.TLSCertFile == "" && !isLoopback(addr) {
		return fmt.Errorf("--listen %s is not a loopback address, and plaintext is allowed only on loopback: "+
			"anyone who reaches this port could rewrite the cluster's apiserver endpoints. "+
			"Give --tls-cert and --tls-key, or listen on 127.0.0.1", addr)
	}
	if c.ClientCAFile != "" && c.TLSCertFile == "" {
		return errors.New("--client-ca needs --tls-cert and --tls-key: client certificates are checked over TLS")
	}
	if c.ClientCAFile != "" && c.PolicyFile == "" {
		return errors.New("--client-ca needs --policy: the file that names the admin and read-only users " +
			"(e.g. \"admin: [alice]\" and \"read-only: [grafana]\")")
	}
	if c.PolicyFile != "" && c.ClientCAFile == "" {
		return errors.New("--policy needs --client-ca: without client certificates there are no identities to give roles to")
	}
	if err := identity.UserID(c.TrustDomain, "x").Validate(); err != nil {
		return fmt.Errorf("--trust-domain %q: %w", c.TrustDomain, err)
	}
	if !strings.HasSuffix(c.EtcdPrefix, "/") {
		return fmt.Errorf("--etcd-prefix %q must end in /", c.EtcdPrefix)
	}
	if (c.EtcdCertFile == "") != (c.EtcdKeyFile == "") {
		return errors.New("--etcd-cert and --etcd-key go together: give both or neither")
	}
	if len(c.EtcdEndpoints) == 0 && (c.EtcdCAFile != "" || c.EtcdCertFile != "") {
		return errors.New("--etcd-cacert, --etcd-cert and --etcd-key configure an external etcd: give --etcd-endpoints too")
	}
	if strings.Contains(c.ReplicaName, "/") {
		return fmt.Errorf("--replica-name %q must not contain /", c.ReplicaName)
	}
	if c.AdvertiseAddress != "" {
		if _, _, err := net.SplitHostPort(c.AdvertiseAddress); err != nil {
			return fmt.Errorf("--advertise-address %q is not host:port: %w", c.AdvertiseAddress, err)
		}
	}
	for _, ep := range c.EtcdEndpoints {
		if ep == "" {
			return errors.New("--etcd-endpoints has an empty element")
		}
	}
	for name, d := range map[string]time.Duration{
		"--etcd-dial-timeout": c.EtcdDialTimeout, "--etcd-request-timeout": c.EtcdRequestTimeout,
		"--shutdown-timeout": c.ShutdownTimeout, "health interval": c.HealthInterval, "--replica-ttl": c.ReplicaTTL,
		"--probe-election-ttl": c.ProbeElectionTTL,
	} {
		if d < 0 {
			return fmt.Errorf("%s %v is negative", name, d)
		}
	}
	return nil
}

// isLoopback reports whether a host:port names a loopback address
// (127.0.0.0/8, ::1 or "localhost"). An empty host means every address.
func isLoopback(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// serverTLS is the gRPC port's TLS: the server certificate and, in
// production mode, the client CA bundle, both read again when they change.
// Nil without TLS.
func (c Config) serverTLS(log *slog.Logger) (*tls.Config, error) {
	if c.TLSCertFile == "" {
		return nil, nil
	}
	src, err := certfile.New(certfile.Options{CertFile: c.TLSCertFile, KeyFile: c.TLSKeyFile, CAFile: c.ClientCAFile, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("--tls-cert/--tls-key/--client-ca: %w", err)
	}
	return src.ServerConfig(), nil
}

// identity returns the replica's name and advertised address, given the
// address it actually listens on.
func (c Config) identity(listening net.Addr) (name, advertise string) {
	host, port, _ := net.SplitHostPort(listening.String())
	hostname, err := os.Hostname()
	if err != nil || hostname == "" {
		hostname = "localhost"
	}
	advertise = c.AdvertiseAddress
	if advertise == "" {
		advertise = listening.String()
		if a, err := netip.ParseAddr(host); err == nil && a.IsUnspecified() {
			advertise = net.JoinHostPort(hostname, port)
		}
	}
	name = c.ReplicaName
	if name == "" {
		name = hostname + ":" + port
	}
	return name, advertise
}

// peerDialOptions are how this replica dials the others: as the agents
// dial it (plaintext on loopback, else TLS verified against PeerCAFile, or
// ClientCAFile, or the system's roots), presenting its own certificate in
// production mode, where replicas are callers like any other.
func (c Config) peerDialOptions(log *slog.Logger) ([]grpc.DialOption, error) {
	if c.TLSCertFile == "" {
		return []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, nil
	}
	o := certfile.Options{CAFile: c.PeerCAFile, Logger: log}
	if o.CAFile == "" {
		o.CAFile = c.ClientCAFile
	}
	if c.ClientCAFile != "" {
		o.CertFile, o.KeyFile = c.TLSCertFile, c.TLSKeyFile
	}
	src, err := certfile.New(o)
	if err != nil {
		return nil, fmt.Errorf("--peer-ca: %w", err)
	}
	return []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(src.ClientConfig("")))}, nil
}

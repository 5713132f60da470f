// Command halo-server is halo's control plane: it keeps the endpoint
// topology of Kubernetes clusters in etcd and serves the admin gRPC API.
// With no flags it runs the quick start: plaintext gRPC on 127.0.0.1:18000
// and an embedded etcd in ./halo-data.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/halolb/halo/internal/command"
	"github.com/halolb/halo/internal/identity"
	"github.com/halolb/halo/internal/version"
	"github.com/halolb/halo/server"
	"github.com/halolb/halo/server/prober"
	"github.com/halolb/halo/server/replicas"
	"github.com/halolb/halo/server/store"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

const usage = `halo-server: highly available kube-apiserver and etcd endpoints, as a control plane.

It stores each cluster's endpoint topology (Kubespray's HA-endpoint variables) in
etcd, streams every node's Envoy resources over xDS (ADS, Delta and state of the
world) to halo agents and Envoy, and serves the admin gRPC API
(halo.v1.TopologyService, EndpointService, StatusService) with server reflection
and grpc.health.v1, so grpcurl works out of the box. All on one port.

With no flags it runs the quick start: plaintext gRPC on 127.0.0.1:18000 and an
embedded single-member etcd in ./halo-data. Plaintext is allowed only on loopback;
any other --listen address needs --tls-cert and --tls-key. --etcd-endpoints uses
an external etcd cluster instead of the embedded one.

Production mode (--client-ca, --policy): every caller presents a client
certificate with a SPIFFE-style identity; "halo-server certs" makes a CA and
the server, node and user certificates ("halo-server certs -h").

Usage:
  halo-server [flags]
  halo-server certs <ca|server|node|user> [flags]

Flags (each also accepts --name=value):
`

// options are what the flags set.
type options struct {
	cfg           server.Config
	etcdEndpoints string
	reflection    bool
	command.Common
}

// newFlagSet defines every flag of halo-server on o.
func newFlagSet(o *options, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("halo-server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	cfg := &o.cfg
	fs.StringVar(&cfg.ListenAddress, "listen", server.DefaultListenAddress,
		"`host:port` of the gRPC API (admin services, health, reflection); a non-loopback address needs --tls-cert and --tls-key")
	fs.StringVar(&cfg.TLSCertFile, "tls-cert", "", "PEM certificate `file` for server TLS (with --tls-key)")
	fs.StringVar(&cfg.TLSKeyFile, "tls-key", "", "PEM private key `file` for server TLS (with --tls-cert)")
	fs.StringVar(&cfg.PeerCAFile, "peer-ca", "", "PEM CA `file` to verify the other replicas when this one asks them for agent status (with TLS; default: --client-ca, else system roots)")
	fs.StringVar(&cfg.ClientCAFile, "client-ca", "",
		"PEM CA bundle `file`: production mode. Every caller must present a certificate it verifies, with a spiffe://<trust-domain>/... identity: "+
			"nodes subscribe to xDS only as themselves, users act by their --policy role, replicas read. Needs --tls-cert and --policy; re-read when it changes")
	fs.StringVar(&cfg.TrustDomain, "trust-domain", identity.DefaultTrustDomain, "the trust `domain` of accepted identities (spiffe://<domain>/...) with --client-ca")
	fs.StringVar(&cfg.PolicyFile, "policy", "",
		"YAML `file` giving user identities their roles with --client-ca, e.g. \"admin: [alice]\" and \"read-only: [grafana]\" (\"*\": every user); re-read when it changes")
	fs.StringVar(&cfg.ReplicaName, "replica-name", "", "this replica's `name` in agent status and in etcd's replica registry (default <hostname>:<port>)")
	fs.StringVar(&cfg.AdvertiseAddress, "advertise-address", "",
		"`host:port` where other replicas and Envoy reach this replica (default: --listen, or <hostname>:<port> when listening on all addresses)")
	fs.DurationVar(&cfg.ReplicaTTL, "replica-ttl", replicas.DefaultTTL, "how long a replica that stopped without a word stays listed (its etcd lease)")
	fs.DurationVar(&cfg.ProbeElectionTTL, "probe-election-ttl", prober.DefaultElectionTTL,
		"TTL of the etcd session that elects the one replica probing the backends: a prober that dies is replaced within it")
	fs.StringVar(&cfg.DataDir, "data-dir", server.DefaultDataDir,
		"`directory` of the embedded etcd (used without --etcd-endpoints); its client socket is <dir>/etcd.sock")
	fs.StringVar(&o.etcdEndpoints, "etcd-endpoints", "",
		"comma-separated client `URLs` of an external etcd cluster (e.g. https://10.0.0.1:2379,https://10.0.0.2:2379); empty: run an embedded etcd")
	fs.StringVar(&cfg.EtcdCAFile, "etcd-cacert", "", "PEM CA `file` to verify the external etcd's certificates")
	fs.StringVar(&cfg.EtcdCertFile, "etcd-cert", "", "PEM client certificate `file` for the external etcd (with --etcd-key)")
	fs.StringVar(&cfg.EtcdKeyFile, "etcd-key", "", "PEM client key `file` for the external etcd (with --etcd-cert)")
	fs.StringVar(&cfg.EtcdPrefix, "etcd-prefix", store.DefaultPrefix, "key `prefix` under which halo keeps its data in etcd; must end in /")
	fs.DurationVar(&cfg.EtcdDialTimeout, "etcd-dial-timeout", server.DefaultEtcdDialTimeout, "how long to wait for the first etcd connection")
	fs.DurationVar(&cfg.EtcdRequestTimeout, "etcd-request-timeout", store.DefaultRequestTimeout,
		"how long one etcd request may take before the call fails with UNAVAILABLE")
	fs.StringVar(&cfg.MetricsAddress, "metrics-listen", "127.0.0.1:18001", "`host:port` serving Prometheus metrics at /metrics; empty turns metrics off")
	fs.BoolVar(&cfg.EnablePprof, "pprof", false, "serve Go's profiler at /debug/pprof/ on --metrics-listen")
	fs.BoolVar(&o.reflection, "reflection", true, "serve gRPC server reflection (grpcurl needs it to work without .proto files)")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", server.DefaultShutdownTimeout,
		"how long in-flight calls may take to finish on SIGTERM before connections are closed")
	o.Register(fs)
	return fs
}

// run parses args, runs the server until SIGINT or SIGTERM, and returns the
// exit code.
func run(args []string, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "certs" {
		return runCerts(args[1:], os.Stdout, stderr)
	}
	var o options
	fs := newFlagSet(&o, stderr)
	logger, exit, ok := o.Parse(fs, args, stderr)
	if !ok {
		return exit
	}
	cfg := o.cfg
	cfg.DisableReflection = !o.reflection
	if o.etcdEndpoints != "" {
		cfg.EtcdEndpoints = strings.Split(o.etcdEndpoints, ",")
	}
	cfg.Logger = logger

	srv, err := server.New(cfg)
	if err != nil {
		logger.Error("invalid configuration", "error", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger.Info("starting halo-server", "version", version.String())
	if err := srv.Run(ctx); err != nil {
		logger.Error("halo-server failed", "error", err)
		return 1
	}
	return 0
}

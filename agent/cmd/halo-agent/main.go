// Command halo-agent is halo's per-node TCP proxy: it serves the
// kube-apiserver (and etcd) endpoints of its node on localhost or a VIP and
// follows the control plane over xDS, with no restart and no dropped
// connection when masters change.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/halolb/halo/agent"
	"github.com/halolb/halo/internal/certfile"
	"github.com/halolb/halo/internal/command"
	"github.com/halolb/halo/internal/version"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

const usage = `halo-agent: the per-node load balancer of halo for kube-apiserver and etcd.

It connects to halo-server replicas over xDS (ADS; Delta by default, state of the
world with --sotw), runs the listeners the control plane gives this node
(127.0.0.1:<nginx_kube_apiserver_port>, the VIP on load-balancer nodes, the local
etcd proxy) and proxies TCP to the masters: least-request, a failed connect moves
on to the next master, a master that goes away gets no new connections, and
configuration changes never drop an open connection.

It keeps the last accepted configuration in --cache-dir and serves it at start-up
before any server answers, so it survives the control plane. Without a cache,
--fallback-backends is a static fallback. A listener address that is busy (say,
Kubespray's nginx-proxy still holds 127.0.0.1:6443) is retried until it is free;
/readyz on --admin-listen says ready once every listener is bound.

Usage:
  halo-agent --server HOST:PORT[,HOST:PORT...] --cluster NAME [--node NAME] [flags]
  halo-agent --fallback-backends HOST:PORT,... [flags]

Flags (each also accepts --name=value):
`

// options are what the flags set.
type options struct {
	servers, cluster, node string
	sotw                   bool
	tlsCA, tlsCert, tlsKey string
	tlsServerName          string
	cacheDir               string
	fallbackBackends       string
	fallbackListen         string
	adminListen            string
	command.Common
}

// newFlagSet defines every flag of halo-agent on o.
func newFlagSet(o *options, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("halo-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	hostname, _ := os.Hostname()
	fs.StringVar(&o.servers, "server", "",
		"comma-separated `host:port` of halo-server replicas, tried in turn; empty: serve only the cache or --fallback-backends")
	fs.StringVar(&o.cluster, "cluster", "", "`name` of this node's halo cluster (required with --server)")
	fs.StringVar(&o.node, "node", hostname, "this node's `name` in the halo topology")
	fs.BoolVar(&o.sotw, "sotw", false, "use state-of-the-world xDS instead of Delta (Delta resends nothing on reconnect)")
	fs.StringVar(&o.tlsCA, "tls-ca", "", "PEM CA `file` to verify halo-server; required unless every --server is on loopback; re-read when it changes")
	fs.StringVar(&o.tlsCert, "tls-cert", "",
		"PEM client certificate `file` presented to halo-server (with --tls-key): in production mode, this node's spiffe://<trust-domain>/cluster/<cluster>/node/<node> identity; re-read when it changes")
	fs.StringVar(&o.tlsKey, "tls-key", "", "PEM client key `file` (with --tls-cert); re-read when it changes")
	fs.StringVar(&o.tlsServerName, "tls-server-name", "", "`name` expected in halo-server's certificate (default: the host of each --server)")
	fs.StringVar(&o.cacheDir, "cache-dir", agent.DefaultCacheDir,
		"`directory` holding the last accepted configuration, served at start-up before any server answers; empty disables it")
	fs.StringVar(&o.fallbackBackends, "fallback-backends", "",
		"comma-separated apiserver `host:port`s served on --fallback-listen when there is no cache, until a server answers")
	fs.StringVar(&o.fallbackListen, "fallback-listen", agent.DefaultFallbackListen, "`address` of the --fallback-backends listener")
	// The names of an earlier release, kept so that existing units work.
	fs.StringVar(&o.fallbackBackends, "bootstrap-backends", "", "deprecated name of --fallback-backends")
	fs.StringVar(&o.fallbackListen, "bootstrap-listen", agent.DefaultFallbackListen, "deprecated name of --fallback-listen")
	fs.StringVar(&o.adminListen, "admin-listen", agent.DefaultAdminListen, "`host:port` serving /metrics, /healthz and /readyz")
	o.Register(fs)
	return fs
}

// run parses args, runs the agent until SIGINT or SIGTERM, and returns the
// exit code.
func run(args []string, stderr io.Writer) int {
	var o options
	fs := newFlagSet(&o, stderr)
	logger, exit, ok := o.Parse(fs, args, stderr)
	if !ok {
		return exit
	}
	cfg, err := o.config(logger)
	if err != nil {
		fmt.Fprintf(stderr, "halo-agent: %v\n", err)
		return 2
	}
	cfg.Logger = logger
	cfg.Version = version.String()
	a, err := agent.New(cfg)
	if err != nil {
		logger.Error("invalid configuration", "error", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger.Info("starting halo-agent", "version", version.String(), "node", cfg.Node, "cluster", cfg.Cluster, "servers", cfg.Servers)
	if err := a.Run(ctx); err != nil {
		logger.Error("halo-agent failed", "error", err)
		return 1
	}
	logger.Info("stopped")
	return 0
}

// config turns the flags into an agent.Config.
func (o *options) config(logger *slog.Logger) (agent.Config, error) {
	cfg := agent.Config{Cluster: o.cluster, Node: o.node, SotW: o.sotw, CacheDir: o.cacheDir, AdminListen: o.adminListen}
	cfg.Servers = splitList(o.servers)
	for _, b := range splitList(o.fallbackBackends) {
		ap, err := netip.ParseAddrPort(b)
		if err != nil {
			return cfg, fmt.Errorf("--fallback-backends: %q: want ip:port (%v)", b, err)
		}
		cfg.FallbackBackends = append(cfg.FallbackBackends, ap)
	}
	if len(cfg.FallbackBackends) > 0 {
		ap, err := netip.ParseAddrPort(o.fallbackListen)
		if err != nil {
			return cfg, fmt.Errorf("--fallback-listen: %q: want ip:port (%v)", o.fallbackListen, err)
		}
		cfg.FallbackListen = ap
	}
	if (o.tlsCert == "") != (o.tlsKey == "") {
		return cfg, errors.New("--tls-cert and --tls-key go together")
	}
	if o.tlsCA == "" && (o.tlsCert != "" || o.tlsServerName != "") {
		return cfg, errors.New("--tls-cert and --tls-server-name need --tls-ca")
	}
	if o.tlsCA != "" {
		// Re-read when they change: a rotated node certificate or CA bundle
		// is used from the next connection on, without a restart.
		src, err := certfile.New(certfile.Options{CAFile: o.tlsCA, CertFile: o.tlsCert, KeyFile: o.tlsKey, Logger: logger.With("component", "tls")})
		if err != nil {
			return cfg, fmt.Errorf("--tls-ca/--tls-cert/--tls-key: %w", err)
		}
		cfg.TLS = src.ClientConfig(o.tlsServerName)
	}
	return cfg, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

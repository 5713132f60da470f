package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/halolb/halo/internal/identity"
	"github.com/halolb/halo/internal/pki"
)

// mode is how clients reach halo-server: plaintext on loopback (the quick
// start) or production mode (mTLS, SPIFFE identities, roles).
type mode string

const (
	plaintext mode = "plaintext"
	mtls      mode = "mTLS"
)

// parseModes reads -modes: a comma-separated list of plaintext and mtls.
func parseModes(s string) ([]mode, error) {
	var out []mode
	for _, f := range strings.Split(s, ",") {
		switch strings.ToLower(strings.TrimSpace(f)) {
		case "plaintext":
			out = append(out, plaintext)
		case "mtls":
			out = append(out, mtls)
		default:
			return nil, fmt.Errorf("bad -modes element %q (plaintext or mtls)", f)
		}
	}
	return out, nil
}

// The identities of a production-mode run: trust domain, the admin user
// (who registers the nodes and reads ListAgents), the nodes' cluster.
const (
	trustDomain = identity.DefaultTrustDomain
	adminUser   = "bench-admin"
	cluster     = "bench"
)

// workerName is the name of worker i, which client i connects as.
func workerName(i int) string { return fmt.Sprintf("worker-%05d", i) }

// keyPair names a certificate's files.
type keyPair struct{ cert, key string }

// bundle is the PKI of a production-mode run: a CA, a server certificate per
// replica (files, for halo-server), the admin user's and one per node (in
// memory, for this process's clients).
type bundle struct {
	dir        string
	ca         *pki.CA
	roots      *x509.CertPool
	caFile     string
	policyFile string
	replicas   map[string]keyPair
	admin      tls.Certificate
	nodes      []tls.Certificate // node i: workerName(i)
	// issuing is how long the n node certificates took.
	issuing time.Duration
}

// newBundle makes a CA and issues certificates for the replicas, the admin
// user and n nodes (ECDSA P-256, in parallel on every CPU).
func newBundle(replicaNames []string, n int) (_ *bundle, err error) {
	dir, err := os.MkdirTemp("", "halo-bench-pki-")
	if err != nil {
		return nil, err
	}
	b := &bundle{dir: dir, replicas: map[string]keyPair{}, nodes: make([]tls.Certificate, n)}
	defer func() {
		if err != nil {
			b.remove()
		}
	}()
	if b.ca, err = pki.NewCA("halo bench CA", 24*time.Hour); err != nil {
		return nil, fmt.Errorf("CA: %w", err)
	}
	b.roots = b.ca.Pool()
	if b.caFile, err = b.ca.WriteCertFile(dir, "ca"); err != nil {
		return nil, fmt.Errorf("CA: %w", err)
	}
	b.policyFile = filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(b.policyFile, []byte("admin: ["+adminUser+"]\n"), 0o644); err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	for _, name := range replicaNames {
		c, err := b.ca.Issue(pki.Request{CommonName: "halo-server " + name, DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)},
			URIs: []*url.URL{identity.ReplicaID(trustDomain, name).URL()}, Server: true, Client: true})
		if err != nil {
			return nil, fmt.Errorf("replica %s: %w", name, err)
		}
		var f keyPair
		if f.cert, f.key, err = c.WriteFiles(dir, "replica-"+name); err != nil {
			return nil, fmt.Errorf("replica %s: %w", name, err)
		}
		b.replicas[name] = f
	}
	if b.admin, err = b.issueClient(adminUser, identity.UserID(trustDomain, adminUser)); err != nil {
		return nil, fmt.Errorf("admin user: %w", err)
	}
	start := time.Now()
	g := errgroup.Group{}
	g.SetLimit(runtime.GOMAXPROCS(0))
	for i := range n {
		g.Go(func() error {
			c, err := b.issueClient(workerName(i), identity.NodeID(trustDomain, cluster, workerName(i)))
			if err != nil {
				return fmt.Errorf("node %s: %w", workerName(i), err)
			}
			b.nodes[i] = c
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	b.issuing = time.Since(start)
	return b, nil
}

// issueClient issues a client certificate for id.
func (b *bundle) issueClient(cn string, id identity.ID) (tls.Certificate, error) {
	c, err := b.ca.Issue(pki.Request{CommonName: cn, URIs: []*url.URL{id.URL()}, Client: true})
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(c.CertPEM, c.KeyPEM)
}

// remove deletes the bundle's files.
func (b *bundle) remove() {
	if b != nil {
		os.RemoveAll(b.dir)
	}
}

// transport is the transport credentials of a caller presenting cert: TLS
// verified against the bundle's CA, or plaintext when b is nil (as for
// every method of a nil *bundle below).
func (b *bundle) transport(cert tls.Certificate) grpc.DialOption {
	if b == nil {
		return grpc.WithTransportCredentials(insecure.NewCredentials())
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: b.roots,
		ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13}))
}

// adminDialOptions are how the admin calls dial: as the admin user in
// production mode. ListAgents of thousands of agents is several MB.
func (b *bundle) adminDialOptions() []grpc.DialOption {
	var cert tls.Certificate
	if b != nil {
		cert = b.admin
	}
	return []grpc.DialOption{b.transport(cert), grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256 << 20))}
}

// clientDialOptions are how ADS client i dials, each on its own
// connection: as the agent (fixed windows, no BDP pings), with small
// buffers, and in production mode with its node's certificate.
func (b *bundle) clientDialOptions(i int) []grpc.DialOption {
	var cert tls.Certificate
	if b != nil {
		cert = b.nodes[i]
	}
	return []grpc.DialOption{b.transport(cert),
		grpc.WithReadBufferSize(4096), grpc.WithWriteBufferSize(4096),
		grpc.WithInitialWindowSize(1 << 20), grpc.WithInitialConnWindowSize(1 << 20)}
}

// dialAdmin connects the admin user to a replica.
func dialAdmin(b *bundle, addr string) (*grpc.ClientConn, error) {
	conn, err := grpc.NewClient(addr, b.adminDialOptions()...)
	if err != nil {
		return nil, fmt.Errorf("admin connection to %s: %w", addr, err)
	}
	return conn, nil
}

// poll calls check every interval until it reports done, fails, or within
// has passed.
func poll(ctx context.Context, every, within time.Duration, what string, check func(context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		done, err := check(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			return fmt.Errorf("%s: %w", what, err)
		case done:
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: not within %v (%w; last error: %v)", what, within, context.Cause(ctx), err)
		case <-tick.C:
		}
	}
}

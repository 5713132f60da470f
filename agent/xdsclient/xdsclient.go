// Package xdsclient is halo-agent's ADS client: it follows one
// halo-server replica at a time over one Envoy v3 ADS stream (Delta by
// default, state of the world on request), subscribes to every listener and
// cluster and to the endpoints of the clusters it holds, and hands each
// complete candidate configuration to the caller, who accepts it (ACK) or
// refuses it with a reason (NACK, and the last accepted configuration
// stays).
//
// # Reconnecting
//
// Servers are tried in order, rotating. A stream is established once it
// delivers a response, or once it has stayed open for EstablishedAfter (a
// Delta client that resumes with current versions is sent nothing, so a
// response cannot be required). An attempt fails when the dial, opening the
// stream or sending the first requests fails, or when the stream ends before
// it was established. After an established stream ends the client
// reconnects at once to the next server; after a failed attempt it moves on
// to the next server and first waits Backoff.Next() (jittered). The backoff
// starts over once a stream delivers a response (or is established by time).
// So that a server that accepts and drops streams cannot make it loop, only
// one immediate reconnect is made per EstablishedAfter; a second one within
// that time waits for the backoff as a failed attempt does. The state is
// kept across streams: the agent keeps proxying on its last configuration,
// and a Delta stream names the versions it holds so nothing is re-sent.
package xdsclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	hbackoff "github.com/halolb/halo/internal/backoff"
	"github.com/halolb/halo/internal/xdscontract"
)

// EstablishedAfter is how long a stream that delivered no response must stay
// open to count as established (see the package documentation).
const EstablishedAfter = 5 * time.Second

// connectTimeout bounds one attempt to connect to a server (TCP, TLS and
// HTTP/2 handshakes), so that an unreachable replica is left quickly.
const connectTimeout = 5 * time.Second

// Resource is one xDS resource as received. Resources handed to Update are
// shared with the client's state: treat them as read-only.
type Resource struct {
	// TypeURL is the resource's type, e.g. xdscontract.ListenerType.
	TypeURL string
	// Name is the resource's name (a ClusterLoadAssignment's cluster_name).
	Name string
	// Version is the resource's version: Delta, the per-resource version
	// the server sent; SotW, the version_info of the response that carried
	// it.
	Version string
	// Body is the resource itself.
	Body *anypb.Any
}

// The resource types the client subscribes to: those halo serves.
var types = xdscontract.Types

// Config configures a Client.
type Config struct {
	// Servers are the host:port addresses of halo-server replicas, tried
	// in this order, rotating. At least one.
	Servers []string
	// Node identifies the agent: Id is its halo node name, Cluster its halo
	// cluster. It is sent on the first request of every stream. An empty
	// UserAgentName becomes "halo-agent". Required.
	Node *corev3.Node
	// SotW selects the state-of-the-world protocol instead of Delta (the
	// default).
	SotW bool
	// DialOptions are added to every dial: transport credentials (required
	// by gRPC; insecure.NewCredentials() for plaintext) and the like. The
	// client adds fixed HTTP/2 windows of 1 MiB (as halo-server uses, so
	// that no BDP pings are sent), keepalive pings (30s, 10s timeout) and a
	// connect timeout of 5s; options given here come after and win.
	DialOptions []grpc.DialOption
	// Backoff spaces out failed attempts. Zero: 250ms doubling to 30s,
	// ±20% jitter.
	Backoff hbackoff.Backoff
	// Initial is the state the agent holds at start (from its disk cache):
	// the client starts from it, and a Delta stream names its versions in
	// initial_resource_versions so that nothing is re-sent. Every resource
	// needs a known TypeURL, a Name, a Version and a Body of that type.
	Initial []*Resource
	// Update is called, one call at a time, with the complete candidate
	// state (every type, sorted by type URL and name) after a response
	// changed it; typeURL is the type the response carried. A nil return
	// commits the state and ACKs the response; an error NACKs it with
	// err.Error() as error_detail (code INVALID_ARGUMENT) and keeps the
	// previous state. ctx ends when Run's does. Endpoints follow their clusters (a new cluster's
	// endpoints arrive in a later response), so a state may hold a cluster
	// whose endpoints have not arrived yet; halo-server sends a listener
	// only after its cluster's endpoints. Required.
	Update func(ctx context.Context, typeURL string, state []*Resource) error
	// EDSNames returns the endpoint resources to subscribe to for a state
	// (the caller already decodes clusters). Nil: every EDS cluster of the
	// state's clusters, by eds_cluster_config.service_name or else its
	// name. Endpoint resources not named are dropped from the state.
	EDSNames func(state []*Resource) []string
	// Logger receives the client's logs. Nil: discard.
	Logger *slog.Logger
	// Registerer receives the client's metrics. Nil: none.
	Registerer prometheus.Registerer
}

// defaults fills in the defaults of unset fields.
func (cfg *Config) defaults() {
	if cfg.Backoff == (hbackoff.Backoff{}) {
		cfg.Backoff = hbackoff.Backoff{Initial: 250 * time.Millisecond, Max: 30 * time.Second, Jitter: 0.2}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.EDSNames == nil {
		cfg.EDSNames = ClusterEDSNames
	}
}

// Validate reports the first bad field of cfg, by name. Zero values that
// have defaults are valid.
func (cfg *Config) Validate() error {
	if len(cfg.Servers) == 0 {
		return errors.New("xdsclient: Config.Servers: at least one server is required")
	}
	for i, s := range cfg.Servers {
		if _, port, err := net.SplitHostPort(s); err != nil || port == "" {
			return fmt.Errorf("xdsclient: Config.Servers[%d]: %q is not host:port", i, s)
		}
	}
	if cfg.Node == nil {
		return errors.New("xdsclient: Config.Node is required")
	}
	if cfg.Node.GetId() == "" {
		return errors.New("xdsclient: Config.Node.Id (the halo node name) is required")
	}
	if cfg.Node.GetCluster() == "" {
		return errors.New("xdsclient: Config.Node.Cluster (the halo cluster name) is required")
	}
	if cfg.Update == nil {
		return errors.New("xdsclient: Config.Update is required")
	}
	if b := cfg.Backoff; b != (hbackoff.Backoff{}) {
		switch {
		case b.Initial <= 0:
			return fmt.Errorf("xdsclient: Config.Backoff.Initial: %v is not positive", b.Initial)
		case b.Max < b.Initial:
			return fmt.Errorf("xdsclient: Config.Backoff.Max: %v is less than Initial (%v)", b.Max, b.Initial)
		case b.Jitter < 0 || b.Jitter >= 1:
			return fmt.Errorf("xdsclient: Config.Backoff.Jitter: %v is not in [0, 1)", b.Jitter)
		}
	}
	seen := map[[2]string]bool{}
	for i, r := range cfg.Initial {
		field := fmt.Sprintf("xdsclient: Config.Initial[%d]", i)
		switch {
		case r == nil:
			return fmt.Errorf("%s is nil", field)
		case !knownType(r.TypeURL):
			return fmt.Errorf("%s.TypeURL: %q is not a listener, cluster or endpoints type", field, r.TypeURL)
		case r.Name == "":
			return fmt.Errorf("%s.Name is empty", field)
		case r.Version == "":
			return fmt.Errorf("%s.Version is empty (%s)", field, r.Name)
		case r.Body == nil:
			return fmt.Errorf("%s.Body is nil (%s)", field, r.Name)
		case r.Body.GetTypeUrl() != r.TypeURL:
			return fmt.Errorf("%s.Body: type %q, but TypeURL is %q (%s)", field, r.Body.GetTypeUrl(), r.TypeURL, r.Name)
		case seen[[2]string{r.TypeURL, r.Name}]:
			return fmt.Errorf("%s: %s %q appears twice", field, r.TypeURL, r.Name)
		}
		seen[[2]string{r.TypeURL, r.Name}] = true
	}
	return nil
}

func knownType(url string) bool {
	for _, t := range types {
		if t == url {
			return true
		}
	}
	return false
}

// Client is an ADS client. Create it with New and start it with Run.
type Client struct {
	cfg       Config
	log       *slog.Logger
	dialOpts  []grpc.DialOption
	metrics   *metrics
	running   atomic.Bool
	connected atomic.Bool

	// Owned by Run's loop.
	state state
	// want is the endpoint subscription of the committed state, sorted.
	want []string
	// lastImmediate is when the client last reconnected at once.
	lastImmediate time.Time

	mu       sync.Mutex
	versions map[string]string // type URL → last ACKed version
}

// New validates cfg, fills in its defaults and returns a Client. It starts
// nothing (it registers the metrics).
func New(cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.defaults()
	cfg.Node = proto.CloneOf(cfg.Node)
	if cfg.Node.GetUserAgentName() == "" {
		cfg.Node.UserAgentName = "halo-agent"
	}
	opts := []grpc.DialOption{
		grpc.WithInitialWindowSize(1 << 20),
		grpc.WithInitialConnWindowSize(1 << 20),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.DefaultConfig, MinConnectTimeout: connectTimeout}),
	}
	opts = append(opts, cfg.DialOptions...)
	// Dialling starts nothing until a call; this only checks the options
	// (e.g. missing transport credentials), which no retry would fix.
	conn, err := grpc.NewClient(cfg.Servers[0], opts...)
	if err != nil {
		return nil, fmt.Errorf("xdsclient: Config.DialOptions: %w", err)
	}
	conn.Close()
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	c := &Client{cfg: cfg, log: cfg.Logger, dialOpts: opts, metrics: m, versions: map[string]string{}}
	c.state = newState(cfg.Initial)
	c.want = c.edsNames(c.state)
	if dropped := c.state.keepEndpoints(c.want); len(dropped) > 0 {
		c.log.Debug("initial endpoints without a cluster dropped", "names", dropped)
	}
	c.setVersions(c.initialVersions())
	return c, nil
}

// initialVersions are the versions of the initial state: Delta, the hash of
// each type's resource versions; SotW, each type's version when all its
// resources carry the same one.
func (c *Client) initialVersions() map[string]string {
	if !c.cfg.SotW {
		return c.state.typeVersions()
	}
	out := map[string]string{}
	for t, m := range c.state {
		v, same := "", true
		for _, r := range m {
			if v != "" && r.Version != v {
				same = false
			}
			v = r.Version
		}
		if same && v != "" {
			out[t] = v
		}
	}
	return out
}

// Connected reports whether a stream to a server is open: from the moment
// the stream is open and its subscriptions are sent until it ends. It does
// not wait for a first response, because a Delta stream that resumes with
// current versions gets none until something changes.
func (c *Client) Connected() bool { return c.connected.Load() }

// Versions returns the last ACKed version per type URL (types with no
// version are absent): SotW, the version_info of the last accepted
// response of that type (or of the initial resources); Delta, a hash of the
// held resources' names and versions (the same hash halo-server shows as
// the acked version in ListAgents).
func (c *Client) Versions() map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]string, len(c.versions))
	for t, v := range c.versions {
		out[t] = v
	}
	return out
}

func (c *Client) version(typeURL string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.versions[typeURL]
}

// setVersions records new versions of some types and moves the info gauge.
func (c *Client) setVersions(vs map[string]string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for t, v := range vs {
		old, had := c.versions[t]
		if had && old == v {
			continue
		}
		if had {
			c.metrics.configInfo.DeleteLabelValues(t, short(old))
		}
		if v == "" {
			delete(c.versions, t)
			continue
		}
		c.versions[t] = v
		c.metrics.configInfo.WithLabelValues(t, short(v)).Set(1)
	}
}

func (c *Client) setConnected(on bool) {
	c.connected.Store(on)
	if on {
		c.metrics.connected.Set(1)
	} else {
		c.metrics.connected.Set(0)
	}
}

// Run connects and follows the servers until ctx is done, then returns nil
// once everything it started has stopped. It does not give up: every error
// is logged and retried as the package documentation describes. A Client
// runs once at a time.
func (c *Client) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("xdsclient: Run is already running")
	}
	defer c.running.Store(false)
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return c.loop(ctx) })
	return g.Wait()
}

// loop connects to one server after the other until ctx ends.
func (c *Client) loop(ctx context.Context) error {
	b := c.cfg.Backoff
	b.Reset()
	timer := time.NewTimer(0)
	<-timer.C
	defer timer.Stop()
	for attempt := 0; ; attempt++ {
		server := c.cfg.Servers[attempt%len(c.cfg.Servers)]
		if attempt > 0 {
			c.metrics.reconnects.Inc()
		}
		established, err := c.session(ctx, server, &b)
		if ctx.Err() != nil {
			return nil
		}
		if established {
			b.Reset()
			if time.Since(c.lastImmediate) >= EstablishedAfter {
				c.lastImmediate = time.Now()
				c.log.Debug("reconnecting at once", "server", c.cfg.Servers[(attempt+1)%len(c.cfg.Servers)])
				continue
			}
		}
		wait := b.Next()
		c.log.Warn("xds server unavailable; trying the next one", "server", server, "error", err, "retry_in", wait.Round(time.Millisecond))
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		}
	}
}

// session runs one stream to server until it ends. It reports whether the
// stream was established, and why it ended.
func (c *Client) session(ctx context.Context, server string, b *hbackoff.Backoff) (established bool, err error) {
	conn, err := grpc.NewClient(server, c.dialOpts...)
	if err != nil {
		return false, fmt.Errorf("xdsclient: dial %s: %w", server, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := c.open(ctx, conn)
	if err != nil {
		return false, err
	}
	opened := time.Now()
	if err := s.start(c.cfg.Node, c.state, c.want); err != nil {
		return false, err
	}
	c.setConnected(true)
	defer c.setConnected(false)
	c.log.Info("xds stream open", "server", server, "protocol", c.protocol())
	responded := false
	defer func() {
		established = responded || time.Since(opened) >= EstablishedAfter
		c.log.Info("xds stream closed", "server", server, "error", err, "established", established)
	}()
	for {
		r, err := s.recv()
		if err != nil {
			return false, err
		}
		if !responded {
			responded = true
			b.Reset()
		}
		if err := c.handle(ctx, s, r); err != nil {
			return false, err
		}
	}
}

func (c *Client) protocol() string {
	if c.cfg.SotW {
		return "sotw"
	}
	return "delta"
}

// handle applies one response: Update, then ACK or NACK, then the endpoint
// subscription of the (new) state. It returns an error only when the stream
// failed.
func (c *Client) handle(ctx context.Context, s stream, r *response) error {
	c.log.Debug("xds response", "type_url", short(r.typeURL), "version", short(r.version), "nonce", short(r.nonce),
		"resources", len(r.resources), "removed", len(r.removed))
	cand, want, err := c.candidate(r)
	if err == nil && !cand.equal(c.state) {
		err = c.cfg.Update(ctx, r.typeURL, cand.list())
		if ctx.Err() != nil {
			return ctx.Err() // the stream ends with Run; nothing to answer
		}
		if err == nil {
			c.state, c.want = cand, want
		}
	}
	if err != nil {
		c.metrics.updates.WithLabelValues(typeLabel(r.typeURL), "nack").Inc()
		c.log.Warn("xds configuration refused (NACK)", "type_url", short(r.typeURL), "version", short(r.version), "nonce", short(r.nonce),
			"error", clip(err.Error(), maxErrorDetail))
		return s.reply(r, c.version(r.typeURL), err)
	}
	if c.cfg.SotW {
		c.setVersions(map[string]string{r.typeURL: r.version})
	} else {
		c.setVersions(c.state.typeVersions())
	}
	c.metrics.updates.WithLabelValues(typeLabel(r.typeURL), "ack").Inc()
	if err := s.reply(r, r.version, nil); err != nil {
		return err
	}
	return s.subscribeEndpoints(c.want, c.version(xdscontract.EndpointType))
}

// candidate is the state once r is applied, and its endpoint subscription;
// an error says why r is refused.
func (c *Client) candidate(r *response) (state, []string, error) {
	if r.invalid != nil {
		return nil, nil, r.invalid
	}
	if !knownType(r.typeURL) {
		return nil, nil, fmt.Errorf("type %q is not supported (only listeners, clusters and endpoints)", short(r.typeURL))
	}
	cand := c.state.clone()
	m := cand[r.typeURL]
	if r.full || m == nil {
		m = map[string]*Resource{}
	}
	seen := map[string]bool{}
	for _, res := range r.resources {
		switch {
		case res.Name == "":
			return nil, nil, fmt.Errorf("a resource of type %s has no name", r.typeURL)
		case res.Body == nil:
			return nil, nil, fmt.Errorf("resource %q has no body", short(res.Name))
		case res.Body.GetTypeUrl() != r.typeURL:
			return nil, nil, fmt.Errorf("resource %q is a %q in a response of %s", short(res.Name), short(res.Body.GetTypeUrl()), r.typeURL)
		case seen[res.Name]:
			return nil, nil, fmt.Errorf("resource %q appears twice", short(res.Name))
		case res.Version == "":
			// Config.Initial refuses it: a restart from this state
			// (the agent's cache) would fail.
			return nil, nil, fmt.Errorf("resource %q has no version", short(res.Name))
		}
		seen[res.Name] = true
		m[res.Name] = res
	}
	for _, n := range r.removed {
		delete(m, n)
	}
	cand[r.typeURL] = m
	want := c.edsNames(cand)
	cand.keepEndpoints(want)
	return cand, want, nil
}

// edsNames is the endpoint subscription of a state: sorted, unique.
func (c *Client) edsNames(s state) []string {
	return sortedUnique(c.cfg.EDSNames(s.list()))
}

// typeLabel is a type URL as a metric label: unknown types, which a server
// can make up without end, share one series.
func typeLabel(url string) string {
	if knownType(url) {
		return url
	}
	return "other"
}

// maxEcho bounds what the client repeats of a server's string (a name, a
// type URL, a nonce) in an error or a log record.
const maxEcho = 128

// maxErrorDetail bounds a NACK's error_detail and its log record.
const maxErrorDetail = 2048

// short is s cut to maxEcho bytes.
func short(s string) string { return clip(s, maxEcho) }

// clip cuts s to at most n bytes (on a character boundary), saying how
// long it was.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s…(%d bytes)", s[:cut], len(s))
}

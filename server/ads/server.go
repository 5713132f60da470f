// Package ads serves Envoy's Aggregated Discovery Service, Delta and
// state-of-the-world, to halo agents and to Envoy: every node gets the
// snapshot of its profile from the snapshot cache, the moment it is published.
//
// It is halo's own implementation of the ADS protocol on go-control-plane's
// types, rather than go-control-plane's server and SnapshotCache, because
// halo needs per-stream make-before-break ordering (a listener only after
// its cluster's endpoints have gone out on that stream; a cluster removed
// only after the listeners using it), no re-send of a NACKed version until
// it changes, and per-node ACK/NACK status, none of which that cache can
// express.
package ads

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/halolb/halo/internal/xdscontract"
	"github.com/halolb/halo/server/snapcache"
)

// Config configures a Server.
type Config struct {
	// Cache is where snapshots are published. Required.
	Cache *snapcache.Cache
	// Replica names this halo-server in agent status.
	Replica string
	// Logger receives the server's logs. Nil: discard.
	Logger *slog.Logger
	// Shutdown, when done, ends every stream with UNAVAILABLE so that a
	// graceful stop does not wait for them (agents reconnect elsewhere).
	// Nil: streams end only with their clients.
	Shutdown context.Context
	// Registerer receives the server's metrics. Nil: none.
	Registerer prometheus.Registerer
	// Authorize, if set, is asked on every request of every stream whether
	// the caller (ctx is the stream's) may subscribe as node of cluster;
	// its error ends the stream.
	Authorize func(ctx context.Context, cluster, node string) error
}

// Server serves ADS. It implements
// envoy.service.discovery.v3.AggregatedDiscoveryService.
//
// Each stream's requests are handled on the goroutine that receives them;
// publications are pushed by a small pool of workers (Run), so a stream
// costs no goroutine of its own beyond gRPC's, and a change that concerns
// 10,000 streams is spread over the workers.
type Server struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	cfg     Config
	log     *slog.Logger
	nextID  atomic.Int64
	metrics *metrics

	mu        sync.Mutex
	streams   map[int64]*stream
	byCluster map[string]map[*stream]bool // streams whose node is known
	byNode    map[string]map[*stream]bool // by cluster + "/" + node

	qmu   sync.Mutex
	qcond *sync.Cond
	queue []*stream
}

// New returns a Server. Run must run for publications to reach streams.
func New(cfg Config) (*Server, error) {
	if cfg.Cache == nil {
		return nil, errors.New("ads: Config.Cache is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Shutdown == nil {
		cfg.Shutdown = context.Background()
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger, metrics: m, streams: map[int64]*stream{},
		byCluster: map[string]map[*stream]bool{}, byNode: map[string]map[*stream]bool{}}
	s.qcond = sync.NewCond(&s.qmu)
	cfg.Cache.Subscribe(s.changed)
	return s, nil
}

// Register registers the ADS service on s.
func (s *Server) Register(g grpc.ServiceRegistrar) {
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, s)
}

// Run pushes publications to the streams they concern until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	workers := max(4, 2*runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				str := s.pop(ctx)
				if str == nil {
					return
				}
				if err := s.push(str); err != nil {
					s.log.Debug("push failed", "node", str.nodeKey(), "error", err)
				}
			}
		})
	}
	<-ctx.Done()
	s.qmu.Lock()
	s.qcond.Broadcast()
	s.qmu.Unlock()
	wg.Wait()
	return nil
}

// changed is the snapshot cache's subscriber: it queues the streams a change concerns.
func (s *Server) changed(cluster, node string) {
	s.mu.Lock()
	set := s.byCluster[cluster]
	if node != "" {
		set = s.byNode[cluster+"/"+node]
	}
	strs := make([]*stream, 0, len(set))
	for str := range set {
		strs = append(strs, str)
	}
	s.mu.Unlock()
	s.qmu.Lock()
	for _, str := range strs {
		if str.queued.CompareAndSwap(false, true) {
			s.queue = append(s.queue, str)
		}
	}
	s.qcond.Broadcast()
	s.qmu.Unlock()
}

func (s *Server) pop(ctx context.Context) *stream {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	for len(s.queue) == 0 {
		if ctx.Err() != nil {
			return nil
		}
		s.qcond.Wait()
	}
	str := s.queue[0]
	s.queue[0] = nil
	s.queue = s.queue[1:]
	if len(s.queue) == 0 {
		s.queue = nil // let the backing array go
	}
	str.queued.Store(false)
	return str
}

// stream is one ADS stream: its node, its state, and how to send.
type stream struct {
	id        int64
	delta     bool
	peer      string
	since     time.Time
	st        *state
	sendDelta func(*discoveryv3.DeltaDiscoveryResponse) error
	sendSotW  func(*discoveryv3.DiscoveryResponse) error

	// turn is held while responses are decided and sent, so that they go
	// out in the order they were decided.
	turn   sync.Mutex
	queued atomic.Bool
	broken atomic.Bool
	// node is set by the first request (under st.mu); cluster and id are
	// its names, set once before the stream is indexed.
	node              *corev3.Node
	cluster, nodeName string
}

// nodeKey names the stream's node: cluster/node.
func (str *stream) nodeKey() string { return str.cluster + "/" + str.nodeName }

// StreamAggregatedResources serves a state-of-the-world ADS stream.
func (s *Server) StreamAggregatedResources(gs grpc.BidiStreamingServer[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]) error {
	str := &stream{delta: false, sendSotW: gs.Send}
	return s.serve(gs.Context(), str, func() (*request, error) {
		m, err := gs.Recv()
		if err != nil {
			return nil, err
		}
		return sotwRequest(m), nil
	})
}

// sotwRequest reduces a state-of-the-world request to what the state needs.
func sotwRequest(m *discoveryv3.DiscoveryRequest) *request {
	r := &request{typeURL: m.GetTypeUrl(), node: m.GetNode(), nonce: m.GetResponseNonce(), names: m.GetResourceNames()}
	if m.GetErrorDetail() != nil {
		r.nack, r.errorMessage = true, m.GetErrorDetail().GetMessage()
	}
	return r
}

// DeltaAggregatedResources serves a Delta (incremental) ADS stream.
func (s *Server) DeltaAggregatedResources(gs grpc.BidiStreamingServer[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]) error {
	str := &stream{delta: true, sendDelta: gs.Send}
	return s.serve(gs.Context(), str, func() (*request, error) {
		m, err := gs.Recv()
		if err != nil {
			return nil, err
		}
		return deltaRequest(m), nil
	})
}

// deltaRequest reduces a Delta request to what the state needs.
func deltaRequest(m *discoveryv3.DeltaDiscoveryRequest) *request {
	r := &request{typeURL: m.GetTypeUrl(), node: m.GetNode(), nonce: m.GetResponseNonce(),
		subscribe: m.GetResourceNamesSubscribe(), unsubscribe: m.GetResourceNamesUnsubscribe(), initial: m.GetInitialResourceVersions()}
	if m.GetErrorDetail() != nil {
		r.nack, r.errorMessage = true, m.GetErrorDetail().GetMessage()
	}
	return r
}

// serve runs a stream until the client ends it, it fails, or the server
// shuts down. Requests are received and handled on a goroutine of the
// stream's; this one only waits, so that a shutdown can end the stream.
func (s *Server) serve(ctx context.Context, str *stream, recv func() (*request, error)) error {
	str.id = s.nextID.Add(1)
	str.since = time.Now()
	str.st = newState(str.delta)
	if p, ok := peer.FromContext(ctx); ok {
		str.peer = p.Addr.String()
	}
	proto := str.protocol()
	s.metrics.streams.WithLabelValues(proto).Inc()
	defer s.metrics.streams.WithLabelValues(proto).Dec()
	s.mu.Lock()
	s.streams[str.id] = str
	s.mu.Unlock()
	defer s.unindex(str)

	done := make(chan error, 1)
	go func() { done <- s.receive(ctx, str, recv) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return nil
	case <-s.cfg.Shutdown.Done():
		return status.Error(codes.Unavailable, "halo-server is shutting down; reconnect to another replica")
	}
}

func (str *stream) protocol() string {
	if str.delta {
		return "delta"
	}
	return "sotw"
}

// receive handles the stream's requests until Recv fails.
func (s *Server) receive(ctx context.Context, str *stream, recv func() (*request, error)) error {
	for {
		req, err := recv()
		if err != nil {
			return nil // the client closed the stream, or its connection broke
		}
		if str.cluster == "" && (req.node.GetId() == "" || req.node.GetCluster() == "") {
			return status.Error(codes.InvalidArgument, "the first request of a stream must carry node.id (the node's name) and node.cluster (its halo cluster)")
		}
		cluster, node := str.cluster, str.nodeName
		if req.node.GetId() != "" || req.node.GetCluster() != "" {
			cluster, node = req.node.GetCluster(), req.node.GetId()
		}
		if s.cfg.Authorize != nil {
			if err := s.cfg.Authorize(ctx, cluster, node); err != nil {
				s.log.Warn("xds request refused", "node_id", node, "cluster", cluster, "remote_addr", str.peer, "error", err)
				return err
			}
		}
		if str.cluster != "" && (cluster != str.cluster || node != str.nodeName) {
			return status.Errorf(codes.InvalidArgument, "a stream's node cannot change: it subscribed as %s/%s, not %s/%s", str.cluster, str.nodeName, cluster, node)
		}
		if str.cluster == "" {
			str.st.mu.Lock()
			str.node = req.node
			str.st.mu.Unlock()
			str.cluster, str.nodeName = req.node.GetCluster(), req.node.GetId()
			s.index(str)
			s.log.Debug("xds stream opened", "node_id", str.nodeName, "cluster", str.cluster, "protocol", str.protocol(), "remote_addr", str.peer)
			defer s.log.Debug("xds stream closed", "node_id", str.nodeName, "cluster", str.cluster)
		}
		if req.typeURL == "" {
			return status.Error(codes.InvalidArgument, "type_url is required on an ADS stream")
		}
		if err := s.handle(str, req); err != nil {
			return err
		}
	}
}

// handle applies one request and sends what is then due.
func (s *Server) handle(str *stream, req *request) error {
	str.turn.Lock()
	defer str.turn.Unlock()
	view := s.cfg.Cache.Lookup(str.cluster, str.nodeName)
	str.st.mu.Lock()
	n := str.st.handle(req, view.Snapshot, time.Now())
	due := str.st.decide(view, time.Now())
	str.st.mu.Unlock()
	if n != nil {
		s.metrics.nacks.WithLabelValues(req.typeURL).Inc()
		s.log.Warn("node rejected a configuration (NACK)", "node_id", str.nodeName, "cluster", str.cluster, "type_url", req.typeURL,
			"version", n.version, "error", n.message)
	}
	return s.send(str, due)
}

// push sends a stream what a publication made due.
func (s *Server) push(str *stream) error {
	if str.broken.Load() {
		return nil
	}
	str.turn.Lock()
	defer str.turn.Unlock()
	view := s.cfg.Cache.Lookup(str.cluster, str.nodeName)
	str.st.mu.Lock()
	due := str.st.decide(view, time.Now())
	str.st.mu.Unlock()
	return s.send(str, due)
}

// send sends responses in order; the caller holds str.turn.
func (s *Server) send(str *stream, due []*response) error {
	for _, r := range due {
		var err error
		if str.delta {
			err = str.sendDelta(deltaMessage(r))
		} else {
			err = str.sendSotW(sotwMessage(r))
		}
		if err != nil {
			str.broken.Store(true)
			return err
		}
		s.metrics.responses.WithLabelValues(r.typeURL).Inc()
	}
	return nil
}

func (s *Server) index(str *stream) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if str.broken.Load() {
		return // the stream already ended
	}
	add := func(m map[string]map[*stream]bool, k string) {
		if m[k] == nil {
			m[k] = map[*stream]bool{}
		}
		m[k][str] = true
	}
	add(s.byCluster, str.cluster)
	add(s.byNode, str.nodeKey())
}

func (s *Server) unindex(str *stream) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.streams, str.id)
	str.broken.Store(true)
	if str.cluster == "" {
		return
	}
	remove := func(m map[string]map[*stream]bool, k string) {
		delete(m[k], str)
		if len(m[k]) == 0 {
			delete(m, k)
		}
	}
	remove(s.byCluster, str.cluster)
	remove(s.byNode, str.nodeKey())
}

func deltaMessage(r *response) *discoveryv3.DeltaDiscoveryResponse {
	m := &discoveryv3.DeltaDiscoveryResponse{TypeUrl: r.typeURL, Nonce: r.nonce, SystemVersionInfo: r.version, RemovedResources: r.removed}
	for _, name := range sortedNames(r.set) {
		h := r.set[name]
		m.Resources = append(m.Resources, &discoveryv3.Resource{Name: name, Version: h.version, Resource: h.res.Any})
	}
	return m
}

func sotwMessage(r *response) *discoveryv3.DiscoveryResponse {
	m := &discoveryv3.DiscoveryResponse{TypeUrl: r.typeURL, Nonce: r.nonce, VersionInfo: r.version}
	for _, name := range sortedNames(r.set) {
		m.Resources = append(m.Resources, r.set[name].res.Any)
	}
	return m
}

func sortedNames(m map[string]have) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// TypeStatus is a node's state for one resource type.
type TypeStatus struct {
	TypeURL string
	// AckedVersion is the version of what the node holds (it ACKed it, or
	// named it on reconnect); "" for nothing.
	AckedVersion string
	AckedAt      time.Time
	// CurrentVersion is the version of what it should hold now.
	CurrentVersion string
	// InSync: it holds exactly that, and nothing is in flight.
	InSync bool
	// Pending: a response is waiting for the node's ACK or NACK.
	Pending bool
	// The last NACK: the version refused and the node's error text.
	NackVersion, NackError string
	NackAt                 time.Time
}

// AgentStatus is one connected node, as this replica sees it.
type AgentStatus struct {
	Cluster, Node, Replica string
	Protocol               string // "delta" or "sotw"
	Peer                   string // the client's address
	UserAgent              string // node.user_agent_name and version
	ConnectedSince         time.Time
	Profile                string
	Condition              string // why the node does not get its newest resources, or ""
	Types                  []TypeStatus
}

// Agents returns the status of every node connected to this replica (of one
// cluster, or all for ""), sorted by cluster and node.
func (s *Server) Agents(cluster string) []AgentStatus {
	s.mu.Lock()
	streams := make([]*stream, 0, len(s.streams))
	for _, str := range s.streams {
		streams = append(streams, str)
	}
	s.mu.Unlock()
	var out []AgentStatus
	for _, str := range streams {
		if a, ok := str.status(s.cfg.Replica); ok && (cluster == "" || a.Cluster == cluster) {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, func(a, b AgentStatus) int {
		if a.Cluster != b.Cluster {
			return strings.Compare(a.Cluster, b.Cluster)
		}
		if a.Node != b.Node {
			return strings.Compare(a.Node, b.Node)
		}
		return a.ConnectedSince.Compare(b.ConnectedSince)
	})
	return out
}

func (str *stream) status(replica string) (AgentStatus, bool) {
	st := str.st
	st.mu.Lock()
	defer st.mu.Unlock()
	if str.node == nil {
		return AgentStatus{}, false
	}
	proto := "sotw"
	if str.delta {
		proto = "delta"
	}
	a := AgentStatus{
		Cluster: str.node.GetCluster(), Node: str.node.GetId(), Replica: replica, Protocol: proto, Peer: str.peer,
		UserAgent:      fmt.Sprintf("%s %s", str.node.GetUserAgentName(), str.node.GetUserAgentVersion()),
		ConnectedSince: str.since, Profile: st.view.Profile, Condition: st.view.Condition,
	}
	snap := st.view.Snapshot
	for _, url := range slices.Sorted(maps.Keys(st.types)) {
		ts := st.types[url]
		t := TypeStatus{TypeURL: url, AckedAt: ts.ackedAt, Pending: ts.inflight != nil}
		if len(ts.acked) > 0 {
			t.AckedVersion = xdscontract.TypeVersion(versions(ts.acked))
		}
		if snap != nil {
			target, _ := st.target(ts, snap)
			t.CurrentVersion = xdscontract.TypeVersion(versions(target))
			t.InSync = st.inSync(ts, snap)
		}
		if n := ts.lastNack; n != nil {
			t.NackVersion, t.NackError, t.NackAt = n.version, n.message, n.at
		}
		a.Types = append(a.Types, t)
	}
	return a, true
}

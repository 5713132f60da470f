// Package ads serves Envoy's Aggregated Discovery Service, Delta and
// state-of-the-world, to halo agents and to Envoy: every node gets the
// snapshot of its profile from the Hub, the moment it is published.
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

	"github.com/halolb/halo/server/snapshot"
)

// Config configures a Server.
type Config struct {
	// Hub is where snapshots are published. Required.
	Hub *Hub
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
}

// Server serves ADS. It implements
// envoy.service.discovery.v3.AggregatedDiscoveryService.
type Server struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	cfg     Config
	log     *slog.Logger
	nextID  atomic.Int64
	mu      sync.Mutex
	streams map[int64]*stream
	metrics *metrics
}

// New returns a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Hub == nil {
		return nil, errors.New("ads: Config.Hub is required")
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
	return &Server{cfg: cfg, log: cfg.Logger, streams: map[int64]*stream{}, metrics: m}, nil
}

// Register registers the ADS service on s.
func (s *Server) Register(g grpc.ServiceRegistrar) {
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, s)
}

// stream is one ADS stream: its node, its state, and how to send.
type stream struct {
	id        int64
	delta     bool
	peer      string
	since     time.Time
	node      *corev3.Node // set by the first request; read under state.mu
	st        *state
	sendDelta func(*discoveryv3.DeltaDiscoveryResponse) error
	sendSotW  func(*discoveryv3.DiscoveryResponse) error
}

// StreamAggregatedResources serves a state-of-the-world ADS stream.
func (s *Server) StreamAggregatedResources(gs grpc.BidiStreamingServer[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]) error {
	reqs := make(chan *request)
	go func() {
		defer close(reqs)
		for {
			m, err := gs.Recv()
			if err != nil {
				return // the client went away: serve sees reqs closed
			}
			r := &request{typeURL: m.GetTypeUrl(), node: m.GetNode(), nonce: m.GetResponseNonce(), names: m.GetResourceNames()}
			if m.GetErrorDetail() != nil {
				r.nack, r.errorMessage = true, m.GetErrorDetail().GetMessage()
			}
			select {
			case reqs <- r:
			case <-gs.Context().Done():
				return
			}
		}
	}()
	str := &stream{delta: false, sendSotW: gs.Send}
	return s.serve(gs.Context(), str, reqs)
}

// DeltaAggregatedResources serves a Delta (incremental) ADS stream.
func (s *Server) DeltaAggregatedResources(gs grpc.BidiStreamingServer[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]) error {
	reqs := make(chan *request)
	go func() {
		defer close(reqs)
		for {
			m, err := gs.Recv()
			if err != nil {
				return // the client went away: serve sees reqs closed
			}
			r := &request{typeURL: m.GetTypeUrl(), node: m.GetNode(), nonce: m.GetResponseNonce(),
				subscribe: m.GetResourceNamesSubscribe(), unsubscribe: m.GetResourceNamesUnsubscribe(), initial: m.GetInitialResourceVersions()}
			if m.GetErrorDetail() != nil {
				r.nack, r.errorMessage = true, m.GetErrorDetail().GetMessage()
			}
			select {
			case reqs <- r:
			case <-gs.Context().Done():
				return
			}
		}
	}()
	str := &stream{delta: true, sendDelta: gs.Send}
	return s.serve(gs.Context(), str, reqs)
}

// serve runs a stream until it ends: requests update its state, and every
// request or publication is followed by the responses that are due.
func (s *Server) serve(ctx context.Context, str *stream, reqs <-chan *request) error {
	str.id = s.nextID.Add(1)
	str.since = time.Now()
	str.st = newState(str.delta)
	if p, ok := peer.FromContext(ctx); ok {
		str.peer = p.Addr.String()
	}
	proto := "sotw"
	if str.delta {
		proto = "delta"
	}
	s.metrics.streams.WithLabelValues(proto).Inc()
	defer s.metrics.streams.WithLabelValues(proto).Dec()
	s.mu.Lock()
	s.streams[str.id] = str
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.streams, str.id)
		s.mu.Unlock()
	}()

	var cluster, id string
	var wait Wait // nil channels until the node is known: waits for requests only
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.cfg.Shutdown.Done():
			return status.Error(codes.Unavailable, "halo-server is shutting down; reconnect to another replica")
		case req, ok := <-reqs:
			if !ok {
				return nil // the client closed the stream, or its connection broke
			}
			if cluster == "" {
				if req.node.GetId() == "" || req.node.GetCluster() == "" {
					return status.Error(codes.InvalidArgument, "the first request of a stream must carry node.id (the node's name) and node.cluster (its halo cluster)")
				}
				cluster, id = req.node.GetCluster(), req.node.GetId()
				str.st.mu.Lock()
				str.node = req.node
				str.st.mu.Unlock()
				s.log.Debug("xds stream opened", "node_id", id, "cluster", cluster, "protocol", proto, "remote_addr", str.peer)
				defer s.log.Debug("xds stream closed", "node_id", id, "cluster", cluster)
			}
			if req.typeURL == "" {
				return status.Error(codes.InvalidArgument, "type_url is required on an ADS stream")
			}
			view, _ := s.cfg.Hub.Lookup(cluster, id)
			str.st.mu.Lock()
			n := str.st.handle(req, view.Snapshot, time.Now())
			str.st.mu.Unlock()
			if n != nil {
				s.metrics.nacks.WithLabelValues(req.typeURL).Inc()
				s.log.Warn("node rejected a configuration (NACK)", "node_id", id, "cluster", cluster, "type_url", req.typeURL,
					"version", n.version, "error", n.message)
			}
		case <-wait.Cluster:
		case <-wait.Node:
		}
		var view View
		view, wait = s.cfg.Hub.Lookup(cluster, id)
		if err := s.respond(str, view); err != nil {
			return err
		}
	}
}

// respond sends every response now due on the stream.
func (s *Server) respond(str *stream, view View) error {
	str.st.mu.Lock()
	str.st.view = view
	var due []*response
	if view.Snapshot != nil {
		due = str.st.next(view.Snapshot, time.Now())
	}
	str.st.mu.Unlock()
	for _, r := range due {
		var err error
		if str.delta {
			err = str.sendDelta(deltaMessage(r))
		} else {
			err = str.sendSotW(sotwMessage(r))
		}
		if err != nil {
			return err
		}
		s.metrics.responses.WithLabelValues(r.typeURL).Inc()
	}
	return nil
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
			t.AckedVersion = snapshot.TypeVersion(versions(ts.acked))
		}
		if snap != nil {
			t.CurrentVersion = snapshot.TypeVersion(versions(st.target(ts, snap)))
			t.InSync = st.inSync(ts, snap)
		}
		if n := ts.lastNack; n != nil {
			t.NackVersion, t.NackError, t.NackAt = n.version, n.message, n.at
		}
		a.Types = append(a.Types, t)
	}
	return a, true
}

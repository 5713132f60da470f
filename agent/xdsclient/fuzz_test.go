package xdsclient_test

// The fuzz targets of this file drive the real client over a real gRPC
// stream (127.0.0.1) against a scripted ADS server that sends responses
// decoded from the fuzz input (valid halo resources mixed with corrupted
// ones) and reads what the client answers. After every response they check
// the answer against a model of the client's protocol: an ACK or a NACK of
// that response's type and nonce, a NACK with a short error_detail, the
// applied state unchanged by a NACK, versions and endpoint subscriptions as
// the protocol says, bounded logs and metric labels, and no panic or stall.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/halolb/halo/agent/config"
	"github.com/halolb/halo/agent/xdsclient"
	"github.com/halolb/halo/internal/xdscontract"
	"github.com/halolb/halo/server/snapshot"
	"github.com/halolb/halo/server/snapshot/snapshottest"
)

// Bounds the client must keep whatever the server sends.
const (
	// maxDetail bounds a NACK's error_detail message (bytes).
	maxDetail = 4 << 10
	// maxLogRecord bounds one log record (bytes).
	maxLogRecord = 16 << 10
	// maxSeries bounds the series of halo_agent_xds_updates_total: three
	// types and "other", by ack and nack.
	maxSeries = 8
)

// hugeLen is the length in bytes of a "huge" string: large, yet so that
// a response holding two of them stays under gRPC's 4 MiB message limit.
const hugeLen = 1 << 20

// maxResponse bounds a scripted response (gRPC's default limit is 4 MiB);
// resources beyond it are left out.
const maxResponse = 3 << 20

// fuzzWait bounds one wait for the client's next request: it catches a
// stalled client, not a slow machine.
const fuzzWait = 20 * time.Second

// pool holds valid halo resources by type, from halo-server's own snapshot
// builder: several versions of the same names.
type pool struct {
	byType map[string][]*snapshot.Resource
	// initial is one complete snapshot (a worker's), for Config.Initial.
	initial []*snapshot.Resource
}

var poolOnce = sync.OnceValue(func() *pool {
	p := &pool{byType: map[string][]*snapshot.Resource{}}
	seen := map[string]bool{}
	clusters := snapshottest.Clusters()
	for _, cname := range slices.Sorted(maps.Keys(clusters)) {
		res := snapshot.Build(snapshot.Input{Cluster: clusters[cname], Nodes: snapshottest.Nodes()})
		for _, prof := range slices.Sorted(maps.Keys(res.Snapshots)) {
			s := res.Snapshots[prof]
			for _, t := range xdscontract.Types {
				for _, n := range s.Names(t) {
					r := s.Get(t, n)
					if k := t + "/" + n + "@" + r.Version; !seen[k] {
						seen[k] = true
						p.byType[t] = append(p.byType[t], r)
					}
				}
			}
			if p.initial == nil && cname == "local, etcd LB" {
				for _, t := range xdscontract.Types {
					for _, n := range s.Names(t) {
						p.initial = append(p.initial, s.Get(t, n))
					}
				}
			}
		}
	}
	return p
})

// byteReader reads a fuzz input; past its end it reads zeros.
type byteReader struct{ b []byte }

func (r *byteReader) more() bool { return len(r.b) > 0 }

func (r *byteReader) byte() byte {
	if len(r.b) == 0 {
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

// str reads a length-prefixed string, made valid UTF-8 (proto3 strings are).
func (r *byteReader) str() string {
	n := int(r.byte()) % 24
	if n > len(r.b) {
		n = len(r.b)
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return strings.ToValidUTF8(s, "?")
}

// huge reads a huge string of one repeated character, printable or one
// that %q escapes into four bytes.
func (r *byteReader) huge() string {
	c := []string{"a", "\x01", "é", "\u2028"}[r.byte()%4]
	return strings.Repeat(c, hugeLen/len(c))
}

// wireRes is one scripted resource. SotW sends only body (a nil body as
// an empty Any).
type wireRes struct {
	name, version string
	body          *anypb.Any
}

// step is one scripted response.
type step struct {
	typeURL, nonce, version string
	refuse                  bool // the agent refuses the state it makes
	resources               []wireRes
	removed                 []string // Delta
}

func (s step) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s nonce=%s version=%s refuse=%v", clip(s.typeURL), clip(s.nonce), clip(s.version), s.refuse)
	for _, r := range s.resources {
		fmt.Fprintf(&b, "\n  + %s@%s %s", clip(r.name), clip(r.version), clip(r.body.GetTypeUrl()))
	}
	for _, n := range s.removed {
		fmt.Fprintf(&b, "\n  - %s", clip(n))
	}
	return b.String()
}

func clip(s string) string {
	if len(s) > 40 {
		return fmt.Sprintf("%q…(%d bytes)", s[:40], len(s))
	}
	return fmt.Sprintf("%q", s)
}

// script is a decoded fuzz input.
type script struct {
	initial bool // start from a complete snapshot as Config.Initial
	steps   []step
}

const maxSteps = 12

var otherTypes = []string{"", "type.googleapis.com/google.protobuf.Empty",
	"type.googleapis.com/envoy.config.route.v3.RouteConfiguration", "foo.example/envoy.config.listener.v3.Listener",
	"type.googleapis.com/envoy.config.listener.v3.Listener ", "type.googleapis.com/envoy.config.listener.v2.Listener"}

// decodeScript turns fuzz bytes into responses. Its layout:
//
//	flags (bit 0: initial state)
//	per response: op, [type string], [nonce string], [version string],
//	  count, per resource: pick, mode, version, [strings]; Delta: removed
//	  count, per removed name: pick, [string]
func decodeScript(data []byte, sotw bool) script {
	p := poolOnce()
	r := &byteReader{b: data}
	sc := script{initial: r.byte()&1 == 1}
	var prevNonce, prevVersion string
	for k := 0; r.more() && k < maxSteps; k++ {
		op := r.byte()
		st := step{refuse: op&8 != 0}
		switch sel := op & 7; sel {
		case 0, 3:
			st.typeURL = xdscontract.ClusterType
		case 1, 4:
			st.typeURL = xdscontract.EndpointType
		case 2, 5:
			st.typeURL = xdscontract.ListenerType
		case 6:
			if i := int(r.byte()); i%8 < len(otherTypes) {
				st.typeURL = otherTypes[i%8]
			} else {
				st.typeURL = r.huge()
			}
		case 7:
			st.typeURL = r.str()
		}
		switch (op >> 4) & 3 {
		case 0:
			st.nonce = fmt.Sprintf("n%d", k+1)
		case 1:
			st.nonce = ""
		case 2:
			st.nonce = prevNonce
		case 3:
			if s := r.str(); s != "" {
				st.nonce = s
			} else {
				st.nonce = r.huge()
			}
		}
		switch (op >> 6) & 3 {
		case 0:
			st.version = fmt.Sprintf("v%d", k+1)
		case 1:
			st.version = ""
		case 2:
			st.version = prevVersion
		case 3:
			if s := r.str(); s != "" {
				st.version = s
			} else {
				st.version = r.huge()
			}
		}
		prevNonce, prevVersion = st.nonce, st.version
		cands := p.byType[st.typeURL]
		if cands == nil {
			cands = slices.Concat(p.byType[xdscontract.ClusterType], p.byType[xdscontract.EndpointType], p.byType[xdscontract.ListenerType])
		}
		n := int(r.byte())
		many := n >= 250
		if !many {
			n %= 6
		} else {
			n = 300
		}
		size := len(st.typeURL) + len(st.nonce) + len(st.version)
		for i := 0; i < n; i++ {
			var pick, mode, ver byte
			if many {
				pick, mode, ver = byte(i), 6, 2 // distinct names, bodies that do not name them
			} else {
				pick, mode, ver = r.byte(), r.byte(), r.byte()
			}
			base := cands[int(pick)%len(cands)]
			w := wireRes{name: base.Name, version: base.Version, body: base.Any}
			switch mode & 7 {
			case 4:
				w.name = ""
			case 5:
				w.name = r.huge()
			case 6:
				if many {
					w.name = fmt.Sprintf("%s-%d", base.Name, i)
				} else {
					w.name = cands[int(r.byte())%len(cands)].Name
				}
			case 7:
				w.name = r.str()
			}
			switch (mode >> 3) & 7 {
			case 3: // garbage bytes under the right type URL
				w.body = &anypb.Any{TypeUrl: base.Any.GetTypeUrl(), Value: []byte(r.str())}
			case 4: // another type's resource
				others := p.byType[xdscontract.Types[(slices.Index(xdscontract.Types, st.typeURL)+1+int(r.byte())%2)%3]]
				w.body = others[int(r.byte())%len(others)].Any
			case 5:
				w.body = nil
			case 6: // a valid body, one byte flipped or cut short
				v := slices.Clone(base.Any.GetValue())
				if i := int(r.byte()); len(v) > 0 {
					if i&1 == 0 {
						v[(i/2)%len(v)] ^= r.byte() | 1
					} else {
						v = v[:(i/2)%len(v)]
					}
				}
				w.body = &anypb.Any{TypeUrl: base.Any.GetTypeUrl(), Value: v}
			case 7: // another type's bytes under this type URL
				others := p.byType[xdscontract.Types[(slices.Index(xdscontract.Types, st.typeURL)+1)%3]]
				w.body = &anypb.Any{TypeUrl: st.typeURL, Value: others[int(r.byte())%len(others)].Any.GetValue()}
			}
			switch {
			case ver == 0:
				w.version = ""
			case ver == 1:
				w.version = r.str()
			case ver < 64:
				w.version = fmt.Sprintf("rv%d", ver) // the same content under a new version
			}
			size += len(w.name) + len(w.version) + proto.Size(w.body) + 16
			if size > maxResponse {
				break
			}
			st.resources = append(st.resources, w)
		}
		if !sotw {
			for range int(r.byte()) % 4 {
				switch b := r.byte(); b % 5 {
				case 0, 1:
					st.removed = append(st.removed, cands[int(b/5)%len(cands)].Name)
				case 2:
					st.removed = append(st.removed, fmt.Sprintf("unknown-%d", b))
				case 3:
					st.removed = append(st.removed, r.str())
				case 4:
					if size+hugeLen < maxResponse {
						st.removed = append(st.removed, r.huge())
						size += hugeLen
					}
				}
			}
		}
		sc.steps = append(sc.steps, st)
	}
	return sc
}

// finalStep is a good response after the script: every listener of the
// initial snapshot, which must be ACKed whatever came before.
func finalStep(sotw bool) step {
	p := poolOnce()
	st := step{typeURL: xdscontract.ListenerType, nonce: "final", version: "final"}
	for _, r := range p.initial {
		if r.Any.GetTypeUrl() == xdscontract.ListenerType {
			st.resources = append(st.resources, wireRes{name: r.Name, version: r.Version, body: r.Any})
		}
	}
	return st
}

// checkState is the agent's Update check, as halo-agent's buildSet does it
// per resource: every body decodes and names the resource.
func checkState(state []*xdsclient.Resource) error {
	for _, r := range state {
		name, _, err := config.Decode(r.Body)
		if err != nil {
			return fmt.Errorf("decode %s: %w", r.Name, err)
		}
		if name != r.Name {
			return fmt.Errorf("resource %q: its body names it %q", r.Name, name)
		}
	}
	return nil
}

// model is what the client holds, by the protocol.
type model map[string]map[string]*xdsclient.Resource

func (m model) clone() model {
	out := model{}
	for t, rs := range m {
		out[t] = maps.Clone(rs)
	}
	return out
}

func (m model) list() []*xdsclient.Resource {
	var out []*xdsclient.Resource
	for _, t := range slices.Sorted(maps.Keys(m)) {
		for _, n := range slices.Sorted(maps.Keys(m[t])) {
			out = append(out, m[t][n])
		}
	}
	return out
}

func sameResources(a, b []*xdsclient.Resource) bool {
	return slices.EqualFunc(a, b, func(x, y *xdsclient.Resource) bool {
		return x.TypeURL == y.TypeURL && x.Name == y.Name && x.Version == y.Version &&
			x.Body.GetTypeUrl() == y.Body.GetTypeUrl() && bytes.Equal(x.Body.GetValue(), y.Body.GetValue())
	})
}

// keepEndpoints drops the endpoints no EDS cluster of m names and returns
// the names it keeps subscribed.
func (m model) keepEndpoints() []string {
	want := xdsclient.ClusterEDSNames(m.list())
	for n := range m[xdscontract.EndpointType] {
		if !slices.Contains(want, n) {
			delete(m[xdscontract.EndpointType], n)
		}
	}
	return want
}

// sotwName reads a SotW resource's name as the protocol says: the body
// must decode, as a message that has a name.
func sotwName(a *anypb.Any) (string, bool) {
	m, err := a.UnmarshalNew()
	if err != nil {
		return "", false
	}
	switch v := m.(type) {
	case interface{ GetClusterName() string }:
		return v.GetClusterName(), true
	case interface{ GetName() string }:
		return v.GetName(), true
	}
	return "", false
}

// apply is the model's answer to st: the candidate state, or why st is
// refused before the agent sees it.
func (m model) apply(st step, sotw bool) (model, error) {
	known := st.typeURL == xdscontract.ClusterType || st.typeURL == xdscontract.EndpointType || st.typeURL == xdscontract.ListenerType
	res := st.resources
	if sotw {
		res = nil
		for _, w := range st.resources {
			name, ok := sotwName(w.body)
			if !ok {
				return nil, errors.New("a body does not decode")
			}
			res = append(res, wireRes{name: name, version: st.version, body: w.body})
		}
	}
	if !known {
		return nil, errors.New("unknown type")
	}
	cand := m.clone()
	rs := cand[st.typeURL]
	if sotw || rs == nil {
		rs = map[string]*xdsclient.Resource{}
	}
	seen := map[string]bool{}
	for _, w := range res {
		switch {
		case w.name == "", w.body == nil, w.body.GetTypeUrl() != st.typeURL, seen[w.name], w.version == "":
			return nil, errors.New("bad resource")
		}
		seen[w.name] = true
		rs[w.name] = &xdsclient.Resource{TypeURL: st.typeURL, Name: w.name, Version: w.version, Body: w.body}
	}
	for _, n := range st.removed {
		delete(rs, n)
	}
	cand[st.typeURL] = rs
	cand.keepEndpoints()
	return cand, nil
}

// recorder is the agent: it checks and records the Update calls.
type recorder struct {
	mu       sync.Mutex
	refuse   bool
	applied  []*xdsclient.Resource
	calls    int
	problems []string
}

const refusal = "refused by the script"

func (r *recorder) update(_ context.Context, typeURL string, state []*xdsclient.Resource) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	seen := map[[2]string]bool{}
	for i, res := range state {
		k := [2]string{res.TypeURL, res.Name}
		if i > 0 && (state[i-1].TypeURL > res.TypeURL || state[i-1].TypeURL == res.TypeURL && state[i-1].Name >= res.Name) {
			r.problems = append(r.problems, fmt.Sprintf("state not sorted at %d", i))
		}
		if seen[k] || res.Name == "" || res.Version == "" || res.Body.GetTypeUrl() != res.TypeURL {
			r.problems = append(r.problems, fmt.Sprintf("state holds a bad resource %s %s@%s", clip(res.TypeURL), clip(res.Name), clip(res.Version)))
		}
		seen[k] = true
	}
	if typeURL != xdscontract.ClusterType && typeURL != xdscontract.EndpointType && typeURL != xdscontract.ListenerType {
		r.problems = append(r.problems, "Update of type "+clip(typeURL))
	}
	if r.refuse {
		return errors.New(refusal)
	}
	if err := checkState(state); err != nil {
		return err
	}
	r.applied = state
	return nil
}

// logSize records the largest log record.
type logSize struct {
	mu  sync.Mutex
	max int
}

func (l *logSize) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.max = max(l.max, len(p))
	return len(p), nil
}

// adsServer is a scripted ADS server: it hands each stream to the test.
type adsServer struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	streams chan *serverStream
}

// serverStream is one stream as the test sees it: what the client sent,
// in order (closed when the stream ends), and how to send.
type serverStream struct {
	reqs  chan proto.Message
	send  func(proto.Message) error
	ended error // why Recv ended; read after reqs is closed
}

func (s *adsServer) DeltaAggregatedResources(st grpc.BidiStreamingServer[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]) error {
	return s.serve(st.Context(), func() (proto.Message, error) { return st.Recv() },
		func(m proto.Message) error { return st.Send(m.(*discoveryv3.DeltaDiscoveryResponse)) })
}

func (s *adsServer) StreamAggregatedResources(st grpc.BidiStreamingServer[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]) error {
	return s.serve(st.Context(), func() (proto.Message, error) { return st.Recv() },
		func(m proto.Message) error { return st.Send(m.(*discoveryv3.DiscoveryResponse)) })
}

// serve hands the stream to the test and reads it until the client ends
// it.
func (s *adsServer) serve(ctx context.Context, recv func() (proto.Message, error), send func(proto.Message) error) error {
	ss := &serverStream{reqs: make(chan proto.Message, 16), send: send}
	select {
	case s.streams <- ss:
	case <-ctx.Done():
		return nil
	}
	defer close(ss.reqs)
	for {
		m, err := recv()
		if err != nil {
			ss.ended = err
			return nil
		}
		select {
		case ss.reqs <- m:
		case <-ctx.Done():
			return nil
		}
	}
}

// fuzzRun is one fuzz iteration: a server, a client, the script.
type fuzzRun struct {
	t      *testing.T
	sotw   bool
	c      *xdsclient.Client
	rec    *recorder
	logs   *logSize
	reg    *prometheus.Registry
	stream *serverStream
	timer  *time.Timer

	m        model
	eds      []string          // the endpoint subscription on the wire
	edsNonce string            // SotW: the newest endpoints nonce sent
	versions map[string]string // the client's Versions
}

func runScript(t *testing.T, sc script, sotw bool) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &adsServer{streams: make(chan *serverStream)}
	gs := grpc.NewServer(grpc.WaitForHandlers(true))
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, srv)
	served := make(chan error, 1)
	go func() { served <- gs.Serve(lis) }()
	defer func() {
		gs.Stop()
		if err := <-served; err != nil {
			t.Errorf("scripted server: %v", err)
		}
	}()

	p := poolOnce()
	r := &fuzzRun{t: t, sotw: sotw, rec: &recorder{}, logs: &logSize{}, reg: prometheus.NewPedanticRegistry(), m: model{},
		timer: time.NewTimer(fuzzWait)}
	defer r.timer.Stop()
	var initial []*xdsclient.Resource
	if sc.initial {
		for _, res := range p.initial {
			x := &xdsclient.Resource{TypeURL: res.Any.GetTypeUrl(), Name: res.Name, Version: res.Version, Body: res.Any}
			initial = append(initial, x)
			if r.m[x.TypeURL] == nil {
				r.m[x.TypeURL] = map[string]*xdsclient.Resource{}
			}
			r.m[x.TypeURL][x.Name] = x
		}
	}
	r.eds = r.m.keepEndpoints()
	r.c, err = xdsclient.New(xdsclient.Config{
		Servers:     []string{lis.Addr().String()},
		Node:        &corev3.Node{Id: "worker-1", Cluster: "prod"},
		SotW:        sotw,
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
		Initial:     initial,
		Update:      r.rec.update,
		Logger:      slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registerer:  r.reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	r.versions = r.c.Versions()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.c.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	r.arm()
	select {
	case r.stream = <-srv.streams:
	case <-r.timer.C:
		t.Fatalf("no stream after %v", fuzzWait)
	}
	r.checkStart()
	for i, st := range append(slices.Clone(sc.steps), finalStep(sotw)) {
		r.step(i, st, i == len(sc.steps))
	}
	// Nothing else: no second stream (the client never ends a stream for
	// what it reads), and a state the client can restart from.
	select {
	case ss := <-srv.streams:
		t.Fatalf("the client opened a second stream (the first ended: %v)", ss.ended)
	default:
	}
	cfg := xdsclient.Config{Servers: []string{"127.0.0.1:1"}, Node: &corev3.Node{Id: "w", Cluster: "c"},
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
		Update:      r.rec.update, Initial: r.m.list()}
	if _, err := xdsclient.New(cfg); err != nil {
		t.Errorf("the applied state cannot be a restart's Initial: %v", err)
	}
}

// arm restarts the stall timer.
func (r *fuzzRun) arm() {
	r.timer.Stop()
	select {
	case <-r.timer.C:
	default:
	}
	r.timer.Reset(fuzzWait)
}

// next is the client's next request.
func (r *fuzzRun) next(what string) proto.Message {
	r.t.Helper()
	r.arm()
	select {
	case m, ok := <-r.stream.reqs:
		if !ok {
			r.t.Fatalf("%s: the stream ended: %v", what, r.stream.ended)
		}
		return m
	case <-r.timer.C:
		r.t.Fatalf("%s: nothing after %v (the client stalled)", what, fuzzWait)
	}
	return nil
}

// checkStart reads the first requests: clusters (with the node), listeners,
// then the endpoints of the initial state if any.
func (r *fuzzRun) checkStart() {
	t := r.t
	for i, typ := range []string{xdscontract.ClusterType, xdscontract.ListenerType, xdscontract.EndpointType} {
		if typ == xdscontract.EndpointType && len(r.eds) == 0 {
			break
		}
		m := r.next("the first requests")
		if r.sotw {
			q := m.(*discoveryv3.DiscoveryRequest)
			want := &discoveryv3.DiscoveryRequest{TypeUrl: typ, VersionInfo: r.versions[typ]}
			if typ == xdscontract.EndpointType {
				want.ResourceNames = r.eds
			}
			q.Node = checkNode(t, i, q.GetNode())
			if !proto.Equal(q, want) {
				t.Fatalf("first request %d: %v, want %v", i, q, want)
			}
			continue
		}
		q := m.(*discoveryv3.DeltaDiscoveryRequest)
		want := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: typ, InitialResourceVersions: map[string]string{}}
		for n, res := range r.m[typ] {
			want.InitialResourceVersions[n] = res.Version
		}
		if typ == xdscontract.EndpointType {
			want.ResourceNamesSubscribe = r.eds
		}
		q.Node = checkNode(t, i, q.GetNode())
		if !proto.Equal(q, want) {
			t.Fatalf("first request %d: %v, want %v", i, q, want)
		}
	}
}

func checkNode(t *testing.T, i int, n *corev3.Node) *corev3.Node {
	if (i == 0) != (n != nil) || (n != nil && n.GetId() != "worker-1") {
		t.Fatalf("first request %d: node %v", i, n)
	}
	return nil
}

// step sends one response and checks the answer.
func (r *fuzzRun) step(i int, st step, final bool) {
	t := r.t
	t.Helper()
	// Before the response: the client may call Update as soon as it is sent.
	r.rec.mu.Lock()
	r.rec.refuse = st.refuse
	calls := r.rec.calls
	r.rec.mu.Unlock()
	var err error
	if r.sotw {
		m := &discoveryv3.DiscoveryResponse{TypeUrl: st.typeURL, Nonce: st.nonce, VersionInfo: st.version}
		for _, w := range st.resources {
			b := w.body
			if b == nil {
				b = &anypb.Any{}
			}
			m.Resources = append(m.Resources, b)
		}
		err = r.stream.send(m)
	} else {
		m := &discoveryv3.DeltaDiscoveryResponse{TypeUrl: st.typeURL, Nonce: st.nonce, SystemVersionInfo: st.version, RemovedResources: st.removed}
		for _, w := range st.resources {
			m.Resources = append(m.Resources, &discoveryv3.Resource{Name: w.name, Version: w.version, Resource: w.body})
		}
		err = r.stream.send(m)
	}
	if err != nil {
		t.Fatalf("response %d: send: %v", i, err)
	}
	if r.sotw && st.typeURL == xdscontract.EndpointType {
		r.edsNonce = st.nonce
	}

	// The model's answer.
	cand, refused := r.m.apply(st, r.sotw)
	changed := refused == nil && !sameResources(cand.list(), r.m.list())
	if changed {
		if st.refuse {
			refused = errors.New(refusal)
		} else {
			refused = checkState(cand.list())
		}
	}

	what := fmt.Sprintf("response %d (%s)", i, st)
	var detail *status.Status
	if r.sotw {
		q := r.next(what).(*discoveryv3.DiscoveryRequest)
		detail = q.GetErrorDetail()
		version := st.version
		if refused != nil {
			version = r.versions[st.typeURL]
		}
		var names []string
		if st.typeURL == xdscontract.EndpointType {
			names = r.eds
		}
		if q.GetTypeUrl() != st.typeURL || q.GetResponseNonce() != st.nonce || q.GetVersionInfo() != version ||
			!slices.Equal(q.GetResourceNames(), names) || q.GetNode() != nil {
			t.Fatalf("%s: answered with %s, want type %s, nonce %s, version %s, names %v",
				what, describeReq(q), clip(st.typeURL), clip(st.nonce), clip(version), names)
		}
	} else {
		q := r.next(what).(*discoveryv3.DeltaDiscoveryRequest)
		detail = q.GetErrorDetail()
		if q.GetTypeUrl() != st.typeURL || q.GetResponseNonce() != st.nonce || q.GetNode() != nil ||
			len(q.GetResourceNamesSubscribe())+len(q.GetResourceNamesUnsubscribe())+len(q.GetInitialResourceVersions()) > 0 {
			t.Fatalf("%s: answered with %s, want type %s, nonce %s", what, describeReq(q), clip(st.typeURL), clip(st.nonce))
		}
	}
	if (detail != nil) != (refused != nil) {
		t.Fatalf("%s: error_detail %v, want a NACK: %v", what, clipStatus(detail), refused)
	}
	if final && detail != nil {
		t.Fatalf("%s: a good response after the script was NACKed: %s", what, clipStatus(detail))
	}
	if detail != nil {
		msg := detail.GetMessage()
		switch {
		case detail.GetCode() != int32(codes.InvalidArgument):
			t.Fatalf("%s: NACK code %d", what, detail.GetCode())
		case msg == "", len(msg) > maxDetail, !utf8.ValidString(msg):
			t.Fatalf("%s: NACK error_detail of %d bytes: %s", what, len(msg), clip(msg))
		case st.refuse && changed && msg != refusal:
			t.Fatalf("%s: NACK error_detail %s, want the agent's %q", what, clip(msg), refusal)
		}
	}

	// The agent saw the candidate iff it changed the state; the applied
	// state and the versions moved iff it was accepted.
	r.rec.mu.Lock()
	gotCalls, applied, problems := r.rec.calls-calls, r.rec.applied, r.rec.problems
	r.rec.mu.Unlock()
	if len(problems) > 0 {
		t.Fatalf("%s: Update: %s", what, strings.Join(problems, "; "))
	}
	if want := map[bool]int{true: 1, false: 0}[changed]; gotCalls != want {
		t.Fatalf("%s: %d Update calls, want %d", what, gotCalls, want)
	}
	prev := r.m
	if refused == nil {
		r.m = cand
		if changed && !sameResources(applied, r.m.list()) {
			t.Fatalf("%s: applied state\n%s\nwant\n%s", what, describe(applied), describe(r.m.list()))
		}
		if r.sotw {
			r.versions = maps.Clone(r.versions)
			if st.version == "" {
				delete(r.versions, st.typeURL)
			} else {
				r.versions[st.typeURL] = st.version
			}
		}
	}
	got := r.c.Versions()
	if r.sotw || refused != nil || !changed {
		if !maps.Equal(got, r.versions) {
			t.Fatalf("%s: Versions %v, want %v", what, got, r.versions)
		}
	} else {
		// Delta: a type's version is a hash of its names and versions.
		for _, typ := range []string{xdscontract.ClusterType, xdscontract.EndpointType, xdscontract.ListenerType} {
			same := maps.EqualFunc(prev[typ], r.m[typ], func(a, b *xdsclient.Resource) bool { return a.Version == b.Version })
			if same != (got[typ] == r.versions[typ]) {
				t.Fatalf("%s: %s version %q -> %q, resources the same: %v", what, typ, r.versions[typ], got[typ], same)
			}
		}
		r.versions = got
	}
	r.checkBounds(what)
	if refused != nil {
		return
	}
	r.checkSubscription(what)
}

// checkSubscription reads the endpoint subscription an ACK leads to, if
// the applied state's EDS clusters changed it.
func (r *fuzzRun) checkSubscription(what string) {
	t := r.t
	want := xdsclient.ClusterEDSNames(r.m.list())
	if slices.Equal(want, r.eds) {
		return
	}
	if r.sotw {
		if len(want) == 0 {
			return // SotW keeps its last names rather than ask for every one
		}
		q := r.next(what + ": subscription").(*discoveryv3.DiscoveryRequest)
		exp := &discoveryv3.DiscoveryRequest{TypeUrl: xdscontract.EndpointType, VersionInfo: r.versions[xdscontract.EndpointType],
			ResourceNames: want, ResponseNonce: r.edsNonce}
		if !proto.Equal(q, exp) {
			t.Fatalf("%s: subscription %s, want %s", what, describeReq(q), describeReq(exp))
		}
		r.eds = want
		return
	}
	var sub, unsub []string
	for _, n := range want {
		if !slices.Contains(r.eds, n) {
			sub = append(sub, n)
		}
	}
	for _, n := range r.eds {
		if !slices.Contains(want, n) {
			unsub = append(unsub, n)
		}
	}
	if len(r.eds) == 0 && len(sub) == 0 {
		return
	}
	q := r.next(what + ": subscription").(*discoveryv3.DeltaDiscoveryRequest)
	exp := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: xdscontract.EndpointType, ResourceNamesSubscribe: sub, ResourceNamesUnsubscribe: unsub}
	if !proto.Equal(q, exp) {
		t.Fatalf("%s: subscription %s, want %s", what, describeReq(q), describeReq(exp))
	}
	r.eds = want
}

// checkBounds checks what the client keeps of what it was sent: log
// records and metric series.
func (r *fuzzRun) checkBounds(what string) {
	r.logs.mu.Lock()
	longest := r.logs.max
	r.logs.mu.Unlock()
	if longest > maxLogRecord {
		r.t.Fatalf("%s: a log record of %d bytes", what, longest)
	}
	mfs, err := r.reg.Gather()
	if err != nil {
		r.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "halo_agent_xds_updates_total" && len(mf.GetMetric()) > maxSeries {
			r.t.Fatalf("%s: %d series of %s", what, len(mf.GetMetric()), mf.GetName())
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if len(l.GetValue()) > 256 {
					r.t.Fatalf("%s: %s: a %s label of %d bytes", what, mf.GetName(), l.GetName(), len(l.GetValue()))
				}
			}
		}
	}
}

func describeReq(q proto.Message) string {
	s := fmt.Sprint(q)
	if len(s) > 600 {
		s = s[:600] + fmt.Sprintf("…(%d bytes)", len(s))
	}
	return s
}

func clipStatus(s *status.Status) string {
	if s == nil {
		return "none"
	}
	return fmt.Sprintf("code %d %s", s.GetCode(), clip(s.GetMessage()))
}

// FuzzDeltaResponses sends the client Delta responses decoded from the
// input (see decodeScript) and checks every answer.
func FuzzDeltaResponses(f *testing.F) {
	for _, s := range seedScripts(false) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) { runScript(t, decodeScript(data, false), false) })
}

// FuzzSotWResponses is FuzzDeltaResponses for state of the world.
func FuzzSotWResponses(f *testing.F) {
	for _, s := range seedScripts(true) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) { runScript(t, decodeScript(data, true), true) })
}

// Seed encoding (see decodeScript).
const (
	tCDS, tEDS, tLDS, tOther, tString = 0, 1, 2, 6, 7
	nUnique, nEmpty, nRepeat, nString = 0 << 4, 1 << 4, 2 << 4, 3 << 4
	vUnique, vEmpty, vRepeat, vString = 0 << 6, 1 << 6, 2 << 6, 3 << 6
	refuse                            = 8
	// resource modes: name (bits 0-2), body (bits 3-5)
	mValid, mNoName, mHugeName, mOtherName, mStringName  = 0, 4, 5, 6, 7
	mGarbage, mOtherType, mNoBody, mFlipped, mOtherBytes = 3 << 3, 4 << 3, 5 << 3, 6 << 3, 7 << 3
	poolVersion                                          = 100 // a resource's version byte: its pool version
)

// seedScripts are readable scripts: a valid sequence, then one of each
// kind of bad response between good ones.
func seedScripts(sotw bool) [][]byte {
	// res is one resource: pool pick, mode, version byte, extras.
	res := func(pick, mode, ver byte, extra ...byte) []byte { return append([]byte{pick, mode, ver}, extra...) }
	// resp is one response; removed is Delta's (count then names).
	resp := func(op byte, pre []byte, resources [][]byte, removed ...byte) []byte {
		out := append([]byte{op}, pre...)
		out = append(out, byte(len(resources)))
		for _, r := range resources {
			out = append(out, r...)
		}
		if !sotw {
			out = append(out, byte(len(removed)))
			out = append(out, removed...)
		}
		return out
	}
	good := slices.Concat(
		resp(tCDS, nil, [][]byte{res(0, mValid, poolVersion), res(1, mValid, poolVersion)}),
		resp(tEDS, nil, [][]byte{res(0, mValid, poolVersion), res(1, mValid, poolVersion), res(2, mValid, poolVersion)}),
		resp(tLDS, nil, [][]byte{res(0, mValid, poolVersion), res(1, mValid, poolVersion)}),
	)
	goodCDS := resp(tCDS|vRepeat, nil, [][]byte{res(3, mValid, poolVersion)})
	seeds := [][]byte{
		append([]byte{0}, good...),
		append([]byte{1}, good...),
		// removed: known, unknown, empty, huge
		append([]byte{1}, resp(tCDS, nil, nil, 0, 2, 3, 0, 4, 1)...),
		// unknown and odd type URLs
		slices.Concat([]byte{1}, resp(tOther, []byte{1}, [][]byte{res(0, mValid, poolVersion)}), goodCDS,
			resp(tOther, []byte{6, 0}, nil), resp(tString, []byte{4, 'x', '/', 'y', 'z'}, nil), resp(tOther, []byte{0}, nil)),
		// garbage, wrong embedded type, no body, flipped byte, cut short
		slices.Concat([]byte{1}, resp(tCDS, nil, [][]byte{res(0, mGarbage, poolVersion, 3, 0xff, 0xfe, 0x01)}), goodCDS,
			resp(tLDS, nil, [][]byte{res(0, mOtherType, poolVersion, 0, 0)}),
			resp(tEDS, nil, [][]byte{res(0, mNoBody, poolVersion)}),
			resp(tCDS, nil, [][]byte{res(0, mFlipped, poolVersion, 4, 0x80)}),
			resp(tCDS, nil, [][]byte{res(0, mFlipped, poolVersion, 9)}),
			resp(tLDS, nil, [][]byte{res(0, mOtherBytes, poolVersion, 0)})),
		// nonces: empty, repeated, a string, huge
		slices.Concat([]byte{0}, resp(tCDS|nEmpty, nil, [][]byte{res(0, mValid, poolVersion)}),
			resp(tCDS|nRepeat|refuse, nil, [][]byte{res(1, mValid, poolVersion)}),
			resp(tEDS|nString, []byte{2, 'n', '1'}, [][]byte{res(0, mValid, poolVersion)}),
			resp(tEDS|nString, []byte{0, 1}, nil),
			resp(tOther|nString|vString, []byte{1, 0, 1, 0, 3}, nil)), // NACKed, huge nonce and version
		// versions: empty, repeated, huge; a resource without a version
		slices.Concat([]byte{0}, resp(tCDS|vEmpty, nil, [][]byte{res(0, mValid, poolVersion)}),
			resp(tCDS|vRepeat, nil, [][]byte{res(0, mValid, 0)}),
			resp(tLDS|vString, []byte{0, 0}, [][]byte{res(0, mValid, poolVersion)})),
		// names: empty, huge (printable, escaped), another's, a string, twice
		slices.Concat([]byte{1}, resp(tCDS, nil, [][]byte{res(0, mNoName, poolVersion)}),
			resp(tCDS, nil, [][]byte{res(0, mHugeName, poolVersion, 0)}),
			resp(tCDS, nil, [][]byte{res(0, mHugeName, poolVersion, 1)}),
			resp(tLDS, nil, [][]byte{res(0, mOtherName, poolVersion, 1)}),
			resp(tLDS, nil, [][]byte{res(0, mStringName, poolVersion, 3, 'a', 'b', 'c')}),
			resp(tEDS, nil, [][]byte{res(0, mValid, poolVersion), res(0, mValid, 50)}), goodCDS),
		// many resources; the agent refusing
		slices.Concat([]byte{1}, []byte{tCDS, 250}, removedNone(sotw), goodCDS,
			resp(tLDS|refuse, nil, [][]byte{res(1, mValid, 60)}), resp(tLDS, nil, [][]byte{res(1, mValid, 60)})),
	}
	return seeds
}

func removedNone(sotw bool) []byte {
	if sotw {
		return nil
	}
	return []byte{0}
}

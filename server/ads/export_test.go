package ads

import (
	"fmt"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
)

// TestStream is one stream of a Server driven without a network, so that a
// test can step its state machine: Request does what the stream's
// receiving goroutine does with a request once its node is known
// (Server.handle), Push what a worker does after a publication
// (Server.push). Each returns the responses the stream sent, in order.
type TestStream struct {
	s   *Server
	str *stream
	out []proto.Message
}

// NewTestStream opens a stream for node (SotW, or Delta). It is listed by
// Agents until Close. Publications do not reach it by themselves: call
// Push, as a worker would.
func (s *Server) NewTestStream(node *corev3.Node, delta bool) *TestStream {
	t := &TestStream{s: s}
	str := &stream{id: s.nextID.Add(1), delta: delta, since: time.Now(), st: newState(delta),
		node: node, cluster: node.GetCluster(), nodeName: node.GetId()}
	str.sendDelta = func(m *discoveryv3.DeltaDiscoveryResponse) error { t.out = append(t.out, m); return nil }
	str.sendSotW = func(m *discoveryv3.DiscoveryResponse) error { t.out = append(t.out, m); return nil }
	s.mu.Lock()
	s.streams[str.id] = str
	s.mu.Unlock()
	t.str = str
	return t
}

// Request handles one request: a *discoveryv3.DiscoveryRequest on a SotW
// stream, a *discoveryv3.DeltaDiscoveryRequest on a Delta one.
func (t *TestStream) Request(m proto.Message) ([]proto.Message, error) {
	var req *request
	switch m := m.(type) {
	case *discoveryv3.DiscoveryRequest:
		if !t.str.delta {
			req = sotwRequest(m)
		}
	case *discoveryv3.DeltaDiscoveryRequest:
		if t.str.delta {
			req = deltaRequest(m)
		}
	}
	if req == nil {
		return nil, fmt.Errorf("ads: test stream: bad request %T", m)
	}
	err := t.s.handle(t.str, req)
	out := t.out
	t.out = nil
	return out, err
}

// Push sends what the stream's current view makes due.
func (t *TestStream) Push() ([]proto.Message, error) {
	err := t.s.push(t.str)
	out := t.out
	t.out = nil
	return out, err
}

// Status is the stream's status, as Agents reports it.
func (t *TestStream) Status() AgentStatus {
	a, _ := t.str.status(t.s.cfg.Replica)
	return a
}

// Close ends the stream.
func (t *TestStream) Close() { t.s.unindex(t.str) }

// Package adstest is an ADS client for tests and benchmarks, built on
// go-control-plane's types. It behaves as Envoy does on an ADS stream:
// wildcard subscriptions to clusters and listeners, an endpoints
// subscription for every cluster it holds, an ACK (or, if Decide says so, a
// NACK) for every response. It records every response it gets.
package adstest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"sync"
	"time"

	// The resource types a SotW response carries must be known to decode
	// their names.
	_ "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/halolb/halo/internal/xdscontract"
)

// Event is one response the client got.
type Event struct {
	TypeURL string
	Nonce   string
	// Version is SotW's version_info or Delta's system_version_info.
	Version string
	// Resources are the resources it carried (Delta: added or changed;
	// SotW: all), by name.
	Resources map[string]*anypb.Any
	// Versions are Delta's per-resource versions.
	Versions map[string]string
	// Removed are the names a Delta response removed.
	Removed []string
	// Nacked: the client refused it.
	Nacked bool
	At     time.Time
	// Bytes is the response's encoded size.
	Bytes int
}

// Client is one ADS client. Set its fields, then Run it.
type Client struct {
	// Node identifies the client (Id = node name, Cluster = halo cluster).
	Node *corev3.Node
	// Delta selects the incremental protocol; else state of the world.
	Delta bool
	// Initial are the versions a Delta client says it holds, by type and
	// name (a reconnect).
	Initial map[string]map[string]string
	// Decide, if set, returns a NACK message for a response; "" ACKs it.
	Decide func(Event) string
	// NoEndpoints: do not subscribe to endpoints.
	NoEndpoints bool

	mu      sync.Mutex
	held    map[string]map[string]held // type → name → resource
	events  []Event
	changed chan struct{}
}

type held struct {
	version string
	any     *anypb.Any
}

func (c *Client) init() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.changed == nil {
		c.changed = make(chan struct{})
		c.held = map[string]map[string]held{}
		for t, vs := range c.Initial {
			c.held[t] = map[string]held{}
			for n, v := range vs {
				c.held[t][n] = held{version: v}
			}
		}
	}
}

// Run opens the stream on conn and follows it until ctx ends (nil) or the
// stream fails (its error).
func (c *Client) Run(ctx context.Context, conn grpc.ClientConnInterface) error {
	c.init()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
	var err error
	if c.Delta {
		err = c.runDelta(ctx, ads)
	} else {
		err = c.runSotW(ctx, ads)
	}
	if ctx.Err() != nil {
		return nil
	}
	return err
}

func (c *Client) record(ev Event, apply func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !ev.Nacked {
		apply()
	}
	c.events = append(c.events, ev)
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *Client) decide(ev Event) string {
	if c.Decide == nil {
		return ""
	}
	return c.Decide(ev)
}

func (c *Client) clusterNames() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Sorted(maps.Keys(c.held[resource.ClusterType]))
}

func (c *Client) runDelta(ctx context.Context, ads discoveryv3.AggregatedDiscoveryServiceClient) error {
	s, err := ads.DeltaAggregatedResources(ctx)
	if err != nil {
		return err
	}
	first := true
	send := func(r *discoveryv3.DeltaDiscoveryRequest) error {
		if first {
			r.Node, first = c.Node, false
		}
		if err := s.Send(r); err != nil {
			return streamError(err, func() error { _, err := s.Recv(); return err })
		}
		return nil
	}
	for _, t := range []string{resource.ClusterType, resource.ListenerType} {
		if err := send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: t, InitialResourceVersions: c.Initial[t]}); err != nil {
			return err
		}
	}
	eds := map[string]bool{}
	for n := range c.Initial[resource.EndpointType] {
		eds[n] = true
	}
	if len(eds) > 0 && !c.NoEndpoints {
		if err := send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNamesSubscribe: slices.Sorted(maps.Keys(eds)),
			InitialResourceVersions: c.Initial[resource.EndpointType]}); err != nil {
			return err
		}
	}
	for {
		resp, err := s.Recv()
		if err != nil {
			return err
		}
		ev := Event{TypeURL: resp.GetTypeUrl(), Nonce: resp.GetNonce(), Version: resp.GetSystemVersionInfo(),
			Resources: map[string]*anypb.Any{}, Versions: map[string]string{}, Removed: resp.GetRemovedResources(), At: time.Now(), Bytes: proto.Size(resp)}
		for _, r := range resp.GetResources() {
			ev.Resources[r.GetName()] = r.GetResource()
			ev.Versions[r.GetName()] = r.GetVersion()
		}
		msg := c.decide(ev)
		ev.Nacked = msg != ""
		c.record(ev, func() {
			h := c.held[ev.TypeURL]
			if h == nil {
				h = map[string]held{}
				c.held[ev.TypeURL] = h
			}
			for n, a := range ev.Resources {
				h[n] = held{version: ev.Versions[n], any: a}
			}
			for _, n := range ev.Removed {
				delete(h, n)
			}
		})
		ack := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}
		if msg != "" {
			ack.ErrorDetail = &statuspb.Status{Code: int32(codes.InvalidArgument), Message: msg}
		}
		if err := send(ack); err != nil {
			return err
		}
		if resp.GetTypeUrl() != resource.ClusterType || msg != "" || c.NoEndpoints {
			continue
		}
		// Follow the clusters with endpoint subscriptions, as Envoy does.
		want := map[string]bool{}
		for _, n := range c.clusterNames() {
			want[n] = true
		}
		req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType}
		for n := range want {
			if !eds[n] {
				req.ResourceNamesSubscribe = append(req.ResourceNamesSubscribe, n)
			}
		}
		for n := range eds {
			if !want[n] {
				req.ResourceNamesUnsubscribe = append(req.ResourceNamesUnsubscribe, n)
				c.mu.Lock()
				delete(c.held[resource.EndpointType], n)
				c.mu.Unlock()
			}
		}
		if len(req.ResourceNamesSubscribe)+len(req.ResourceNamesUnsubscribe) > 0 {
			slices.Sort(req.ResourceNamesSubscribe)
			slices.Sort(req.ResourceNamesUnsubscribe)
			eds = want
			if err := send(req); err != nil {
				return err
			}
		}
	}
}

func (c *Client) runSotW(ctx context.Context, ads discoveryv3.AggregatedDiscoveryServiceClient) error {
	s, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	first := true
	send := func(r *discoveryv3.DiscoveryRequest) error {
		if first {
			r.Node, first = c.Node, false
		}
		if err := s.Send(r); err != nil {
			return streamError(err, func() error { _, err := s.Recv(); return err })
		}
		return nil
	}
	acked := map[string]string{} // type → version
	nonces := map[string]string{}
	names := map[string][]string{}
	for _, t := range []string{resource.ClusterType, resource.ListenerType} {
		if err := send(&discoveryv3.DiscoveryRequest{TypeUrl: t}); err != nil {
			return err
		}
	}
	for {
		resp, err := s.Recv()
		if err != nil {
			return err
		}
		ev := Event{TypeURL: resp.GetTypeUrl(), Nonce: resp.GetNonce(), Version: resp.GetVersionInfo(), Resources: map[string]*anypb.Any{},
			At: time.Now(), Bytes: proto.Size(resp)}
		for _, a := range resp.GetResources() {
			name, err := xdscontract.PackedName(a)
			if err != nil {
				return err
			}
			ev.Resources[name] = a
		}
		msg := c.decide(ev)
		ev.Nacked = msg != ""
		c.record(ev, func() {
			h := map[string]held{}
			for n, a := range ev.Resources {
				h[n] = held{version: ev.Version, any: a}
			}
			c.held[ev.TypeURL] = h
		})
		t := resp.GetTypeUrl()
		nonces[t] = resp.GetNonce()
		req := &discoveryv3.DiscoveryRequest{TypeUrl: t, ResponseNonce: resp.GetNonce(), ResourceNames: names[t], VersionInfo: resp.GetVersionInfo()}
		if msg != "" {
			req.VersionInfo = acked[t]
			req.ErrorDetail = &statuspb.Status{Code: int32(codes.InvalidArgument), Message: msg}
		} else {
			acked[t] = resp.GetVersionInfo()
		}
		if err := send(req); err != nil {
			return err
		}
		if t != resource.ClusterType || msg != "" || c.NoEndpoints {
			continue
		}
		want := c.clusterNames()
		if !slices.Equal(want, names[resource.EndpointType]) && len(want) > 0 {
			names[resource.EndpointType] = want
			if err := send(&discoveryv3.DiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNames: want,
				VersionInfo: acked[resource.EndpointType], ResponseNonce: nonces[resource.EndpointType]}); err != nil {
				return err
			}
		}
	}
}

// streamError turns a Send error into the stream's status: gRPC's Send
// reports io.EOF when the server ended the stream, and Recv says why.
func streamError(err error, recv func() error) error {
	if errors.Is(err, io.EOF) {
		for {
			if rerr := recv(); rerr != nil {
				return rerr
			}
		}
	}
	return err
}

// Held returns what the client holds of a type: name → version (SotW: the
// response's version_info).
func (c *Client) Held(typeURL string) map[string]string {
	c.init()
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]string{}
	for n, h := range c.held[typeURL] {
		out[n] = h.version
	}
	return out
}

// Version returns the version of one held resource, or "".
func (c *Client) Version(typeURL, name string) string {
	c.init()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.held[typeURL][name].version
}

// Resource decodes a held resource into m; false if it is not held.
func (c *Client) Resource(typeURL, name string, m proto.Message) bool {
	c.init()
	c.mu.Lock()
	h, ok := c.held[typeURL][name]
	c.mu.Unlock()
	if !ok || h.any == nil {
		return false
	}
	return h.any.UnmarshalTo(m) == nil
}

// Events returns every response so far.
func (c *Client) Events() []Event {
	c.init()
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.events)
}

// ErrTimeout is returned by WaitFor when its context ends first.
var ErrTimeout = errors.New("adstest: condition not met in time")

// WaitFor waits until cond holds (checked at every response), or ctx ends.
func (c *Client) WaitFor(ctx context.Context, cond func(c *Client) bool) error {
	c.init()
	for {
		c.mu.Lock()
		ch := c.changed
		c.mu.Unlock()
		if cond(c) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", ErrTimeout, ctx.Err())
		case <-ch:
		}
	}
}

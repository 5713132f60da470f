package xdsclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	// Decoding a SotW resource's name needs its type registered.
	_ "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/halolb/halo/internal/xdscontract"
)

// response is one response of either protocol.
type response struct {
	typeURL, nonce string
	// version is SotW's version_info or Delta's system_version_info.
	version string
	// full: the resources replace every resource of the type (SotW).
	full      bool
	resources []*Resource
	removed   []string
	// invalid says why the response cannot be read; it is NACKed.
	invalid error
}

// stream is one ADS stream, Delta or SotW. Only the client's loop uses it.
type stream interface {
	// start sends the first requests: wildcard clusters and listeners,
	// with what is held, and the endpoints named by eds.
	start(node *corev3.Node, held state, eds []string) error
	// recv waits for the next response.
	recv() (*response, error)
	// reply ACKs r (nack nil) or NACKs it; version is the type's version
	// the client now holds (SotW version_info).
	reply(r *response, version string, nack error) error
	// subscribeEndpoints makes the endpoint subscription names; edsVersion
	// is the last ACKed endpoints version (SotW).
	subscribeEndpoints(names []string, edsVersion string) error
}

// open opens the stream of the configured protocol on conn.
func (c *Client) open(ctx context.Context, conn *grpc.ClientConn) (stream, error) {
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
	if c.cfg.SotW {
		s, err := ads.StreamAggregatedResources(ctx)
		if err != nil {
			return nil, fmt.Errorf("xdsclient: open stream: %w", err)
		}
		return &sotwStream{s: s, c: c, nonces: map[string]string{}}, nil
	}
	s, err := ads.DeltaAggregatedResources(ctx)
	if err != nil {
		return nil, fmt.Errorf("xdsclient: open stream: %w", err)
	}
	return &deltaStream{s: s}, nil
}

// streamError turns a Send error into the stream's status: gRPC's Send
// reports io.EOF when the stream ended, and Recv says why.
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

func errorDetail(err error) *statuspb.Status {
	if err == nil {
		return nil
	}
	return &statuspb.Status{Code: int32(codes.InvalidArgument), Message: clip(err.Error(), maxErrorDetail)}
}

// deltaStream is a Delta (incremental) ADS stream.
type deltaStream struct {
	s grpc.BidiStreamingClient[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]
	// eds is the endpoint subscription on this stream.
	eds []string
}

func (d *deltaStream) send(r *discoveryv3.DeltaDiscoveryRequest) error {
	if err := d.s.Send(r); err != nil {
		return streamError(err, func() error { _, err := d.s.Recv(); return err })
	}
	return nil
}

func (d *deltaStream) start(node *corev3.Node, held state, eds []string) error {
	first := true
	for _, t := range []string{xdscontract.ClusterType, xdscontract.ListenerType} {
		req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: t, InitialResourceVersions: held.versions(t)}
		if first {
			req.Node, first = node, false
		}
		if err := d.send(req); err != nil {
			return err
		}
	}
	// An empty first subscription would be a wildcard: none until there
	// are names.
	if len(eds) == 0 {
		return nil
	}
	d.eds = eds
	return d.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: xdscontract.EndpointType, ResourceNamesSubscribe: eds,
		InitialResourceVersions: held.versions(xdscontract.EndpointType)})
}

func (d *deltaStream) recv() (*response, error) {
	m, err := d.s.Recv()
	if err != nil {
		return nil, err
	}
	r := &response{typeURL: m.GetTypeUrl(), nonce: m.GetNonce(), version: m.GetSystemVersionInfo(), removed: m.GetRemovedResources()}
	for _, res := range m.GetResources() {
		r.resources = append(r.resources, &Resource{TypeURL: r.typeURL, Name: res.GetName(), Version: res.GetVersion(), Body: res.GetResource()})
	}
	return r, nil
}

func (d *deltaStream) reply(r *response, _ string, nack error) error {
	return d.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.typeURL, ResponseNonce: r.nonce, ErrorDetail: errorDetail(nack)})
}

func (d *deltaStream) subscribeEndpoints(names []string, _ string) error {
	if slices.Equal(names, d.eds) {
		return nil
	}
	req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: xdscontract.EndpointType}
	for _, n := range names {
		if _, ok := slices.BinarySearch(d.eds, n); !ok {
			req.ResourceNamesSubscribe = append(req.ResourceNamesSubscribe, n)
		}
	}
	for _, n := range d.eds {
		if _, ok := slices.BinarySearch(names, n); !ok {
			req.ResourceNamesUnsubscribe = append(req.ResourceNamesUnsubscribe, n)
		}
	}
	if len(d.eds) == 0 && len(req.ResourceNamesSubscribe) == 0 {
		return nil // nothing subscribed yet, and nothing to subscribe
	}
	d.eds = names
	return d.send(req)
}

// sotwStream is a state-of-the-world ADS stream.
type sotwStream struct {
	s grpc.BidiStreamingClient[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]
	c *Client
	// eds is the endpoint subscription on the wire. An empty list would
	// mean every endpoint resource (legacy wildcard), so when the client
	// wants none it keeps the last names and drops what arrives for them.
	eds []string
	// nonces are the newest response nonce per type: the server ignores a
	// request that answers an older one.
	nonces map[string]string
}

func (s *sotwStream) send(r *discoveryv3.DiscoveryRequest) error {
	if err := s.s.Send(r); err != nil {
		return streamError(err, func() error { _, err := s.s.Recv(); return err })
	}
	return nil
}

func (s *sotwStream) start(node *corev3.Node, _ state, eds []string) error {
	first := true
	for _, t := range []string{xdscontract.ClusterType, xdscontract.ListenerType} {
		req := &discoveryv3.DiscoveryRequest{TypeUrl: t, VersionInfo: s.c.version(t)}
		if first {
			req.Node, first = node, false
		}
		if err := s.send(req); err != nil {
			return err
		}
	}
	return s.subscribeEndpoints(eds, s.c.version(xdscontract.EndpointType))
}

func (s *sotwStream) recv() (*response, error) {
	m, err := s.s.Recv()
	if err != nil {
		return nil, err
	}
	r := &response{typeURL: m.GetTypeUrl(), nonce: m.GetNonce(), version: m.GetVersionInfo(), full: true}
	if knownType(r.typeURL) {
		s.nonces[r.typeURL] = r.nonce // not unknown types: they would grow the map without end
	}
	for i, a := range m.GetResources() {
		name, err := xdscontract.PackedName(a)
		if err != nil && r.invalid == nil {
			r.invalid = fmt.Errorf("resource %d of the response: %w", i, err)
		}
		r.resources = append(r.resources, &Resource{TypeURL: r.typeURL, Name: name, Version: r.version, Body: a})
	}
	return r, nil
}

func (s *sotwStream) names(typeURL string) []string {
	if typeURL == xdscontract.EndpointType {
		return s.eds
	}
	return nil // wildcard
}

func (s *sotwStream) reply(r *response, version string, nack error) error {
	return s.send(&discoveryv3.DiscoveryRequest{TypeUrl: r.typeURL, VersionInfo: version, ResponseNonce: r.nonce,
		ResourceNames: s.names(r.typeURL), ErrorDetail: errorDetail(nack)})
}

func (s *sotwStream) subscribeEndpoints(names []string, edsVersion string) error {
	if len(names) == 0 || slices.Equal(names, s.eds) {
		return nil
	}
	s.eds = names
	return s.send(&discoveryv3.DiscoveryRequest{TypeUrl: xdscontract.EndpointType, VersionInfo: edsVersion,
		ResourceNames: names, ResponseNonce: s.nonces[xdscontract.EndpointType]})
}

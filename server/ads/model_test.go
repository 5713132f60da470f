package ads_test

import (
	"bytes"
	"fmt"
	"maps"
	"slices"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/server/ads"
	"github.com/halolb/halo/server/ads/adstest"
	"github.com/halolb/halo/server/snapcache"
	"github.com/halolb/halo/server/snapshot"
	"github.com/halolb/halo/server/snapshot/snapshottest"
)

var (
	cdsT = resource.ClusterType
	edsT = resource.EndpointType
	ldsT = resource.ListenerType
	// types are halo's types in make-before-break order.
	types = []string{cdsT, edsT, ldsT}
)

func short(url string) string {
	switch url {
	case cdsT:
		return "CDS"
	case edsT:
		return "EDS"
	case ldsT:
		return "LDS"
	}
	return url[strings.LastIndex(url, ".")+1:]
}

// event converts a response the server sent into adstest's form: the same
// form as a network client records, so both are checked alike.
func event(m proto.Message) adstest.Event {
	switch m := m.(type) {
	case *discoveryv3.DeltaDiscoveryResponse:
		ev := adstest.Event{TypeURL: m.GetTypeUrl(), Nonce: m.GetNonce(), Version: m.GetSystemVersionInfo(),
			Resources: map[string]*anypb.Any{}, Versions: map[string]string{}, Removed: m.GetRemovedResources()}
		for _, r := range m.GetResources() {
			ev.Resources[r.GetName()] = r.GetResource()
			ev.Versions[r.GetName()] = r.GetVersion()
		}
		return ev
	case *discoveryv3.DiscoveryResponse:
		ev := adstest.Event{TypeURL: m.GetTypeUrl(), Nonce: m.GetNonce(), Version: m.GetVersionInfo(), Resources: map[string]*anypb.Any{}}
		for _, a := range m.GetResources() {
			ev.Resources[resourceName(a)] = a
		}
		return ev
	}
	panic(fmt.Sprintf("not a response: %T", m))
}

// resourceName reads the name of a packed cluster, endpoints or listener.
func resourceName(a *anypb.Any) string {
	var m interface {
		proto.Message
	}
	switch a.GetTypeUrl() {
	case cdsT:
		m = &clusterv3.Cluster{}
	case edsT:
		m = &endpointv3.ClusterLoadAssignment{}
	case ldsT:
		m = &listenerv3.Listener{}
	default:
		return "?"
	}
	if err := a.UnmarshalTo(m); err != nil {
		return "?"
	}
	switch m := m.(type) {
	case *endpointv3.ClusterLoadAssignment:
		return m.GetClusterName()
	case interface{ GetName() string }:
		return m.GetName()
	}
	return "?"
}

// listenerClusters reads the clusters a packed listener's tcp_proxy sends to.
func listenerClusters(a *anypb.Any) []string {
	l := &listenerv3.Listener{}
	if a == nil || a.UnmarshalTo(l) != nil {
		return nil
	}
	var out []string
	for _, fc := range l.GetFilterChains() {
		for _, f := range fc.GetFilters() {
			tp := &tcpproxyv3.TcpProxy{}
			if f.GetTypedConfig().UnmarshalTo(tp) == nil && tp.GetCluster() != "" {
				out = append(out, tp.GetCluster())
			}
		}
	}
	return out
}

// describe says what a response carries: "CDS +etcd -kube-apiserver" for
// Delta (added or changed, removed), "CDS [etcd kube-apiserver]" for SotW.
func describe(delta bool, ev adstest.Event) string {
	names := slices.Sorted(maps.Keys(ev.Resources))
	if !delta {
		return short(ev.TypeURL) + " [" + strings.Join(names, " ") + "]"
	}
	var b strings.Builder
	b.WriteString(short(ev.TypeURL))
	for _, n := range names {
		b.WriteString(" +" + n)
	}
	for _, n := range ev.Removed {
		b.WriteString(" -" + n)
	}
	return b.String()
}

// held is one resource as the model client holds it.
type held struct {
	version  string // Delta: the resource's version; SotW: the response's
	content  []byte
	clusters []string // a listener's clusters
	any      *anypb.Any
}

// client is a model of an ADS client (Envoy, or halo-agent) on a stream of
// a real ads.Server, driven without a network. It applies every response
// when it gets it (and takes a refused one back), and checks, at every
// response, the server's promises:
//   - a listener arrives only once the clusters it sends to and their
//     endpoints have;
//   - a cluster (or its endpoints) is removed only once no listener the
//     client holds sends to it;
//   - at most one response of a type is unanswered;
//   - a refused (NACKed) resource version is not sent again until it
//     changed;
//   - Delta: nothing is sent at the version the client holds.
//
// Settle answers everything until the server has nothing more to say, and
// Converged then checks that the client holds what the cache has for it.
type client struct {
	srv    *ads.Server
	cache  *snapcache.Cache
	node   *corev3.Node
	delta  bool
	follow bool // subscribe to the endpoints of the clusters held, as Envoy does

	stream    *ads.TestStream
	acked     map[string]map[string]held
	pending   map[string]*adstest.Event
	lastNonce map[string]string
	nonces    []string // every nonce seen, any type, any stream
	requested map[string]bool
	wildcard  map[string]bool
	names     map[string]map[string]bool
	// Standing refusals: Delta by name (version refused; a refused
	// removal), SotW by type version.
	nacked        map[string]map[string]string
	nackedRemoval map[string]map[string]bool
	nackedSotW    map[string]string
	// named: listeners a Delta client named at reconnect and got nothing
	// of since, whose content the server may not know.
	named map[string]bool
	// fresh: a SotW type that accepted no response on this stream yet
	// (the server cannot know what the client holds from before).
	fresh map[string]bool

	// log is every response and request, for failure messages.
	log []string
	// fail records a broken promise; nil means report nothing.
	fail func(format string, args ...any)
	// responses counts responses on this stream; got describes every
	// response, on any stream.
	responses int
	got       []string
}

func newClient(srv *ads.Server, cache *snapcache.Cache, node *corev3.Node, delta, follow bool, fail func(string, ...any)) *client {
	c := &client{srv: srv, cache: cache, node: node, delta: delta, follow: follow, fail: fail,
		acked: map[string]map[string]held{}}
	for _, t := range types {
		c.acked[t] = map[string]held{}
	}
	return c
}

// failf reports a broken promise with the stream's history.
func (c *client) failf(format string, args ...any) {
	c.fail("%s\nhistory:\n  %s", fmt.Sprintf(format, args...), strings.Join(c.log, "\n  "))
}

func (c *client) subscribed(t, name string) bool { return c.wildcard[t] || c.names[t][name] }

// effective is what the client holds of a type with the unanswered
// response applied.
func (c *client) effective(t string) map[string]held {
	return c.apply(c.acked[t], c.pending[t])
}

func (c *client) apply(base map[string]held, ev *adstest.Event) map[string]held {
	if ev == nil {
		return base
	}
	out := map[string]held{}
	if c.delta {
		maps.Copy(out, base)
		for _, n := range ev.Removed {
			delete(out, n)
		}
	}
	for n, a := range ev.Resources {
		if c.delta && !c.subscribed(ev.TypeURL, n) {
			continue // unsubscribed while in flight: dropped
		}
		h := held{version: ev.Version, content: a.GetValue(), any: a}
		if c.delta {
			h.version = ev.Versions[n]
		}
		if ev.TypeURL == ldsT {
			h.clusters = listenerClusters(a)
		}
		out[n] = h
	}
	return out
}

func usedBy(listeners map[string]held, cluster string) string {
	for _, n := range slices.Sorted(maps.Keys(listeners)) {
		if slices.Contains(listeners[n].clusters, cluster) {
			return n
		}
	}
	return ""
}

// receive takes one response and checks it.
func (c *client) receive(ev adstest.Event) {
	c.responses++
	c.got = append(c.got, describe(c.delta, ev))
	c.log = append(c.log, "<- "+describe(c.delta, ev)+" nonce "+ev.Nonce+" v "+ev.Version)
	t := ev.TypeURL
	c.nonces = append(c.nonces, ev.Nonce)
	if p := c.pending[t]; p != nil {
		c.failf("a second %s response (nonce %s) before the answer to nonce %s", short(t), ev.Nonce, p.Nonce)
		return
	}
	for n := range ev.Resources {
		if !c.subscribed(t, n) {
			c.failf("%s %s is sent, but the client is not subscribed to it", short(t), n)
		}
	}
	// A refused version is not sent again until it changed.
	if c.delta {
		for n, v := range ev.Versions {
			if c.nacked[t][n] == v {
				c.failf("%s %s version %s was refused, and is sent again unchanged", short(t), n, v)
			}
			delete(c.nacked[t], n)
			delete(c.nackedRemoval[t], n)
		}
		for _, n := range ev.Removed {
			if c.nackedRemoval[t][n] {
				c.failf("the removal of %s %s was refused, and is sent again", short(t), n)
			}
			delete(c.nacked[t], n)
		}
	} else {
		if v, ok := c.nackedSotW[t]; ok && v == ev.Version {
			c.failf("%s version %s was refused, and is sent again unchanged", short(t), v)
		}
		delete(c.nackedSotW, t)
	}
	before := c.effective(t)
	after := c.apply(before, &ev)
	if c.delta {
		for n, v := range ev.Versions {
			if h, ok := before[n]; ok && h.version == v {
				c.failf("%s %s is sent at version %s, which the client holds", short(t), n, v)
			}
		}
	}
	// Nothing the node's snapshot has is taken from it.
	if c.srv != nil {
		snap := c.cache.Lookup(c.node.GetCluster(), c.node.GetId()).Snapshot
		for n := range before {
			r := snap.Get(t, n)
			if _, ok := after[n]; ok || !c.subscribed(t, n) || r == nil {
				continue
			}
			if slices.ContainsFunc(r.Clusters, c.refused) {
				continue // the client gave up a cluster the listener needs
			}
			c.failf("%s %s was removed, but the cache still has it for the node", short(t), n)
		}
	}
	// Make before break.
	switch t {
	case ldsT:
		cds, eds := c.effective(cdsT), c.effective(edsT)
		for n := range ev.Resources {
			if h, ok := before[n]; ok && bytes.Equal(h.content, after[n].content) {
				continue // SotW: the whole set, this one unchanged
			}
			for _, cl := range after[n].clusters {
				_, okc := cds[cl]
				_, oke := eds[cl]
				if (!okc || !oke) && c.subscribed(cdsT, cl) && c.subscribed(edsT, cl) {
					c.failf("listener %s went out before its cluster %s (held: cluster %v, endpoints %v)", n, cl, okc, oke)
				}
			}
		}
	case cdsT, edsT:
		if c.fresh[t] || c.fresh[ldsT] {
			// SotW: the server cannot know what the client holds
			// from an earlier stream until it accepts a response.
			break
		}
		lds, cds := c.effective(ldsT), c.effective(cdsT)
		for n := range before {
			if _, ok := after[n]; ok || !c.subscribed(t, n) {
				continue
			}
			_, cdsNack := c.nackedSotW[cdsT]
			if _, ok := cds[n]; t == edsT && (!ok || cdsNack || c.nacked[cdsT][n] != "") {
				continue // the server keeps endpoints for the clusters it knows the client has
			}
			if l := usedBy(lds, n); l != "" {
				c.failf("%s %s was removed while the client holds listener %s, which sends to it", short(t), n, l)
			}
		}
	}
	c.pending[t] = &ev
	c.lastNonce[t] = ev.Nonce
}

func (c *client) receiveAll(out []proto.Message, err error) {
	if err != nil {
		c.failf("stream failed: %v", err)
	}
	for _, m := range out {
		c.receive(event(m))
	}
}

// send sends one request and takes the responses.
func (c *client) send(m proto.Message) {
	c.log = append(c.log, "-> "+requestString(m))
	c.receiveAll(c.stream.Request(m))
}

func requestString(m proto.Message) string {
	switch m := m.(type) {
	case *discoveryv3.DeltaDiscoveryRequest:
		s := short(m.GetTypeUrl())
		if m.GetResponseNonce() != "" {
			s += " nonce " + m.GetResponseNonce()
		}
		if m.GetErrorDetail() != nil {
			s += " NACK"
		}
		for _, n := range m.GetResourceNamesSubscribe() {
			s += " +" + n
		}
		for _, n := range m.GetResourceNamesUnsubscribe() {
			s += " -" + n
		}
		if len(m.GetInitialResourceVersions()) > 0 {
			s += fmt.Sprintf(" initial %v", m.GetInitialResourceVersions())
		}
		return s
	case *discoveryv3.DiscoveryRequest:
		s := short(m.GetTypeUrl()) + fmt.Sprintf(" %v", m.GetResourceNames())
		if m.GetResponseNonce() != "" {
			s += " nonce " + m.GetResponseNonce()
		}
		if m.GetErrorDetail() != nil {
			s += " NACK"
		}
		return s
	}
	return fmt.Sprintf("%T", m)
}

// connect opens a new stream (closing the old one) and subscribes as
// Envoy does: wildcard clusters and listeners, and (following) the
// endpoints of the clusters held. A Delta client names what it holds.
func (c *client) connect() {
	c.open()
	for _, t := range []string{cdsT, ldsT} {
		c.requested[t], c.wildcard[t] = true, true
		if c.delta {
			c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: t, InitialResourceVersions: c.versions(t)})
		} else {
			c.send(&discoveryv3.DiscoveryRequest{TypeUrl: t})
		}
	}
	if c.follow {
		c.followClusters()
	}
}

// open opens a new stream (closing the old one), with no subscription;
// with no server, it only resets the stream's state (to replay a network
// client's responses).
func (c *client) open() {
	if c.stream != nil {
		c.stream.Close()
		c.log = append(c.log, "-- reconnect")
	}
	if c.srv != nil {
		c.stream = c.srv.NewTestStream(c.node, c.delta)
	}
	c.pending = map[string]*adstest.Event{}
	c.lastNonce = map[string]string{}
	c.requested = map[string]bool{}
	c.wildcard = map[string]bool{}
	c.names = map[string]map[string]bool{}
	c.nacked = map[string]map[string]string{}
	c.nackedRemoval = map[string]map[string]bool{}
	c.nackedSotW = map[string]string{}
	c.fresh = map[string]bool{}
	c.named = map[string]bool{}
	if c.delta {
		for n := range c.acked[ldsT] {
			c.named[n] = true
		}
	}
	c.responses = 0
	for _, t := range types {
		c.names[t] = map[string]bool{}
		c.nacked[t] = map[string]string{}
		c.nackedRemoval[t] = map[string]bool{}
		if !c.delta {
			c.fresh[t] = true
		}
	}
}

func (c *client) versions(t string) map[string]string {
	if len(c.acked[t]) == 0 {
		return nil
	}
	out := map[string]string{}
	for n, h := range c.acked[t] {
		out[n] = h.version
	}
	return out
}

// ack answers the type's response in flight; false if there is none.
func (c *client) ack(t string) bool {
	p := c.pending[t]
	if p == nil {
		return false
	}
	c.acked[t] = c.apply(c.acked[t], p)
	delete(c.pending, t)
	delete(c.fresh, t)
	if t == ldsT {
		for n := range p.Resources {
			delete(c.named, n)
		}
	}
	if c.stream == nil {
		return true // replaying a network client's responses
	}
	if c.delta {
		c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: t, ResponseNonce: p.Nonce})
	} else {
		c.send(&discoveryv3.DiscoveryRequest{TypeUrl: t, ResponseNonce: p.Nonce, VersionInfo: p.Version, ResourceNames: c.sotwNames(t)})
	}
	if t == cdsT && c.follow {
		c.followClusters()
	}
	return true
}

// nack refuses the type's response in flight and checks that the status
// shows it; false if there is none.
func (c *client) nack(t string) bool {
	p := c.pending[t]
	if p == nil {
		return false
	}
	delete(c.pending, t)
	if c.delta {
		for n, v := range p.Versions {
			c.nacked[t][n] = v
		}
		for _, n := range p.Removed {
			c.nackedRemoval[t][n] = true
		}
	} else {
		c.nackedSotW[t] = p.Version
	}
	if c.stream == nil {
		return true // replaying a network client's responses
	}
	msg := fmt.Sprintf("refused nonce %s", p.Nonce)
	detail := &statuspb.Status{Code: 3, Message: msg}
	if c.delta {
		c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: t, ResponseNonce: p.Nonce, ErrorDetail: detail})
	} else {
		c.send(&discoveryv3.DiscoveryRequest{TypeUrl: t, ResponseNonce: p.Nonce, VersionInfo: c.ackedVersion(t),
			ResourceNames: c.sotwNames(t), ErrorDetail: detail})
	}
	st := c.status(t)
	if st.NackError != msg || st.NackVersion != p.Version {
		c.failf("after a NACK of %s version %s (%q), the status says version %q, %q", short(t), p.Version, msg, st.NackVersion, st.NackError)
	}
	return true
}

func (c *client) status(t string) ads.TypeStatus {
	for _, ts := range c.stream.Status().Types {
		if ts.TypeURL == t {
			return ts
		}
	}
	return ads.TypeStatus{}
}

func (c *client) ackedVersion(t string) string {
	for _, h := range c.acked[t] {
		return h.version // SotW: every resource has the response's version
	}
	return ""
}

func (c *client) sotwNames(t string) []string {
	if c.wildcard[t] {
		return nil
	}
	return slices.Sorted(maps.Keys(c.names[t]))
}

// stale sends a request for t whose nonce is not that of the response in
// flight (an older one, or one never sent): it must change nothing.
func (c *client) stale(t string, pick int) {
	nonce := fmt.Sprintf("bogus-%d", pick)
	var old []string
	for _, n := range c.nonces {
		if n != c.lastNonce[t] {
			old = append(old, n)
		}
	}
	if len(old) > 0 && pick%2 == 0 {
		nonce = old[pick/2%len(old)]
	}
	if c.delta {
		req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: t, ResponseNonce: nonce}
		if !c.requested[t] {
			// A first request without names is a (legacy) wildcard
			// subscription, whatever its nonce; it names what it holds.
			c.requested[t], c.wildcard[t] = true, true
			req.InitialResourceVersions = c.versions(t)
		}
		c.send(req)
	} else {
		c.send(&discoveryv3.DiscoveryRequest{TypeUrl: t, ResponseNonce: nonce, VersionInfo: c.ackedVersion(t), ResourceNames: c.sotwNames(t)})
	}
}

// subscribe adds name to the type's subscription ("*": wildcard, Delta).
func (c *client) subscribe(t, name string) {
	if !c.delta {
		if name == "*" {
			return
		}
		c.wildcard[t] = false
		c.names[t][name] = true
		c.sotwRequest(t)
		return
	}
	first := !c.requested[t]
	c.requested[t] = true
	if name == "*" {
		c.wildcard[t] = true
	} else {
		c.names[t][name] = true
	}
	req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: t, ResourceNamesSubscribe: []string{name}}
	if first {
		req.InitialResourceVersions = c.versions(t)
	}
	c.send(req)
}

// unsubscribe removes name from the type's subscription ("*": wildcard).
func (c *client) unsubscribe(t, name string) {
	if !c.requested[t] {
		return
	}
	if !c.delta {
		delete(c.names[t], name)
		c.wildcard[t] = len(c.names[t]) == 0
		c.sotwRequest(t)
		return
	}
	if name == "*" {
		c.wildcard[t] = false
	} else {
		delete(c.names[t], name)
	}
	// The client drops what it is no longer subscribed to.
	for n := range c.acked[t] {
		if !c.subscribed(t, n) {
			delete(c.acked[t], n)
		}
	}
	c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: t, ResourceNamesUnsubscribe: []string{name}})
}

// sotwRequest sends a SotW type's whole subscription, with the newest
// nonce: that answers (ACKs) a response in flight.
func (c *client) sotwRequest(t string) {
	c.requested[t] = true
	if p := c.pending[t]; p != nil {
		c.acked[t] = c.apply(c.acked[t], p)
		delete(c.pending, t)
		delete(c.fresh, t)
	}
	c.send(&discoveryv3.DiscoveryRequest{TypeUrl: t, ResponseNonce: c.lastNonce[t], VersionInfo: c.ackedVersion(t), ResourceNames: c.sotwNames(t)})
	if t == cdsT && c.follow {
		c.followClusters()
	}
}

// followClusters subscribes to the endpoints of the clusters held, and
// only those, as Envoy does.
func (c *client) followClusters() {
	want := map[string]bool{}
	for n := range c.acked[cdsT] {
		want[n] = true
	}
	if !c.delta {
		if len(want) == 0 || (!c.wildcard[edsT] && maps.Equal(want, c.names[edsT]) && c.requested[edsT]) {
			return
		}
		c.wildcard[edsT] = false
		c.names[edsT] = want
		c.sotwRequest(edsT)
		return
	}
	req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: edsT}
	first := !c.requested[edsT]
	for _, n := range slices.Sorted(maps.Keys(want)) {
		if !c.names[edsT][n] {
			req.ResourceNamesSubscribe = append(req.ResourceNamesSubscribe, n)
			c.names[edsT][n] = true
		}
	}
	for _, n := range slices.Sorted(maps.Keys(c.names[edsT])) {
		if !want[n] {
			req.ResourceNamesUnsubscribe = append(req.ResourceNamesUnsubscribe, n)
			delete(c.names[edsT], n)
		}
	}
	if len(req.ResourceNamesSubscribe)+len(req.ResourceNamesUnsubscribe) == 0 {
		return
	}
	for n := range c.acked[edsT] {
		if !c.subscribed(edsT, n) {
			delete(c.acked[edsT], n)
		}
	}
	if first {
		c.requested[edsT] = true
		req.InitialResourceVersions = c.versions(edsT)
		if len(req.ResourceNamesSubscribe) == 0 {
			return // a first request with no name would be a wildcard
		}
	}
	c.send(req)
}

// push delivers what a publication made due, as a worker does.
func (c *client) push() {
	c.receiveAll(c.stream.Push())
}

// settle answers every response (ACK) and delivers publications until
// the server has nothing more to send; false if it never stops.
func (c *client) settle() bool {
	for range 100 {
		c.push()
		answered := false
		for _, t := range slices.Sorted(maps.Keys(c.pending)) {
			answered = c.ack(t) || answered
		}
		if !answered && len(c.pending) == 0 {
			before := c.responses
			c.push()
			if c.responses == before {
				return true
			}
		}
	}
	c.failf("the stream does not settle")
	return false
}

// converged checks, on a settled stream, that the client holds what the
// cache has for its node, but for what the server must hold back: refused
// versions, listeners whose clusters the client lacks, clusters that
// listeners it holds use. With nothing held back, the status must say in
// sync.
func (c *client) converged() {
	snap := c.cache.Lookup(c.node.GetCluster(), c.node.GetId()).Snapshot
	if snap == nil {
		return
	}
	exact := true
	for _, t := range types {
		if !c.requested[t] {
			continue
		}
		if _, ok := c.nackedSotW[t]; ok {
			exact = false
			continue
		}
		want := map[string]*snapshot.Resource{}
		waiting := false // a listener waits for clusters the server does not know the client has
		for n, r := range snap.Resources[t] {
			if c.subscribed(t, n) {
				want[n] = r
				waiting = waiting || c.heldBack(t, n, r, true)
			}
		}
		if t == ldsT && !c.delta && c.fresh[t] && waiting {
			// A first SotW listener answer waits for every listener's
			// clusters, not to take from the client what it holds.
			exact = false
			continue
		}
		have := c.acked[t]
		names := map[string]bool{}
		for n := range want {
			names[n] = true
		}
		for n := range have {
			names[n] = true
		}
		for _, n := range slices.Sorted(maps.Keys(names)) {
			w := want[n]
			h, ok := have[n]
			if w != nil && ok && bytes.Equal(h.content, w.Any.GetValue()) && (!c.delta || h.version == w.Version) {
				continue
			}
			exact = false
			if c.heldBack(t, n, w, ok) {
				continue
			}
			hv, wv := "nothing", "nothing"
			if ok {
				hv = "version " + h.version
			}
			if w != nil {
				wv = "version " + w.Version
			}
			c.failf("settled, %s %s: the client holds %s, the cache has %s", short(t), n, hv, wv)
		}
	}
	if !exact {
		return
	}
	for _, t := range types {
		if st := c.status(t); c.requested[t] && (!st.InSync || st.Pending) {
			c.failf("the client holds everything, but the status of %s says in sync %v, pending %v", short(t), st.InSync, st.Pending)
		}
	}
}

// heldBack says whether the server may rightly keep t/n from matching the
// cache: w is the cache's resource (nil: none), held whether the client
// holds it.
func (c *client) heldBack(t, n string, w *snapshot.Resource, held bool) bool {
	if c.delta && w != nil && c.nacked[t][n] == w.Version {
		return true
	}
	if c.delta && w == nil && c.nackedRemoval[t][n] {
		return true
	}
	switch t {
	case ldsT:
		if w != nil {
			for _, cl := range w.Clusters {
				if !c.known(cdsT, cl) || !c.known(edsT, cl) {
					return true
				}
			}
		}
	case cdsT, edsT:
		_, okc := c.acked[cdsT][n]
		if w == nil && held && (t == cdsT || okc) && usedBy(c.acked[ldsT], n) != "" {
			return true
		}
		if w == nil && held && slices.ContainsFunc(slices.Collect(maps.Keys(c.named)), func(l string) bool { _, ok := c.acked[ldsT][l]; return ok }) {
			return true // a listener the server may not know keeps every cluster
		}
	}
	return false
}

// refused says whether the client gave up a cluster or its endpoints: it
// is not subscribed to them, or refused them (standing NACK).
func (c *client) refused(cl string) bool {
	for _, t := range []string{cdsT, edsT} {
		_, sotwNack := c.nackedSotW[t]
		if !c.subscribed(t, cl) || sotwNack || c.nacked[t][cl] != "" || c.nackedRemoval[t][cl] {
			return true
		}
	}
	return false
}

// known says whether the server can know that the client holds t/n: it
// holds it, and said so on this stream (Delta), or got it on this stream
// (SotW, whose requests do not say what the client holds).
func (c *client) known(t, n string) bool {
	_, ok := c.acked[t][n]
	return ok && c.requested[t] && (c.delta || !c.fresh[t])
}

// world is the topology the cache's snapshots are built from, changed step
// by step as the publisher would.
type world struct {
	cache    *snapcache.Cache
	cluster  *halov1.Cluster
	nodes    []*halov1.Node
	health   map[string]corev3.HealthStatus
	holdNext bool // hold the stream node's profile back at the next publication
	self     string
	nextIP   int
}

func newWorld(cache *snapcache.Cache, self string) *world {
	return &world{cache: cache, self: self, nodes: snapshottest.Nodes(), health: map[string]corev3.HealthStatus{}, nextIP: 10,
		cluster: &halov1.Cluster{Name: "prod", Apiserver: &halov1.ApiServer{LocalLbPort: 16443},
			Etcd: &halov1.Etcd{LocalLb: true, LocalLbPort: 12379}}}
}

// publish builds every profile and publishes them, as the publisher does.
func (w *world) publish() {
	r := snapshot.Build(snapshot.Input{Cluster: w.cluster, Nodes: w.nodes,
		Health: func(_, node string, _ halov1.BackendKind) corev3.HealthStatus { return w.health[node] }})
	nodes := map[string]string{}
	for _, n := range w.nodes {
		nodes[n.GetName()] = r.ProfileOf(n)
	}
	if w.holdNext {
		w.holdNext = false
		p := nodes[w.self]
		delete(r.Snapshots, p)
		r.Held[p] = "held back by the test"
	}
	w.cache.Publish("prod", snapcache.Update{Snapshots: r.Snapshots, Held: r.Held, Nodes: nodes})
}

// change makes one change to the topology (or the cache) and publishes it.
func (w *world) change(k int) {
	a, e := w.cluster.GetApiserver(), w.cluster.GetEtcd()
	switch k % 11 {
	case 0: // the etcd local LB on or off
		e.LocalLb = !e.GetLocalLb()
	case 1: // the apiserver local LB's port
		a.LocalLbPort = 16443 + (a.GetLocalLbPort()-16443+1)%3
	case 2: // an external LB (a VIP listener on load-balancer nodes)
		if a.GetExternalLb() == nil {
			a.ExternalLb = &halov1.ExternalLB{Address: "203.0.113.10", Port: 8383}
		} else {
			a.ExternalLb = nil
		}
	case 3: // a new master, also an etcd member
		w.nextIP++
		w.nodes = append(w.nodes, snapshottest.Node(fmt.Sprintf("master-%d", w.nextIP), fmt.Sprintf("10.0.0.%d", w.nextIP), "",
			int32(w.nextIP), halov1.Role_ROLE_CONTROL_PLANE, halov1.Role_ROLE_ETCD))
	case 4: // the first master (or etcd member) goes
		for i, n := range w.nodes {
			if n.GetName() != w.self && slices.ContainsFunc(n.GetRoles(), func(r halov1.Role) bool {
				return r == halov1.Role_ROLE_CONTROL_PLANE || r == halov1.Role_ROLE_ETCD
			}) {
				w.nodes = slices.Delete(w.nodes, i, i+1)
				break
			}
		}
	case 5: // a backend's health flips
		if len(w.nodes) > 0 {
			n := w.nodes[len(w.nodes)/2].GetName()
			if w.health[n] == corev3.HealthStatus_UNHEALTHY {
				w.health[n] = corev3.HealthStatus_HEALTHY
			} else {
				w.health[n] = corev3.HealthStatus_UNHEALTHY
			}
		}
	case 6: // a node drains
		if len(w.nodes) > 0 {
			n := w.nodes[0]
			n.Draining = !n.GetDraining()
		}
	case 7: // the next publication of the stream's profile is held back
		w.holdNext = true
	case 8: // the apiserver cluster's settings (CDS changes)
		if a.GetLbPolicy() == halov1.LbPolicy_LB_POLICY_RANDOM {
			a.LbPolicy = halov1.LbPolicy_LB_POLICY_ROUND_ROBIN
		} else {
			a.LbPolicy = halov1.LbPolicy_LB_POLICY_RANDOM
		}
	case 9: // the stream's node leaves its profile (removed), or back
		w.cache.SetNode("prod", w.self, "")
		return
	case 10: // the cluster is deleted
		w.cache.Remove("prod")
		return
	}
	w.publish()
}

// consistent checks that the server's status agrees with the client on
// what is in flight.
func (c *client) consistent() {
	for _, t := range types {
		if !c.requested[t] {
			continue
		}
		if st := c.status(t); st.Pending != (c.pending[t] != nil) {
			c.failf("the status of %s says pending %v; the client has a response to answer: %v", short(t), st.Pending, c.pending[t] != nil)
		}
	}
}

package ads

import (
	"slices"
	"strconv"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/halolb/halo/internal/xdscontract"
	"github.com/halolb/halo/server/snapcache"
	"github.com/halolb/halo/server/snapshot"
)

// have is one resource as a client holds it.
type have struct {
	version string
	// res is the content; nil when only the version is known (a Delta
	// client named it in initial_resource_versions and it is not the
	// current resource).
	res *snapshot.Resource
}

// response is what one response carries, as the stream's state sees it.
type response struct {
	typeURL string
	nonce   string
	// version is the type's version on the client once it applies this
	// response (SotW version_info, Delta system_version_info).
	version string
	// set: SotW, the whole new set of the subscription; Delta, the
	// resources added or changed.
	set map[string]have
	// removed are the names a Delta response removes.
	removed []string
	full    bool
	at      time.Time
}

// nack is a refused response, for status.
type nack struct {
	version string
	message string
	at      time.Time
}

// typeState is a stream's state for one resource type.
type typeState struct {
	url       string
	requested bool
	wildcard  bool
	names     map[string]bool
	// acked is what the client holds (it ACKed it, or named it on a Delta
	// reconnect).
	acked    map[string]have
	inflight *response
	// lastNonce is the nonce of the newest response of this type.
	lastNonce string
	// responded: a response of this type went out on this stream.
	responded bool
	// initial: the client named the versions it held when it subscribed.
	initial bool
	// nacked are versions the client refused, by name ("" for a refused
	// removal): not sent again until the resource changes. nackedVersion
	// is the same for a SotW response as a whole.
	nacked        map[string]string
	nackedRemoval map[string]bool
	nackedVersion string
	// versionNacked says nackedVersion holds a refused version: the
	// version of an empty set is "", so "" alone cannot say.
	versionNacked bool

	ackedAt  time.Time
	lastNack *nack
}

func newTypeState(url string) *typeState {
	return &typeState{url: url, names: map[string]bool{}, acked: map[string]have{}, nacked: map[string]string{}, nackedRemoval: map[string]bool{}}
}

func (ts *typeState) subscribed(name string) bool { return ts.wildcard || ts.names[name] }

// client is what the client will hold once it applies the response in
// flight: responses on one stream are applied in order, so anything sent
// counts for ordering later responses.
func (ts *typeState) client() map[string]have {
	in := ts.inflight
	if in == nil {
		return ts.acked
	}
	if in.full {
		return in.set
	}
	out := make(map[string]have, len(ts.acked)+len(in.set))
	for n, h := range ts.acked {
		out[n] = h
	}
	for n, h := range in.set {
		out[n] = h
	}
	for _, n := range in.removed {
		delete(out, n)
	}
	return out
}

func (ts *typeState) ack(now time.Time) {
	in := ts.inflight
	ts.inflight = nil
	if in.full {
		ts.acked = in.set
	} else {
		for n, h := range in.set {
			if ts.subscribed(n) { // else unsubscribed since: the client drops it
				ts.acked[n] = h
			}
		}
		for _, n := range in.removed {
			delete(ts.acked, n)
		}
	}
	for n := range in.set {
		delete(ts.nacked, n)
	}
	ts.nackedVersion, ts.versionNacked = "", false
	ts.ackedAt = now
}

func (ts *typeState) nack(message string, now time.Time) {
	in := ts.inflight
	ts.inflight = nil
	for n, h := range in.set {
		ts.nacked[n] = h.version
	}
	for _, n := range in.removed {
		ts.nackedRemoval[n] = true
	}
	ts.nackedVersion, ts.versionNacked = in.version, true
	ts.lastNack = &nack{version: in.version, message: message, at: now}
}

// versions returns name → version of a set.
func versions(m map[string]have) map[string]string {
	out := make(map[string]string, len(m))
	for n, h := range m {
		out[n] = h.version
	}
	return out
}

// request is a SotW or Delta request, reduced to what the state needs.
type request struct {
	typeURL string
	node    *corev3.Node
	nonce   string
	// errorMessage is set on a NACK.
	errorMessage string
	nack         bool
	// SotW: the whole subscription.
	names []string
	// Delta: changes to the subscription, and the versions held at
	// subscription.
	subscribe, unsubscribe []string
	initial                map[string]string
}

// state is the protocol-independent state of one ADS stream: what the
// client holds of each type, what is in flight, what it refused, and what it
// is subscribed to. Its reconcile step decides the next responses so that
// delivery is make-before-break.
type state struct {
	mu    sync.Mutex
	delta bool
	types map[string]*typeState
	nonce int64
	view  snapcache.View
	// unresolved: some acked resource's content is not known yet.
	unresolved bool
	// lastSnap is the snapshot the last evaluation saw; dirty says the
	// state changed since in a way that may make a response due, and
	// deferred that the last evaluation left work for later (a type in
	// flight, a listener waiting for its cluster, a cluster kept for a
	// listener). With neither, an ACK needs no new evaluation: at 10,000
	// streams, that is most of them.
	lastSnap *snapshot.Snapshot
	dirty    bool
	deferred bool
}

func newState(delta bool) *state {
	return &state{delta: delta, types: map[string]*typeState{}}
}

func (st *state) typeState(url string) *typeState {
	ts := st.types[url]
	if ts == nil {
		ts = newTypeState(url)
		st.types[url] = ts
	}
	return ts
}

// client is what the client holds of a type, or nothing.
func (st *state) client(url string) map[string]have {
	if ts := st.types[url]; ts != nil {
		return ts.client()
	}
	return nil
}

// handle applies a request: ACK or NACK of the response in flight, then
// subscription changes. It reports a NACK's message, for logging.
func (st *state) handle(req *request, snap *snapshot.Snapshot, now time.Time) (nacked *nack) {
	ts := st.typeState(req.typeURL)
	if req.nonce != "" && ts.inflight != nil && req.nonce == ts.inflight.nonce {
		if req.nack {
			ts.nack(req.errorMessage, now)
			nacked = ts.lastNack
		} else {
			ts.ack(now)
		}
		st.dirty = st.dirty || st.deferred
	} else if !st.delta && req.nonce != "" && req.nonce != ts.lastNonce {
		// A SotW request that answers an older response: ignore it, as
		// the protocol says; the answer to the newest one will follow.
		return nil
	}
	first := !ts.requested
	ts.requested = true
	if first {
		st.dirty = true
	}
	if !st.delta {
		// SotW names the whole subscription each time; none is wildcard
		// (legacy wildcard, as Envoy asks for listeners and clusters).
		wildcard := len(req.names) == 0
		same := wildcard == ts.wildcard && len(req.names) == len(ts.names)
		for _, n := range req.names {
			same = same && ts.names[n]
		}
		if !same {
			st.dirty = true
			ts.wildcard = wildcard
			clear(ts.names)
			for _, n := range req.names {
				ts.names[n] = true
			}
		}
		return nacked
	}
	if len(req.subscribe)+len(req.unsubscribe) > 0 {
		st.dirty = true
	}
	if first {
		ts.wildcard = len(req.subscribe) == 0 // legacy wildcard
		for n, v := range req.initial {
			h := have{version: v}
			if r := snap.Get(req.typeURL, n); r != nil && r.Version == v {
				h.res = r
			} else {
				st.unresolved = true
			}
			ts.acked[n] = h
			ts.initial = true
		}
	}
	for _, n := range req.subscribe {
		if n == "*" {
			ts.wildcard = true
		} else {
			ts.names[n] = true
		}
	}
	for _, n := range req.unsubscribe {
		if n == "*" {
			ts.wildcard = false
		} else {
			delete(ts.names, n)
		}
	}
	if len(req.unsubscribe) > 0 {
		// The client drops what it is no longer subscribed to (a name
		// the wildcard still covers stays).
		for n := range ts.acked {
			if !ts.subscribed(n) {
				delete(ts.acked, n)
			}
		}
	}
	return nacked
}

// target is what the client of type ts should hold now. Ordering rules:
// a listener reaches the client only once its clusters and their endpoints
// have (until then it keeps the version it has, if any); a cluster (and its
// endpoints) leaves only once no listener the client holds uses it.
func (st *state) target(ts *typeState, snap *snapshot.Snapshot) (out map[string]have, deferred bool) {
	out = map[string]have{}
	for name, r := range snap.Resources[ts.url] {
		if ts.subscribed(name) {
			out[name] = have{version: r.Version, res: r}
		}
	}
	client := ts.client()
	switch ts.url {
	case resource.ListenerType:
		cds, eds := st.client(resource.ClusterType), st.client(resource.EndpointType)
		for name, h := range out {
			for _, c := range h.res.Clusters {
				if _, ok := cds[c]; ok {
					if _, ok := eds[c]; ok {
						continue
					}
				}
				// Not ready: keep what the client has, or nothing yet.
				if old, ok := client[name]; ok {
					out[name] = old
				} else {
					delete(out, name)
				}
				deferred = true
				break
			}
		}
	case resource.ClusterType, resource.EndpointType:
		inUse, all := st.clustersInUse()
		if lds := st.types[resource.ListenerType]; ts.initial && (lds == nil || !lds.requested) {
			// A Delta client that reconnects names what it holds type by
			// type: until it has named its listeners, any cluster it holds
			// may be in use.
			all = true
		}
		cds := st.client(resource.ClusterType)
		for name, h := range client {
			if _, ok := out[name]; ok || !ts.subscribed(name) {
				continue
			}
			if all || inUse[name] {
				if _, ok := cds[name]; ts.url == resource.ClusterType || ok {
					out[name] = h // still used by a listener the client holds
					deferred = true
				}
			}
		}
	}
	return out, deferred
}

// clustersInUse are the clusters the client's listeners send to; all is
// true when a listener's content is unknown, so any cluster may be in use.
func (st *state) clustersInUse() (map[string]bool, bool) {
	used := map[string]bool{}
	for _, h := range st.client(resource.ListenerType) {
		if h.res == nil {
			return nil, true
		}
		for _, c := range h.res.Clusters {
			used[c] = true
		}
	}
	return used, false
}

// decide records the node's view and decides the responses due under it.
func (st *state) decide(view snapcache.View, now time.Time) []*response {
	st.view = view
	if view.Snapshot == nil {
		return nil
	}
	return st.next(view.Snapshot, now)
}

// next decides the responses to send now, in make-before-break order
// (clusters, endpoints, listeners), at most one in flight per type, and
// marks them in flight.
func (st *state) next(snap *snapshot.Snapshot, now time.Time) []*response {
	if snap == st.lastSnap && !st.dirty {
		return nil
	}
	st.lastSnap, st.dirty, st.deferred = snap, false, false
	st.resolve(snap)
	var out []*response
	order := append(slices.Clone(xdscontract.Types), st.otherTypes()...)
	for _, url := range order {
		ts := st.types[url]
		if ts == nil || !ts.requested {
			continue
		}
		if ts.inflight != nil {
			st.deferred = true // looked at again when it is answered
			continue
		}
		target, deferred := st.target(ts, snap)
		st.deferred = st.deferred || deferred
		if deferred && !st.delta && !ts.responded && st.clustersUnsettled() {
			// A SotW response is the whole set, and on a new stream the
			// server does not know what the client holds: a first answer
			// without the listeners waiting for clusters on their way
			// would take them from a client that has them from an earlier
			// stream.
			continue
		}
		var r *response
		if st.delta {
			r = st.deltaResponse(ts, snap, target)
		} else {
			r = st.sotwResponse(ts, snap, target)
		}
		if r == nil {
			continue
		}
		st.nonce++
		r.nonce = strconv.FormatInt(st.nonce, 10)
		r.at = now
		ts.inflight = r
		ts.lastNonce = r.nonce
		ts.responded = true
		out = append(out, r)
	}
	return out
}

// clustersUnsettled reports whether clusters or endpoints may still be on
// their way to the client: a response of either in flight, or endpoints
// not subscribed to yet.
func (st *state) clustersUnsettled() bool {
	cds, eds := st.types[resource.ClusterType], st.types[resource.EndpointType]
	return (cds != nil && cds.inflight != nil) || eds == nil || !eds.requested || eds.inflight != nil
}

// resolve fills in the content of resources the client named by version
// only, where the snapshot has that very version.
func (st *state) resolve(snap *snapshot.Snapshot) {
	if !st.unresolved {
		return
	}
	st.unresolved = false
	for url, ts := range st.types {
		for n, h := range ts.acked {
			if h.res == nil {
				if r := snap.Get(url, n); r != nil && r.Version == h.version {
					ts.acked[n] = have{version: h.version, res: r}
				} else {
					st.unresolved = true
				}
			}
		}
	}
}

// otherTypes are the types a client asked for that halo has no resources
// of (routes, secrets...): they get empty answers, after the rest.
func (st *state) otherTypes() []string {
	var out []string
	for url := range st.types {
		if !slices.Contains(xdscontract.Types, url) {
			out = append(out, url)
		}
	}
	slices.Sort(out)
	return out
}

func (st *state) deltaResponse(ts *typeState, snap *snapshot.Snapshot, target map[string]have) *response {
	client := ts.client()
	r := &response{typeURL: ts.url, set: map[string]have{}}
	for name, h := range target {
		if h.res == nil {
			continue // held by the client, content unknown: leave it
		}
		if c, ok := client[name]; ok && c.version == h.version {
			continue
		}
		if ts.nacked[name] == h.version {
			continue // refused: not again until it changes
		}
		r.set[name] = h
		delete(ts.nackedRemoval, name)
	}
	for name := range client {
		if _, ok := target[name]; !ok && !ts.nackedRemoval[name] {
			r.removed = append(r.removed, name)
		}
	}
	slices.Sort(r.removed)
	if len(r.set) == 0 && len(r.removed) == 0 {
		// An empty first answer to a wildcard subscription lets Envoy
		// finish initializing; a client that named what it holds gets
		// nothing when nothing changed.
		if ts.responded || ts.initial || !ts.wildcard {
			return nil
		}
	}
	after := make(map[string]string, len(client)+len(r.set))
	for n, h := range client {
		after[n] = h.version
	}
	for n, h := range r.set {
		after[n] = h.version
	}
	for _, n := range r.removed {
		delete(after, n)
	}
	r.version = typeVersion(snap, ts.url, after)
	return r
}

// typeVersion is the version of a set of one type: the snapshot's own
// version when the set is the snapshot's (the usual case, no hashing).
func typeVersion(snap *snapshot.Snapshot, url string, set map[string]string) string {
	if all := snap.Resources[url]; len(all) == len(set) {
		same := true
		for n, v := range set {
			if r := all[n]; r == nil || r.Version != v {
				same = false
				break
			}
		}
		if same {
			return snap.Versions[url]
		}
	}
	return xdscontract.TypeVersion(set)
}

func (st *state) sotwResponse(ts *typeState, snap *snapshot.Snapshot, target map[string]have) *response {
	v := typeVersion(snap, ts.url, versions(target))
	if ts.responded && v == typeVersion(snap, ts.url, versions(ts.client())) {
		return nil
	}
	if ts.versionNacked && v == ts.nackedVersion {
		return nil // refused: not again until it changes
	}
	return &response{typeURL: ts.url, set: target, full: true, version: v}
}

// inSync reports whether the client holds exactly what it should of a type.
func (st *state) inSync(ts *typeState, snap *snapshot.Snapshot) bool {
	if snap == nil || ts.inflight != nil {
		return false
	}
	target, _ := st.target(ts, snap)
	return xdscontract.TypeVersion(versions(ts.acked)) == xdscontract.TypeVersion(versions(target))
}

package ads_test

import (
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/halolb/halo/server/ads"
	"github.com/halolb/halo/server/snapcache"
)

// harness is one node's stream of a real ads.Server, driven without a
// network, with the world its cache is published from.
type harness struct {
	t *testing.T
	w *world
	c *client
}

// newHarness publishes w's initial topology (with the etcd local LB on or
// off) and opens a stream for worker-1, subscribed as Envoy does unless
// bare.
func newHarness(t *testing.T, delta, follow, etcdLB, bare bool) *harness {
	t.Helper()
	cache := snapcache.New()
	srv, err := ads.New(ads.Config{Cache: cache})
	if err != nil {
		t.Fatal(err)
	}
	w := newWorld(cache, "worker-1")
	w.cluster.Etcd.LocalLb = etcdLB
	w.publish()
	h := &harness{t: t, w: w, c: newClient(srv, cache, &corev3.Node{Cluster: "prod", Id: "worker-1"}, delta, follow, t.Fatalf)}
	if bare {
		h.c.open()
	} else {
		h.c.connect()
	}
	return h
}

// got returns the responses since mark, described, and the new mark.
func (h *harness) got(mark int) (string, int) {
	return strings.Join(h.c.got[mark:], "; "), len(h.c.got)
}

// step is one step of a table test: do it, then the responses it caused
// must be want (described; "" for none).
type step struct {
	name string
	do   func(h *harness)
	want string
}

func settle(h *harness)                    { h.c.settle(); h.c.converged() }
func change(k int) func(h *harness)        { return func(h *harness) { h.w.change(k); h.c.push() } }
func ack(typ string) func(h *harness)      { return func(h *harness) { h.c.ack(typ) } }
func nack(typ string) func(h *harness)     { return func(h *harness) { h.c.nack(typ) } }
func sub(typ, n string) func(h *harness)   { return func(h *harness) { h.c.subscribe(typ, n) } }
func unsub(typ, n string) func(h *harness) { return func(h *harness) { h.c.unsubscribe(typ, n) } }
func reconnect(h *harness)                 { h.c.connect() }

const (
	etcdLB   = 0 // world.change: the etcd local LB on or off
	port     = 1 // the apiserver local LB's port
	drain    = 6 // a master drains (or no longer)
	cdsPol   = 8 // the apiserver cluster's lb policy
	leave    = 9 // the node leaves its profile
	rmMaster = 4 // a master goes
)

// TestStreamState drives one stream's state through the real server, step
// by step, and checks what each step sends. The client model checks, at
// every response, the ordering and in-flight rules as well (see client).
func TestStreamState(t *testing.T) {
	for _, tc := range []struct {
		name                        string
		delta, follow, etcdLB, bare bool
		steps                       []step
	}{
		{name: "delta: adding the etcd LB sends cluster, endpoints, listener", delta: true, follow: true, steps: []step{
			{"settle", settle, "CDS +kube-apiserver; LDS; EDS +kube-apiserver; LDS +apiserver-local"},
			{"etcd LB on", change(etcdLB), "CDS +etcd"},
			{"ack CDS (subscribes EDS etcd)", ack(cdsT), "EDS +etcd; LDS +etcd-local"},
			{"settle", settle, ""},
		}},
		{name: "delta, wildcard endpoints: one push sends all three, in order", delta: true, steps: []step{
			{"subscribe EDS *", sub(edsT, "*"), "CDS +kube-apiserver; LDS; EDS +kube-apiserver"},
			{"settle", settle, "LDS +apiserver-local"},
			{"etcd LB on", change(etcdLB), "CDS +etcd; EDS +etcd; LDS +etcd-local"},
			{"settle", settle, ""},
			{"etcd LB off", change(etcdLB), "LDS -etcd-local"},
			{"push again", func(h *harness) { h.c.push() }, ""},
			{"ack LDS", ack(ldsT), "CDS -etcd; EDS -etcd"},
			{"settle", settle, ""},
		}},
		{name: "delta: removing the etcd LB removes the listener, then the cluster", delta: true, follow: true, etcdLB: true, steps: []step{
			{"settle", settle, "CDS +etcd +kube-apiserver; LDS; EDS +etcd +kube-apiserver; LDS +apiserver-local +etcd-local"},
			{"etcd LB off", change(etcdLB), "LDS -etcd-local"},
			{"ack LDS", ack(ldsT), "CDS -etcd; EDS -etcd"},
			{"settle", settle, ""},
		}},
		{name: "sotw: adding and removing the etcd LB", follow: true, steps: []step{
			{"settle", settle, "CDS [kube-apiserver]; EDS [kube-apiserver]; LDS [apiserver-local]"},
			{"etcd LB on", change(etcdLB), "CDS [etcd kube-apiserver]"},
			{"ack CDS (subscribes EDS etcd)", ack(cdsT), "EDS [etcd kube-apiserver]; LDS [apiserver-local etcd-local]"},
			{"settle", settle, ""},
			{"etcd LB off", change(etcdLB), "LDS [apiserver-local]"},
			{"ack LDS", ack(ldsT), "CDS [kube-apiserver]; EDS [kube-apiserver]"},
			{"settle", settle, ""},
		}},
		{name: "sotw: a reconnect does not take the listeners away while their clusters go out", follow: true, etcdLB: true, steps: []step{
			{"settle", settle, "CDS [etcd kube-apiserver]; EDS [etcd kube-apiserver]; LDS [apiserver-local etcd-local]"},
			{"reconnect", reconnect, "CDS [etcd kube-apiserver]; EDS [etcd kube-apiserver]; LDS [apiserver-local etcd-local]"},
			{"settle", settle, ""},
		}},
		{name: "delta: one response of a type in flight", delta: true, follow: true, steps: []step{
			{"settle", settle, "CDS +kube-apiserver; LDS; EDS +kube-apiserver; LDS +apiserver-local"},
			{"cluster change", change(cdsPol), "CDS +kube-apiserver"},
			{"another, unanswered", change(cdsPol), ""},
			{"stale nonce", func(h *harness) { h.c.stale(cdsT, 1) }, ""},
			{"ack", ack(cdsT), "CDS +kube-apiserver"},
			{"settle", settle, ""},
		}},
		{name: "sotw: one response of a type in flight", follow: true, steps: []step{
			{"settle", settle, "CDS [kube-apiserver]; EDS [kube-apiserver]; LDS [apiserver-local]"},
			{"cluster change", change(cdsPol), "CDS [kube-apiserver]"},
			{"another, unanswered", change(cdsPol), ""},
			{"old nonce", func(h *harness) { h.c.stale(cdsT, 0) }, ""},
			{"ack", ack(cdsT), "CDS [kube-apiserver]"},
			{"settle", settle, ""},
		}},
		{name: "delta: a NACKed listener is held back until it changes", delta: true, follow: true, steps: []step{
			{"settle", settle, "CDS +kube-apiserver; LDS; EDS +kube-apiserver; LDS +apiserver-local"},
			{"port change", change(port), "LDS +apiserver-local"},
			{"nack", nack(ldsT), ""},
			{"health change", change(drain), "EDS +kube-apiserver"},
			{"settle", settle, ""},
			{"reconnect: a new stream forgets the NACK", reconnect, "LDS +apiserver-local"},
			{"settle", settle, ""},
			{"port change", change(port), "LDS +apiserver-local"},
			{"nack", nack(ldsT), ""},
			{"port change", change(port), "LDS +apiserver-local"},
			{"settle", settle, ""},
		}},
		{name: "sotw: a NACKed listener set is held back until it changes", follow: true, steps: []step{
			{"settle", settle, "CDS [kube-apiserver]; EDS [kube-apiserver]; LDS [apiserver-local]"},
			{"port change", change(port), "LDS [apiserver-local]"},
			{"nack", nack(ldsT), ""},
			{"health change", change(drain), "EDS [kube-apiserver]"},
			{"settle", settle, ""},
			{"port change", change(port), "LDS [apiserver-local]"},
			{"settle", settle, ""},
		}},
		{name: "delta: a reconnect naming what it holds gets nothing, then only changes", delta: true, follow: true, etcdLB: true, steps: []step{
			{"settle", settle, "CDS +etcd +kube-apiserver; LDS; EDS +etcd +kube-apiserver; LDS +apiserver-local +etcd-local"},
			{"reconnect", reconnect, ""},
			{"settle", settle, ""},
			{"disconnected, a health change", func(h *harness) { h.c.stream.Close(); h.w.change(drain) }, ""},
			{"reconnect", reconnect, "EDS +etcd +kube-apiserver"},
			{"settle", settle, ""},
			{"disconnected, the etcd LB off", func(h *harness) { h.c.stream.Close(); h.w.change(etcdLB) }, ""},
			{"reconnect: the listener goes first", reconnect, "LDS -etcd-local; CDS -etcd; EDS -etcd"},
			{"settle", settle, ""},
		}},
		{name: "delta: named and wildcard subscriptions, unsubscribe", delta: true, etcdLB: true, bare: true, steps: []step{
			{"subscribe CDS etcd", sub(cdsT, "etcd"), "CDS +etcd"},
			{"subscribe CDS kube-apiserver", sub(cdsT, "kube-apiserver"), ""},
			{"ack", ack(cdsT), "CDS +kube-apiserver"},
			{"ack", ack(cdsT), ""},
			{"unsubscribe CDS etcd", unsub(cdsT, "etcd"), ""},
			{"subscribe CDS *", sub(cdsT, "*"), "CDS +etcd"},
			{"ack", ack(cdsT), ""},
			{"unsubscribe CDS *: the client drops etcd itself", unsub(cdsT, "*"), ""},
			{"subscribe EDS nope", sub(edsT, "nope"), ""},
			{"subscribe LDS etcd-local", sub(ldsT, "etcd-local"), ""},
			{"subscribe EDS etcd", sub(edsT, "etcd"), "EDS +etcd"},
			{"ack CDS", ack(cdsT), ""},
			{"subscribe CDS etcd", sub(cdsT, "etcd"), "CDS +etcd; LDS +etcd-local"},
			{"ack CDS", ack(cdsT), ""},
			{"settle", settle, ""},
			{"unsubscribe LDS etcd-local", unsub(ldsT, "etcd-local"), ""},
			{"settle", settle, ""},
		}},
		{name: "delta: a wildcard subscription gets an empty first answer", delta: true, bare: true, steps: []step{
			{"subscribe LDS *", sub(ldsT, "*"), "LDS"},
			{"settle", settle, ""},
		}},
		{name: "sotw: named subscriptions", bare: true, etcdLB: true, steps: []step{
			{"CDS etcd", sub(cdsT, "etcd"), "CDS [etcd]"},
			{"CDS etcd, kube-apiserver", sub(cdsT, "kube-apiserver"), "CDS [etcd kube-apiserver]"},
			{"CDS kube-apiserver", unsub(cdsT, "etcd"), "CDS [kube-apiserver]"},
			{"CDS, wildcard", unsub(cdsT, "kube-apiserver"), "CDS [etcd kube-apiserver]"},
			{"settle", settle, ""},
		}},
		{name: "delta: a node without a snapshot gets nothing until it has one", delta: true, follow: true, steps: []step{
			{"settle", settle, "CDS +kube-apiserver; LDS; EDS +kube-apiserver; LDS +apiserver-local"},
			{"the node leaves", change(leave), ""},
			{"it is told why", func(h *harness) {
				if c := h.c.stream.Status().Condition; !strings.Contains(c, "not registered") {
					h.t.Errorf("condition %q", c)
				}
			}, ""},
			{"a drain publishes, with the node", change(drain), "EDS +kube-apiserver"},
			{"settle", settle, ""},
			{"masters go but one", func(h *harness) {
				for range 4 {
					change(rmMaster)(h)
					settle(h)
				}
			}, "EDS +kube-apiserver; EDS +kube-apiserver; EDS +kube-apiserver; EDS +kube-apiserver"},
			{"an etcd member goes", func(h *harness) { change(rmMaster)(h); settle(h) }, ""},
			{"the last master goes: the profile is held back, the node keeps what it has", func(h *harness) {
				change(rmMaster)(h)
				settle(h)
				if c := h.c.stream.Status().Condition; !strings.Contains(c, "held back") {
					h.t.Errorf("condition %q", c)
				}
			}, ""},
			{"a master comes", change(3), "EDS +kube-apiserver"},
			{"settle", settle, ""},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.delta, tc.follow, tc.etcdLB, tc.bare)
			mark := 0
			for i, s := range tc.steps {
				s.do(h)
				var got string
				got, mark = h.got(mark)
				if got != s.want {
					t.Fatalf("step %d (%s): sent %q, want %q\nhistory:\n  %s", i, s.name, got, s.want, strings.Join(h.c.log, "\n  "))
				}
				h.c.consistent()
			}
		})
	}
}

// TestNackStatus: the status of a stream shows the refused version and the
// client's text, and is not in sync.
func TestNackStatus(t *testing.T) {
	for _, delta := range []bool{true, false} {
		h := newHarness(t, delta, true, false, false)
		settle(h)
		change(port)(h)
		p := h.c.pending[ldsT]
		h.c.nack(ldsT) // checks NackVersion and NackError
		st := h.c.status(ldsT)
		if st.InSync || st.Pending || st.NackVersion != p.Version || !strings.Contains(st.NackError, "refused") {
			t.Errorf("delta %v: after a NACK: %+v", delta, st)
		}
		if st.AckedVersion == st.CurrentVersion {
			t.Errorf("delta %v: the acked version is the current one after a NACK: %+v", delta, st)
		}
	}
}

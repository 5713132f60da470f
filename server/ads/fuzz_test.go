package ads_test

import (
	"fmt"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/halolb/halo/server/ads"
	"github.com/halolb/halo/server/snapcache"
)

// names are the resource names the fuzzer subscribes to and from: halo's,
// the wildcard, and one that never exists.
var names = []string{"kube-apiserver", "etcd", "apiserver-local", "apiserver-vip", "etcd-local", "*", "nope"}

// maxSteps bounds one execution, to keep it fast.
const maxSteps = 64

// FuzzStreamSequence drives one node's ADS stream of a real ads.Server
// (no network: ads.TestStream) through a sequence of requests and
// publications decoded from the input, and checks the server's promises at
// every response (see client), and convergence when the client answers
// everything.
//
// The first byte chooses the protocol (bit 0: Delta), whether the client
// follows its clusters with endpoint subscriptions as Envoy does (bit 1
// clear), and the node (bit 2: lb-1, a load-balancer node, else worker-1).
// Then each pair of bytes is one step, an operation and its argument.
func FuzzStreamSequence(f *testing.F) {
	for _, seed := range []string{
		"\x00",
		"\x01",
		// Settle, turn the etcd LB off and on, settle.
		"\x01\x08\x00\x06\x00\x07\x00\x09\x00\x06\x00\x07\x00\x08\x00",
		"\x00\x08\x00\x06\x00\x07\x00\x09\x00\x06\x00\x07\x00\x08\x00",
		// NACK the listeners, change the port, change health, settle.
		"\x01\x09\x00\x09\x00\x01\x02\x06\x01\x07\x00\x01\x02\x06\x05\x07\x00\x08\x00",
		"\x00\x09\x00\x09\x00\x01\x02\x06\x01\x07\x00\x01\x02\x06\x05\x07\x00\x08\x00",
		// Settle, a change, reconnect with the versions held.
		"\x01\x08\x00\x06\x05\x05\x00\x08\x00",
		// Named subscriptions, stale nonces, unsubscriptions.
		"\x03\x03\x04\x03\x00\x02\x00\x02\x01\x04\x04\x03\x14\x07\x00\x08\x00",
		"\x02\x03\x04\x03\x00\x02\x00\x02\x01\x04\x04\x03\x14\x07\x00\x08\x00",
		// A VIP on a load-balancer node, held back, then removed.
		"\x05\x08\x00\x06\x02\x06\x07\x06\x00\x07\x00\x06\x02\x07\x00\x08\x00",
		// Remove the masters until the profile is held back; the node
		// leaves; the cluster goes.
		"\x01\x06\x04\x06\x04\x06\x04\x06\x04\x07\x00\x06\x09\x06\x0a\x07\x00\x06\x03\x08\x00",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		runSequence(t, data)
	})
}

// runSequence runs one decoded sequence (see FuzzStreamSequence).
func runSequence(t *testing.T, data []byte) {
	if len(data) == 0 {
		return
	}
	hdr, data := data[0], data[1:]
	if len(data) > 2*maxSteps {
		data = data[:2*maxSteps]
	}
	cache := snapcache.New()
	srv, err := ads.New(ads.Config{Cache: cache})
	if err != nil {
		t.Fatal(err)
	}
	self := "worker-1"
	if hdr&4 != 0 {
		self = "lb-1"
	}
	w := newWorld(cache, self)
	w.publish()
	c := newClient(srv, cache, &corev3.Node{Cluster: "prod", Id: self}, hdr&1 != 0, hdr&2 == 0, t.Fatalf)
	c.connect()
	var steps []string
	c.fail = func(format string, args ...any) {
		t.Fatalf("%s\nsteps: %s", fmt.Sprintf(format, args...), strings.Join(steps, ", "))
	}
	for i := 0; i+1 < len(data); i += 2 {
		op, arg := data[i], int(data[i+1])
		typ := types[arg%3]
		name := names[arg/3%len(names)]
		switch op % 10 {
		case 0:
			steps = append(steps, "ack "+short(typ))
			c.ack(typ)
		case 1:
			steps = append(steps, "nack "+short(typ))
			c.nack(typ)
		case 2:
			steps = append(steps, "stale "+short(typ))
			c.stale(typ, arg)
		case 3:
			steps = append(steps, "subscribe "+short(typ)+" "+name)
			c.subscribe(typ, name)
		case 4:
			steps = append(steps, "unsubscribe "+short(typ)+" "+name)
			c.unsubscribe(typ, name)
		case 5:
			steps = append(steps, "reconnect")
			c.connect()
		case 6:
			steps = append(steps, fmt.Sprintf("change %d", arg%11))
			w.change(arg)
		case 7:
			steps = append(steps, "push")
			c.push()
		case 8:
			steps = append(steps, "settle")
			if c.settle() {
				c.converged()
			}
		case 9:
			steps = append(steps, "ack all")
			for _, t := range types {
				c.ack(t)
			}
		}
		c.consistent()
	}
	steps = append(steps, "settle")
	if c.settle() {
		c.converged()
	}
	c.stream.Close()
	if n := len(srv.Agents("")); n != 0 {
		t.Fatalf("%d streams listed after the last closed", n)
	}
}

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/server/ads/adstest"
)

// follower is a Delta ADS client that follows several replicas as
// halo-agent does: when its stream ends it reconnects at once to the next
// replica, naming in initial_resource_versions what it holds, so that a
// replica with nothing new for it sends nothing. Each stream has a
// connection of its own, dialed when the stream starts (the previous one is
// closed first). It counts the TCP bytes of its connections and records
// every stream it opened.
type follower struct {
	ads   *adstest.Client
	addrs []string
	opts  []grpc.DialOption

	wireIn, wireOut atomic.Int64 // TCP payload bytes (TLS records included)

	mu     sync.Mutex
	opened []opening
}

// opening is a stream the follower opened.
type opening struct {
	addr string
	at   time.Time // when gRPC had the stream open: connected, TLS done, server's HTTP/2 settings received
}

// Bounds of a follower's reconnecting: streams it opens in all, attempts in
// a row that open none, and the wait after such an attempt.
const (
	maxStreams        = 20
	maxFailedAttempts = 50
	retryDelay        = 100 * time.Millisecond
)

// run follows the replicas until ctx ends (nil), a stream ends otherwise
// than by its replica going away (UNAVAILABLE), or a bound is reached.
func (f *follower) run(ctx context.Context) error {
	timer := time.NewTimer(0)
	<-timer.C
	defer timer.Stop()
	failed := 0
	for attempt := 0; ; attempt++ {
		addr := f.addrs[attempt%len(f.addrs)]
		before := len(f.streams())
		err := f.session(ctx, addr)
		opened := len(f.streams())
		switch {
		case ctx.Err() != nil:
			return nil
		case status.Code(err) != codes.Unavailable:
			return fmt.Errorf("stream to %s: %w", addr, err)
		case opened >= maxStreams:
			return fmt.Errorf("%d streams opened, the last to %s ended: %w", opened, addr, err)
		case opened > before:
			failed = 0
			continue // at once, to the next replica
		}
		if failed++; failed >= maxFailedAttempts {
			return fmt.Errorf("%d attempts in a row opened no stream, the last to %s: %w", failed, addr, err)
		}
		timer.Reset(retryDelay)
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		}
	}
}

// session runs one stream to addr until it ends.
func (f *follower) session(ctx context.Context, addr string) error {
	opts := append(slices.Clone(f.opts), grpc.WithContextDialer(f.dial), grpc.WithStreamInterceptor(f.record(addr)))
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return fmt.Errorf("dial %s: %w", addr, err)
	}
	defer conn.Close()
	// adstest reads Initial when a stream starts, and nowhere else once the
	// client was first used.
	f.ads.Initial = f.holding()
	return f.ads.Run(ctx, conn)
}

// holding is what the client holds, by type and name: the versions a
// resumed Delta stream names.
func (f *follower) holding() map[string]map[string]string {
	out := map[string]map[string]string{}
	for _, t := range []string{resource.ClusterType, resource.ListenerType, resource.EndpointType} {
		if h := f.ads.Held(t); len(h) > 0 {
			out[t] = h
		}
	}
	return out
}

// dial opens a TCP connection whose bytes are counted.
func (f *follower) dial(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return &countedConn{Conn: c, in: &f.wireIn, out: &f.wireOut}, nil
}

// record notes every stream opened on a connection to addr.
func (f *follower) record(addr string) grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		s, err := streamer(ctx, desc, cc, method, opts...)
		if err == nil {
			f.mu.Lock()
			f.opened = append(f.opened, opening{addr: addr, at: time.Now()})
			f.mu.Unlock()
		}
		return s, err
	}
}

// streams returns every stream opened so far.
func (f *follower) streams() []opening {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.opened)
}

// countedConn counts the bytes read and written.
type countedConn struct {
	net.Conn
	in, out *atomic.Int64
}

func (c *countedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.in.Add(int64(n))
	return n, err
}

func (c *countedConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.out.Add(int64(n))
	return n, err
}

// failoverRow is one failover measurement.
type failoverRow struct {
	mode    mode
	clients int
	moved   int // the clients that were on the killed replica
	// Per moved client, from the kill: its new stream opened (on the
	// survivor), and the first poll of the survivor's ListAgents that listed
	// it in sync.
	reopened, inSync []time.Duration
	// all is from the kill until the survivor listed every moved client in
	// sync; polls is how many ListAgents calls that took, longestPoll the
	// slowest of them (the resolution of inSync).
	all         time.Duration
	polls       int
	longestPoll time.Duration
	// What the moved clients received after the kill: xDS responses and
	// their encoded size; the TCP bytes of their connections both ways (TLS
	// handshakes, HTTP/2 set-up and the resuming requests).
	responses, bytes int
	wireIn, wireOut  int64
	// stayedResponses: responses the survivor's own clients received after
	// the kill (0: they noticed nothing).
	stayedResponses int
	issuing         time.Duration // mTLS: issuing the node certificates
}

// Polling intervals: while setting up, and of the survivor's ListAgents
// after the kill (timed).
const (
	setupPoll = 100 * time.Millisecond
	timedPoll = 20 * time.Millisecond
)

// runFailover runs two replicas on one etcd (a embeds it; b uses it over its
// unix socket), connects n Delta clients, even ones to a and odd ones to b
// (each knowing both), waits until both replicas list their clients in
// sync, SIGKILLs b and times its clients' move to a.
func runFailover(ctx context.Context, bin string, n int, m mode) (failoverRow, error) {
	r := failoverRow{mode: m, clients: n}
	var b *bundle
	if m == mtls {
		var err error
		if b, err = newBundle([]string{"a", "b"}, n); err != nil {
			return r, fmt.Errorf("certificates: %w", err)
		}
		defer b.remove()
		r.issuing = b.issuing
	}
	a, err := startServer(bin, serverOptions{name: "a", pki: b})
	if err != nil {
		return r, err
	}
	defer a.stop()
	if a.etcd == "" {
		return r, errors.New("replica a did not log its etcd endpoint")
	}
	bs, err := startServer(bin, serverOptions{name: "b", etcd: a.etcd, pki: b})
	if err != nil {
		return r, fmt.Errorf("replica b on a's etcd %s: %w", a.etcd, err)
	}
	defer bs.stop()
	ctx, cancelCause := context.WithCancelCause(ctx)
	cancel := func() { cancelCause(nil) }
	defer cancel()
	adminA, err := dialAdmin(b, a.addr)
	if err != nil {
		return r, err
	}
	defer adminA.Close()
	adminB, err := dialAdmin(b, bs.addr)
	if err != nil {
		return r, err
	}
	defer adminB.Close()
	if err := register(ctx, halov1.NewTopologyServiceClient(adminA), n); err != nil {
		return r, err
	}

	// Connect the clients, 200 at a time: even ones to a, odd ones to b.
	followers := make([]*follower, n)
	var runs errgroup.Group
	defer func() {
		cancel()
		_ = runs.Wait()
	}()
	dialG, _ := errgroup.WithContext(ctx)
	dialG.SetLimit(200)
	for i := range n {
		dialG.Go(func() error {
			addrs := []string{a.addr, bs.addr}
			if i%2 == 1 {
				addrs = []string{bs.addr, a.addr}
			}
			f := &follower{ads: &adstest.Client{Node: &corev3.Node{Cluster: cluster, Id: workerName(i)}, Delta: true}, addrs: addrs,
				opts: b.clientDialOptions(i)}
			followers[i] = f
			runs.Go(func() error {
				if err := f.run(ctx); err != nil {
					err = fmt.Errorf("client %s: %w", workerName(i), err)
					cancelCause(err) // fail the run, not hang it
					return err
				}
				return nil
			})
			wctx, wcancel := context.WithTimeout(ctx, 5*time.Minute)
			defer wcancel()
			return f.ads.WaitFor(wctx, hasEndpoints(3))
		})
	}
	if err := dialG.Wait(); err != nil {
		return r, fmt.Errorf("connect clients: %w (cause: %v)", err, context.Cause(ctx))
	}
	// Nothing may change from now on: the prober has settled the masters'
	// health, and both replicas list their clients in sync.
	if err := waitBackends(ctx, adminA); err != nil {
		return r, err
	}
	for _, rep := range []struct {
		name string
		conn *grpc.ClientConn
		odd  int
	}{{"a", adminA, 0}, {"b", adminB, 1}} {
		err := poll(ctx, setupPoll, 2*time.Minute, "replica "+rep.name+" lists its clients in sync", func(ctx context.Context) (bool, error) {
			agents, err := listAgents(ctx, rep.conn)
			if err != nil {
				return false, err
			}
			in := 0
			for i := rep.odd; i < n; i += 2 {
				if s := agents[workerName(i)]; s != nil && s.GetInSync() && s.GetReplica() == rep.name {
					in++
				}
			}
			return in == (n+1-rep.odd)/2 && len(agents) == in, nil
		})
		if err != nil {
			return r, fmt.Errorf("%w (cause: %v)", err, context.Cause(ctx))
		}
	}

	// What each client holds, has received and has sent so far.
	type mark struct {
		events          int
		streams         int
		wireIn, wireOut int64
		held            map[string]map[string]string
	}
	marks := make([]mark, n)
	moved := map[string]int{} // node → client index
	for i, f := range followers {
		marks[i] = mark{events: len(f.ads.Events()), streams: len(f.streams()), wireIn: f.wireIn.Load(), wireOut: f.wireOut.Load(), held: f.holding()}
		if i%2 == 1 {
			moved[workerName(i)] = i
		}
	}
	r.moved = len(moved)

	killed := time.Now()
	if err := bs.kill(); err != nil {
		return r, err
	}
	listed := map[string]time.Time{}
	err = poll(ctx, timedPoll, time.Minute, "replica a lists b's clients in sync", func(ctx context.Context) (bool, error) {
		sent := time.Now()
		agents, err := listAgents(ctx, adminA)
		at := time.Now()
		r.polls++
		r.longestPoll = max(r.longestPoll, at.Sub(sent))
		if err != nil {
			return false, err
		}
		for node, s := range agents {
			if _, ok := moved[node]; ok && s.GetInSync() && s.GetReplica() == "a" && listed[node].IsZero() {
				listed[node] = at
			}
		}
		return len(listed) == len(moved), nil
	})
	if err != nil {
		return r, fmt.Errorf("%w: %d of %d (cause: %v)", err, len(listed), len(moved), context.Cause(ctx))
	}
	// b is dead: reap it (and make sure it was the kill that ended it).
	bs.stop()
	var exit *exec.ExitError
	if !errors.As(bs.exitErr, &exit) {
		return r, fmt.Errorf("replica b ended with %v, not by SIGKILL", bs.exitErr)
	}
	if ws, ok := exit.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		return r, fmt.Errorf("replica b ended with %v, not by SIGKILL", bs.exitErr)
	}

	for i, f := range followers {
		evs := f.ads.Events()[marks[i].events:]
		after := f.streams()[marks[i].streams:]
		if _, ok := moved[workerName(i)]; !ok {
			r.stayedResponses += len(evs)
			if len(after) > 0 {
				return r, fmt.Errorf("client %s (on a) opened %d streams after the kill", workerName(i), len(after))
			}
			continue
		}
		if len(after) == 0 || after[0].addr != a.addr {
			return r, fmt.Errorf("client %s: listed in sync by a, but its streams after the kill are %v", workerName(i), after)
		}
		r.reopened = append(r.reopened, after[0].at.Sub(killed))
		r.inSync = append(r.inSync, listed[workerName(i)].Sub(killed))
		r.all = max(r.all, listed[workerName(i)].Sub(killed))
		r.responses += len(evs)
		for _, e := range evs {
			r.bytes += e.Bytes
		}
		r.wireIn += f.wireIn.Load() - marks[i].wireIn
		r.wireOut += f.wireOut.Load() - marks[i].wireOut
		if len(evs) == 0 && !mapsEqual(f.holding(), marks[i].held) {
			return r, fmt.Errorf("client %s: holds other versions than before the kill without a response", workerName(i))
		}
	}
	return r, nil
}

// mapsEqual compares what two clients hold.
func mapsEqual(x, y map[string]map[string]string) bool {
	if len(x) != len(y) {
		return false
	}
	for t, vs := range x {
		w, ok := y[t]
		if !ok || len(w) != len(vs) {
			return false
		}
		for n, v := range vs {
			if w[n] != v {
				return false
			}
		}
	}
	return true
}

// listAgents lists the agents connected to one replica, by node name.
func listAgents(ctx context.Context, conn *grpc.ClientConn) (map[string]*halov1.AgentStatus, error) {
	resp, err := halov1.NewStatusServiceClient(conn).ListAgents(ctx, &halov1.ListAgentsRequest{Cluster: cluster, LocalOnly: true})
	if err != nil {
		return nil, fmt.Errorf("ListAgents: %w", err)
	}
	out := make(map[string]*halov1.AgentStatus, len(resp.GetAgents()))
	for _, s := range resp.GetAgents() {
		out[s.GetNode()] = s
	}
	return out, nil
}

// waitBackends waits until the prober has concluded every master's health
// (3 apiservers and 3 etcd members): until then a transition would change
// every node's endpoints.
func waitBackends(ctx context.Context, conn *grpc.ClientConn) error {
	sc := halov1.NewStatusServiceClient(conn)
	return poll(ctx, setupPoll, time.Minute, "the prober concludes the masters' health", func(ctx context.Context) (bool, error) {
		resp, err := sc.ListBackends(ctx, &halov1.ListBackendsRequest{Cluster: cluster})
		if err != nil {
			return false, fmt.Errorf("ListBackends: %w", err)
		}
		for _, be := range resp.GetBackends() {
			if be.GetState() == halov1.BackendState_BACKEND_STATE_UNSPECIFIED {
				return false, nil
			}
		}
		return len(resp.GetBackends()) == 6, nil
	})
}

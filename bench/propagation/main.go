// Command propagation measures how fast a topology change reaches every
// node: it builds halo-server, runs it in a process of its own (embedded
// etcd, fsync on), registers N workers, connects N Delta ADS clients (each
// its own gRPC connection, all in this process), then writes a master
// through the admin API several times and times, for every client, the
// moment it ACKs the change, from the moment the write returned. It prints
// p50/p99/max per N and the server's memory per connected client.
//
// Each N runs in each of -modes: plaintext (the quick start) and mtls
// (production mode: a CA made for the run, a server certificate per
// replica, the admin calls as an admin user, every client with the
// certificate of its own node identity).
//
// -failover runs two replicas on one etcd instead (the first one's
// embedded etcd, the second over its unix socket), half of the clients on
// each, every client knowing both; once both list their clients in sync,
// the second is killed (SIGKILL) and the bench times its clients' move to
// the first (each reconnects at once, resuming its Delta stream with the
// versions it holds) and counts what they are sent.
//
//	go run ./bench/propagation -n 100,1000,10000 -writes 5
//	go run ./bench/propagation -n 100,1000 -modes plaintext,mtls
//	go run ./bench/propagation -n 1000 -failover -modes plaintext,mtls
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	rpprof "runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/server/ads/adstest"
)

func main() { os.Exit(benchMain()) }

// benchMain runs the bench and returns the exit code.
func benchMain() int {
	ns := flag.String("n", "100,1000,10000", "comma-separated client counts")
	writes := flag.Int("writes", 5, "master writes timed per client count (at least 5)")
	sotw := flag.Bool("sotw", false, "use state-of-the-world ADS instead of Delta")
	mtlsOnly := flag.Bool("mtls", false, "production mode: TLS, every caller with a client certificate of its identity (same as -modes mtls)")
	modesFlag := flag.String("modes", "plaintext", "comma-separated modes to run for every -n, in this order: plaintext, mtls")
	failover := flag.Bool("failover", false, "two replicas on one etcd, clients half on each; SIGKILL one and time its clients' move to the other (Delta)")
	flag.Parse()
	var counts []int
	for _, s := range strings.Split(*ns, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 || n > 15000 {
			fmt.Fprintf(os.Stderr, "bad -n %q (1..15000: each client is a connection, and a process holds at most 20,000 files)\n", s)
			return 2
		}
		counts = append(counts, n)
	}
	modes, err := parseModes(*modesFlag)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if *mtlsOnly {
		explicit := false
		flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "modes" })
		switch {
		case !explicit:
			modes = []mode{mtls}
		case !slices.Contains(modes, mtls):
			fmt.Fprintln(os.Stderr, "-mtls and -modes without mtls contradict each other")
			return 2
		}
	}
	if *failover && *sotw {
		fmt.Fprintln(os.Stderr, "-failover resumes Delta streams with the versions they hold; it does not go with -sotw")
		return 2
	}
	if *writes < 5 {
		*writes = 5
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	bin, cleanup, err := buildServer()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	defer cleanup()
	if *failover {
		var rows []failoverRow
		for _, n := range counts {
			for _, m := range modes {
				start := time.Now()
				r, err := runFailover(ctx, bin, n, m)
				if err != nil {
					fmt.Fprintf(os.Stderr, "bench: failover, n=%d, %s: %v\n", n, m, err)
					return 1
				}
				fmt.Fprintf(os.Stderr, "bench: failover, n=%d, %s: done in %v\n", n, m, time.Since(start).Round(100*time.Millisecond))
				rows = append(rows, r)
			}
		}
		printFailover(rows)
		return 0
	}
	var rows []row
	for _, n := range counts {
		for _, m := range modes {
			start := time.Now()
			r, err := run(ctx, bin, n, *writes, !*sotw, m)
			if err != nil {
				fmt.Fprintf(os.Stderr, "bench: n=%d, %s: %v\n", n, m, err)
				return 1
			}
			fmt.Fprintf(os.Stderr, "bench: n=%d, %s: done in %v\n", n, m, time.Since(start).Round(100*time.Millisecond))
			rows = append(rows, r)
		}
	}
	proto := "Delta"
	if *sotw {
		proto = "SotW"
	}
	fmt.Printf("halo-server propagation: a master write -> every %s ADS client's ACK of it (%d writes per row)\n\n", proto, *writes)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "clients\tmode\tchanges timed\tp50\tp99\tmax\tserver RSS/client\tserver heap/client\tbytes/client/write\tserver CPU/write\tclients' CPU/write\tconnect all\tserver CPU/connect\t")
	for _, r := range rows {
		fmt.Fprintf(w, "%d\t%s\t%d\t%v\t%v\t%v\t%.1f KiB\t%.1f KiB\t%d\t%v\t%v\t%v\t%v\t\n", r.clients, r.mode, len(r.lat), pct(r.lat, 0.5), pct(r.lat, 0.99), pct(r.lat, 1),
			r.rssPerClient/1024, r.heapPerClient/1024, r.bytesPerWrite, r.serverCPU.Round(time.Millisecond), r.clientCPU.Round(time.Millisecond),
			r.connect.Round(time.Millisecond), r.serverCPUConnect.Round(time.Microsecond))
	}
	w.Flush()
	fmt.Println()
	fmt.Println("connect all: from the first dial until every client holds its resources; server CPU/connect: the server's CPU for that, per client.")
	for _, r := range rows {
		if r.mode == mtls {
			fmt.Printf("mTLS, %d clients: %d node certificates issued in %v (ECDSA P-256, in parallel).\n", r.clients, r.clients, r.issuing.Round(time.Millisecond))
		}
	}
	return 0
}

// printFailover prints the failover table.
func printFailover(rows []failoverRow) {
	fmt.Println("halo-server failover: replica b killed (SIGKILL) -> every Delta ADS client it had reconnected to replica a, listed in sync there")
	fmt.Printf("(a and b share a's embedded etcd; clients half on each; a's ListAgents, local_only, polled every %v)\n\n", timedPoll)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "clients\tmode\tmoved\tnew stream p50\tp99\tmax\tin sync on a p50\tp99\tall in sync\tpolls (longest)\txDS responses\txDS bytes\tTCP bytes in/client\tout/client\tresponses to a's own\t")
	for _, r := range rows {
		fmt.Fprintf(w, "%d\t%s\t%d\t%v\t%v\t%v\t%v\t%v\t%v\t%d (%v)\t%d\t%d\t%d\t%d\t%d\t\n", r.clients, r.mode, r.moved,
			pct(r.reopened, 0.5), pct(r.reopened, 0.99), pct(r.reopened, 1), pct(r.inSync, 0.5), pct(r.inSync, 0.99), r.all.Round(100*time.Microsecond),
			r.polls, r.longestPoll.Round(time.Millisecond), r.responses, r.bytes, r.wireIn/int64(max(r.moved, 1)), r.wireOut/int64(max(r.moved, 1)), r.stayedResponses)
	}
	w.Flush()
	fmt.Println()
	fmt.Println("From the kill: new stream: the client's stream to a open (TCP, TLS, a's HTTP/2 settings received). in sync on a:")
	fmt.Println("the answer of the first poll of a's ListAgents that lists the client in sync (all in sync: the last of them); one poll")
	fmt.Println("takes up to the longest shown, the resolution of these columns. xDS responses/bytes: every response the moved clients")
	fmt.Println("received after the kill (proto.Size). TCP bytes: their new connections' bytes each way (TLS handshake, HTTP/2 set-up,")
	fmt.Println("the Delta requests naming the versions they hold).")
	for _, r := range rows {
		if r.mode == mtls {
			fmt.Printf("mTLS, %d clients: %d node certificates issued in %v (ECDSA P-256, in parallel).\n", r.clients, r.clients, r.issuing.Round(time.Millisecond))
		}
	}
}

// row is one propagation measurement.
type row struct {
	mode                 mode
	serverCPU, clientCPU time.Duration // per write, all clients
	clients              int
	lat                  []time.Duration
	rssPerClient         float64
	heapPerClient        float64
	bytesPerWrite        int
	// connect is from the first dial until every client holds its
	// resources; serverCPUConnect the server's CPU for it, per client.
	connect, serverCPUConnect time.Duration
	issuing                   time.Duration // mTLS: issuing the node certificates
}

func pct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))].Round(100 * time.Microsecond)
}

// master is master i of the bench cluster.
func master(i int) *halov1.Node {
	return &halov1.Node{Cluster: cluster, Name: fmt.Sprintf("master-%d", i), Ip: fmt.Sprintf("10.0.0.%d", i+1), Ordinal: int32(i),
		Roles: []halov1.Role{halov1.Role_ROLE_CONTROL_PLANE, halov1.Role_ROLE_ETCD}}
}

// register creates the bench cluster with three masters and n workers (16
// registrations at a time).
func register(ctx context.Context, tc halov1.TopologyServiceClient, n int) error {
	if _, err := tc.PutCluster(ctx, &halov1.PutClusterRequest{Cluster: &halov1.Cluster{Name: cluster}}); err != nil {
		return fmt.Errorf("put cluster: %w", err)
	}
	for i := range 3 {
		if _, err := tc.PutNode(ctx, &halov1.PutNodeRequest{Node: master(i)}); err != nil {
			return fmt.Errorf("put master %d: %w", i, err)
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for i := range n {
		g.Go(func() error {
			_, err := tc.PutNode(gctx, &halov1.PutNodeRequest{Node: &halov1.Node{Cluster: cluster, Name: workerName(i),
				Ip: fmt.Sprintf("10.%d.%d.%d", 1+i/65536, (i/256)%256, i%256), Roles: []halov1.Role{halov1.Role_ROLE_WORKER}}})
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("register workers: %w", err)
	}
	return nil
}

// hasEndpoints holds once a client has the kube-apiserver cluster's
// endpoints, with this many masters.
func hasEndpoints(endpoints int) func(c *adstest.Client) bool {
	return func(c *adstest.Client) bool {
		cla := &endpointv3.ClusterLoadAssignment{}
		return c.Resource(resource.EndpointType, "kube-apiserver", cla) && len(cla.GetEndpoints()) == 1 &&
			len(cla.GetEndpoints()[0].GetLbEndpoints()) == endpoints
	}
}

// run measures propagation to n clients of one halo-server in mode m.
func run(ctx context.Context, bin string, n, writes int, delta bool, m mode) (row, error) {
	r := row{clients: n, mode: m}
	var b *bundle
	if m == mtls {
		var err error
		if b, err = newBundle([]string{"a"}, n); err != nil {
			return r, fmt.Errorf("certificates: %w", err)
		}
		defer b.remove()
		r.issuing = b.issuing
	}
	s, err := startServer(bin, serverOptions{name: "a", pki: b})
	if err != nil {
		return r, err
	}
	defer s.stop()
	ctx, cancelCause := context.WithCancelCause(ctx)
	cancel := func() { cancelCause(nil) }
	defer cancel()
	admin, err := dialAdmin(b, s.addr)
	if err != nil {
		return r, err
	}
	defer admin.Close()
	tc := halov1.NewTopologyServiceClient(admin)
	if err := register(ctx, tc, n); err != nil {
		return r, err
	}
	// A health transition of a master would change every node's endpoints
	// while connecting or timing: let the prober conclude first.
	if err := waitBackends(ctx, admin); err != nil {
		return r, err
	}
	rssBefore, err := s.rss()
	if err != nil {
		return r, err
	}
	heapBefore, err := heapInuse(s.metrics)
	if err != nil {
		return r, err
	}

	// Connect the clients, 200 dials at a time, each on its own connection.
	clients := make([]*adstest.Client, n)
	conns := make([]*grpc.ClientConn, n)
	var runs errgroup.Group
	defer func() {
		cancel()
		_ = runs.Wait()
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	has := hasEndpoints
	connectStart := time.Now()
	srvCPUConnect0, err := s.cpu()
	if err != nil {
		return r, err
	}
	dialG, _ := errgroup.WithContext(ctx)
	dialG.SetLimit(200)
	for i := range n {
		dialG.Go(func() error {
			conn, err := grpc.NewClient(s.addr, b.clientDialOptions(i)...)
			if err != nil {
				return err
			}
			conns[i] = conn
			c := &adstest.Client{Node: &corev3.Node{Cluster: cluster, Id: workerName(i)}, Delta: delta}
			clients[i] = c
			runs.Go(func() error {
				if err := c.Run(ctx, conn); err != nil && ctx.Err() == nil {
					err = fmt.Errorf("client %s: %w", c.Node.GetId(), err)
					cancelCause(err) // fail the run, not hang it
					return err
				}
				return nil
			})
			wctx, wcancel := context.WithTimeout(ctx, 5*time.Minute)
			defer wcancel()
			return c.WaitFor(wctx, has(3))
		})
	}
	if err := dialG.Wait(); err != nil {
		return r, fmt.Errorf("connect clients: %w (cause: %v)", err, context.Cause(ctx))
	}
	r.connect = time.Since(connectStart)
	srvCPUConnect1, err := s.cpu()
	if err != nil {
		return r, err
	}
	r.serverCPUConnect = (srvCPUConnect1 - srvCPUConnect0) / time.Duration(n)
	rssAfter, err := s.rss()
	if err != nil {
		return r, err
	}
	heapAfter, err := heapInuse(s.metrics)
	if err != nil {
		return r, err
	}
	r.rssPerClient = (rssAfter - rssBefore) / float64(n)
	if os.Getenv("HALO_BENCH_MEMSTATS") != "" {
		resp, err := http.Get("http://" + s.metrics + "/metrics")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			for _, l := range strings.Split(string(b), "\n") {
				if strings.HasPrefix(l, "go_memstats_") || strings.HasPrefix(l, "go_goroutines") {
					fmt.Fprintln(os.Stderr, l)
				}
			}
		}
	}
	if p := os.Getenv("HALO_BENCH_HEAP"); p != "" {
		if out, err := exec.Command("go", "tool", "pprof", "-proto", "-output", p, "http://"+s.metrics+"/debug/pprof/heap").CombinedOutput(); err != nil {
			slog.Error("heap profile", "error", err, "output", string(out))
		}
		if out, err := exec.Command("curl", "-s", "-o", p+".goroutines", "http://"+s.metrics+"/debug/pprof/goroutine?debug=1").CombinedOutput(); err != nil {
			slog.Error("goroutine profile", "error", err, "output", string(out))
		}
	}
	r.heapPerClient = (heapAfter - heapBefore) / float64(n)

	if p := os.Getenv("HALO_BENCH_CLIENT_PROFILE"); p != "" {
		f, err := os.Create(p)
		if err == nil {
			_ = rpprof.StartCPUProfile(f)
			defer func() { rpprof.StopCPUProfile(); f.Close() }()
		}
	}
	if p := os.Getenv("HALO_BENCH_PROFILE"); p != "" {
		go func() {
			out, err := exec.Command("go", "tool", "pprof", "-proto", "-seconds", "8", "-output", p, "http://"+s.metrics+"/debug/pprof/profile").CombinedOutput()
			if err != nil {
				slog.Error("profile", "error", err, "output", string(out))
			}
		}()
	}
	srvCPU0, err := s.cpu()
	if err != nil {
		return r, err
	}
	cliCPU0 := selfCPU()
	for w := range writes {
		marks := make([]int, n)
		before := make([]string, n)
		for i, c := range clients {
			marks[i] = len(c.Events())
			before[i] = c.Version(resource.EndpointType, "kube-apiserver")
		}
		want := 4
		var err error
		if w%2 == 0 {
			_, err = tc.PutNode(ctx, &halov1.PutNodeRequest{Node: master(3)})
		} else {
			_, err = tc.DeleteNode(ctx, &halov1.DeleteNodeRequest{Cluster: cluster, Name: "master-3"})
			want = 3
		}
		if err != nil {
			return r, err
		}
		written := time.Now()
		var mu sync.Mutex
		wg, wctx := errgroup.WithContext(ctx)
		wg.SetLimit(256)
		bytes := 0
		for i, c := range clients {
			wg.Go(func() error {
				tctx, tcancel := context.WithTimeout(wctx, time.Minute)
				defer tcancel()
				// Versions are content hashes: a new one is the change.
				changed := func(c *adstest.Client) bool { return c.Version(resource.EndpointType, "kube-apiserver") != before[i] }
				if err := c.WaitFor(tctx, changed); err != nil {
					return fmt.Errorf("client %d: %w", i, err)
				}
				evs := c.Events()[marks[i]:]
				var acked time.Time
				b := 0
				for _, e := range evs {
					b += e.Bytes
					if _, ok := e.Resources["kube-apiserver"]; ok && e.TypeURL == resource.EndpointType {
						acked = e.At
					}
				}
				lat := max(acked.Sub(written), 0)
				mu.Lock()
				r.lat = append(r.lat, lat)
				bytes += b
				mu.Unlock()
				return nil
			})
		}
		if err := wg.Wait(); err != nil {
			return r, fmt.Errorf("write %d: %w (cause: %v)", w, err, context.Cause(ctx))
		}
		// Outside the timed window: every client got the write itself.
		for i, c := range clients {
			if !has(want)(c) {
				return r, fmt.Errorf("write %d: client %d holds another change than the write", w, i)
			}
		}
		r.bytesPerWrite = bytes / n
	}
	srvCPU1, err := s.cpu()
	if err != nil {
		return r, err
	}
	r.serverCPU = (srvCPU1 - srvCPU0) / time.Duration(writes)
	r.clientCPU = (selfCPU() - cliCPU0) / time.Duration(writes)
	return r, nil
}

// Command topology benchmarks halo-server's admin API on a real embedded
// etcd (fsync on, as in production): how fast nodes are registered as a
// cluster grows, how long ResolveEndpoints takes on a big cluster, and how
// soon a Watch sees a write. It prints a table.
//
//	go run ./bench/topology -nodes 2000
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"text/tabwriter"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/server"
)

func main() {
	nodes := flag.Int("nodes", 2000, "worker nodes to register (plus 3 masters)")
	concurrency := flag.Int("concurrency", 8, "concurrent PutNode calls in the parallel phase")
	resolves := flag.Int("resolves", 500, "ResolveEndpoints calls to time")
	watches := flag.Int("watch-samples", 200, "writes whose watch latency is measured")
	fsync := flag.Bool("fsync", true, "fsync etcd's WAL (off: etcd's unsafe mode, like the tests)")
	flag.Parse()
	if err := run(*nodes, *concurrency, *resolves, *watches, *fsync); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type row struct {
	name  string
	lat   []time.Duration
	total time.Duration
}

func (r row) pct(p float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	s := slices.Clone(r.lat)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

func run(nodes, concurrency, resolves, watchSamples int, fsync bool) error {
	dir, err := os.MkdirTemp("", "halo-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv, err := server.New(server.Config{Listener: lis, DataDir: dir, EtcdUnsafeNoFsync: !fsync, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			fmt.Fprintln(os.Stderr, "halo-server:", err)
		}
	}()
	select {
	case <-srv.Ready():
	case err := <-done:
		done <- nil // for the deferred wait: Run has already returned
		return err
	}
	conn, err := grpc.NewClient(srv.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	tc := halov1.NewTopologyServiceClient(conn)
	ec := halov1.NewEndpointServiceClient(conn)

	if _, err := tc.PutCluster(ctx, &halov1.PutClusterRequest{Cluster: &halov1.Cluster{Name: "bench"}}); err != nil {
		return err
	}
	for i := range 3 {
		n := &halov1.Node{Cluster: "bench", Name: fmt.Sprintf("master-%d", i), Ip: fmt.Sprintf("10.0.0.%d", i+1), Ordinal: int32(i),
			Roles: []halov1.Role{halov1.Role_ROLE_CONTROL_PLANE, halov1.Role_ROLE_ETCD}}
		if _, err := tc.PutNode(ctx, &halov1.PutNodeRequest{Node: n}); err != nil {
			return err
		}
	}
	worker := func(i int) *halov1.Node {
		return &halov1.Node{Cluster: "bench", Name: fmt.Sprintf("worker-%05d", i), Ip: fmt.Sprintf("10.%d.%d.%d", 1+i/65536, (i/256)%256, i%256),
			Roles: []halov1.Role{halov1.Role_ROLE_WORKER}}
	}
	var rows []row
	timed := func(f func() error) (time.Duration, error) {
		start := time.Now()
		err := f()
		return time.Since(start), err
	}

	// Sequential registration, reported per tenth of the cluster's growth.
	half := nodes / 2
	r := row{name: fmt.Sprintf("PutNode sequential, nodes 0-%d", half)}
	start := time.Now()
	for i := range half {
		d, err := timed(func() error { _, err := tc.PutNode(ctx, &halov1.PutNodeRequest{Node: worker(i)}); return err })
		if err != nil {
			return err
		}
		r.lat = append(r.lat, d)
	}
	r.total = time.Since(start)
	rows = append(rows, r)

	// Parallel registration of the other half.
	r = row{name: fmt.Sprintf("PutNode x%d parallel, nodes %d-%d", concurrency, half, nodes)}
	var mu sync.Mutex
	next := half
	start = time.Now()
	g, gctx := errgroup.WithContext(ctx)
	for range concurrency {
		g.Go(func() error {
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= nodes {
					return nil
				}
				d, err := timed(func() error { _, err := tc.PutNode(gctx, &halov1.PutNodeRequest{Node: worker(i)}); return err })
				if err != nil {
					return err
				}
				mu.Lock()
				r.lat = append(r.lat, d)
				mu.Unlock()
			}
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	r.total = time.Since(start)
	rows = append(rows, r)

	r = row{name: fmt.Sprintf("ResolveEndpoints, %d nodes", nodes+3)}
	start = time.Now()
	for i := range resolves {
		d, err := timed(func() error {
			_, err := ec.ResolveEndpoints(ctx, &halov1.ResolveEndpointsRequest{Cluster: "bench", Node: worker(i % nodes).GetName()})
			return err
		})
		if err != nil {
			return err
		}
		r.lat = append(r.lat, d)
	}
	r.total = time.Since(start)
	rows = append(rows, r)

	// Watch latency: from just before PutNode to the event's arrival.
	stream, err := tc.Watch(ctx, &halov1.WatchRequest{Cluster: "bench"})
	if err != nil {
		return err
	}
	if _, err := stream.Recv(); err != nil {
		return err
	}
	r = row{name: "PutNode -> Watch event"}
	start = time.Now()
	for i := range watchSamples {
		n := worker(i)
		n.Labels = map[string]string{"round": fmt.Sprint(i)}
		t0 := time.Now()
		if _, err := tc.PutNode(ctx, &halov1.PutNodeRequest{Node: n}); err != nil {
			return err
		}
		if _, err := stream.Recv(); err != nil {
			return err
		}
		r.lat = append(r.lat, time.Since(t0))
	}
	r.total = time.Since(start)
	rows = append(rows, r)

	mode := "fsync on"
	if !fsync {
		mode = "fsync off"
	}
	fmt.Printf("halo-server admin API, embedded etcd (%s), %d workers + 3 masters\n\n", mode, nodes)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "operation\tcalls\tp50\tp99\tmax\tcalls/s\t")
	for _, r := range rows {
		fmt.Fprintf(w, "%s\t%d\t%v\t%v\t%v\t%.0f\t\n", r.name, len(r.lat), r.pct(0.5).Round(time.Microsecond),
			r.pct(0.99).Round(time.Microsecond), r.pct(1).Round(time.Microsecond), float64(len(r.lat))/r.total.Seconds())
	}
	return w.Flush()
}

// Command propagation measures how fast a topology change reaches every
// node: it builds halo-server, runs it in a process of its own (embedded
// etcd, fsync on), registers N workers, connects N Delta ADS clients (each
// its own gRPC connection, all in this process), then writes a master
// through the admin API several times and times, for every client, the
// moment it ACKs the change, from the moment the write returned. It prints
// p50/p99/max per N and the server's memory per connected client.
//
//	go run ./bench/propagation -n 100,1000,10000 -writes 5
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
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
	"google.golang.org/grpc/credentials/insecure"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/server/ads/adstest"
)

func main() {
	ns := flag.String("n", "100,1000,10000", "comma-separated client counts")
	writes := flag.Int("writes", 5, "master writes timed per client count (at least 5)")
	sotw := flag.Bool("sotw", false, "use state-of-the-world ADS instead of Delta")
	flag.Parse()
	var counts []int
	for _, s := range strings.Split(*ns, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 || n > 15000 {
			fmt.Fprintf(os.Stderr, "bad -n %q (1..15000: each client is a connection, and a process holds at most 20,000 files)\n", s)
			os.Exit(2)
		}
		counts = append(counts, n)
	}
	if *writes < 5 {
		*writes = 5
	}
	bin, cleanup, err := buildServer()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	defer cleanup()
	var rows []row
	for _, n := range counts {
		r, err := run(bin, n, *writes, !*sotw)
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench: n=%d: %v\n", n, err)
			os.Exit(1)
		}
		rows = append(rows, r)
	}
	proto := "Delta"
	if *sotw {
		proto = "SotW"
	}
	fmt.Printf("halo-server propagation: a master write -> every %s ADS client's ACK of it (%d writes per row)\n\n", proto, *writes)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "clients\tchanges timed\tp50\tp99\tmax\tserver RSS/client\tserver heap/client\tbytes/client/write\tserver CPU/write\tclients' CPU/write\t")
	for _, r := range rows {
		fmt.Fprintf(w, "%d\t%d\t%v\t%v\t%v\t%.1f KiB\t%.1f KiB\t%d\t%v\t%v\t\n", r.clients, len(r.lat), pct(r.lat, 0.5), pct(r.lat, 0.99), pct(r.lat, 1),
			r.rssPerClient/1024, r.heapPerClient/1024, r.bytesPerWrite, r.serverCPU.Round(time.Millisecond), r.clientCPU.Round(time.Millisecond))
	}
	w.Flush()
}

type row struct {
	serverCPU, clientCPU time.Duration // per write, all clients
	clients              int
	lat                  []time.Duration
	rssPerClient         float64
	heapPerClient        float64
	bytesPerWrite        int
}

func pct(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))].Round(100 * time.Microsecond)
}

// buildServer builds halo-server into a temporary directory.
func buildServer() (string, func(), error) {
	dir, err := os.MkdirTemp("", "halo-bench-")
	if err != nil {
		return "", nil, err
	}
	bin := filepath.Join(dir, "halo-server")
	cmd := exec.Command("go", "build", "-o", bin, "./server/cmd/halo-server")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("build halo-server (run from the repository root): %w", err)
	}
	return bin, func() { os.RemoveAll(dir) }, nil
}

// server is a halo-server process.
type server struct {
	cmd      *exec.Cmd
	addr     string
	metrics  string
	dir      string
	done     chan struct{}
	waitOnce sync.Once
}

func startServer(bin string) (*server, error) {
	dir, err := os.MkdirTemp("", "halo-bench-data-")
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--data-dir", dir, "--log-format", "json", "--pprof")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &server{cmd: cmd, dir: dir, done: make(chan struct{})}
	lines := bufio.NewScanner(stderr)
	for lines.Scan() {
		var m map[string]any
		if json.Unmarshal(lines.Bytes(), &m) == nil && m["msg"] == "serving" {
			s.addr, _ = m["address"].(string)
			s.metrics, _ = m["metrics"].(string)
			break
		}
	}
	if s.addr == "" {
		s.stop()
		return nil, fmt.Errorf("halo-server did not start")
	}
	go func() { _, _ = io.Copy(io.Discard, stderr); close(s.done) }()
	return s, nil
}

func (s *server) stop() {
	s.waitOnce.Do(func() {
		_ = s.cmd.Process.Signal(os.Interrupt)
		_ = s.cmd.Wait()
		os.RemoveAll(s.dir)
	})
}

// cpu is the server's CPU time so far.
func (s *server) cpu() (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond, nil // USER_HZ = 100
}

// selfCPU is this process's CPU time so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// rss is the server's resident memory in bytes.
func (s *server) rss() (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseFloat(f[1], 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no VmRSS")
}

func run(bin string, n, writes int, delta bool) (row, error) {
	r := row{clients: n}
	s, err := startServer(bin)
	if err != nil {
		return r, err
	}
	defer s.stop()
	ctx, cancelCause := context.WithCancelCause(context.Background())
	cancel := func() { cancelCause(nil) }
	defer cancel()
	admin, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return r, err
	}
	defer admin.Close()
	tc := halov1.NewTopologyServiceClient(admin)
	if _, err := tc.PutCluster(ctx, &halov1.PutClusterRequest{Cluster: &halov1.Cluster{Name: "bench"}}); err != nil {
		return r, err
	}
	master := func(i int) *halov1.Node {
		return &halov1.Node{Cluster: "bench", Name: fmt.Sprintf("master-%d", i), Ip: fmt.Sprintf("10.0.0.%d", i+1), Ordinal: int32(i),
			Roles: []halov1.Role{halov1.Role_ROLE_CONTROL_PLANE, halov1.Role_ROLE_ETCD}}
	}
	for i := range 3 {
		if _, err := tc.PutNode(ctx, &halov1.PutNodeRequest{Node: master(i)}); err != nil {
			return r, err
		}
	}
	// Register the workers, 16 at a time.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for i := range n {
		g.Go(func() error {
			_, err := tc.PutNode(gctx, &halov1.PutNodeRequest{Node: &halov1.Node{Cluster: "bench", Name: fmt.Sprintf("worker-%05d", i),
				Ip: fmt.Sprintf("10.%d.%d.%d", 1+i/65536, (i/256)%256, i%256), Roles: []halov1.Role{halov1.Role_ROLE_WORKER}}})
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return r, fmt.Errorf("register workers: %w", err)
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
	var runs sync.WaitGroup
	defer func() {
		cancel()
		runs.Wait()
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	has := func(endpoints int) func(c *adstest.Client) bool {
		return func(c *adstest.Client) bool {
			cla := &endpointv3.ClusterLoadAssignment{}
			return c.Resource(resource.EndpointType, "kube-apiserver", cla) && len(cla.GetEndpoints()) == 1 &&
				len(cla.GetEndpoints()[0].GetLbEndpoints()) == endpoints
		}
	}
	dialG, _ := errgroup.WithContext(ctx)
	dialG.SetLimit(200)
	for i := range n {
		dialG.Go(func() error {
			conn, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
				grpc.WithReadBufferSize(4096), grpc.WithWriteBufferSize(4096),
				// As the agent: fixed windows, no BDP pings.
				grpc.WithInitialWindowSize(1<<20), grpc.WithInitialConnWindowSize(1<<20))
			if err != nil {
				return err
			}
			conns[i] = conn
			c := &adstest.Client{Node: &corev3.Node{Cluster: "bench", Id: fmt.Sprintf("worker-%05d", i)}, Delta: delta}
			clients[i] = c
			runs.Add(1)
			go func() {
				defer runs.Done()
				if err := c.Run(ctx, conn); err != nil && ctx.Err() == nil {
					cancelCause(fmt.Errorf("client %s: %w", c.Node.GetId(), err)) // fail the run, not hang it
				}
			}()
			wctx, wcancel := context.WithTimeout(ctx, 5*time.Minute)
			defer wcancel()
			return c.WaitFor(wctx, has(3))
		})
	}
	if err := dialG.Wait(); err != nil {
		return r, fmt.Errorf("connect clients: %w (cause: %v)", err, context.Cause(ctx))
	}
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
			_, err = tc.DeleteNode(ctx, &halov1.DeleteNodeRequest{Cluster: "bench", Name: "master-3"})
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

// heapInuse reads go_memstats_heap_inuse_bytes from the server's metrics.
func heapInuse(addr string) (float64, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_memstats_heap_inuse_bytes "); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	return 0, fmt.Errorf("no go_memstats_heap_inuse_bytes in %s/metrics", addr)
}

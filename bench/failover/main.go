// Command failover measures what clients of the apiserver see when a
// master hangs or dies, through halo-agent (with halo-server's central
// prober), HAProxy (the seed's listen section: check check-ssl verify none
// inter 10000) and nginx (Kubespray's nginx-proxy), in the same run, on
// one machine over loopback.
//
//	go run ./bench/failover            # 5 interleaved runs, ~25 minutes
//	go run ./bench/failover --quick    # 1 run, a 30s window, ~3 minutes
//
// Run it from the repository root (it builds halo-server and halo-agent),
// as root if HAProxy or nginx must be installed (apt-get).
//
// Each run, for each proxy and scenario, starts afresh: three fake
// apiservers (masters) in processes of their own on 127.0.1.1-3 sharing one
// port, and the proxy on 127.0.0.1 in front of them (for halo: halo-server
// on an embedded etcd with the default probe settings, 1s interval, 750ms
// timeout, rise 2, fall 2, and a halo-agent as a worker node). Then:
//
//   - 30 long-lived streams (--streams) through the proxy, like watches:
//     each reads a line every 100ms and, when its connection ends,
//     reconnects at once;
//   - a client (--clients loops) makes a new request every 10ms
//     (--every), each on a new TLS connection so that the proxy balances
//     every one, giving up after 10s (--request-timeout);
//   - after 2s, master-1 is hung (SIGSTOP: the kernel still completes TCP
//     handshakes, nothing answers, as with a hung or overloaded apiserver)
//     or killed (SIGKILL: connections are refused);
//   - the run ends when the streams that were on master-1 are back, no
//     request went wrong for --quiet, and --settle has passed; or after
//     --window (90s: HAProxy's check, a 10s timeout and 10s inter, needs
//     up to a minute to mark a hung master down).
//
// What it reports, per scenario, the median over runs (min–max):
//
//   - until: when the last request that went to master-1 was sent, after
//     the event. A request that went to the hung master never gets an
//     answer (the others answer in milliseconds), so these are the
//     requests that failed or stalled.
//   - failed: requests that ended with an error within --stall; stalled:
//     requests that took longer than --stall (1s), answered or not.
//   - streams: how long after the event the streams that were on master-1
//     got their first line over a new connection, the slowest of them;
//     "> window" when some never did.
//   - when the proxy's health check marked master-1 down: halo-server's
//     prober (ListBackends' since), HAProxy's check (its stats socket,
//     polled every 100ms); nginx-proxy has no active check.
//   - held: the TCP sockets the proxy's processes still hold to master-1 at
//     the end (from /proc): connections it never gave up.
//
// It also measures the probe load on the masters with halo for 10 and
// 1,000 nodes, beside what per-node proxies send by their settings.
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/halolb/halo/bench/internal/proxyproc"
	"github.com/halolb/halo/internal/pki"
)

const haloCol = "halo-agent"

var allProxies = []string{haloCol, proxyproc.HAProxy, proxyproc.Nginx}

type options struct {
	runs           int
	proxies        string
	scenarios      string
	window         time.Duration
	settle         time.Duration
	quiet          time.Duration
	warmup         time.Duration
	clients        int
	every          time.Duration
	streams        int
	requestTimeout time.Duration
	stall          time.Duration
	tick           time.Duration
	probeNodes     string
	probeFor       time.Duration
	skipMissing    bool
}

func main() {
	if spec := os.Getenv(masterEnv); spec != "" {
		if err := runMaster(spec); err != nil {
			fmt.Fprintln(os.Stderr, "master:", err)
			os.Exit(1)
		}
		return
	}
	var o options
	quick := flag.Bool("quick", false, "one run with a 30s window: a smoke run")
	flag.IntVar(&o.runs, "runs", 5, "interleaved runs; each figure is their median")
	flag.StringVar(&o.proxies, "proxies", strings.Join(allProxies, ","), "proxies to compare, comma-separated")
	flag.StringVar(&o.scenarios, "scenarios", "hang,kill", "what happens to master-1: hang (SIGSTOP), kill (SIGKILL)")
	flag.DurationVar(&o.window, "window", 90*time.Second, "the longest a scenario is watched after the event")
	flag.DurationVar(&o.settle, "settle", 10*time.Second, "the shortest a scenario is watched after the event")
	flag.DurationVar(&o.quiet, "quiet", 5*time.Second, "a scenario ends early once no request went wrong for this long (and the streams are back)")
	flag.DurationVar(&o.warmup, "warmup", 2*time.Second, "requests and streams run this long before the event")
	flag.IntVar(&o.clients, "clients", 1, "client loops, each making a new request every --every")
	flag.DurationVar(&o.every, "every", 10*time.Millisecond, "interval between a client loop's new requests")
	flag.IntVar(&o.streams, "streams", 30, "long-lived streams (watches)")
	flag.DurationVar(&o.requestTimeout, "request-timeout", 10*time.Second, "a client request gives up after this long")
	flag.DurationVar(&o.stall, "stall", time.Second, "a request slower than this is stalled")
	flag.DurationVar(&o.tick, "tick", 100*time.Millisecond, "interval between a stream's lines")
	flag.StringVar(&o.probeNodes, "probe-nodes", "10,1000", "node counts for which halo's probe load is measured")
	flag.DurationVar(&o.probeFor, "probe-for", 10*time.Second, "how long probes are counted for each node count")
	flag.BoolVar(&o.skipMissing, "skip-missing", false, "leave out HAProxy or nginx when missing instead of installing them")
	flag.Parse()
	if *quick {
		set := map[string]bool{}
		flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if !set["runs"] {
			o.runs = 1
		}
		if !set["window"] {
			o.window = 30 * time.Second
		}
		if !set["probe-for"] {
			o.probeFor = 5 * time.Second
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "failover:", err)
		os.Exit(1)
	}
}

// env is what every scenario shares.
type env struct {
	dir         string
	exe         string // this binary, re-executed as a master
	bins        haloBins
	certDir     string
	tlsCfg      *tls.Config
	ips         []string
	port        int
	unavailable map[string]string
}

// outcome is one scenario run's figures (seconds or counts; NaN: none).
type outcome map[string]float64

func run(ctx context.Context, o options, out io.Writer) error {
	if _, err := proxyproc.RaiseNoFile(); err != nil {
		return err
	}
	if o.runs < 1 || o.streams < 1 || o.clients < 1 || o.every <= 0 || o.window < o.settle {
		return fmt.Errorf("--runs, --streams, --clients and --every must be positive, --window at least --settle")
	}
	cols, err := proxyproc.Select(o.proxies, allProxies)
	if err != nil {
		return fmt.Errorf("--proxies: %w", err)
	}
	scenarios, err := proxyproc.Select(o.scenarios, []string{"hang", "kill"})
	if err != nil {
		return fmt.Errorf("--scenarios: %w", err)
	}
	var probeNodes []int
	for _, s := range strings.Split(o.probeNodes, ",") {
		var n int
		if _, err := fmt.Sscan(strings.TrimSpace(s), &n); err != nil || n < 4 {
			return fmt.Errorf("--probe-nodes: %q is not a node count of at least 4", s)
		}
		probeNodes = append(probeNodes, n)
	}

	dir, err := os.MkdirTemp("", "halo-bench-failover-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	e := &env{dir: dir, ips: []string{"127.0.1.1", "127.0.1.2", "127.0.1.3"}, unavailable: map[string]string{}}
	if e.exe, err = os.Executable(); err != nil {
		return err
	}
	if slices.Contains(cols, proxyproc.HAProxy) || slices.Contains(cols, proxyproc.Nginx) {
		for k, v := range proxyproc.EnsureInstalled(o.skipMissing) {
			e.unavailable[k] = v
		}
	}
	fmt.Fprintln(os.Stderr, "building halo-server and halo-agent")
	if e.bins, err = buildHalo(dir); err != nil {
		return err
	}
	ca, err := pki.NewCA("halo-bench-failover", 0)
	if err != nil {
		return err
	}
	var ips []net.IP
	for _, ip := range e.ips {
		ips = append(ips, net.ParseIP(ip))
	}
	cert, err := ca.Issue(pki.Request{CommonName: "kube-apiserver", DNSNames: []string{"kubernetes"}, IPs: ips, Server: true})
	if err != nil {
		return err
	}
	e.certDir = dir
	if _, _, err := cert.WriteFiles(dir, "master"); err != nil {
		return err
	}
	// Clients verify the masters' certificate by name, as kubelet does
	// through a local proxy (127.0.0.1 is in real apiservers' SANs; here
	// the name stands for it).
	e.tlsCfg = &tls.Config{RootCAs: ca.Pool(), ServerName: "kubernetes"}
	if e.port, err = sharedPort(e.ips); err != nil {
		return err
	}

	fmt.Fprintf(out, "# halo failover: a master hangs or dies, through halo-agent, HAProxy and nginx\n\n")
	fmt.Fprintf(out, "Command: `%s`\n\n", strings.Join(append([]string{"go run ./bench/failover"}, os.Args[1:]...), " "))
	fmt.Fprintf(out, "Machine: %s\n\n", machineInfo())
	fmt.Fprintf(out, "Settings: %d interleaved runs; %d client loops × a new TLS connection and request every %v (gives up after %v; stalled: > %v); "+
		"%d streams (a line every %v, reconnect at once); event after %v; watched %v–%v after it (ends early when the streams are back and nothing went wrong for %v).\n\n",
		o.runs, o.clients, o.every, o.requestTimeout, o.stall, o.streams, o.tick, o.warmup, o.settle, o.window, o.quiet)

	res := map[string]map[string][]outcome{} // scenario → proxy → runs
	for _, sc := range scenarios {
		res[sc] = map[string][]outcome{}
	}
	var notes []string
	for r := range o.runs {
		for _, sc := range scenarios {
			for _, col := range cols {
				if _, ok := e.unavailable[col]; ok {
					continue
				}
				if ctx.Err() != nil {
					return ctx.Err()
				}
				oc, err := runScenario(ctx, o, e, col, sc)
				if err != nil {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					notes = append(notes, fmt.Sprintf("run %d, %s, %s: %v", r+1, sc, col, err))
					fmt.Fprintf(os.Stderr, "[run %d/%d] %s %-10s: %v\n", r+1, o.runs, sc, col, err)
					continue
				}
				res[sc][col] = append(res[sc][col], oc)
				fmt.Fprintf(os.Stderr, "[run %d/%d] %s %-10s %s\n", r+1, o.runs, sc, col, oc)
			}
		}
	}
	for _, sc := range scenarios {
		renderScenario(out, sc, cols, res[sc], e.unavailable, o)
	}

	probes, err := measureProbes(ctx, o, e, probeNodes)
	if err != nil {
		notes = append(notes, "probe load: "+err.Error())
	}
	renderProbes(out, cols, probeNodes, probes, e.unavailable)
	for _, n := range notes {
		fmt.Fprintf(out, "- %s\n", n)
	}
	return nil
}

// sharedPort finds a port free on every one of ips.
func sharedPort(ips []string) (int, error) {
	for range 50 {
		l, err := net.Listen("tcp", net.JoinHostPort(ips[0], "0"))
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		ok := true
		for _, ip := range ips[1:] {
			l2, err := net.Listen("tcp", net.JoinHostPort(ip, fmt.Sprint(port)))
			if err != nil {
				ok = false
				break
			}
			l2.Close()
		}
		l.Close()
		if ok {
			return port, nil
		}
	}
	return 0, fmt.Errorf("no port free on all of %s", strings.Join(ips, ", "))
}

// setup starts the masters and makes a directory for a run, and finds a
// free address for the proxy; cleanup undoes it.
func (e *env) setup(o options, prefix string) (ms []*master, dir, listen string, cleanup func(), err error) {
	if ms, err = startMasters(e.exe, e.certDir, e.ips, e.port, o.tick); err != nil {
		return nil, "", "", nil, err
	}
	if dir, err = os.MkdirTemp(e.dir, prefix); err == nil {
		listen, err = proxyproc.FreePort()
	}
	cleanup = func() {
		stopMasters(ms)
		if dir != "" {
			os.RemoveAll(dir)
		}
	}
	if err != nil {
		cleanup()
		return nil, "", "", nil, err
	}
	return ms, dir, listen, cleanup, nil
}

// runScenario runs one scenario through one proxy.
func runScenario(ctx context.Context, o options, e *env, col, scenario string) (outcome, error) {
	ms, rdir, listen, cleanup, err := e.setup(o, "run-")
	if err != nil {
		return nil, err
	}
	defer cleanup()
	var backends []string
	for _, m := range ms {
		backends = append(backends, m.addr)
	}
	var h *halo
	var p *proxyproc.Proc
	switch col {
	case haloCol:
		if h, err = startHalo(ctx, e.bins, rdir, ms, e.port, listen); err != nil {
			return nil, err
		}
		defer h.stop()
		p = h.agent
	case proxyproc.HAProxy:
		if p, err = proxyproc.StartHAProxy(rdir, seedHAProxyConfig(listen, filepath.Join(rdir, "haproxy.sock"), backends), nil); err != nil {
			return nil, err
		}
		defer p.Stop()
	case proxyproc.Nginx:
		if p, err = proxyproc.StartNginx(proxyproc.NginxOptions{Listen: listen, Backends: backends, MaxConns: 4000, NoFile: 20000,
			Prefix: filepath.Join(rdir, "nginx")}, nil); err != nil {
			return nil, err
		}
		defer p.Stop()
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: e.tlsCfg, DisableKeepAlives: true}, Timeout: 2 * time.Second}
	defer hc.CloseIdleConnections()
	rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := p.WaitUntil(rctx, func() error { _, err := get(hc, "https://"+listen+"/whoami"); return err }); err != nil {
		return nil, fmt.Errorf("%s does not relay: %w; its output: %s", col, err, p.Output())
	}

	sctx, stopStreams := context.WithCancel(ctx)
	defer stopStreams()
	ss := startStreams(sctx, o.streams, listen, e.tlsCfg)
	defer ss.wait()
	defer stopStreams()
	var spread map[string]int
	if err := p.WaitUntil(rctx, func() error {
		var ok bool
		if spread, ok = ss.connected(o.tick * 5); !ok {
			return fmt.Errorf("streams not all connected: %v", spread)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	cctx, stopClients := context.WithCancel(ctx)
	defer stopClients()
	cl := &clients{addr: listen, tlsCfg: e.tlsCfg, every: o.every, timeout: o.requestTimeout}
	clientsDone := make(chan struct{})
	go func() { cl.run(cctx, o.clients); close(clientsDone) }()
	defer func() { stopClients(); <-clientsDone; cl.wait() }()
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(o.warmup):
	}

	victim := ms[0]
	t0 := time.Now()
	ss.markEvent(t0)
	sig := syscall.SIGSTOP
	if scenario == "kill" {
		sig = syscall.SIGKILL
	}
	if err := victim.proc.Signal(sig); err != nil {
		return nil, fmt.Errorf("signal %s: %w", victim.name, err)
	}
	// A killed master is gone when its process has been reaped (its
	// sockets closed); requests in flight on it before are cut off, which
	// no proxy can save.
	gone := t0
	if scenario == "kill" {
		select {
		case <-victim.proc.Done():
		case <-time.After(5 * time.Second):
		}
		gone = time.Now()
	}
	onVictim := spread[victim.name]
	fmt.Fprintf(os.Stderr, "%s %s: streams per master at the event: %v\n", scenario, col, spread)
	var marked time.Time
	var recs []reqRecord
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if h != nil && marked.IsZero() {
			marked = h.unhealthySince(ctx, victim.name)
		}
		if col == proxyproc.HAProxy && marked.IsZero() && haproxyDown(filepath.Join(rdir, "haproxy.sock"), "master1") {
			marked = time.Now()
		}
		now := time.Now()
		recs = cl.records()
		lastBad := lastBadStart(recs, now, o.stall)
		back := !slices.Contains(ss.onVictim(victim.name, t0), -1)
		if now.Sub(t0) >= o.window ||
			now.Sub(t0) >= o.settle && back && now.Sub(lastBad) >= o.quiet && (h == nil || !marked.IsZero() || scenario == "kill") {
			break
		}
	}
	end := time.Now()
	held, err := heldTo(p.Pid(), victim.addr)
	if err != nil {
		return nil, err
	}
	oc := outcome{"streams_on_victim": float64(onVictim), "watched": end.Sub(t0).Seconds(), "held": float64(held)}
	failed, cutOff, stalled := 0, 0, 0
	until := 0.0
	for _, r := range recs {
		if r.at.Before(t0.Add(-o.stall)) {
			continue // ended (at most one timeout) before the event could touch it
		}
		bad := false
		switch {
		case !r.done && end.Sub(r.at) > o.stall, r.done && r.dur > o.stall:
			stalled++
			bad = true
		case r.done && r.err != nil && r.at.Before(gone):
			cutOff++
			bad = true
		case r.done && r.err != nil:
			failed++
			bad = true
		}
		if bad {
			until = max(until, r.at.Sub(t0).Seconds())
		}
	}
	oc["failed"], oc["cut_off"], oc["stalled"], oc["until"] = float64(failed), float64(cutOff), float64(stalled), until
	rec := ss.onVictim(victim.name, t0)
	slowest, stuck := 0.0, 0
	for _, d := range rec {
		if d < 0 {
			stuck++
			continue
		}
		slowest = max(slowest, d.Seconds())
	}
	oc["streams_stuck"] = float64(stuck)
	if stuck > 0 {
		oc["streams_back"] = math.Inf(1)
	} else {
		oc["streams_back"] = slowest
	}
	if h != nil || col == proxyproc.HAProxy {
		if marked.IsZero() {
			oc["marked"] = math.Inf(1)
		} else {
			oc["marked"] = marked.Sub(t0).Seconds()
		}
	}
	return oc, nil
}

// lastBadStart is when the latest request that failed or stalled (or is
// stalling now) started; zero when none did.
func lastBadStart(recs []reqRecord, now time.Time, stall time.Duration) time.Time {
	var last time.Time
	for _, r := range recs {
		if (!r.done && now.Sub(r.at) > stall) || (r.done && (r.dur > stall || r.err != nil)) {
			if r.at.After(last) {
				last = r.at
			}
		}
	}
	return last
}

func (oc outcome) String() string {
	keys := make([]string, 0, len(oc))
	for k := range oc {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%.3g", k, oc[k])
	}
	return strings.TrimSpace(b.String())
}

// seedHAProxyConfig is the seed's listen section, verbatim but for the
// addresses, under Debian's packaged global and defaults sections (the seed
// shows none; timeout connect 5s) but for maxconn 4000, Kubespray's own
// HAProxy template's, with a stats socket through which the bench sees when
// HAProxy marks a server down.
func seedHAProxyConfig(listen, statsSocket string, backends []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `global
    maxconn 4000
    stats socket %s

defaults
    mode tcp
    timeout connect 5s
    timeout client 50s
    timeout server 50s

listen kubernetes-apiserver-https
  bind %s
  mode tcp
  option log-health-checks
  timeout client 3h
  timeout server 3h
`, statsSocket, listen)
	for i, be := range backends {
		fmt.Fprintf(&b, "  server master%d %s check check-ssl verify none inter 10000\n", i+1, be)
	}
	b.WriteString("  balance roundrobin\n")
	return b.String()
}

func machineInfo() string {
	parts := []string{fmt.Sprintf("%d CPUs", numCPU())}
	parts = append(parts, proxyproc.Version("haproxy", "-v"), proxyproc.Version("nginx", "-v"))
	if rev := strings.TrimSpace(proxyproc.Version("git", "rev-parse", "--short", "HEAD")); rev != "unavailable" {
		parts = append(parts, "halo "+rev)
	}
	return strings.Join(parts, "; ")
}

func numCPU() int { return runtime.NumCPU() }

// haproxyDown asks HAProxy's stats socket whether server is DOWN.
func haproxyDown(socket, server string) bool {
	c, err := net.DialTimeout("unix", socket, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := io.WriteString(c, "show stat\n"); err != nil {
		return false
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return false
	}
	// CSV: pxname,svname,...,status (the 18th field),...
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Split(line, ",")
		if len(f) > 17 && f[1] == server {
			return strings.HasPrefix(f[17], "DOWN")
		}
	}
	return false
}

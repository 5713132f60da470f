// Command dataplane compares the per-node apiserver proxies on one machine,
// over loopback, in front of the same three TLS backends: no proxy
// (direct), halo-agent, HAProxy (the seed's mode tcp listen section) and
// nginx's stream module (Kubespray's nginx-proxy). For each it measures bulk
// throughput, keep-alive small requests, new TLS connections per second,
// and memory and open files idle, under load and per held idle connection.
// It does this in two layouts: unpinned, and the proxy alone on CPU 1
// (started under taskset) with the load generator and the backends on CPU 0.
// Every figure is the median of interleaved runs (run 1: direct,
// halo-agent, HAProxy, nginx; run 2: ...), with min and max; each run
// starts the proxy afresh. It prints one markdown table per layout.
//
//	go run ./bench/dataplane                 # 5 runs, both layouts, ~10 minutes
//	go run ./bench/dataplane --quick         # a ~1-minute smoke run
//
// Run it from the repository root (it builds ./agent/cmd/halo-agent), as
// root if HAProxy or nginx must be installed (apt-get; --skip-missing to
// leave them out instead).
//
// How each figure is measured:
//
//   - The backends run in a child process (this binary re-executed), so
//     their CPU and sockets are not the load generator's; see backends.go
//     for the protocols one port speaks. The load generator is this process.
//   - Proxy CPU is utime+stime from /proc/<pid>/stat (plus reaped
//     children's), summed over the process tree (nginx: master + workers),
//     read just before and after a phase. The kernel samples it at each tick
//     (250 Hz here), so short phases carry a few per cent of noise.
//   - Memory is VmRSS, RssAnon, RssFile from /proc/<pid>/status and Pss from
//     /proc/<pid>/smaps_rollup, summed over the tree (RSS counts pages
//     shared between nginx's processes once per process; Pss does not).
//     Open files are the entries of /proc/<pid>/fd, summed likewise.
//   - idle: after 8 echo connections came and went, 0.5s later.
//   - keep-alive: --conns plain connections (backends round robin when
//     direct), each sending a 100-byte request and reading the 100-byte echo
//     in a loop, for --duration after 200 warm-up round trips; req/s, p50/p99
//     of every round trip, proxy CPU per request, RSS sampled halfway and at
//     the end (the larger).
//   - held idle connections: on the same fresh proxy, right after
//     keep-alive, open connections (each one echo round trip, so the proxy
//     connected through and relayed both ways) up to 1,000 and then up to
//     the most that fit the 20,000-file limit (2 sockets per connection in
//     the proxy, 1,000 spare); 0.5s after each step, (RSS - RSS before) / N
//     and (fds - fds before) / N. Then all are closed.
//   - bulk: one plain connection; the backend sends --bulk-mib MiB
//     (apiserver → client, the direction of LIST and WATCH); MB/s from the
//     request to the last byte, proxy CPU seconds per GiB; after a 64 MiB
//     warm-up.
//   - new TLS connections: --workers loops of dial, TLS 1.3 full handshake
//     (X25519, ECDSA P-256 certificate verified against the bench CA, no
//     resumption), one 100-byte request and answer, close; for --duration.
//   - other processes' CPU: the machine's busy time (/proc/stat) minus this
//     process's, the backends' and the proxy's, during the run. Before each
//     run the bench waits (--quiet-wait) for other processes to calm down.
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/halolb/halo/bench/internal/proxyproc"
	"github.com/halolb/halo/bench/internal/summary"
	"github.com/halolb/halo/internal/pki"
)

func main() {
	if dir := os.Getenv(childEnv); dir != "" {
		if err := runBackendChild(dir); err != nil {
			fmt.Fprintln(os.Stderr, "backends:", err)
			os.Exit(1)
		}
		return
	}
	var o options
	flag.IntVar(&o.runs, "runs", 5, "interleaved runs per layout; each figure is their median (min–max)")
	flag.DurationVar(&o.duration, "duration", 3*time.Second, "length of the keep-alive and the new-connection phases")
	flag.Int64Var(&o.bulkMiB, "bulk-mib", 2048, "MiB streamed through one connection in the bulk phase")
	flag.StringVar(&o.layouts, "layout", "unpinned,pinned", "layouts: unpinned, pinned (proxy on CPU 1, everything else on CPU 0)")
	flag.StringVar(&o.proxies, "proxies", "direct,halo-agent,haproxy,nginx", "columns to measure")
	flag.IntVar(&o.conns, "conns", 16, "keep-alive connections")
	flag.IntVar(&o.workers, "workers", 8, "concurrent new-TLS-connection workers")
	flag.IntVar(&o.idleMax, "idle-max", 0, "most held idle connections (0: the most that fit the open-files limit)")
	flag.BoolVar(&o.quick, "quick", false, "smoke run: 1 run, 1s phases, 256 MiB bulk, 3,000 held connections, 5s quiet wait")
	flag.BoolVar(&o.skipMissing, "skip-missing", false, "do not apt-get install a missing HAProxy or nginx; leave its column out")
	flag.BoolVar(&o.haproxyChecks, "haproxy-checks", false, "give HAProxy the seed's TLS health checks (check check-ssl verify none inter 10000)")
	flag.BoolVar(&o.pq, "pq", false, "offer Go's default post-quantum key exchange (X25519MLKEM768) instead of X25519 alone")
	flag.DurationVar(&o.quietWait, "quiet-wait", 30*time.Second, "before each measurement, wait at most this long for other processes to use under 20% of a CPU (0: do not wait)")
	flag.StringVar(&o.agentBin, "agent-bin", "", "a halo-agent binary to use instead of building ./agent/cmd/halo-agent")
	flag.Parse()
	if o.quick {
		set := map[string]bool{}
		flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if !set["runs"] {
			o.runs = 1
		}
		if !set["duration"] {
			o.duration = time.Second
		}
		if !set["bulk-mib"] {
			o.bulkMiB = 256
		}
		if !set["idle-max"] {
			o.idleMax = 3000
		}
		if !set["quiet-wait"] {
			o.quietWait = 5 * time.Second
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		stop()
		os.Exit(1)
	}
}

// options are the command-line flags.
type options struct {
	runs                                  int
	duration, quietWait                   time.Duration
	bulkMiB                               int64
	layouts, proxies, agentBin            string
	conns, workers, idleMax               int
	quick, skipMissing, haproxyChecks, pq bool
}

// results holds, per column and metric, one figure per run.
type results map[string]map[string][]float64

func (r results) add(col string, m map[string]float64) {
	if r[col] == nil {
		r[col] = map[string][]float64{}
	}
	for k, v := range m {
		if !math.IsNaN(v) && !math.IsInf(v, 0) {
			r[col][k] = append(r[col][k], v)
		}
	}
}

func run(ctx context.Context, o options, out io.Writer) error {
	hard, err := proxyproc.RaiseNoFile()
	if err != nil {
		return err
	}
	if o.runs < 1 || o.duration <= 0 || o.bulkMiB < 1 || o.conns < 1 || o.workers < 1 {
		return fmt.Errorf("--runs, --duration, --bulk-mib, --conns and --workers must be positive")
	}
	// The proxy holds two sockets per held connection and needs a few files
	// of its own; keep 1,000 spare and round down to a hundred.
	fit := int(hard-1000) / 2 / 100 * 100
	if o.idleMax <= 0 || o.idleMax > fit {
		o.idleMax = fit
	}
	idleCounts := []int{1000, o.idleMax}
	if o.idleMax <= 1000 {
		idleCounts = []int{o.idleMax}
	}

	cols, err := proxyproc.Select(o.proxies, allProxies)
	if err != nil {
		return fmt.Errorf("--proxies: %w", err)
	}
	layouts, err := proxyproc.Select(o.layouts, []string{"unpinned", "pinned"})
	if err != nil {
		return fmt.Errorf("--layout: %w", err)
	}

	dir, err := os.MkdirTemp("", "halo-bench-dataplane-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	env := &proxyEnv{dir: dir, maxConns: o.idleMax, noFile: hard, haproxyChk: o.haproxyChecks, unavailable: map[string]string{}}
	if slices.Contains(cols, haproxy) || slices.Contains(cols, nginx) {
		for k, v := range proxyproc.EnsureInstalled(o.skipMissing) {
			env.unavailable[k] = v
		}
	}
	if slices.Contains(cols, agent) {
		env.agentBin = o.agentBin
		if env.agentBin == "" {
			fmt.Fprintln(os.Stderr, "building halo-agent")
			if env.agentBin, err = proxyproc.Build(dir, "./agent/cmd/halo-agent"); err != nil {
				env.unavailable[agent] = err.Error()
			}
		}
	}

	ca, err := pki.NewCA("halo-bench-dataplane", 0)
	if err != nil {
		return err
	}
	cert, err := ca.Issue(pki.Request{CommonName: "kube-apiserver", DNSNames: []string{"localhost"}, IPs: loopbackIPs(), Server: true})
	if err != nil {
		return err
	}
	if _, _, err := cert.WriteFiles(dir, "backend"); err != nil {
		return err
	}
	tlsCfg := clientTLS(ca, o.pq)

	fmt.Fprintf(out, "# halo data plane: direct vs halo-agent vs HAProxy vs nginx\n\n")
	fmt.Fprintf(out, "Command: `%s`\n\n", strings.Join(append([]string{"go run ./bench/dataplane"}, os.Args[1:]...), " "))
	fmt.Fprintf(out, "Machine: %s\n\n", machineInfo(env))
	fmt.Fprintf(out, "Settings: %d interleaved runs per layout; bulk %d MiB over 1 connection; keep-alive %d connections × %v; "+
		"new TLS connections %d workers × %v; held idle connections %s; open-files limit %d per process.\n\n",
		o.runs, o.bulkMiB, o.conns, o.duration, o.workers, o.duration, joinInts(idleCounts), hard)

	for _, layout := range layouts {
		var proxyCPUs, genCPUs []int
		desc := fmt.Sprintf("proxy, load generator and backends share all %d CPUs", numCPU())
		if layout == "pinned" {
			if numCPU() < 2 {
				fmt.Fprintf(out, "## pinned\n\nSkipped: this machine has one CPU.\n\n")
				continue
			}
			proxyCPUs, genCPUs = []int{1}, []int{0}
			desc = "the proxy alone on CPU 1 (started under taskset -c 1); load generator and backends on CPU 0"
		}
		res, notes, err := runLayout(ctx, o, env, cols, layout, proxyCPUs, genCPUs, idleCounts, tlsCfg)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "## %s: %s\n\n", layout, desc)
		renderTable(out, cols, metricDefs(o, idleCounts), res, env.unavailable)
		for _, n := range notes {
			fmt.Fprintf(out, "- %s\n", n)
		}
		fmt.Fprintln(out)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return nil
}

// runLayout runs o.runs interleaved rounds of every column in one layout.
func runLayout(ctx context.Context, o options, env *proxyEnv, cols []string, layout string, proxyCPUs, genCPUs []int, idleCounts []int, tlsCfg *tls.Config) (results, []string, error) {
	if genCPUs != nil {
		if err := setAffinity(os.Getpid(), genCPUs); err != nil {
			return nil, nil, err
		}
		runtime.GOMAXPROCS(len(genCPUs))
		defer func() {
			_ = setAffinity(os.Getpid(), nil)
			runtime.SetDefaultGOMAXPROCS()
		}()
	}
	be, err := startBackends(env.dir, genCPUs)
	if err != nil {
		return nil, nil, err
	}
	defer be.stop()
	env.backends = be.addrs
	cfg := runConfig{
		bulkBytes: o.bulkMiB * mib, duration: o.duration, kaConns: o.conns, ncWorkers: o.workers,
		idleCounts: idleCounts, tls: tlsCfg, backendsPID: be.pid(),
	}
	res := results{}
	var notes []string
	for r := range o.runs {
		for _, col := range cols {
			if ctx.Err() != nil {
				return res, append(notes, "interrupted"), nil
			}
			if _, ok := env.unavailable[col]; ok {
				continue
			}
			if o.quietWait > 0 {
				waitQuiet(ctx, be.pid(), 20, o.quietWait)
			}
			m, err := func() (map[string]float64, error) {
				if col == direct {
					return measureOne(ctx, cfg, nil, be.addrs)
				}
				p, err := startProxy(ctx, col, env, proxyCPUs)
				if err != nil {
					return nil, err
				}
				defer p.stop()
				return measureOne(ctx, cfg, p, be.addrs)
			}()
			if err != nil {
				if ctx.Err() != nil {
					return res, append(notes, "interrupted"), nil
				}
				notes = append(notes, fmt.Sprintf("%s run %d: %s: %v", layout, r+1, col, err))
				fmt.Fprintf(os.Stderr, "[%s run %d/%d] %s: %v\n", layout, r+1, o.runs, col, err)
				continue
			}
			res.add(col, m)
			fmt.Fprintf(os.Stderr, "[%s run %d/%d] %-10s bulk %5.0f MB/s  keep-alive %6.0f req/s p99 %4.0fµs  new TLS %5.0f/s  proxy CPU %5.1f µs/req %4.0f µs/conn  idle RSS %5.1f MiB  %.2f KiB/conn\n",
				layout, r+1, o.runs, col, m["bulk_mbps"], m["ka_rps"], m["ka_p99"], m["nc_cps"], m["ka_cpu"], m["nc_cpu"], m["idle_rss"], m[fmt.Sprintf("conn_rss_%d", len(idleCounts)-1)])
		}
	}
	return res, notes, nil
}

// verdict is a target's outcome.
type verdict int

const (
	noTarget verdict = iota
	pass
	miss
	unknown
)

func (v verdict) String() string {
	return [...]string{"", "PASS", "MISS", "n/a"}[v]
}

// metricDef is one row of the table.
type metricDef struct {
	key, label string
	prec       int  // decimals shown
	proxyOnly  bool // no figure for direct
	noRatio    bool // ratios mean nothing
	// target, if set, names the reference the agent must reach and judges
	// it from the columns' medians.
	target string
	judge  func(med func(col string) (float64, bool)) verdict
}

// atLeast and atMost judge the agent's median against a reference.
func atLeast(ref func(med func(string) (float64, bool)) (float64, bool)) func(func(string) (float64, bool)) verdict {
	return compare(ref, func(a, r float64) bool { return a >= r })
}

func atMost(ref func(med func(string) (float64, bool)) (float64, bool)) func(func(string) (float64, bool)) verdict {
	return compare(ref, func(a, r float64) bool { return a <= r })
}

func compare(ref func(med func(string) (float64, bool)) (float64, bool), ok func(a, r float64) bool) func(func(string) (float64, bool)) verdict {
	return func(med func(string) (float64, bool)) verdict {
		a, okA := med(agent)
		r, okR := ref(med)
		if !okA || !okR {
			return unknown
		}
		if ok(a, r) {
			return pass
		}
		return miss
	}
}

func col(name string) func(func(string) (float64, bool)) (float64, bool) {
	return func(med func(string) (float64, bool)) (float64, bool) { return med(name) }
}

func constant(v float64) func(func(string) (float64, bool)) (float64, bool) {
	return func(func(string) (float64, bool)) (float64, bool) { return v, true }
}

// metricDefs lists the table's rows.
func metricDefs(o options, idleCounts []int) []metricDef {
	maxOf := func(a, b string) func(func(string) (float64, bool)) (float64, bool) {
		return func(med func(string) (float64, bool)) (float64, bool) {
			x, okX := med(a)
			y, okY := med(b)
			if !okX || !okY {
				return 0, false
			}
			return max(x, y), true
		}
	}
	defs := []metricDef{
		{key: "bulk_mbps", label: "bulk MB/s (1 conn, backend→client)", target: "≥ HAProxy", judge: atLeast(col(haproxy))},
		{key: "bulk_cpu", label: "bulk: proxy CPU s/GiB", prec: 2, proxyOnly: true},
		{key: "ka_rps", label: fmt.Sprintf("keep-alive req/s (%d conns, %d B each way)", o.conns, msgSize), target: "≥ max(HAProxy, nginx)", judge: atLeast(maxOf(haproxy, nginx))},
		{key: "ka_p50", label: "keep-alive p50 µs"},
		{key: "ka_p99", label: "keep-alive p99 µs", target: "≤ HAProxy", judge: atMost(col(haproxy))},
		{key: "ka_cpu", label: "keep-alive: proxy CPU µs/req", prec: 1, proxyOnly: true},
		{key: "ka_gen_cpu", label: "keep-alive: client+backends CPU µs/req", prec: 1},
		{key: "nc_cps", label: fmt.Sprintf("new TLS conns/s (%d workers)", o.workers), target: "≥ HAProxy", judge: atLeast(col(haproxy))},
		{key: "nc_cpu", label: "new TLS conn: proxy CPU µs/conn", proxyOnly: true, target: "≤ nginx", judge: atMost(col(nginx))},
		{key: "nc_gen_cpu", label: "new TLS conn: client+backends CPU µs/conn"},
		{key: "others_cpu", label: "other processes' CPU during the run, % of one CPU", noRatio: true},
		{key: "idle_rss", label: "idle RSS MiB", prec: 1, proxyOnly: true, target: "≤ 20 MiB", judge: atMost(constant(20))},
		{key: "idle_anon", label: "idle RssAnon MiB", prec: 1, proxyOnly: true, target: "≤ 10 MiB", judge: atMost(constant(10))},
		{key: "idle_file", label: "idle RssFile MiB", prec: 1, proxyOnly: true},
		{key: "idle_pss", label: "idle Pss MiB", prec: 1, proxyOnly: true},
		{key: "loaded_rss", label: "RSS under keep-alive load MiB", prec: 1, proxyOnly: true},
		{key: "bulk_rss", label: "RSS after the held conns closed and bulk MiB", prec: 1, proxyOnly: true},
		{key: "after_rss", label: "RSS idle again after the load MiB", prec: 1, proxyOnly: true},
		{key: "after_anon", label: "RssAnon idle again after the load MiB", prec: 1, proxyOnly: true},
	}
	for i, n := range idleCounts {
		defs = append(defs,
			metricDef{key: fmt.Sprintf("conn_rss_%d", i), label: fmt.Sprintf("RSS KiB per held idle conn (N=%s)", fmtNum(float64(n), 0)),
				prec: 2, proxyOnly: true, target: "≤ 8 KiB", judge: atMost(constant(8))},
			metricDef{key: fmt.Sprintf("conn_fds_%d", i), label: fmt.Sprintf("open fds per held idle conn (N=%s)", fmtNum(float64(n), 0)),
				prec: 2, proxyOnly: true, target: "≤ 2", judge: atMost(constant(2.005))})
	}
	return defs
}

// fmtNum formats v with prec decimals and thousands separators.
func fmtNum(v float64, prec int) string {
	s := strconv.FormatFloat(math.Abs(v), 'f', prec, 64)
	intPart, frac, _ := strings.Cut(s, ".")
	var b strings.Builder
	if v < 0 && strings.Trim(s, "0.") != "" {
		b.WriteByte('-')
	}
	for i, c := range intPart {
		if i > 0 && (len(intPart)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if frac != "" {
		b.WriteString("." + frac)
	}
	return b.String()
}

// renderTable prints one markdown table: a row per metric, a column per
// proxy ("median (min–max)"), the agent's ratios to HAProxy and to direct,
// the target and whether the agent reached it.
func renderTable(w io.Writer, cols []string, defs []metricDef, res results, unavailable map[string]string) {
	fmt.Fprintf(w, "| metric | %s | halo-agent ÷ HAProxy | halo-agent ÷ direct | target (halo-agent) | |\n", strings.Join(cols, " | "))
	fmt.Fprintf(w, "|---|%s---:|---:|---|---|\n", strings.Repeat("---:|", len(cols)))
	for _, d := range defs {
		med := func(c string) (float64, bool) {
			m, _, _, ok := summary.Of(res[c][d.key])
			return m, ok
		}
		cells := make([]string, 0, len(cols))
		for _, c := range cols {
			switch {
			case d.proxyOnly && c == direct:
				cells = append(cells, "—")
			case unavailable[c] != "":
				cells = append(cells, "unavailable")
			default:
				m, lo, hi, ok := summary.Of(res[c][d.key])
				if !ok {
					cells = append(cells, "no data")
				} else if len(res[c][d.key]) == 1 {
					cells = append(cells, fmtNum(m, d.prec))
				} else {
					cells = append(cells, fmt.Sprintf("%s (%s–%s)", fmtNum(m, d.prec), fmtNum(lo, d.prec), fmtNum(hi, d.prec)))
				}
			}
		}
		ratio := func(other string) string {
			if d.noRatio || d.proxyOnly && other == direct {
				return "—"
			}
			a, okA := med(agent)
			b, okB := med(other)
			if !okA || !okB || b == 0 {
				return "—"
			}
			return fmt.Sprintf("%.2f", a/b)
		}
		v := noTarget
		if d.judge != nil {
			v = d.judge(med)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", d.label, strings.Join(cells, " | "), ratio(haproxy), ratio(direct), d.target, v)
	}
	fmt.Fprintln(w)
	for _, c := range cols {
		if why := unavailable[c]; why != "" {
			fmt.Fprintf(w, "- %s: unavailable: %s\n", c, why)
		}
	}
}

// machineInfo describes the CPU, kernel and the proxies' versions.
func machineInfo(env *proxyEnv) string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel := "unknown"
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = strings.TrimSpace(string(b))
	}
	parts := []string{fmt.Sprintf("%s × %d CPUs", model, numCPU()), "Linux " + kernel, runtime.Version()}
	if env.unavailable[haproxy] == "" {
		parts = append(parts, proxyproc.Version("haproxy", "-v"))
	}
	if env.unavailable[nginx] == "" {
		parts = append(parts, proxyproc.Version("nginx", "-v"))
	}
	if env.unavailable[agent] == "" && env.agentBin != "" {
		rev := strings.TrimSpace(proxyproc.Version("git", "rev-parse", "--short", "HEAD"))
		if out, err := exec.Command("git", "status", "--porcelain", "agent", "internal").Output(); err == nil && len(out) > 0 {
			rev += " + uncommitted changes"
		}
		parts = append(parts, fmt.Sprintf("halo-agent %s (%s)", rev, filepath.Base(env.agentBin)))
	}
	return strings.Join(parts, "; ")
}

func joinInts(ns []int) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = fmtNum(float64(n), 0)
	}
	return strings.Join(s, " and ")
}

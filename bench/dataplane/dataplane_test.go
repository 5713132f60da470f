package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/halolb/halo/bench/internal/proxyproc"
	"github.com/halolb/halo/bench/internal/summary"
)

func TestParseStat(t *testing.T) {
	// The command name may hold spaces and parentheses.
	line := "4242 (nginx: worker (x) 1) S 4240 4240 4240 0 -1 4194624 120 0 0 0 731 229 5 7 20 0 1 0 123 1000 200 18446744073709551615\n"
	s, err := parseStat([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	want := procStat{ppid: 4240, utime: 731, stime: 229, cutime: 5, cstime: 7}
	if s != want {
		t.Fatalf("parseStat = %+v, want %+v", s, want)
	}
	for _, bad := range []string{"", "1 (x S 1", "1 (x) S 1 2 3"} {
		if _, err := parseStat([]byte(bad)); err == nil {
			t.Errorf("parseStat(%q): no error", bad)
		}
	}
}

func TestParseKBFields(t *testing.T) {
	status := "Name:\thaproxy\nVmRSS:\t   15000 kB\nRssAnon:\t    3800 kB\nRssFile:\t   11200 kB\nThreads:\t2\n"
	m := parseKBFields([]byte(status), "VmRSS", "RssAnon", "RssFile", "Missing")
	if m["VmRSS"] != 15000*1024 || m["RssAnon"] != 3800*1024 || m["RssFile"] != 11200*1024 {
		t.Fatalf("status: %v", m)
	}
	if _, ok := m["Missing"]; ok {
		t.Fatal("a missing field is present")
	}
	rollup := "55d0c0a00000-7ffd7a5fe000 ---p 00000000 00:00 0 [rollup]\nRss:               14868 kB\nPss:               12990 kB\nAnonymous:          3780 kB\n"
	if got := parseKBFields([]byte(rollup), "Pss")["Pss"]; got != 12990*1024 {
		t.Fatalf("Pss = %v", got)
	}
}

func TestParseCPUBusy(t *testing.T) {
	b := []byte("cpu  100 2 30 5000 7 1 4 5 0 0\ncpu0 50 1 15 2500 3 0 2 2 0 0\n")
	got, err := parseCPUBusy(b)
	if err != nil {
		t.Fatal(err)
	}
	if want := (100 + 2 + 30 + 1 + 4 + 5) * clockTick; got != want {
		t.Fatalf("busy = %v, want %v", got, want)
	}
	if _, err := parseCPUBusy([]byte("intr 1 2 3\n")); err == nil {
		t.Fatal("no error without a cpu line")
	}
}

func TestSummarize(t *testing.T) {
	for _, c := range []struct {
		in          []float64
		med, lo, hi float64
		ok          bool
	}{
		{nil, 0, 0, 0, false},
		{[]float64{3}, 3, 3, 3, true},
		{[]float64{5, 1, 3}, 3, 1, 5, true},
		{[]float64{4, 1, 3, 2}, 2.5, 1, 4, true},
		{[]float64{9, 7, 1, 8, 2}, 7, 1, 9, true},
	} {
		in := append([]float64(nil), c.in...)
		med, lo, hi, ok := summary.Of(c.in)
		if med != c.med || lo != c.lo || hi != c.hi || ok != c.ok {
			t.Errorf("summary.Of(%v) = %v %v %v %v, want %v %v %v %v", in, med, lo, hi, ok, c.med, c.lo, c.hi, c.ok)
		}
		for i := range in {
			if in[i] != c.in[i] {
				t.Fatalf("summarize changed its input")
			}
		}
	}
}

func TestFmtNum(t *testing.T) {
	for _, c := range []struct {
		v    float64
		prec int
		want string
	}{
		{0, 0, "0"}, {999, 0, "999"}, {1000, 0, "1,000"}, {41900.4, 0, "41,900"},
		{1234567.891, 2, "1,234,567.89"}, {-1234.5, 1, "-1,234.5"}, {3.3, 1, "3.3"}, {-0.001, 1, "0.0"},
	} {
		if got := fmtNum(c.v, c.prec); got != c.want {
			t.Errorf("fmtNum(%v, %d) = %q, want %q", c.v, c.prec, got, c.want)
		}
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i))
	}
	if p := percentile(d, 0.5); p != 50 {
		t.Errorf("p50 = %v", p)
	}
	if p := percentile(d, 0.99); p != 99 {
		t.Errorf("p99 = %v", p)
	}
	if p := percentile(nil, 0.5); p != 0 {
		t.Errorf("p50 of nothing = %v", p)
	}
}

func TestRenderTable(t *testing.T) {
	res := results{}
	for _, r := range []struct {
		col string
		m   map[string]float64
	}{
		{direct, map[string]float64{"bulk_mbps": 4000, "ka_rps": 100000, "ka_p99": 500}},
		{direct, map[string]float64{"bulk_mbps": 3000, "ka_rps": 90000, "ka_p99": 700}},
		{haproxy, map[string]float64{"bulk_mbps": 1100, "ka_rps": 40000, "ka_p99": 1000, "idle_rss": 14.8, "conn_fds_0": 2}},
		{haproxy, map[string]float64{"bulk_mbps": 1200, "ka_rps": 42000, "ka_p99": 1200, "idle_rss": 14.6, "conn_fds_0": 2}},
		{nginx, map[string]float64{"bulk_mbps": 1000, "ka_rps": 43000, "ka_p99": 900}},
		{agent, map[string]float64{"bulk_mbps": 1300, "ka_rps": 41000, "ka_p99": 800, "idle_rss": 25, "conn_fds_0": 2}},
	} {
		res.add(r.col, r.m)
	}
	defs := metricDefs(options{conns: 16, workers: 8}, []int{1000})
	var buf bytes.Buffer
	renderTable(&buf, allProxies, defs, res, nil)
	out := buf.String()
	row := func(prefix string) string {
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "| "+prefix) {
				return l
			}
		}
		t.Fatalf("no row %q in\n%s", prefix, out)
		return ""
	}
	if !strings.HasPrefix(out, "| metric | direct | halo-agent | HAProxy | nginx | halo-agent ÷ HAProxy | halo-agent ÷ direct |") {
		t.Errorf("header: %s", out)
	}
	if r := row("bulk MB/s"); !strings.Contains(r, "| 3,500 (3,000–4,000) | 1,300 | 1,150 (1,100–1,200) | 1,000 |") ||
		!strings.Contains(r, "| 1.13 | 0.37 |") || !strings.HasSuffix(r, "| PASS |") {
		t.Errorf("bulk row: %s", r)
	}
	if r := row("keep-alive req/s"); !strings.HasSuffix(r, "| MISS |") { // 41,000 < max(41,000, 43,000)
		t.Errorf("keep-alive row: %s", r)
	}
	if r := row("keep-alive p99"); !strings.HasSuffix(r, "| PASS |") {
		t.Errorf("p99 row: %s", r)
	}
	if r := row("idle RSS MiB"); !strings.HasPrefix(r, "| idle RSS MiB | — | 25.0 |") || !strings.HasSuffix(r, "| MISS |") {
		t.Errorf("idle RSS row: %s", r)
	}
	if r := row("open fds per held idle conn"); !strings.HasSuffix(r, "| PASS |") || !strings.Contains(r, "| no data |") {
		t.Errorf("fds row: %s", r)
	}
	if r := row("new TLS conn: proxy CPU"); !strings.HasSuffix(r, "| n/a |") {
		t.Errorf("a target without data is not n/a: %s", r)
	}

	buf.Reset()
	renderTable(&buf, allProxies, defs, res, map[string]string{agent: "go build: no such package"})
	if out := buf.String(); !strings.Contains(out, "| unavailable |") || !strings.Contains(out, "- halo-agent: unavailable: go build: no such package") {
		t.Errorf("unavailable agent:\n%s", out)
	}
}

func TestConfigs(t *testing.T) {
	be := []string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"}
	h := haproxyConfig("127.0.0.1:6443", be, 9500, 20000, false)
	for _, want := range []string{"mode tcp", "balance leastconn", "timeout client 3h", "timeout server 3h", "timeout connect 5s",
		"maxconn 9600", "ulimit-n 20000", "bind 127.0.0.1:6443", "server master3 127.0.0.1:3\n"} {
		if !strings.Contains(h, want) {
			t.Errorf("haproxy config lacks %q:\n%s", want, h)
		}
	}
	if h := haproxyConfig("127.0.0.1:6443", be, 9500, 20000, true); !strings.Contains(h, "server master1 127.0.0.1:1 check check-ssl verify none inter 10000") {
		t.Errorf("haproxy config with checks:\n%s", h)
	}
	n := proxyproc.NginxConfig(proxyproc.NginxOptions{Listen: "127.0.0.1:6443", Backends: be, MaxConns: 9500, NoFile: 20000, Prefix: "/tmp/x"})
	for _, want := range []string{"worker_processes 2;", "worker_rlimit_nofile 20000;", "worker_connections 19200;", "least_conn;",
		"proxy_timeout 10m;", "proxy_connect_timeout 1s;", "listen        127.0.0.1:6443;", "server 127.0.0.1:2;", "pid /tmp/x/nginx.pid;"} {
		if !strings.Contains(n, want) {
			t.Errorf("nginx config lacks %q:\n%s", want, n)
		}
	}
	if n := proxyproc.NginxConfig(proxyproc.NginxOptions{Listen: "127.0.0.1:6443", Backends: be, MaxConns: 1000, NoFile: 20000, Prefix: "/tmp/x"}); !strings.Contains(n, "worker_connections 16384;") {
		t.Errorf("nginx keeps Kubespray's 16384 when it is enough:\n%s", n)
	}
}

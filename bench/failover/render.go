package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/halolb/halo/bench/internal/summary"
)

// row is one line of a scenario's table.
type row struct {
	key, label string
	prec       int
}

func scenarioRows(scenario string) []row {
	ev := map[string]string{"hang": "the hang", "kill": "the kill"}[scenario]
	rows := []row{
		{"marked", "master-1 marked down (halo: prober; HAProxy: its check), s after " + ev, 1},
		{"until", "last new request sent to master-1, s after " + ev, 2},
		{"failed", "failed requests (sent after " + ev + ")", 0},
		{"stalled", "stalled requests (> 1 s)", 0},
		{"cut_off", "requests cut off in flight on master-1 by " + ev, 0},
		{"streams_on_victim", "streams on master-1", 0},
		{"streams_back", "those streams re-established elsewhere, s after " + ev + " (the slowest)", 1},
		{"streams_stuck", "those streams still stuck at the end", 0},
		{"held", "connections the proxy still holds to master-1 at the end", 0},
	}
	if scenario == "hang" { // nothing is cut off: the hung master never answers
		rows = slices.DeleteFunc(rows, func(r row) bool { return r.key == "cut_off" })
	}
	return rows
}

func fmtVal(v float64, prec int, window time.Duration) string {
	if math.IsInf(v, 1) {
		return fmt.Sprintf("> %.0f", window.Seconds())
	}
	return fmt.Sprintf("%.*f", prec, v)
}

func renderScenario(w io.Writer, scenario string, cols []string, res map[string][]outcome, unavailable map[string]string, o options) {
	title := map[string]string{"hang": "master-1 hangs (SIGSTOP: TCP connects, nothing answers)", "kill": "master-1 dies (SIGKILL: connections refused)"}[scenario]
	fmt.Fprintf(w, "## %s\n\n| | %s |\n|---|%s\n", title, strings.Join(cols, " | "), strings.Repeat("---|", len(cols)))
	for _, r := range scenarioRows(scenario) {
		cells := []string{r.label}
		for _, c := range cols {
			if why, ok := unavailable[c]; ok {
				cells = append(cells, "n/a ("+why+")")
				continue
			}
			var vs []float64
			for _, oc := range res[c] {
				if v, ok := oc[r.key]; ok {
					vs = append(vs, v)
				}
			}
			med, lo, hi, ok := summary.Of(vs)
			switch {
			case !ok && r.key == "marked":
				cells = append(cells, "— (no active check)")
			case !ok:
				cells = append(cells, "—")
			case lo == hi:
				cells = append(cells, fmtVal(med, r.prec, o.window))
			default:
				cells = append(cells, fmt.Sprintf("%s (%s–%s)", fmtVal(med, r.prec, o.window), fmtVal(lo, r.prec, o.window), fmtVal(hi, r.prec, o.window)))
			}
		}
		fmt.Fprintf(w, "| %s |\n", strings.Join(cells, " | "))
	}
	fmt.Fprintf(w, "\nMedian (min–max) of %d runs. \"> %.0f\": not within the %.0f s watched.\n\n", len(res[cols[0]]), o.window.Seconds(), o.window.Seconds())
}

// measureProbes counts the /readyz requests the masters receive from
// halo-server's prober over o.probeFor, with each node count registered
// (the masters and the rest workers; one halo-agent connected). Agents
// send no probes: they have no active health check.
func measureProbes(ctx context.Context, o options, e *env, counts []int) (map[int]float64, error) {
	ms, rdir, listen, cleanup, err := e.setup(o, "probes-")
	if err != nil {
		return nil, err
	}
	defer cleanup()
	h, err := startHalo(ctx, e.bins, rdir, ms, e.port, listen)
	if err != nil {
		return nil, err
	}
	defer h.stop()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: e.tlsCfg}, Timeout: 2 * time.Second}
	defer hc.CloseIdleConnections()
	total := func() (int64, error) {
		var n int64
		for _, m := range ms {
			s, err := m.stats(hc)
			if err != nil {
				return 0, err
			}
			n += s.Readyz
		}
		return n, nil
	}
	out := map[int]float64{}
	for _, n := range counts {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		err := h.putWorkers(pctx, n-len(ms))
		cancel()
		if err != nil {
			return out, err
		}
		before, err := total()
		if err != nil {
			return out, err
		}
		start := time.Now()
		select {
		case <-ctx.Done():
			return out, ctx.Err()
		case <-time.After(o.probeFor):
		}
		after, err := total()
		if err != nil {
			return out, err
		}
		out[n] = float64(after-before) / time.Since(start).Seconds()
		fmt.Fprintf(os.Stderr, "probe load, %d nodes: %.2f probes/s\n", n, out[n])
	}
	return out, nil
}

func renderProbes(w io.Writer, cols []string, counts []int, halo map[int]float64, unavailable map[string]string) {
	const masters = 3
	fmt.Fprintf(w, "## Probes per second hitting the %d masters\n\n", masters)
	fmt.Fprintf(w, "| nodes | halo (measured) | HAProxy per node, seed's inter 10 s (computed) | HAProxy per node at halo's 1 s (computed) | nginx-proxy |\n|---|---|---|---|---|\n")
	for _, n := range counts {
		h := "—"
		if v, ok := halo[n]; ok {
			h = fmt.Sprintf("%.1f", v)
		}
		workers := n - masters // the proxies run on the nodes that are not masters
		fmt.Fprintf(w, "| %d | %s | %.1f | %.0f | 0 (no active checks) |\n", n, h, float64(workers*masters)/10, float64(workers*masters)/1)
	}
	fmt.Fprintf(w, "\nhalo: one replica probes each master's /readyz every interval (1 s), whatever the node count. "+
		"Per-node proxies probe every master from every node that is not a master: HAProxy's check-ssl opens a TLS connection to each master every inter (10 s); nginx-proxy has no active check at all.\n\n")
}

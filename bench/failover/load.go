package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
)

// reqRecord is one client request: when it started, how long it took, and
// who answered it.
type reqRecord struct {
	at     time.Time
	dur    time.Duration // until the answer or the error
	master string        // empty when it failed
	err    error
	done   bool // false: still open when the scenario ended
}

// clients make a new request every --every from each of --clients loops,
// each on a new TLS connection (DisableKeepAlives), so that the proxy
// balances every request; a request gives up after --request-timeout, as
// kubelet's do.
type clients struct {
	addr    string
	tlsCfg  *tls.Config
	every   time.Duration
	timeout time.Duration

	mu   sync.Mutex
	recs []*reqRecord
	wg   sync.WaitGroup
}

func (c *clients) run(ctx context.Context, loops int) {
	tr := &http.Transport{TLSClientConfig: c.tlsCfg, DisableKeepAlives: true, MaxIdleConnsPerHost: -1}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: c.timeout}
	var lw sync.WaitGroup
	for range loops {
		lw.Add(1)
		go func() {
			defer lw.Done()
			t := time.NewTicker(c.every)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				r := &reqRecord{at: time.Now()}
				c.mu.Lock()
				c.recs = append(c.recs, r)
				c.mu.Unlock()
				c.wg.Add(1)
				go func() {
					defer c.wg.Done()
					master, err := get(hc, "https://"+c.addr+"/whoami")
					c.mu.Lock()
					defer c.mu.Unlock()
					r.dur = time.Since(r.at)
					r.master, r.err, r.done = master, err, true
				}()
			}
		}()
	}
	lw.Wait()
}

// wait waits for the requests in flight (each ends within the timeout).
func (c *clients) wait() { c.wg.Wait() }

// records returns a copy of the requests so far.
func (c *clients) records() []reqRecord {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]reqRecord, len(c.recs))
	for i, r := range c.recs {
		out[i] = *r
	}
	return out
}

func get(hc *http.Client, url string) (string, error) {
	resp, err := hc.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// stream is one long-lived watch: it reads lines and, when its connection
// ends, reconnects at once (10ms after a failed attempt), as a reflector
// re-establishes a watch.
type stream struct {
	mu       sync.Mutex
	master   string    // who serves it now; "" between connections
	last     time.Time // the last line's arrival
	eventAt  time.Time // when the event happened (zero before)
	atEvent  string    // who served it then
	recovery time.Time // the first line from a new connection after the event
}

func (s *stream) run(ctx context.Context, hc *http.Client, url string) {
	for ctx.Err() == nil {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := hc.Do(req)
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		sc := bufio.NewScanner(resp.Body)
		first := true
		for sc.Scan() {
			name, _, _ := strings.Cut(sc.Text(), " ")
			now := time.Now()
			s.mu.Lock()
			s.master, s.last = name, now
			if first {
				if !s.eventAt.IsZero() && s.recovery.IsZero() && s.atEvent != "" {
					s.recovery = now
				}
				first = false
			}
			s.mu.Unlock()
		}
		resp.Body.Close()
		s.mu.Lock()
		s.master = ""
		s.mu.Unlock()
	}
}

// streams are the --streams long-lived watches.
type streams struct {
	all []*stream
	wg  sync.WaitGroup
	tr  *http.Transport
}

func startStreams(ctx context.Context, n int, addr string, tlsCfg *tls.Config) *streams {
	// One connection per stream: a transport each would do too, but one
	// with no idle pool has the same effect.
	ss := &streams{tr: &http.Transport{TLSClientConfig: tlsCfg, DisableKeepAlives: true}}
	hc := &http.Client{Transport: ss.tr}
	for range n {
		s := &stream{}
		ss.all = append(ss.all, s)
		ss.wg.Add(1)
		go func() {
			defer ss.wg.Done()
			s.run(ctx, hc, "https://"+addr+"/watch")
		}()
	}
	return ss
}

// wait waits for the streams to end (after their context).
func (ss *streams) wait() {
	ss.wg.Wait()
	ss.tr.CloseIdleConnections()
}

// connected reports whether every stream has a line from the last interval
// and counts them per master.
func (ss *streams) connected(fresh time.Duration) (map[string]int, bool) {
	per := map[string]int{}
	ok := true
	for _, s := range ss.all {
		s.mu.Lock()
		if s.master == "" || time.Since(s.last) > fresh {
			ok = false
		} else {
			per[s.master]++
		}
		s.mu.Unlock()
	}
	return per, ok
}

// markEvent notes, for every stream, who serves it as the event happens.
func (ss *streams) markEvent(t0 time.Time) {
	for _, s := range ss.all {
		s.mu.Lock()
		s.eventAt, s.atEvent = t0, s.master
		s.mu.Unlock()
	}
}

// onVictim returns, for the streams served by victim at the event, how long
// after t0 each got its first line over a new connection (-1: not yet).
func (ss *streams) onVictim(victim string, t0 time.Time) []time.Duration {
	var out []time.Duration
	for _, s := range ss.all {
		s.mu.Lock()
		if s.atEvent == victim {
			if s.recovery.IsZero() {
				out = append(out, -1)
			} else {
				out = append(out, s.recovery.Sub(t0))
			}
		}
		s.mu.Unlock()
	}
	return out
}

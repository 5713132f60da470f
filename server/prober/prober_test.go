package prober_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/halolb/halo/internal/waitfor"
	"github.com/halolb/halo/server/prober"
)

// switchable is a TLS apiserver whose readiness a test flips.
type switchable struct {
	*httptest.Server
	ready  atomic.Bool
	probes atomic.Int64
}

func newSwitchable(t *testing.T) *switchable {
	t.Helper()
	s := &switchable{}
	s.ready.Store(true)
	s.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s.probes.Add(1)
		if !s.ready.Load() {
			http.Error(w, "[-]etcd failed", http.StatusInternalServerError)
			return
		}
		_, _ = w.Write([]byte("ok"))
	}))
	t.Cleanup(s.Close)
	return s
}

// transitions records what the prober reports.
type transitions struct {
	mu  sync.Mutex
	got []prober.Transition
}

func (r *transitions) add(t prober.Transition) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, t)
}

// last returns node's last reported state.
func (r *transitions) last(node string) (prober.State, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.got) - 1; i >= 0; i-- {
		if r.got[i].Node == node {
			return r.got[i].State, true
		}
	}
	return prober.Unknown, false
}

func waitState(t *testing.T, r *transitions, node string, want prober.State) {
	t.Helper()
	waitfor.Nil(t, 10*time.Second, node+" "+want.String(), func() error {
		if st, ok := r.last(node); !ok || st != want {
			return fmt.Errorf("state %v", st)
		}
		return nil
	})
}

func TestProberFollowsBackends(t *testing.T) {
	// A timeout far above what a TLS probe takes on a loaded machine: up
	// and flip must read healthy (two good probes in a row); only hung
	// times out (and reads unhealthy after two timeouts, about 2 s).
	settings := prober.Settings{Interval: 30 * time.Millisecond, Timeout: time.Second, Rise: 2, Fall: 2}
	up := newSwitchable(t)
	flip := newSwitchable(t)
	hungURL := hung(t)
	rec := &transitions{}
	p := prober.NewProber(prober.Config{OnTransition: rec.add})
	client := insecure() // one client: Set restarts a backend whose client changed
	backend := func(node, url string) prober.Backend {
		return prober.Backend{Key: prober.Key{Cluster: "c", Node: node}, Target: prober.Target{URL: url}, Client: client, Settings: settings}
	}
	bs := []prober.Backend{backend("up", up.URL+"/readyz"), backend("flip", flip.URL+"/readyz"), backend("hung", hungURL)}
	p.Set(bs)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	waitState(t, rec, "up", prober.Healthy)
	waitState(t, rec, "flip", prober.Healthy)
	waitState(t, rec, "hung", prober.Unhealthy)

	flip.ready.Store(false)
	waitState(t, rec, "flip", prober.Unhealthy)
	flip.ready.Store(true)
	waitState(t, rec, "flip", prober.Healthy)

	st := p.Statuses()
	if len(st) != 3 || st[0].Node != "flip" || st[1].Node != "hung" || st[2].Node != "up" {
		t.Fatalf("statuses %+v", st)
	}
	if st[1].State != prober.Unhealthy || st[1].Last.Err == nil {
		t.Errorf("hung backend status %+v", st[1])
	}

	// Removing a backend stops its probes.
	p.Set(bs[1:])
	before := up.probes.Load()
	flipBefore := flip.probes.Load()
	// Wait until flip was probed a few more times: up must not have been.
	waitfor.True(t, 10*time.Second, "flip probed 5 more times", func() bool { return flip.probes.Load() >= flipBefore+5 })
	if n := up.probes.Load() - before; n > 1 { // at most one probe in flight at Set
		t.Errorf("a removed backend was probed %d more times", n)
	}
	if got := len(p.Statuses()); got != 2 {
		t.Errorf("%d statuses after removing one", got)
	}
}

// TestProberSetWhileStopping: a Set racing with the end of Run starts
// nothing (under -race, a WaitGroup Add during Wait would be reported).
func TestProberSetWhileStopping(t *testing.T) {
	up := newSwitchable(t)
	client := insecure()
	b := prober.Backend{Key: prober.Key{Cluster: "c", Node: "n"}, Target: prober.Target{URL: up.URL + "/readyz"}, Client: client,
		Settings: prober.Settings{Interval: time.Millisecond, Timeout: 50 * time.Millisecond, Rise: 1, Fall: 1}}
	for i := range 20 {
		p := prober.NewProber(prober.Config{})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- p.Run(ctx) }()
		stop := make(chan struct{})
		go func() {
			defer close(stop)
			for j := range 50 {
				b.Node = fmt.Sprintf("n%d-%d", i, j)
				p.Set([]prober.Backend{b})
			}
		}()
		cancel()
		<-stop
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

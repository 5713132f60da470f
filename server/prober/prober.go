package prober

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sort"
	"sync"
	"time"
)

// Settings are a cluster's probe settings.
type Settings struct {
	// Interval is the time between two probes of one backend.
	Interval time.Duration
	// Timeout bounds one probe.
	Timeout time.Duration
	// Rise and Fall are the consecutive good and failed probes that make a
	// backend healthy and unhealthy.
	Rise, Fall int
}

// Key names a backend: a node of a cluster, as an apiserver or an etcd
// member (a master that is also an etcd member is two backends).
type Key struct {
	Cluster, Node string
	Kind          Kind
}

// Backend is one backend to probe and how.
type Backend struct {
	Key
	// Target is what is probed.
	Target Target
	// Client makes the probes (its TLS configuration verifies the backend
	// and may carry a client certificate).
	Client *http.Client
	// Settings are the cluster's.
	Settings Settings
	// Initial is the state to start from (what etcd holds) and since when.
	Initial State
	Since   time.Time
}

// Transition is a backend's state change.
type Transition struct {
	Key
	State State
	Since time.Time
	// Last is the probe that decided it.
	Last Result
	// Target is what was probed.
	Target Target
}

// Status is a backend's current state, for ListBackends.
type Status struct {
	Key
	State State
	Since time.Time
	Last  Result
}

// Config configures a Prober.
type Config struct {
	// OnTransition is told every state change, from the backend's probe
	// goroutine; it must not block for long (it writes to etcd).
	OnTransition func(Transition)
	// Logger receives the prober's logs; nil discards them.
	Logger *slog.Logger
}

// Prober probes a set of backends, each on its own timer, and reports
// their transitions. Set changes the set at any time; a backend whose key
// and settings are unchanged keeps its state and timer.
type Prober struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	ctx     context.Context // Run's, nil before
	stopped bool            // Run is stopping: start nothing more
	running map[Key]*probed
	wg      sync.WaitGroup
}

// probed is one backend being probed.
type probed struct {
	b      Backend
	cancel context.CancelFunc
	mu     sync.Mutex
	t      *Tracker
}

// NewProber returns a prober with no backends.
func NewProber(cfg Config) *Prober {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.OnTransition == nil {
		cfg.OnTransition = func(Transition) {}
	}
	return &Prober{cfg: cfg, log: cfg.Logger, running: map[Key]*probed{}}
}

// Set makes bs the backends probed.
func (p *Prober) Set(bs []Backend) {
	p.mu.Lock()
	defer p.mu.Unlock()
	want := make(map[Key]Backend, len(bs))
	for _, b := range bs {
		want[b.Key] = b
	}
	for k, pr := range p.running {
		if b, ok := want[k]; !ok || b.Settings != pr.b.Settings || b.Target != pr.b.Target || b.Client != pr.b.Client {
			if pr.cancel != nil {
				pr.cancel()
			}
			delete(p.running, k)
		}
	}
	for k, b := range want {
		if _, ok := p.running[k]; ok {
			continue
		}
		pr := &probed{b: b, t: NewTracker(b.Settings.Rise, b.Settings.Fall, b.Initial, b.Since)}
		p.running[k] = pr
		if p.ctx != nil {
			p.startLocked(pr)
		}
	}
}

// Run probes until ctx is done and returns once every probe goroutine
// stopped.
func (p *Prober) Run(ctx context.Context) error {
	p.mu.Lock()
	p.ctx = ctx
	for _, pr := range p.running {
		p.startLocked(pr)
	}
	p.mu.Unlock()
	<-ctx.Done()
	p.mu.Lock()
	p.stopped = true
	for _, pr := range p.running {
		if pr.cancel != nil {
			pr.cancel()
		}
	}
	p.mu.Unlock()
	p.wg.Wait()
	return nil
}

func (p *Prober) startLocked(pr *probed) {
	if p.stopped {
		return // a Set racing with the end of Run: wg.Wait may be under way
	}
	ctx, cancel := context.WithCancel(p.ctx)
	pr.cancel = cancel
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.loop(ctx, pr)
	}()
}

// loop probes one backend every interval; the first probe comes after a
// random part of the interval, so that backends are not probed in step.
func (p *Prober) loop(ctx context.Context, pr *probed) {
	s := pr.b.Settings
	timer := time.NewTimer(time.Duration(rand.Int64N(int64(max(s.Interval, time.Millisecond)))))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		start := time.Now()
		r := Probe(ctx, pr.b.Client, pr.b.Target, s.Timeout)
		if ctx.Err() != nil {
			return
		}
		pr.mu.Lock()
		changed := pr.t.Observe(r, time.Now())
		st, since := pr.t.State()
		pr.mu.Unlock()
		if changed {
			p.log.Info("backend health changed", "cluster", pr.b.Cluster, "node", pr.b.Node, "kind", pr.b.Kind, "state", st.String(), "error", r.Err)
			p.cfg.OnTransition(Transition{Key: pr.b.Key, State: st, Since: since, Last: r, Target: pr.b.Target})
		}
		timer.Reset(max(0, s.Interval-time.Since(start)))
	}
}

// Statuses returns every backend's status, sorted by cluster, node, kind.
func (p *Prober) Statuses() []Status {
	p.mu.Lock()
	prs := make([]*probed, 0, len(p.running))
	for _, pr := range p.running {
		prs = append(prs, pr)
	}
	p.mu.Unlock()
	out := make([]Status, 0, len(prs))
	for _, pr := range prs {
		pr.mu.Lock()
		st, since := pr.t.State()
		out = append(out, Status{Key: pr.b.Key, State: st, Since: since, Last: pr.t.Last()})
		pr.mu.Unlock()
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Cluster != b.Cluster {
			return a.Cluster < b.Cluster
		}
		if a.Node != b.Node {
			return a.Node < b.Node
		}
		return a.Kind < b.Kind
	})
	return out
}

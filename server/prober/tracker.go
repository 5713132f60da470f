package prober

import "time"

// State is a backend's health as the prober concludes it.
type State int

// The states.
const (
	// Unknown: not yet probed enough to tell (agents treat it as healthy).
	Unknown State = iota
	// Healthy: rise consecutive good probes.
	Healthy
	// Unhealthy: fall consecutive failed probes.
	Unhealthy
)

func (s State) String() string {
	switch s {
	case Healthy:
		return "healthy"
	case Unhealthy:
		return "unhealthy"
	}
	return "unknown"
}

// Tracker turns one backend's probe results into its state, with rise and
// fall: it takes rise good probes in a row to become healthy and fall
// failed ones to become unhealthy, so one lost probe flips nothing.
type Tracker struct {
	rise, fall int
	state      State
	since      time.Time
	good, bad  int
	last       Result
}

// NewTracker returns a tracker starting from state (what etcd holds, for a
// leader that takes over) at since.
func NewTracker(rise, fall int, state State, since time.Time) *Tracker {
	return &Tracker{rise: max(rise, 1), fall: max(fall, 1), state: state, since: since}
}

// Observe records a probe result at now and reports whether the state
// changed.
func (t *Tracker) Observe(r Result, now time.Time) bool {
	t.last = r
	if r.OK {
		t.good, t.bad = t.good+1, 0
		if t.state != Healthy && t.good >= t.rise {
			t.state, t.since = Healthy, now
			return true
		}
		return false
	}
	t.good, t.bad = 0, t.bad+1
	if t.state != Unhealthy && t.bad >= t.fall {
		t.state, t.since = Unhealthy, now
		return true
	}
	return false
}

// State returns the current state and since when it holds.
func (t *Tracker) State() (State, time.Time) { return t.state, t.since }

// Last returns the last probe's result.
func (t *Tracker) Last() Result { return t.last }

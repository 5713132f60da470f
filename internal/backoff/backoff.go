// Package backoff spaces out retries: each wait is twice the last, up to a
// maximum, with optional jitter, and waiting ends early with its context.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff is the state of one retry loop. The zero value is not usable:
// set Initial and Max.
type Backoff struct {
	// Initial is the first wait; Max caps the waits.
	Initial, Max time.Duration
	// Jitter spreads each wait by up to this fraction either way (0.2:
	// ±20%), so that many clients do not retry in step.
	Jitter float64

	next time.Duration
}

// Next returns the next wait and doubles the one after.
func (b *Backoff) Next() time.Duration {
	if b.next == 0 {
		b.next = b.Initial
	}
	d := b.next
	b.next = min(2*b.next, b.Max)
	if b.Jitter > 0 {
		d = time.Duration(float64(d) * (1 + b.Jitter*(2*rand.Float64()-1)))
	}
	return d
}

// Reset starts over from Initial, after a success.
func (b *Backoff) Reset() { b.next = 0 }

// Wait sleeps for the next wait; it returns false at once if ctx ends first.
func (b *Backoff) Wait(ctx context.Context) bool {
	t := time.NewTimer(b.Next())
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

package backoff_test

import (
	"context"
	"testing"
	"time"

	"github.com/halolb/halo/internal/backoff"
)

func TestDoublesUpToMaxAndResets(t *testing.T) {
	b := backoff.Backoff{Initial: time.Second, Max: 5 * time.Second}
	var got []time.Duration
	for range 5 {
		got = append(got, b.Next())
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("waits %v, want %v", got, want)
		}
	}
	b.Reset()
	if d := b.Next(); d != time.Second {
		t.Errorf("after Reset: %v", d)
	}
}

func TestJitterStaysInBounds(t *testing.T) {
	b := backoff.Backoff{Initial: time.Second, Max: time.Second, Jitter: 0.2}
	for range 1000 {
		if d := b.Next(); d < 800*time.Millisecond || d > 1200*time.Millisecond {
			t.Fatalf("wait %v outside ±20%%", d)
		}
	}
}

func TestWaitEndsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	b := backoff.Backoff{Initial: time.Hour, Max: time.Hour}
	if b.Wait(ctx) {
		t.Error("Wait returned true on a cancelled context")
	}
}

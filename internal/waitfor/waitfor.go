// Package waitfor lets tests wait for a condition by polling it until a
// deadline, instead of sleeping for a time that is too long on a fast
// machine and too short on a loaded one.
package waitfor

import (
	"errors"
	"testing"
	"time"
)

// Nil calls cond until it returns nil. After timeout it fails t with what
// and cond's last error. Between calls it waits 1 ms at first, doubling up
// to 50 ms. Call it from the test's goroutine.
func Nil(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	wait := time.Millisecond
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		time.Sleep(wait)
		wait = min(2*wait, 50*time.Millisecond)
	}
}

// True is Nil for a condition with no error to tell.
func True(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	Nil(t, timeout, what, func() error {
		if cond() {
			return nil
		}
		return errNotYet
	})
}

var errNotYet = errors.New("still false")

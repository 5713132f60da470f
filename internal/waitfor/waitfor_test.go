package waitfor_test

import (
	"errors"
	"testing"
	"time"

	"github.com/halolb/halo/internal/waitfor"
)

func TestNilReturnsOnceTheConditionHolds(t *testing.T) {
	calls := 0
	waitfor.Nil(t, 10*time.Second, "third call", func() error {
		if calls++; calls < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if calls != 3 {
		t.Errorf("%d calls", calls)
	}
	n := 0
	waitfor.True(t, 10*time.Second, "second call", func() bool { n++; return n == 2 })
}

// recorder is a testing.TB that records a Fatalf instead of stopping.
type recorder struct {
	testing.TB
	failed string
}

func (r *recorder) Helper() {}
func (r *recorder) Fatalf(format string, args ...any) {
	r.failed = format
	panic(r)
}

func TestNilFailsAfterTheTimeout(t *testing.T) {
	r := &recorder{TB: t}
	func() {
		defer func() {
			if p := recover(); p != r {
				panic(p)
			}
		}()
		waitfor.Nil(r, 20*time.Millisecond, "never", func() error { return errors.New("no") })
	}()
	if r.failed == "" {
		t.Fatal("Nil returned without failing the test")
	}
}

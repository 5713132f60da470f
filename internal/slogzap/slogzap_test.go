package slogzap_test

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/halolb/halo/internal/slogzap"
)

func lines(t *testing.T, b *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(b.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

func TestLevelsFieldsAndHook(t *testing.T) {
	var buf bytes.Buffer
	h := slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})
	lg := slogzap.New(h, slogzap.Options{
		InfoAsDebug: true,
		Attrs:       []slog.Attr{slog.String("component", "etcd")},
		Level: func(e zapcore.Entry, l slog.Level) slog.Level {
			if e.Message == "noise" {
				return slog.LevelDebug
			}
			return l
		},
	}).Named("raft").With(zap.String("member", "m1"))

	lg.Info("info becomes debug: dropped")
	lg.Warn("noise")
	lg.Warn("disk slow", zap.Duration("took", 1500000000), zap.Int("n", 3), zap.Error(errFake{}))
	lg.Error("apply failed")

	got := lines(t, &buf)
	if len(got) != 2 {
		t.Fatalf("want 2 lines, got %d: %s", len(got), buf.String())
	}
	w := got[0]
	if w["level"] != "WARN" || w["msg"] != "disk slow" || w["component"] != "etcd" || w["member"] != "m1" ||
		w["logger"] != "raft" || w["n"] != float64(3) || w["error"] != "fake" {
		t.Errorf("warn line: %v", w)
	}
	if got[1]["level"] != "ERROR" {
		t.Errorf("error line: %v", got[1])
	}
}

type errFake struct{}

func (errFake) Error() string { return "fake" }

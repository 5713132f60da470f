// Package slogzap gives libraries that insist on zap (etcd's server and
// client) a *zap.Logger whose entries go to a slog.Handler, so that halo's
// logs and theirs share one format, one output and one level.
package slogzap

import (
	"context"
	"log/slog"
	"slices"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Options tune the translation.
type Options struct {
	// InfoAsDebug logs the library's Info entries at slog's Debug level, for
	// chatty libraries whose Info is not news to an operator.
	InfoAsDebug bool
	// Attrs are added to every entry, e.g. slog.String("component", "etcd").
	Attrs []slog.Attr
	// Level, if set, may change an entry's level (after InfoAsDebug), e.g.
	// to quieten messages that are expected at shutdown.
	Level func(e zapcore.Entry, l slog.Level) slog.Level
}

// New returns a zap logger that writes to h.
func New(h slog.Handler, opts Options) *zap.Logger {
	if len(opts.Attrs) > 0 {
		h = h.WithAttrs(opts.Attrs)
	}
	return zap.New(&core{h: h, opts: opts})
}

type core struct {
	h    slog.Handler
	opts Options
}

func (c *core) entryLevel(e zapcore.Entry) slog.Level {
	l := c.level(e.Level)
	if c.opts.Level != nil {
		l = c.opts.Level(e, l)
	}
	return l
}

func (c *core) level(l zapcore.Level) slog.Level {
	switch {
	case l < zapcore.InfoLevel:
		return slog.LevelDebug
	case l == zapcore.InfoLevel && c.opts.InfoAsDebug:
		return slog.LevelDebug
	case l == zapcore.InfoLevel:
		return slog.LevelInfo
	case l == zapcore.WarnLevel:
		return slog.LevelWarn
	}
	return slog.LevelError
}

// Enabled asks about the level before any Level hook: a hook may lower an
// entry's level, so the entry must reach Check to be judged.
func (c *core) Enabled(l zapcore.Level) bool {
	if c.opts.Level != nil {
		return true
	}
	return c.h.Enabled(context.Background(), c.level(l))
}

func (c *core) With(fields []zapcore.Field) zapcore.Core {
	return &core{h: c.h.WithAttrs(attrs(fields)), opts: c.opts}
}

func (c *core) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.h.Enabled(context.Background(), c.entryLevel(e)) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *core) Write(e zapcore.Entry, fields []zapcore.Field) error {
	r := slog.NewRecord(e.Time, c.entryLevel(e), e.Message, 0)
	if e.LoggerName != "" {
		r.AddAttrs(slog.String("logger", e.LoggerName))
	}
	r.AddAttrs(attrs(fields)...)
	return c.h.Handle(context.Background(), r)
}

func (c *core) Sync() error { return nil }

// attrs turns zap fields into slog attributes, in key order.
func attrs(fields []zapcore.Field) []slog.Attr {
	if len(fields) == 0 {
		return nil
	}
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range fields {
		f.AddTo(enc)
	}
	out := make([]slog.Attr, 0, len(enc.Fields))
	for k, v := range enc.Fields {
		out = append(out, slog.Any(k, v))
	}
	slices.SortFunc(out, func(a, b slog.Attr) int {
		switch {
		case a.Key < b.Key:
			return -1
		case a.Key > b.Key:
			return 1
		}
		return 0
	})
	return out
}

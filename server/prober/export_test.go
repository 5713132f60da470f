package prober

import (
	"log/slog"

	"github.com/halolb/halo/server/topowatch"
)

// NewBackendSet returns the controller's topology consumer, which calls set
// with the backends to probe each time they may have changed.
func NewBackendSet(replica string, set func([]Backend)) topowatch.Consumer {
	return newBackendSet(replica, slog.New(slog.DiscardHandler), set)
}

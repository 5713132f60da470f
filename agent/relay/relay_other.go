//go:build !linux

package relay

// newPlatformBackend returns the portable goroutine-pair engine.
func newPlatformBackend(e *Engine, cfg Config) (backend, error) {
	return newCopyBackend(e, cfg)
}

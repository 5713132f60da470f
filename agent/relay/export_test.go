package relay

// Impl is one engine implementation under test.
type Impl struct {
	Name string
	New  func(Config) (*Engine, error)
}

// Impls lists the engine implementations the tests run against.
var Impls = []Impl{{Name: "portable", New: NewPortable}}

// NewPortable returns an engine backed by the goroutine-pair implementation.
func NewPortable(cfg Config) (*Engine, error) {
	return newEngine(cfg, newCopyBackend)
}

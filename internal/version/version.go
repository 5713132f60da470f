// Package version tells which build of halo is running.
package version

import "runtime/debug"

// Set is set at build time with -ldflags "-X github.com/halolb/halo/internal/version.Set=v1.2.3".
var Set = ""

// String returns the build's version: Set, else the module version from
// the build info, else "dev".
func String() string {
	if Set != "" {
		return Set
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

package topology_test

import (
	"testing"

	"github.com/halolb/halo/server/topology"
)

func BenchmarkValidateCluster(b *testing.B) {
	c := seedClusters()[4] // every section set
	b.ReportAllocs()
	for b.Loop() {
		if err := topology.ValidateCluster(c); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkValidateNode(b *testing.B) {
	n := fuzzNodes()[0]
	b.ReportAllocs()
	for b.Loop() {
		if err := topology.ValidateNode(n); err != nil {
			b.Fatal(err)
		}
	}
}

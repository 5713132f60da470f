package endpoints_test

import (
	"fmt"
	"testing"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/server/endpoints"
)

// bigCluster is 3 masters (also etcd) and n workers.
func bigCluster(n int) []*halov1.Node {
	ns := []*halov1.Node{
		node("master-a", "10.0.0.1", "192.0.2.1", 0, cp, etcd),
		node("master-b", "10.0.0.2", "192.0.2.2", 1, cp, etcd),
		node("master-c", "10.0.0.3", "192.0.2.3", 2, cp, etcd),
	}
	for i := range n {
		ns = append(ns, node(fmt.Sprintf("worker-%05d", i), fmt.Sprintf("10.1.%d.%d", i/256, i%256), "", 0, wk))
	}
	return ns
}

func BenchmarkResolve(b *testing.B) {
	for _, n := range []int{10, 1000, 10000} {
		b.Run(fmt.Sprintf("workers=%d", n), func(b *testing.B) {
			ns := bigCluster(n)
			c := cluster(modeLocal)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := endpoints.Resolve(c, ns, "worker-00005"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkCertificateSANs(b *testing.B) {
	ns := bigCluster(1000)
	c := cluster(modeManaged)
	b.ReportAllocs()
	for b.Loop() {
		endpoints.CertificateSANs(c, ns)
	}
}

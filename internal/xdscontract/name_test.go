package xdscontract_test

import (
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/halolb/halo/internal/xdscontract"
)

// TestNames: the name of each kind of resource, packed or not, and the
// errors of a body that does not decode or has no name.
func TestNames(t *testing.T) {
	for _, tc := range []struct {
		m    proto.Message
		want string
	}{
		{&listenerv3.Listener{Name: "apiserver-local"}, "apiserver-local"},
		{&clusterv3.Cluster{Name: "kube-apiserver"}, "kube-apiserver"},
		{&endpointv3.ClusterLoadAssignment{ClusterName: "etcd"}, "etcd"},
		{durationpb.New(0), ""},
	} {
		if got := xdscontract.Name(tc.m); got != tc.want {
			t.Errorf("Name(%T) = %q, want %q", tc.m, got, tc.want)
		}
		a, _, err := xdscontract.Encode(tc.m)
		if err != nil {
			t.Fatal(err)
		}
		got, err := xdscontract.PackedName(a)
		if tc.want == "" {
			if err == nil || !strings.Contains(err.Error(), "has no name") {
				t.Errorf("PackedName(%T) = %q, %v; want an error", tc.m, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("PackedName(%T) = %q, %v; want %q", tc.m, got, err, tc.want)
		}
	}
	if got, err := xdscontract.PackedName(&anypb.Any{TypeUrl: xdscontract.ClusterType, Value: []byte{0xff}}); err == nil {
		t.Errorf("PackedName of a broken body = %q, want an error", got)
	}
}

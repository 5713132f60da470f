package config_test

import (
	"testing"

	// The allowlist names these packages' messages: link them.
	_ "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/halolb/halo/agent/config"
)

// TestAllowlistNamesExist: every message and field of the allowlist exists
// (a typo would silently refuse a field), and every message an allowed
// field holds has an entry of its own (or is an Any, which the translator
// unpacks), so the walk never meets a message it has no rule for.
func TestAllowlistNamesExist(t *testing.T) {
	for msg, fields := range config.Allowlist {
		d, err := protoregistry.GlobalFiles.FindDescriptorByName(msg)
		if err != nil {
			t.Errorf("%s: %v", msg, err)
			continue
		}
		md, ok := d.(protoreflect.MessageDescriptor)
		if !ok {
			t.Errorf("%s is not a message", msg)
			continue
		}
		for _, f := range fields {
			fd := md.Fields().ByName(f)
			if fd == nil {
				t.Errorf("%s has no field %s", msg, f)
				continue
			}
			sub := fd.Message()
			if fd.IsMap() {
				sub = fd.MapValue().Message()
			}
			if sub == nil || sub.FullName() == "google.protobuf.Any" {
				continue
			}
			if _, ok := config.Allowlist[sub.FullName()]; !ok {
				t.Errorf("%s.%s holds %s, which the allowlist lacks", msg, f, sub.FullName())
			}
		}
	}
}

package xdscontract

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Versions are content hashes, per resource and per type, so that every
// replica serves the same versions for the same resources and an agent that
// reconnects anywhere can name what it holds.

var deterministic = proto.MarshalOptions{Deterministic: true}

// Encode packs m as halo serves it: an Any holding m's deterministic
// encoding, and m's version, [ResourceVersion] of that encoding.
func Encode(m proto.Message) (*anypb.Any, string, error) {
	name := m.ProtoReflect().Descriptor().FullName()
	b, err := deterministic.Marshal(m)
	if err != nil {
		return nil, "", fmt.Errorf("xdscontract: encode %s: %w", name, err)
	}
	return &anypb.Any{TypeUrl: resource.APITypePrefix + string(name), Value: b}, ResourceVersion(b), nil
}

// ResourceVersion is the version of a resource given its deterministic
// encoding: 16 hex digits of its SHA-256.
func ResourceVersion(encoded []byte) string {
	h := sha256.Sum256(encoded)
	return hex.EncodeToString(h[:8])
}

// TypeVersion is the version of a set of resources of one type given as
// name → version: 16 hex digits of the SHA-256 of the "name=version\n"
// lines sorted by name, "" for none. halo-server sends it as a Delta
// response's system_version_info and reports it per node; halo-agent
// computes it over what it holds.
func TypeVersion(versions map[string]string) string {
	if len(versions) == 0 {
		return ""
	}
	var b strings.Builder
	for _, n := range slices.Sorted(maps.Keys(versions)) {
		b.WriteString(n)
		b.WriteByte('=')
		b.WriteString(versions[n])
		b.WriteByte('\n')
	}
	return ResourceVersion([]byte(b.String()))
}

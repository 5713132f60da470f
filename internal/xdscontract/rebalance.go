package xdscontract

import (
	"errors"
	"fmt"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	halov1 "github.com/halolb/halo/gen/halo/v1"
)

// RebalanceKey is the typed_filter_metadata key under which a cluster
// carries halo's rebalancing settings, a halo.v1.RebalanceMetadata:
// halo-agent acts on them, Envoy ignores them.
const RebalanceKey = "halo.rebalance"

// maxRebalanceDelay bounds min_age and interval.
const maxRebalanceDelay = 24 * time.Hour

// ValidateRebalance checks settings as halo-agent honours them: a fraction
// 0 < f <= 1, a min_age in [0, 24h], an interval in (0, 24h].
func ValidateRebalance(r *halov1.RebalanceMetadata) error {
	if r == nil {
		return errors.New("rebalance: nil")
	}
	f := r.GetMaxFraction()
	if !(f > 0 && f <= 1) {
		return fmt.Errorf("max_fraction %v must be in (0, 1]", f)
	}
	if err := r.GetMinAge().CheckValid(); err != nil {
		return fmt.Errorf("min_age: %w", err)
	}
	if d := r.GetMinAge().AsDuration(); d < 0 || d > maxRebalanceDelay {
		return fmt.Errorf("min_age %v must be in [0, 24h]", d)
	}
	if err := r.GetInterval().CheckValid(); err != nil {
		return fmt.Errorf("interval: %w", err)
	}
	if d := r.GetInterval().AsDuration(); d <= 0 || d > maxRebalanceDelay {
		return fmt.Errorf("interval %v must be in (0, 24h]", d)
	}
	return nil
}

// RebalanceMetadata returns cluster metadata carrying r. r must pass
// [ValidateRebalance].
func RebalanceMetadata(r *halov1.RebalanceMetadata) (*corev3.Metadata, error) {
	if err := ValidateRebalance(r); err != nil {
		return nil, fmt.Errorf("xdscontract: %w", err)
	}
	a, err := anypb.New(r)
	if err != nil {
		return nil, fmt.Errorf("xdscontract: rebalance: %w", err)
	}
	return &corev3.Metadata{TypedFilterMetadata: map[string]*anypb.Any{RebalanceKey: a}}, nil
}

// MetadataError is a rebalance entry that cannot be read.
type MetadataError struct {
	// Field is the entry's path in the metadata:
	// `typed_filter_metadata[halo.rebalance]` or
	// `filter_metadata[halo.rebalance]` (a misplaced entry).
	Field string
	// Err says what is wrong.
	Err error
}

func (e *MetadataError) Error() string { return e.Field + ": " + e.Err.Error() }

// Unwrap returns Err.
func (e *MetadataError) Unwrap() error { return e.Err }

// The entries' paths in the metadata.
var (
	typedField  = "typed_filter_metadata[" + RebalanceKey + "]"
	structField = "filter_metadata[" + RebalanceKey + "]"
)

// RebalanceFromMetadata reads a cluster's rebalancing settings, nil when
// there are none (off). Settings that do not decode or do not pass
// [ValidateRebalance], a typed message with fields this release does not
// know (a newer server's), and settings under filter_metadata (an untyped
// Struct, whose fields nothing checks) are a *MetadataError.
func RebalanceFromMetadata(md *corev3.Metadata) (*halov1.RebalanceMetadata, error) {
	if _, ok := md.GetFilterMetadata()[RebalanceKey]; ok {
		return nil, &MetadataError{Field: structField, Err: fmt.Errorf("not read: the settings travel in typed_filter_metadata as %s", rebalanceName)}
	}
	a := md.GetTypedFilterMetadata()[RebalanceKey]
	if a == nil {
		return nil, nil
	}
	r, err := rebalanceFromAny(a)
	if err != nil {
		return nil, &MetadataError{Field: typedField, Err: err}
	}
	return r, nil
}

var rebalanceName = (&halov1.RebalanceMetadata{}).ProtoReflect().Descriptor().FullName()

func rebalanceFromAny(a *anypb.Any) (*halov1.RebalanceMetadata, error) {
	if a.MessageName() != rebalanceName {
		return nil, fmt.Errorf("type %q, want %s", a.GetTypeUrl(), rebalanceName)
	}
	r := &halov1.RebalanceMetadata{}
	if err := proto.Unmarshal(a.GetValue(), r); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	if len(r.ProtoReflect().GetUnknown()) > 0 || len(r.GetMinAge().ProtoReflect().GetUnknown()) > 0 || len(r.GetInterval().ProtoReflect().GetUnknown()) > 0 {
		return nil, errors.New("unknown fields (a newer halo-server?) are not supported by this halo-agent")
	}
	if err := ValidateRebalance(r); err != nil {
		return nil, err
	}
	return r, nil
}

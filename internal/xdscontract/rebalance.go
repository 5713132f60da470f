package xdscontract

import (
	"errors"
	"fmt"
	"math"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	halov1 "github.com/halolb/halo/gen/halo/v1"
)

// RebalanceKey is the metadata key (filter_metadata or
// typed_filter_metadata) under which a cluster carries halo's rebalancing
// settings: halo-agent acts on them, Envoy ignores them.
const RebalanceKey = "halo.rebalance"

// RebalanceForm is how rebalancing settings are written into a cluster's
// metadata.
type RebalanceForm int

const (
	// StructForm is filter_metadata[RebalanceKey], a Struct of three
	// numbers: max_fraction, min_age_seconds and interval_seconds. Every
	// release reads it.
	StructForm RebalanceForm = iota
	// TypedForm is typed_filter_metadata[RebalanceKey], an Any holding a
	// halo.v1.RebalanceMetadata. Releases before the one that added this
	// package refuse it.
	TypedForm
)

// ServerRebalanceForm is the form halo-server writes: the Struct, which
// agents of the previous release read, until every supported agent reads
// the typed form (see the package documentation).
const ServerRebalanceForm = StructForm

// The Struct form's keys.
const (
	structMaxFraction = "max_fraction"
	structMinAge      = "min_age_seconds"
	structInterval    = "interval_seconds"
)

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

// RebalanceMetadata returns cluster metadata carrying r in form f. r must
// pass [ValidateRebalance].
func RebalanceMetadata(r *halov1.RebalanceMetadata, f RebalanceForm) (*corev3.Metadata, error) {
	if err := ValidateRebalance(r); err != nil {
		return nil, fmt.Errorf("xdscontract: %w", err)
	}
	switch f {
	case StructForm:
		st := &structpb.Struct{Fields: map[string]*structpb.Value{
			structMaxFraction: structpb.NewNumberValue(r.GetMaxFraction()),
			structMinAge:      structpb.NewNumberValue(r.GetMinAge().AsDuration().Seconds()),
			structInterval:    structpb.NewNumberValue(r.GetInterval().AsDuration().Seconds()),
		}}
		return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{RebalanceKey: st}}, nil
	case TypedForm:
		a, err := anypb.New(r)
		if err != nil {
			return nil, fmt.Errorf("xdscontract: rebalance: %w", err)
		}
		return &corev3.Metadata{TypedFilterMetadata: map[string]*anypb.Any{RebalanceKey: a}}, nil
	}
	return nil, fmt.Errorf("xdscontract: rebalance form %d is unknown", f)
}

// MetadataError is a rebalance entry that cannot be read.
type MetadataError struct {
	// Field is the entry's path in the metadata:
	// `typed_filter_metadata[halo.rebalance]` or
	// `filter_metadata[halo.rebalance]`.
	Field string
	// Err says what is wrong.
	Err error
}

func (e *MetadataError) Error() string { return e.Field + ": " + e.Err.Error() }

// Unwrap returns Err.
func (e *MetadataError) Unwrap() error { return e.Err }

// Typed and Struct entries' paths in the metadata.
var (
	typedField  = "typed_filter_metadata[" + RebalanceKey + "]"
	structField = "filter_metadata[" + RebalanceKey + "]"
)

// RebalanceFromMetadata reads a cluster's rebalancing settings: the typed
// form if present, else the Struct form, else nil (off). Settings that do
// not decode or do not pass [ValidateRebalance], and a typed message with
// fields this release does not know (a newer server's), are a
// *MetadataError.
func RebalanceFromMetadata(md *corev3.Metadata) (*halov1.RebalanceMetadata, error) {
	if a := md.GetTypedFilterMetadata()[RebalanceKey]; a != nil {
		r, err := rebalanceFromAny(a)
		if err != nil {
			return nil, &MetadataError{Field: typedField, Err: err}
		}
		return r, nil
	}
	if st := md.GetFilterMetadata()[RebalanceKey]; st != nil {
		r, err := rebalanceFromStruct(st)
		if err != nil {
			return nil, &MetadataError{Field: structField, Err: err}
		}
		return r, nil
	}
	return nil, nil
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

func rebalanceFromStruct(st *structpb.Struct) (*halov1.RebalanceMetadata, error) {
	num := func(name string) (float64, error) {
		v, ok := st.GetFields()[name]
		if !ok {
			return 0, fmt.Errorf("%s is missing", name)
		}
		n, ok := v.GetKind().(*structpb.Value_NumberValue)
		if !ok {
			return 0, fmt.Errorf("%s must be a number", name)
		}
		return n.NumberValue, nil
	}
	f, err := num(structMaxFraction)
	if err != nil {
		return nil, err
	}
	age, err := num(structMinAge)
	if err != nil {
		return nil, err
	}
	iv, err := num(structInterval)
	if err != nil {
		return nil, err
	}
	limit := maxRebalanceDelay.Seconds()
	switch {
	case !(f > 0 && f <= 1):
		return nil, fmt.Errorf("%s %v must be in (0, 1]", structMaxFraction, f)
	case !(age >= 0 && age <= limit):
		return nil, fmt.Errorf("%s %v must be in [0, %v]", structMinAge, age, limit)
	case !(iv > 0 && iv <= limit):
		return nil, fmt.Errorf("%s %v must be in (0, %v]", structInterval, iv, limit)
	}
	return &halov1.RebalanceMetadata{
		MaxFraction: f,
		MinAge:      durationpb.New(seconds(age)),
		Interval:    durationpb.New(seconds(iv)),
	}, nil
}

// seconds converts checked seconds (at most a day) to a Duration, rounded
// to the nanosecond.
func seconds(s float64) time.Duration {
	return time.Duration(math.Round(s * float64(time.Second)))
}

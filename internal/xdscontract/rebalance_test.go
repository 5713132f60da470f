package xdscontract_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/internal/xdscontract"
)

func rebalance(f float64, minAge, interval time.Duration) *halov1.RebalanceMetadata {
	return &halov1.RebalanceMetadata{MaxFraction: f, MinAge: durationpb.New(minAge), Interval: durationpb.New(interval)}
}

// TestRebalanceRoundTrip: what is written reads back the same, and the
// cluster carrying it passes Envoy's validation.
func TestRebalanceRoundTrip(t *testing.T) {
	for _, r := range []*halov1.RebalanceMetadata{
		rebalance(0.25, 30*time.Second, 5*time.Second),
		rebalance(1, 0, 24*time.Hour),
		rebalance(0.001, 24*time.Hour, time.Millisecond),
		rebalance(0.1, 1500*time.Millisecond, 300*time.Millisecond),
	} {
		md, err := xdscontract.RebalanceMetadata(r)
		if err != nil {
			t.Fatalf("%v: %v", r, err)
		}
		c := &clusterv3.Cluster{Name: "c", Metadata: md}
		if err := c.ValidateAll(); err != nil {
			t.Errorf("%v: Envoy's validation: %v", r, err)
		}
		got, err := xdscontract.RebalanceFromMetadata(md)
		if err != nil || !proto.Equal(got, r) {
			t.Errorf("read %v, %v; want %v", got, err, r)
		}
	}
}

// TestRebalanceTypedFormPinned: the settings are one Any of
// halo.v1.RebalanceMetadata under typed_filter_metadata[halo.rebalance],
// and nothing else.
func TestRebalanceTypedFormPinned(t *testing.T) {
	r := rebalance(0.25, 30*time.Second, 5*time.Second)
	md, err := xdscontract.RebalanceMetadata(r)
	if err != nil {
		t.Fatal(err)
	}
	if len(md.GetFilterMetadata()) != 0 || len(md.GetTypedFilterMetadata()) != 1 {
		t.Fatalf("metadata %v", md)
	}
	a := md.GetTypedFilterMetadata()["halo.rebalance"]
	if a.GetTypeUrl() != "type.googleapis.com/halo.v1.RebalanceMetadata" {
		t.Errorf("type URL %q", a.GetTypeUrl())
	}
	got := &halov1.RebalanceMetadata{}
	if err := a.UnmarshalTo(got); err != nil || !proto.Equal(got, r) {
		t.Errorf("unpacked %v, %v", got, err)
	}
}

func TestRebalanceAbsent(t *testing.T) {
	for _, md := range []*corev3.Metadata{nil, {}, {FilterMetadata: map[string]*structpb.Struct{"other": {}}}} {
		if r, err := xdscontract.RebalanceFromMetadata(md); r != nil || err != nil {
			t.Errorf("%v: read %v, %v; want nil, nil", md, r, err)
		}
	}
}

func TestRebalanceInvalidNotWritten(t *testing.T) {
	for _, r := range []*halov1.RebalanceMetadata{
		nil,
		rebalance(0, time.Second, time.Second),
		rebalance(1.5, time.Second, time.Second),
		rebalance(0.5, -time.Second, time.Second),
		rebalance(0.5, 25*time.Hour, time.Second),
		rebalance(0.5, time.Second, 0),
		rebalance(0.5, time.Second, 25*time.Hour),
		{MaxFraction: 0.5, Interval: durationpb.New(time.Second)},
		{MaxFraction: 0.5, MinAge: durationpb.New(time.Second)},
	} {
		if md, err := xdscontract.RebalanceMetadata(r); err == nil {
			t.Errorf("%v: wrote %v", r, md)
		}
	}
}

// TestRebalanceRefused: entries that cannot be honoured are errors that
// name the entry.
func TestRebalanceRefused(t *testing.T) {
	num := structpb.NewNumberValue
	st := func(f map[string]*structpb.Value) *corev3.Metadata {
		return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"halo.rebalance": {Fields: f}}}
	}
	typed := func(a *anypb.Any) *corev3.Metadata {
		return &corev3.Metadata{TypedFilterMetadata: map[string]*anypb.Any{"halo.rebalance": a}}
	}
	pack := func(r *halov1.RebalanceMetadata) *anypb.Any {
		a, err := anypb.New(r)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	good := pack(rebalance(0.5, time.Second, time.Second))
	unknown := proto.Clone(good).(*anypb.Any)
	unknown.Value = protowire.AppendVarint(protowire.AppendTag(unknown.Value, 99, protowire.VarintType), 1)
	wrongType, _ := anypb.New(durationpb.New(time.Second))

	const sf, tf = "filter_metadata[halo.rebalance]", "typed_filter_metadata[halo.rebalance]"
	for _, tc := range []struct {
		name, field, reason string
		md                  *corev3.Metadata
	}{
		{"untyped", sf, "travel in typed_filter_metadata", st(map[string]*structpb.Value{"max_fraction": num(0.5), "min_age_seconds": num(60), "interval_seconds": num(10)})},
		{"untyped beside typed", sf, "travel in typed_filter_metadata", &corev3.Metadata{
			FilterMetadata:      map[string]*structpb.Struct{"halo.rebalance": {}},
			TypedFilterMetadata: map[string]*anypb.Any{"halo.rebalance": good}}},
		{"typed fraction", tf, "max_fraction", typed(pack(rebalance(0, time.Second, time.Second)))},
		{"typed no interval", tf, "interval", typed(pack(&halov1.RebalanceMetadata{MaxFraction: 0.5, MinAge: durationpb.New(0)}))},
		{"typed unknown field", tf, "unknown fields", typed(unknown)},
		{"typed wrong type", tf, "want halo.v1.RebalanceMetadata", typed(wrongType)},
		{"typed garbage", tf, "decode", typed(&anypb.Any{TypeUrl: good.GetTypeUrl(), Value: []byte{0xff}})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := xdscontract.RebalanceFromMetadata(tc.md)
			var me *xdscontract.MetadataError
			if !errors.As(err, &me) {
				t.Fatalf("read %v, %v; want a *MetadataError", r, err)
			}
			if me.Field != tc.field || !strings.Contains(me.Err.Error(), tc.reason) {
				t.Errorf("error %q, want field %s and %q", err, tc.field, tc.reason)
			}
		})
	}
}

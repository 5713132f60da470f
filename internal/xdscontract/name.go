package xdscontract

import (
	"fmt"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Name is the xDS name of a resource: a ClusterLoadAssignment's
// cluster_name, a listener's or a cluster's name; "" for a message that
// has neither.
func Name(m proto.Message) string {
	n, _ := name(m)
	return n
}

// PackedName decodes a packed resource and returns its [Name]; a body that
// does not decode, or a message without a name field, is an error.
func PackedName(a *anypb.Any) (string, error) {
	m, err := a.UnmarshalNew()
	if err != nil {
		return "", err
	}
	if n, ok := name(m); ok {
		return n, nil
	}
	return "", fmt.Errorf("a %s has no name", a.GetTypeUrl())
}

// name is m's name, and whether m has a name field at all.
func name(m proto.Message) (string, bool) {
	switch v := m.(type) {
	case interface{ GetClusterName() string }:
		return v.GetClusterName(), true
	case interface{ GetName() string }:
		return v.GetName(), true
	}
	return "", false
}

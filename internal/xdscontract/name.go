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
	switch v := m.(type) {
	case interface{ GetClusterName() string }:
		return v.GetClusterName()
	case interface{ GetName() string }:
		return v.GetName()
	}
	return ""
}

// PackedName decodes a packed resource and returns its [Name]; a body that
// does not decode, or a message without a name field, is an error.
func PackedName(a *anypb.Any) (string, error) {
	m, err := a.UnmarshalNew()
	if err != nil {
		return "", err
	}
	switch m.(type) {
	case interface{ GetClusterName() string }, interface{ GetName() string }:
		return Name(m), nil
	}
	return "", fmt.Errorf("a %s has no name", a.GetTypeUrl())
}

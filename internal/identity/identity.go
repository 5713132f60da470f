// Package identity is halo's naming of who is calling: SPIFFE-style URI
// SANs in X.509 certificates.
//
//	spiffe://<trust-domain>/cluster/<cluster>/node/<node>   an agent (or Envoy) of a node
//	spiffe://<trust-domain>/user/<name>                     a person or a script
//	spiffe://<trust-domain>/replica/<name>                  a halo-server replica
package identity

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
)

// DefaultTrustDomain is the trust domain halo uses unless told another.
const DefaultTrustDomain = "halo.local"

// Kind is what an identity names.
type Kind int

// The kinds of identity.
const (
	Node Kind = iota + 1
	User
	Replica
)

func (k Kind) String() string {
	switch k {
	case Node:
		return "node"
	case User:
		return "user"
	case Replica:
		return "replica"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// ID is one identity.
type ID struct {
	Kind        Kind
	TrustDomain string
	Cluster     string // Node only
	Name        string // the node's, user's or replica's name
}

// NodeID is the identity of a node of a cluster (a halo-agent).
func NodeID(trustDomain, cluster, node string) ID {
	return ID{Kind: Node, TrustDomain: trustDomain, Cluster: cluster, Name: node}
}

// UserID is the identity of a person or a script.
func UserID(trustDomain, name string) ID { return ID{Kind: User, TrustDomain: trustDomain, Name: name} }

// ReplicaID is the identity of a halo-server replica.
func ReplicaID(trustDomain, name string) ID {
	return ID{Kind: Replica, TrustDomain: trustDomain, Name: name}
}

// segment is what a trust domain, cluster, node, user or replica name may
// be: DNS-1123-like names (a node name is a DNS subdomain), no slashes.
var segment = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,251}[a-z0-9])?$`)

// Validate reports whether every part of id is a valid name.
func (id ID) Validate() error {
	check := func(what, v string) error {
		if !segment.MatchString(v) {
			return fmt.Errorf("identity: %s %q is not a lower-case DNS-style name", what, v)
		}
		return nil
	}
	if err := check("trust domain", id.TrustDomain); err != nil {
		return err
	}
	switch id.Kind {
	case Node:
		if err := check("cluster", id.Cluster); err != nil {
			return err
		}
	case User, Replica:
		if id.Cluster != "" {
			return fmt.Errorf("identity: a %s has no cluster", id.Kind)
		}
	default:
		return fmt.Errorf("identity: unknown kind %d", int(id.Kind))
	}
	return check(id.Kind.String()+" name", id.Name)
}

// URL is the identity's URI SAN.
func (id ID) URL() *url.URL {
	p := "/" + id.Kind.String() + "/" + id.Name
	if id.Kind == Node {
		p = "/cluster/" + id.Cluster + "/node/" + id.Name
	}
	return &url.URL{Scheme: "spiffe", Host: id.TrustDomain, Path: p}
}

func (id ID) String() string { return id.URL().String() }

// Parse reads an identity from a URI SAN.
func Parse(u *url.URL) (ID, error) {
	if u == nil || u.Scheme != "spiffe" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Port() != "" {
		return ID{}, fmt.Errorf("identity: %q is not a spiffe://<trust-domain>/... URI", u)
	}
	parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	var id ID
	switch {
	case len(parts) == 4 && parts[0] == "cluster" && parts[2] == "node":
		id = NodeID(u.Host, parts[1], parts[3])
	case len(parts) == 2 && parts[0] == "user":
		id = UserID(u.Host, parts[1])
	case len(parts) == 2 && parts[0] == "replica":
		id = ReplicaID(u.Host, parts[1])
	default:
		return ID{}, fmt.Errorf("identity: %q names no node (/cluster/<c>/node/<n>), user (/user/<name>) or replica (/replica/<name>)", u)
	}
	if err := id.Validate(); err != nil {
		return ID{}, err
	}
	return id, nil
}

// ErrNone is returned by FromCertificate when the certificate carries no
// spiffe URI SAN.
var ErrNone = errors.New("identity: the certificate has no spiffe:// URI SAN")

// FromCertificate returns the identity of a verified certificate: its one
// spiffe URI SAN. Several spiffe URIs are refused (which one would count?).
func FromCertificate(c *x509.Certificate) (ID, error) {
	var found []*url.URL
	for _, u := range c.URIs {
		if u.Scheme == "spiffe" {
			found = append(found, u)
		}
	}
	switch len(found) {
	case 0:
		return ID{}, ErrNone
	case 1:
		return Parse(found[0])
	}
	return ID{}, fmt.Errorf("identity: the certificate has %d spiffe URI SANs; want one", len(found))
}

// Package auth decides who may call what on halo-server in production mode
// (client certificates required, --client-ca): every caller is identified
// by the SPIFFE-style URI SAN of its verified certificate
// (internal/identity). A node's identity may only subscribe to xDS as that
// node of that cluster; a user's role comes from the policy file; replicas
// may read (they ask each other for agent status). Health and reflection
// are open to every verified caller.
package auth

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/halolb/halo/internal/identity"
)

// Access is what a method needs.
type Access int

// The kinds of access, by method.
const (
	// Open: any verified caller (health, reflection).
	Open Access = iota
	// Read: a user with a role, or a replica.
	Read
	// Write: an admin user.
	Write
	// XDS: a node identity (then checked per request against the node it
	// subscribes as).
	XDS
)

// AccessOf classifies a full gRPC method name. Methods it does not know
// need Write, so that a new RPC is closed until someone decides.
func AccessOf(fullMethod string) Access {
	service, method, _ := strings.Cut(strings.TrimPrefix(fullMethod, "/"), "/")
	switch service {
	case "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection":
		return Open
	case "envoy.service.discovery.v3.AggregatedDiscoveryService":
		return XDS
	case "halo.v1.EndpointService", "halo.v1.StatusService":
		return Read
	case "halo.v1.TopologyService":
		if strings.HasPrefix(method, "Get") || strings.HasPrefix(method, "List") || method == "Watch" {
			return Read
		}
	}
	return Write
}

// Config configures an Authorizer.
type Config struct {
	// TrustDomain is the only trust domain whose identities are accepted.
	TrustDomain string
	// Policy gives users their roles.
	Policy *PolicyFile
	// Logger gets an audit line for every write allowed and every call
	// refused, with the caller's identity. Nil: discard.
	Logger *slog.Logger
}

// Authorizer checks callers. It expects connections whose client
// certificates gRPC's TLS credentials have verified.
type Authorizer struct {
	cfg Config
}

// New returns an Authorizer.
func New(cfg Config) (*Authorizer, error) {
	if err := identity.UserID(cfg.TrustDomain, "x").Validate(); err != nil {
		return nil, fmt.Errorf("auth: trust domain: %w", err)
	}
	if cfg.Policy == nil {
		return nil, fmt.Errorf("auth: a policy is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Authorizer{cfg: cfg}, nil
}

// Identity returns the caller's verified identity: Unauthenticated when
// there is none, PermissionDenied for another trust domain.
func (a *Authorizer) Identity(ctx context.Context) (identity.ID, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return identity.ID{}, status.Error(codes.Unauthenticated, "no peer")
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.VerifiedChains[0]) == 0 {
		return identity.ID{}, status.Error(codes.Unauthenticated, "a client certificate signed by the --client-ca is required")
	}
	id, err := identity.FromCertificate(ti.State.VerifiedChains[0][0])
	if err != nil {
		return identity.ID{}, status.Errorf(codes.Unauthenticated, "client certificate: %v", err)
	}
	if id.TrustDomain != a.cfg.TrustDomain {
		return identity.ID{}, status.Errorf(codes.PermissionDenied, "%s is not of trust domain %q", id, a.cfg.TrustDomain)
	}
	return id, nil
}

// authorize checks the caller against what method needs, and keeps an
// audit line of writes and refusals.
func (a *Authorizer) authorize(ctx context.Context, method string) error {
	id, err := a.check(ctx, method)
	switch {
	case err != nil:
		who := "none"
		if id.Kind != 0 {
			who = id.String()
		}
		a.cfg.Logger.Warn("call refused", "method", method, "identity", who, "error", err)
	case AccessOf(method) == Write:
		a.cfg.Logger.Info("write authorized", "method", method, "identity", id.String())
	}
	return err
}

func (a *Authorizer) check(ctx context.Context, method string) (identity.ID, error) {
	id, err := a.Identity(ctx)
	if err != nil {
		return id, err
	}
	need := AccessOf(method)
	switch need {
	case Open:
		return id, nil
	case XDS:
		if id.Kind == identity.Node {
			return id, nil
		}
		return id, status.Errorf(codes.PermissionDenied, "%s: only node identities (spiffe://%s/cluster/<cluster>/node/<node>) subscribe to xDS", id, a.cfg.TrustDomain)
	}
	switch id.Kind {
	case identity.Replica:
		if need == Read {
			return id, nil
		}
	case identity.User:
		role := a.cfg.Policy.Policy().RoleOf(id.Name)
		if role == Admin || (need == Read && role == ReadOnly) {
			return id, nil
		}
		return id, status.Errorf(codes.PermissionDenied, "%s (role %s) may not call %s: it needs the %s role", id, role, method, map[Access]Role{Read: ReadOnly, Write: Admin}[need])
	}
	return id, status.Errorf(codes.PermissionDenied, "%s may not call %s", id, method)
}

// CheckNode is the per-request check of an xDS stream: the caller must be
// node of cluster.
func (a *Authorizer) CheckNode(ctx context.Context, cluster, node string) error {
	id, err := a.Identity(ctx)
	if err != nil {
		return err
	}
	if id.Kind != identity.Node || id.Cluster != cluster || id.Name != node {
		return status.Errorf(codes.PermissionDenied, "%s may not subscribe as node %q of cluster %q", id, node, cluster)
	}
	return nil
}

// UnaryInterceptor checks every unary call.
func (a *Authorizer) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if err := a.authorize(ctx, info.FullMethod); err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// StreamInterceptor checks every stream as it opens.
func (a *Authorizer) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if err := a.authorize(ss.Context(), info.FullMethod); err != nil {
			return err
		}
		return handler(srv, ss)
	}
}

// Package api implements halo's admin gRPC services (TopologyService,
// EndpointService, StatusService) on top of the store, the endpoint
// evaluator and the ADS server. Handlers
// check the request's own fields, call one store method, and turn errors into
// gRPC status codes in one place (toStatus).
package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/server/ads"
	"github.com/halolb/halo/server/bootstrap"
	"github.com/halolb/halo/server/endpoints"
	"github.com/halolb/halo/server/replicas"
	"github.com/halolb/halo/server/store"
	"github.com/halolb/halo/server/topology"
)

// Config configures the services.
type Config struct {
	// Store is where the topology lives. Required.
	Store *store.Store
	// Logger receives the services' logs. Nil: discard.
	Logger *slog.Logger
	// Shutdown, when done, ends every open Watch stream with UNAVAILABLE, so
	// that a graceful stop does not wait for streams that never end. Nil:
	// streams end only with their clients.
	Shutdown context.Context
	// ADS is the xDS server whose agents StatusService lists. Required.
	ADS *ads.Server
	// Replica is this replica's name.
	Replica string
	// Replicas lists the live replicas, for ListAgents to ask the others.
	// Nil: list this replica's agents only.
	Replicas func(context.Context) ([]replicas.Replica, error)
	// PeerDialOptions are how this replica dials the others (credentials).
	PeerDialOptions []grpc.DialOption
	// XDSAddress is the address Envoy reaches this replica at, the default
	// of a rendered bootstrap.
	XDSAddress string
	// ProbeLeader names the replica that leads the probes ("" for none).
	// Nil: ListBackends leaves it empty.
	ProbeLeader func(context.Context) (string, error)
}

// Services holds the admin services; Register puts them on a gRPC server.
type Services struct {
	topology *topologyService
	endpoint *endpointService
	status   *statusService
}

// New returns the services.
func New(cfg Config) (*Services, error) {
	if cfg.Store == nil || cfg.ADS == nil {
		return nil, errors.New("api: Config.Store and Config.ADS are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Shutdown == nil {
		cfg.Shutdown = context.Background()
	}
	return &Services{
		topology: &topologyService{store: cfg.Store, log: cfg.Logger, shutdown: cfg.Shutdown},
		endpoint: &endpointService{store: cfg.Store, log: cfg.Logger, xdsAddress: cfg.XDSAddress},
		status: &statusService{ads: cfg.ADS, self: cfg.Replica, replicas: cfg.Replicas, dialOpts: cfg.PeerDialOptions,
			log: cfg.Logger, store: cfg.Store, probeLeader: cfg.ProbeLeader},
	}, nil
}

// Register registers the services on s.
func (sv *Services) Register(s grpc.ServiceRegistrar) {
	halov1.RegisterTopologyServiceServer(s, sv.topology)
	halov1.RegisterEndpointServiceServer(s, sv.endpoint)
	halov1.RegisterStatusServiceServer(s, sv.status)
}

// invalid turns a request-field validation failure into INVALID_ARGUMENT.
func invalid(log *slog.Logger, err error) error {
	return toStatus(log, "", err)
}

type topologyService struct {
	halov1.UnimplementedTopologyServiceServer
	store    *store.Store
	log      *slog.Logger
	shutdown context.Context
}

func (t *topologyService) PutCluster(ctx context.Context, req *halov1.PutClusterRequest) (*halov1.Cluster, error) {
	c, err := t.store.PutCluster(ctx, req.GetCluster(), req.GetExpectedRevision())
	return c, toStatus(t.log, "PutCluster", err)
}

func (t *topologyService) GetCluster(ctx context.Context, req *halov1.GetClusterRequest) (*halov1.Cluster, error) {
	if err := topology.ValidateClusterName("name", req.GetName()); err != nil {
		return nil, invalid(t.log, err)
	}
	c, err := t.store.GetCluster(ctx, req.GetName())
	return c, toStatus(t.log, "GetCluster", err)
}

func (t *topologyService) ListClusters(ctx context.Context, _ *halov1.ListClustersRequest) (*halov1.ListClustersResponse, error) {
	cs, rev, err := t.store.ListClusters(ctx)
	if err != nil {
		return nil, toStatus(t.log, "ListClusters", err)
	}
	return &halov1.ListClustersResponse{Clusters: cs, Revision: rev}, nil
}

func (t *topologyService) DeleteCluster(ctx context.Context, req *halov1.DeleteClusterRequest) (*halov1.DeleteClusterResponse, error) {
	if err := topology.ValidateClusterName("name", req.GetName()); err != nil {
		return nil, invalid(t.log, err)
	}
	rev, n, err := t.store.DeleteCluster(ctx, req.GetName(), req.GetForce(), req.GetExpectedRevision())
	if err != nil {
		return nil, toStatus(t.log, "DeleteCluster", err)
	}
	return &halov1.DeleteClusterResponse{Revision: rev, DeletedNodes: int32(min(n, math.MaxInt32))}, nil //nolint:gosec // clamped above
}

func (t *topologyService) PutNode(ctx context.Context, req *halov1.PutNodeRequest) (*halov1.Node, error) {
	n, err := t.store.PutNode(ctx, req.GetNode(), req.GetExpectedRevision())
	return n, toStatus(t.log, "PutNode", err)
}

func (t *topologyService) GetNode(ctx context.Context, req *halov1.GetNodeRequest) (*halov1.Node, error) {
	if err := validateNodeRef(req.GetCluster(), req.GetName()); err != nil {
		return nil, invalid(t.log, err)
	}
	n, err := t.store.GetNode(ctx, req.GetCluster(), req.GetName())
	return n, toStatus(t.log, "GetNode", err)
}

func (t *topologyService) ListNodes(ctx context.Context, req *halov1.ListNodesRequest) (*halov1.ListNodesResponse, error) {
	if err := topology.ValidateClusterName("cluster", req.GetCluster()); err != nil {
		return nil, invalid(t.log, err)
	}
	ns, rev, err := t.store.ListNodes(ctx, req.GetCluster())
	if err != nil {
		return nil, toStatus(t.log, "ListNodes", err)
	}
	return &halov1.ListNodesResponse{Nodes: ns, Revision: rev}, nil
}

func (t *topologyService) DeleteNode(ctx context.Context, req *halov1.DeleteNodeRequest) (*halov1.DeleteNodeResponse, error) {
	if err := validateNodeRef(req.GetCluster(), req.GetName()); err != nil {
		return nil, invalid(t.log, err)
	}
	rev, err := t.store.DeleteNode(ctx, req.GetCluster(), req.GetName(), req.GetExpectedRevision())
	if err != nil {
		return nil, toStatus(t.log, "DeleteNode", err)
	}
	return &halov1.DeleteNodeResponse{Revision: rev}, nil
}

func (t *topologyService) Watch(req *halov1.WatchRequest, stream grpc.ServerStreamingServer[halov1.WatchEvent]) error {
	if req.GetCluster() != "" {
		if err := topology.ValidateClusterName("cluster", req.GetCluster()); err != nil {
			return invalid(t.log, err)
		}
	}
	if req.GetFromRevision() < 0 {
		return invalid(t.log, &topology.Error{Violations: []topology.FieldViolation{{
			Field: "from_revision", Description: "must be 0 (from now) or a revision"}}})
	}
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	stop := context.AfterFunc(t.shutdown, cancel)
	defer stop()
	err := t.store.Watch(ctx, req.GetCluster(), req.GetFromRevision(), stream.Send)
	if t.shutdown.Err() != nil && stream.Context().Err() == nil {
		return status.Error(codes.Unavailable, "halo-server is shutting down; watch again from the last revision + 1 on another replica")
	}
	return toStatus(t.log, "Watch", err)
}

func validateNodeRef(cluster, name string) error {
	if err := topology.ValidateClusterName("cluster", cluster); err != nil {
		return err
	}
	return topology.ValidateNodeName("name", name)
}

type endpointService struct {
	halov1.UnimplementedEndpointServiceServer
	store      *store.Store
	log        *slog.Logger
	xdsAddress string
}

func (e *endpointService) ResolveEndpoints(ctx context.Context, req *halov1.ResolveEndpointsRequest) (*halov1.NodeEndpoints, error) {
	if err := topology.ValidateClusterName("cluster", req.GetCluster()); err != nil {
		return nil, invalid(e.log, err)
	}
	if err := topology.ValidateNodeName("node", req.GetNode()); err != nil {
		return nil, invalid(e.log, err)
	}
	c, nodes, rev, err := e.store.Topology(ctx, req.GetCluster())
	if err != nil {
		return nil, toStatus(e.log, "ResolveEndpoints", err)
	}
	ep, err := endpoints.Resolve(c, nodes, req.GetNode())
	if err != nil {
		return nil, toStatus(e.log, "ResolveEndpoints", err)
	}
	ep.Revision = rev
	return ep, nil
}

func (e *endpointService) GetCertificateSANs(ctx context.Context, req *halov1.GetCertificateSANsRequest) (*halov1.CertificateSANs, error) {
	if err := topology.ValidateClusterName("cluster", req.GetCluster()); err != nil {
		return nil, invalid(e.log, err)
	}
	c, nodes, rev, err := e.store.Topology(ctx, req.GetCluster())
	if err != nil {
		return nil, toStatus(e.log, "GetCertificateSANs", err)
	}
	sans := endpoints.CertificateSANs(c, nodes)
	sans.Revision = rev
	return sans, nil
}

func (e *endpointService) GetEnvoyBootstrap(ctx context.Context, req *halov1.GetEnvoyBootstrapRequest) (*halov1.EnvoyBootstrap, error) {
	if err := validateNodeRef(req.GetCluster(), req.GetNode()); err != nil {
		return nil, invalid(e.log, err)
	}
	var v []topology.FieldViolation
	if req.GetAdminPort() > 65535 {
		v = append(v, topology.FieldViolation{Field: "admin_port", Description: fmt.Sprintf("%d is out of range 1-65535", req.GetAdminPort())})
	}
	for i, s := range req.GetXdsServers() {
		if _, port, err := net.SplitHostPort(s); err != nil || port == "" || port == "0" {
			v = append(v, topology.FieldViolation{Field: fmt.Sprintf("xds_servers[%d]", i), Description: fmt.Sprintf("%q is not host:port", s)})
		}
	}
	if (req.GetCertFile() == "") != (req.GetKeyFile() == "") || (req.GetCertFile() != "" && req.GetCaFile() == "") {
		v = append(v, topology.FieldViolation{Field: "cert_file", Description: "cert_file and key_file go together, and need ca_file"})
	}
	if len(v) > 0 {
		return nil, invalid(e.log, &topology.Error{Violations: v})
	}
	// The node must exist: a bootstrap for a node halo does not know would
	// never get resources.
	if _, err := e.store.GetNode(ctx, req.GetCluster(), req.GetNode()); err != nil {
		return nil, toStatus(e.log, "GetEnvoyBootstrap", err)
	}
	servers := req.GetXdsServers()
	if len(servers) == 0 {
		servers = []string{e.xdsAddress}
	}
	b, err := bootstrap.Render(bootstrap.Params{Cluster: req.GetCluster(), Node: req.GetNode(), XDSServers: servers,
		AdminPort: req.GetAdminPort(), CAFile: req.GetCaFile(), CertFile: req.GetCertFile(), KeyFile: req.GetKeyFile()})
	if err != nil {
		return nil, toStatus(e.log, "GetEnvoyBootstrap", err)
	}
	y, err := bootstrap.YAML(b)
	if err != nil {
		return nil, toStatus(e.log, "GetEnvoyBootstrap", err)
	}
	j, err := bootstrap.JSON(b)
	if err != nil {
		return nil, toStatus(e.log, "GetEnvoyBootstrap", err)
	}
	return &halov1.EnvoyBootstrap{Yaml: string(y), Json: string(j)}, nil
}

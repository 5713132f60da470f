package api

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	halov1 "github.com/halolb/halo/gen/halo/v1"
	"github.com/halolb/halo/server/ads"
	"github.com/halolb/halo/server/replicas"
	"github.com/halolb/halo/server/store"
	"github.com/halolb/halo/server/topology"
)

// peerTimeout bounds a fan-out query to another replica.
const peerTimeout = 3 * time.Second

type statusService struct {
	halov1.UnimplementedStatusServiceServer
	ads      *ads.Server
	self     string
	replicas func(context.Context) ([]replicas.Replica, error)
	dialOpts []grpc.DialOption
	log      *slog.Logger

	store       *store.Store
	probeLeader func(context.Context) (string, error)
}

// ListBackends lists a cluster's backends (masters' apiservers and etcd
// members) with the health the prober stored; a backend not probed yet is
// UNSPECIFIED, and a draining node is DRAINING whatever its probes say.
func (s *statusService) ListBackends(ctx context.Context, req *halov1.ListBackendsRequest) (*halov1.ListBackendsResponse, error) {
	const method = "ListBackends"
	if err := topology.ValidateClusterName("cluster", req.GetCluster()); err != nil {
		return nil, invalid(s.log, err)
	}
	c, nodes, _, err := s.store.Topology(ctx, req.GetCluster())
	if err != nil {
		return nil, toStatus(s.log, method, err)
	}
	stored, _, err := s.store.BackendStatuses(ctx, req.GetCluster())
	if err != nil {
		return nil, toStatus(s.log, method, err)
	}
	type key struct {
		node string
		kind halov1.BackendKind
	}
	byKey := map[key]*halov1.BackendStatus{}
	for _, st := range stored {
		byKey[key{st.GetNode(), st.GetKind()}] = st
	}
	d := topology.WithDefaults(c)
	out := &halov1.ListBackendsResponse{}
	add := func(n *halov1.Node, kind halov1.BackendKind, port uint32) {
		st := byKey[key{n.GetName(), kind}]
		if st == nil {
			st = &halov1.BackendStatus{Cluster: c.GetName(), Node: n.GetName(), Kind: kind}
		}
		st.Address = net.JoinHostPort(topology.AccessIP(n), strconv.Itoa(int(port)))
		if n.GetDraining() {
			st.State = halov1.BackendState_BACKEND_STATE_DRAINING
		}
		out.Backends = append(out.Backends, st)
	}
	for _, n := range topology.Masters(nodes) {
		add(n, halov1.BackendKind_BACKEND_KIND_APISERVER, d.GetApiserver().GetPort())
	}
	for _, n := range topology.EtcdMembers(nodes) {
		add(n, halov1.BackendKind_BACKEND_KIND_ETCD, d.GetEtcd().GetClientPort())
	}
	slices.SortFunc(out.Backends, func(a, b *halov1.BackendStatus) int {
		if a.GetNode() != b.GetNode() {
			return strings.Compare(a.GetNode(), b.GetNode())
		}
		return int(a.GetKind()) - int(b.GetKind())
	})
	if s.probeLeader != nil {
		if out.Prober, err = s.probeLeader(ctx); err != nil {
			s.log.Warn("cannot tell which replica probes", "error", err)
		}
	}
	return out, nil
}

func (s *statusService) ListAgents(ctx context.Context, req *halov1.ListAgentsRequest) (*halov1.ListAgentsResponse, error) {
	if req.GetCluster() != "" {
		if err := topology.ValidateClusterName("cluster", req.GetCluster()); err != nil {
			return nil, invalid(s.log, err)
		}
	}
	out := &halov1.ListAgentsResponse{}
	for _, a := range s.ads.Agents(req.GetCluster()) {
		out.Agents = append(out.Agents, agentProto(a))
	}
	if req.GetLocalOnly() || s.replicas == nil {
		return out, nil
	}
	reps, err := s.replicas(ctx)
	if err != nil {
		s.log.Warn("cannot list the other replicas", "error", err)
		out.UnreachableReplicas = append(out.UnreachableReplicas, "other replicas (listing them failed: "+err.Error()+")")
		return out, nil
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, r := range reps {
		if r.Name == s.self {
			continue
		}
		wg.Go(func() {
			agents, err := s.askPeer(ctx, r, req.GetCluster())
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				s.log.Warn("replica did not answer ListAgents", "replica", r.Name, "address", r.Address, "error", err)
				out.UnreachableReplicas = append(out.UnreachableReplicas, r.Name)
				return
			}
			out.Agents = append(out.Agents, agents...)
		})
	}
	wg.Wait()
	slices.SortFunc(out.Agents, func(a, b *halov1.AgentStatus) int {
		if c := strings.Compare(a.GetCluster(), b.GetCluster()); c != 0 {
			return c
		}
		if c := strings.Compare(a.GetNode(), b.GetNode()); c != 0 {
			return c
		}
		return strings.Compare(a.GetReplica(), b.GetReplica())
	})
	slices.Sort(out.UnreachableReplicas)
	return out, nil
}

// askPeer lists the agents of another replica.
func (s *statusService) askPeer(ctx context.Context, r replicas.Replica, cluster string) ([]*halov1.AgentStatus, error) {
	conn, err := grpc.NewClient(r.Address, s.dialOpts...)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", r.Address, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, peerTimeout)
	defer cancel()
	resp, err := halov1.NewStatusServiceClient(conn).ListAgents(ctx, &halov1.ListAgentsRequest{Cluster: cluster, LocalOnly: true})
	if err != nil {
		return nil, err
	}
	return resp.GetAgents(), nil
}

func agentProto(a ads.AgentStatus) *halov1.AgentStatus {
	p := &halov1.AgentStatus{
		Cluster: a.Cluster, Node: a.Node, Replica: a.Replica, ConnectedSince: timestamppb.New(a.ConnectedSince),
		Protocol: a.Protocol, PeerAddress: a.Peer, UserAgent: strings.TrimSpace(a.UserAgent), Profile: a.Profile, Condition: a.Condition,
		InSync: len(a.Types) > 0,
	}
	for _, t := range a.Types {
		ts := &halov1.ResourceTypeStatus{TypeUrl: t.TypeURL, AckedVersion: t.AckedVersion, CurrentVersion: t.CurrentVersion,
			InSync: t.InSync, Pending: t.Pending, NackVersion: t.NackVersion, NackError: t.NackError}
		if !t.AckedAt.IsZero() {
			ts.AckedAt = timestamppb.New(t.AckedAt)
		}
		if !t.NackAt.IsZero() {
			ts.NackAt = timestamppb.New(t.NackAt)
		}
		p.InSync = p.InSync && t.InSync
		p.Types = append(p.Types, ts)
	}
	return p
}

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/halolb/halo/bench/internal/proxyproc"
	halov1 "github.com/halolb/halo/gen/halo/v1"
)

const clusterName = "bench"

// halo is a halo-server (embedded etcd, default probe settings) with the
// bench's cluster, and one halo-agent as a worker node.
type halo struct {
	server *proxyproc.Proc
	agent  *proxyproc.Proc
	conn   *grpc.ClientConn
	topo   halov1.TopologyServiceClient
	status halov1.StatusServiceClient
}

// haloBins are the built halo-server and halo-agent.
type haloBins struct{ server, agent string }

// startHalo starts halo-server in dir, puts the cluster (the masters on
// port, the agent's listener on nsp) and workers extra worker nodes, and
// starts the agent, its listener on agentListen (127.0.0.1:nsp); it
// returns once every master is probed healthy and the agent is ready.
func startHalo(ctx context.Context, bins haloBins, dir string, masters []*master, port int, agentListen string) (_ *halo, err error) {
	_, nspStr, err := net.SplitHostPort(agentListen)
	if err != nil {
		return nil, err
	}
	var nsp int
	if _, err := fmt.Sscan(nspStr, &nsp); err != nil {
		return nil, fmt.Errorf("agent listen %q: %w", agentListen, err)
	}
	listen, err := proxyproc.FreePort()
	if err != nil {
		return nil, err
	}
	h := &halo{}
	defer func() {
		if err != nil {
			h.stop()
		}
	}()
	h.server, err = proxyproc.Start("halo-server", []string{bins.server, "--listen", listen, "--metrics-listen", "",
		"--data-dir", filepath.Join(dir, "halo-data"), "--log-level", "warn", "--log-format", "json"}, nil)
	if err != nil {
		return nil, err
	}
	h.conn, err = grpc.NewClient(listen, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	h.topo, h.status = halov1.NewTopologyServiceClient(h.conn), halov1.NewStatusServiceClient(h.conn)
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	hc := healthpb.NewHealthClient(h.conn)
	if err := h.server.WaitUntil(rctx, func() error {
		r, err := hc.Check(rctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			return err
		}
		if r.Status != healthpb.HealthCheckResponse_SERVING {
			return errors.New(r.Status.String())
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("halo-server not serving: %w; its output: %s", err, h.server.Output())
	}
	c := &halov1.Cluster{Name: clusterName, Apiserver: &halov1.ApiServer{Port: uint32(port), LocalLbPort: uint32(nsp)}}
	if _, err := h.topo.PutCluster(rctx, &halov1.PutClusterRequest{Cluster: c}); err != nil {
		return nil, fmt.Errorf("PutCluster: %w", err)
	}
	for i, m := range masters {
		ip, _, _ := net.SplitHostPort(m.addr)
		n := &halov1.Node{Cluster: clusterName, Name: m.name, Ip: ip, Ordinal: int32(i), Roles: []halov1.Role{halov1.Role_ROLE_CONTROL_PLANE}}
		if _, err := h.topo.PutNode(rctx, &halov1.PutNodeRequest{Node: n}); err != nil {
			return nil, fmt.Errorf("PutNode %s: %w", m.name, err)
		}
	}
	if err := h.putWorkers(rctx, 1); err != nil {
		return nil, err
	}
	admin, err := proxyproc.FreePort()
	if err != nil {
		return nil, err
	}
	h.agent, err = proxyproc.Start("halo-agent", []string{bins.agent, "--server", listen, "--cluster", clusterName, "--node", workerName(0),
		"--admin-listen", admin, "--cache-dir", filepath.Join(dir, "agent-cache"), "--log-level", "warn"}, nil)
	if err != nil {
		return nil, err
	}
	if err := h.agent.WaitUntil(rctx, func() error { return proxyproc.WaitHTTP200(rctx, "http://"+admin+"/readyz") }); err != nil {
		return nil, fmt.Errorf("halo-agent not ready: %w; its output: %s", err, h.agent.Output())
	}
	if err := h.server.WaitUntil(rctx, func() error {
		bs, err := h.backends(rctx)
		if err != nil {
			return err
		}
		var bad []string
		for _, b := range bs {
			if b.GetState() != halov1.BackendState_BACKEND_STATE_HEALTHY {
				bad = append(bad, b.GetNode()+" "+b.GetState().String())
			}
		}
		if len(bs) != len(masters) || len(bad) > 0 {
			return fmt.Errorf("%d backends, not healthy: %s", len(bs), strings.Join(bad, ", "))
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("masters not probed healthy: %w", err)
	}
	return h, nil
}

func workerName(i int) string { return fmt.Sprintf("worker-%04d", i) }

// putWorkers makes sure workers 0..n-1 exist (addresses in 127.1.0.0/16,
// never contacted).
func (h *halo) putWorkers(ctx context.Context, n int) error {
	for i := range n {
		ip := fmt.Sprintf("127.1.%d.%d", i/250, 1+i%250)
		w := &halov1.Node{Cluster: clusterName, Name: workerName(i), Ip: ip, Roles: []halov1.Role{halov1.Role_ROLE_WORKER}}
		if _, err := h.topo.PutNode(ctx, &halov1.PutNodeRequest{Node: w}); err != nil {
			return fmt.Errorf("PutNode %s: %w", w.Name, err)
		}
	}
	return nil
}

// backends are the cluster's apiserver backends as the prober sees them.
func (h *halo) backends(ctx context.Context) ([]*halov1.BackendStatus, error) {
	r, err := h.status.ListBackends(ctx, &halov1.ListBackendsRequest{Cluster: clusterName})
	if err != nil {
		return nil, err
	}
	var out []*halov1.BackendStatus
	for _, b := range r.GetBackends() {
		if b.GetKind() == halov1.BackendKind_BACKEND_KIND_APISERVER {
			out = append(out, b)
		}
	}
	return out, nil
}

// unhealthySince returns when the prober marked the master unhealthy
// (zero: it has not).
func (h *halo) unhealthySince(ctx context.Context, name string) time.Time {
	bs, err := h.backends(ctx)
	if err != nil {
		return time.Time{}
	}
	for _, b := range bs {
		if b.GetNode() == name && b.GetState() == halov1.BackendState_BACKEND_STATE_UNHEALTHY {
			return b.GetSince().AsTime()
		}
	}
	return time.Time{}
}

func (h *halo) stop() {
	if h.agent != nil {
		h.agent.Stop()
	}
	if h.conn != nil {
		h.conn.Close()
	}
	if h.server != nil {
		h.server.Stop()
	}
}

// buildHalo builds both binaries into dir.
func buildHalo(dir string) (haloBins, error) {
	var b haloBins
	var err error
	if b.server, err = proxyproc.Build(dir, "./server/cmd/halo-server"); err != nil {
		return b, err
	}
	b.agent, err = proxyproc.Build(dir, "./agent/cmd/halo-agent")
	return b, err
}

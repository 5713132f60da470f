package proxy

import (
	"net/netip"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the proxy's Prometheus metrics.
type metrics struct {
	active          *prometheus.GaugeVec
	total           *prometheus.CounterVec
	bytes           *prometheus.CounterVec
	failed          *prometheus.CounterVec
	connectFailures *prometheus.CounterVec
	ejections       *prometheus.CounterVec
	closedUnhealthy *prometheus.CounterVec
	rebalanced      *prometheus.CounterVec
	bound           *prometheus.GaugeVec
	bindErrors      *prometheus.CounterVec

	mu    sync.Mutex
	conns map[connKey]*connMetrics
}

type connKey struct {
	listener string
	backend  netip.AddrPort
}

// connMetrics are one listener×backend's series, looked up once.
type connMetrics struct {
	active   prometheus.Gauge
	total    prometheus.Counter
	up, down prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	lb := []string{"listener", "backend"}
	m := &metrics{
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "halo_agent_connections_active",
			Help: "Proxied connections open, per listener and backend."}, lb),
		total: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "halo_agent_connections_total",
			Help: "Proxied connections established, per listener and backend."}, lb),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "halo_agent_bytes_total",
			Help: "Bytes proxied per listener and backend; direction up is client to backend, down is backend to client."},
			[]string{"listener", "backend", "direction"}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "halo_agent_connections_failed_total",
			Help: "Accepted connections closed without reaching a backend, by reason (no_cluster, no_endpoint, overflow, connect_failed)."},
			[]string{"listener", "reason"}),
		connectFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "halo_agent_connect_failures_total",
			Help: "Failed connects to a backend (refused or timed out); the connection moves on to the next backend."},
			[]string{"cluster", "backend"}),
		ejections: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "halo_agent_ejections_total",
			Help: "Backends ejected locally after consecutive connect failures."}, []string{"cluster", "backend"}),
		closedUnhealthy: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "halo_agent_connections_closed_unhealthy_total",
			Help: "Connections closed because EDS turned their backend unhealthy."}, []string{"cluster", "backend"}),
		rebalanced: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "halo_agent_rebalanced_connections_total",
			Help: "Long-lived connections closed by rebalancing so that they spread evenly again."}, []string{"cluster"}),
		bound: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "halo_agent_listener_bound",
			Help: "1 when the listener's socket is bound, 0 while binding is retried."}, []string{"listener", "address"}),
		bindErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "halo_agent_listener_bind_errors_total",
			Help: "Failed attempts to bind a listener's address (busy, or not on this host)."}, []string{"listener"}),
		conns: map[connKey]*connMetrics{},
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.active, m.total, m.bytes, m.failed, m.connectFailures, m.ejections, m.closedUnhealthy, m.rebalanced, m.bound, m.bindErrors} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// conn returns the series of one listener×backend.
func (m *metrics) conn(listener string, backend netip.AddrPort) *connMetrics {
	k := connKey{listener, backend}
	m.mu.Lock()
	defer m.mu.Unlock()
	if c := m.conns[k]; c != nil {
		return c
	}
	b := backend.String()
	c := &connMetrics{
		active: m.active.WithLabelValues(listener, b),
		total:  m.total.WithLabelValues(listener, b),
		up:     m.bytes.WithLabelValues(listener, b, "up"),
		down:   m.bytes.WithLabelValues(listener, b, "down"),
	}
	m.conns[k] = c
	return c
}

func (m *metrics) setBound(listener string, addr netip.AddrPort, bound bool) {
	v := 0.0
	if bound {
		v = 1
	}
	m.bound.WithLabelValues(listener, addr.String()).Set(v)
}

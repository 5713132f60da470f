package xdsclient

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	connected  prometheus.Gauge
	updates    *prometheus.CounterVec
	reconnects prometheus.Counter
	configInfo *prometheus.GaugeVec
}

// newMetrics creates the client's metrics and registers them on reg, if
// not nil. Label "type" holds the resource's type URL.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "halo", Subsystem: "agent_xds", Name: "connected",
			Help: "1 while an ADS stream to a halo-server is open, else 0.",
		}),
		updates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "halo", Subsystem: "agent_xds", Name: "updates_total",
			Help: "ADS responses handled, by resource type URL and result (ack, nack).",
		}, []string{"type", "result"}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "halo", Subsystem: "agent_xds", Name: "reconnects_total",
			Help: "ADS connection attempts after the first one.",
		}),
		configInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "halo", Subsystem: "agent_xds", Name: "config_info",
			Help: "The last ACKed version of each resource type URL (value 1).",
		}, []string{"type", "version"}),
	}
	if reg == nil {
		return m, nil
	}
	var done []prometheus.Collector
	for _, c := range []prometheus.Collector{m.connected, m.updates, m.reconnects, m.configInfo} {
		if err := reg.Register(c); err != nil {
			for _, d := range done {
				reg.Unregister(d) // all or nothing, so that New can be retried
			}
			return nil, fmt.Errorf("xdsclient: Config.Registerer: register metrics: %w", err)
		}
		done = append(done, c)
	}
	return m, nil
}

package ads

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	streams   *prometheus.GaugeVec
	responses *prometheus.CounterVec
	nacks     *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		streams: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "halo", Subsystem: "xds", Name: "streams",
			Help: "Open ADS streams, by protocol (delta, sotw).",
		}, []string{"protocol"}),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "halo", Subsystem: "xds", Name: "responses_total",
			Help: "ADS responses sent, by resource type.",
		}, []string{"type_url"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "halo", Subsystem: "xds", Name: "nacks_total",
			Help: "Configurations nodes rejected (NACK), by resource type.",
		}, []string{"type_url"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.streams, m.responses, m.nacks} {
		if err := reg.Register(c); err != nil {
			return nil, errors.Join(errors.New("ads: register metrics"), err)
		}
	}
	return m, nil
}

package coordinator

import (
	"context"
	"net/http"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
)

// Metrics are the coordinator's Prometheus metrics (served at /metrics),
// in a registry of their own so several coordinators can live in one
// process (tests, the simulator), with the standard process and Go
// runtime collectors. The counters are saved in the store when a round
// closes and at shutdown (SaveMetrics) and restored at start-up, so a
// restart does not reset them.
type Metrics struct {
	reg *prometheus.Registry

	rounds          prometheus.Counter
	roundsFailed    prometheus.Counter
	updatesAccepted prometheus.Counter
	bytesReceived   prometheus.Counter
	rejectedBy      *prometheus.CounterVec
	registrations   *prometheus.CounterVec
	roundDuration   prometheus.Histogram
	aggregation     prometheus.Histogram
	upload          prometheus.Histogram

	workers atomic.Int64 // opencluster_workers_registered
}

func newMetrics() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	m.rounds = counter("opencluster_rounds_total", "Rounds closed (published or failed).")
	m.roundsFailed = counter("opencluster_rounds_failed_total", "Rounds closed as failed (no usable aggregate; adapter unchanged).")
	m.updatesAccepted = counter("opencluster_updates_accepted_total", "Updates accepted for aggregation.")
	m.bytesReceived = counter("opencluster_bytes_received_total", "Bytes of accepted updates received.")
	m.rejectedBy = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "opencluster_updates_rejected_total",
		Help: "Requests refused, by reason (the error code)."}, []string{"reason"})
	m.registrations = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "opencluster_registrations_total",
		Help: "Registrations, by result: new key, known key, refused."}, []string{"result"})
	m.roundDuration = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "opencluster_round_duration_seconds",
		Help: "Time from cohort pick to close, on the coordinator's clock.", Buckets: prometheus.ExponentialBuckets(1, 2, 14)})
	m.aggregation = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "opencluster_aggregation_seconds",
		Help: "Wall time of closing a round: reading the updates, aggregating, publishing, the ledger record.", Buckets: prometheus.ExponentialBuckets(0.001, 4, 10)})
	m.upload = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "opencluster_upload_seconds",
		Help: "Wall time of POST /v1/updates, from the request to the answer (body read included).", Buckets: prometheus.ExponentialBuckets(0.001, 4, 10)})
	workers := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "opencluster_workers_registered", Help: "Workers registered."},
		func() float64 { return float64(m.workers.Load()) })
	for _, r := range []string{"new", "known", "refused"} {
		m.registrations.WithLabelValues(r) // present at 0 from the start
	}
	m.reg.MustRegister(m.rounds, m.roundsFailed, m.updatesAccepted, m.bytesReceived, m.rejectedBy, m.registrations,
		m.roundDuration, m.aggregation, m.upload, workers,
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), collectors.NewGoCollector())
	return m
}

func (m *Metrics) registration(result string) { m.registrations.WithLabelValues(result).Inc() }

func (m *Metrics) rejected(reason string) { m.rejectedBy.WithLabelValues(reason).Inc() }

func (m *Metrics) roundClosed(d time.Duration) {
	m.rounds.Inc()
	m.roundDuration.Observe(d.Seconds())
}

// Handler serves the metrics in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Rejected returns the count of requests refused with the given reason code.
func (m *Metrics) Rejected(reason string) int64 {
	return int64(value(m.rejectedBy.WithLabelValues(reason)))
}

// Accepted returns opencluster_updates_accepted_total.
func (m *Metrics) Accepted() int64 { return int64(value(m.updatesAccepted)) }

func value(c prometheus.Metric) float64 {
	var d dto.Metric
	c.Write(&d)
	return d.GetCounter().GetValue()
}

// counters returns every opencluster counter as name{labels} -> value.
func (m *Metrics) counters() (map[string]float64, error) {
	fams, err := m.reg.Gather()
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, f := range fams {
		if f.GetType() != dto.MetricType_COUNTER || !strings.HasPrefix(f.GetName(), "opencluster_") {
			continue
		}
		for _, mt := range f.GetMetric() {
			out[seriesName(f.GetName(), mt.GetLabel())] = mt.GetCounter().GetValue()
		}
	}
	return out, nil
}

func seriesName(name string, labels []*dto.LabelPair) string {
	if len(labels) == 0 {
		return name
	}
	var parts []string
	for _, l := range labels {
		parts = append(parts, l.GetName()+"="+l.GetValue())
	}
	sort.Strings(parts)
	return name + "{" + strings.Join(parts, ",") + "}"
}

// restore adds saved counter values (from counters) to the fresh counters.
func (m *Metrics) restore(saved map[string]float64) {
	plain := map[string]prometheus.Counter{"opencluster_rounds_total": m.rounds, "opencluster_rounds_failed_total": m.roundsFailed,
		"opencluster_updates_accepted_total": m.updatesAccepted, "opencluster_bytes_received_total": m.bytesReceived}
	vecs := map[string]*prometheus.CounterVec{"opencluster_updates_rejected_total": m.rejectedBy, "opencluster_registrations_total": m.registrations}
	for series, v := range saved {
		if v <= 0 {
			continue
		}
		name, labels, _ := strings.Cut(strings.TrimSuffix(series, "}"), "{")
		if c, ok := plain[name]; ok && labels == "" {
			c.Add(v)
			continue
		}
		vec, ok := vecs[name]
		if !ok {
			continue // a counter this build no longer has
		}
		lv := prometheus.Labels{}
		for _, kv := range strings.Split(labels, ",") {
			if k, val, ok := strings.Cut(kv, "="); ok {
				lv[k] = val
			}
		}
		if c, err := vec.GetMetricWith(lv); err == nil {
			c.Add(v)
		}
	}
}

// SaveMetrics stores the counters' values, so the next start continues
// them (it is also done whenever a round closes).
func (c *Coordinator) SaveMetrics(ctx context.Context) error {
	vals, err := c.M.counters()
	if err != nil {
		return err
	}
	return c.store.SaveCounters(ctx, vals)
}

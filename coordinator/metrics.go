package coordinator

import (
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Metrics are the coordinator's counters, written in the Prometheus text
// exposition format (version 0.0.4) by WriteTo; hand-written, no client
// library.
type Metrics struct {
	roundsTotal     atomic.Int64
	roundsFailed    atomic.Int64
	updatesAccepted atomic.Int64
	bytesReceived   atomic.Int64
	workers         atomic.Int64

	mu            sync.Mutex
	rejectedBy    map[string]int64
	registered    map[string]int64
	roundDurSum   float64
	roundDurCount int64
	roundDurLast  float64
}

func newMetrics() *Metrics {
	return &Metrics{rejectedBy: map[string]int64{}, registered: map[string]int64{}}
}

func (m *Metrics) registration(result string) {
	m.mu.Lock()
	m.registered[result]++
	m.mu.Unlock()
}

func (m *Metrics) rejected(reason string) {
	m.mu.Lock()
	m.rejectedBy[reason]++
	m.mu.Unlock()
}

func (m *Metrics) roundClosed(d time.Duration) {
	m.roundsTotal.Add(1)
	m.mu.Lock()
	m.roundDurSum += d.Seconds()
	m.roundDurCount++
	m.roundDurLast = d.Seconds()
	m.mu.Unlock()
}

// Rejected returns the count of updates rejected with the given reason code.
func (m *Metrics) Rejected(reason string) int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rejectedBy[reason]
}

// Accepted returns updates_accepted_total.
func (m *Metrics) Accepted() int64 { return m.updatesAccepted.Load() }

// WriteTo writes every metric in the Prometheus text format.
func (m *Metrics) WriteTo(w io.Writer) (int64, error) {
	var n int64
	p := func(format string, args ...any) {
		k, _ := fmt.Fprintf(w, format, args...)
		n += int64(k)
	}
	p("# HELP opencluster_rounds_total Rounds aggregated and published.\n# TYPE opencluster_rounds_total counter\nopencluster_rounds_total %d\n", m.roundsTotal.Load())
	p("# HELP opencluster_rounds_failed_total Rounds closed as failed (no usable aggregate; adapter unchanged).\n# TYPE opencluster_rounds_failed_total counter\nopencluster_rounds_failed_total %d\n", m.roundsFailed.Load())
	p("# HELP opencluster_updates_accepted_total Updates accepted for aggregation.\n# TYPE opencluster_updates_accepted_total counter\nopencluster_updates_accepted_total %d\n", m.updatesAccepted.Load())
	p("# HELP opencluster_updates_rejected_total Updates refused, by reason.\n# TYPE opencluster_updates_rejected_total counter\n")
	m.mu.Lock()
	reasons := make([]string, 0, len(m.rejectedBy))
	for r := range m.rejectedBy {
		reasons = append(reasons, r)
	}
	slices.Sort(reasons)
	for _, r := range reasons {
		p("opencluster_updates_rejected_total{reason=%q} %d\n", r, m.rejectedBy[r])
	}
	p("# HELP opencluster_registrations_total Registrations, by result: new key, known key, refused.\n# TYPE opencluster_registrations_total counter\n")
	for _, r := range []string{"new", "known", "refused"} {
		p("opencluster_registrations_total{result=%q} %d\n", r, m.registered[r])
	}
	sum, count, last := m.roundDurSum, m.roundDurCount, m.roundDurLast
	m.mu.Unlock()
	p("# HELP opencluster_bytes_received_total Bytes of accepted updates received.\n# TYPE opencluster_bytes_received_total counter\nopencluster_bytes_received_total %d\n", m.bytesReceived.Load())
	p("# HELP opencluster_round_duration_seconds Time from cohort pick to publication.\n# TYPE opencluster_round_duration_seconds summary\nopencluster_round_duration_seconds_sum %g\nopencluster_round_duration_seconds_count %d\n", sum, count)
	p("# HELP opencluster_round_duration_last_seconds Duration of the last published round.\n# TYPE opencluster_round_duration_last_seconds gauge\nopencluster_round_duration_last_seconds %g\n", last)
	p("# HELP opencluster_workers_registered Workers registered.\n# TYPE opencluster_workers_registered gauge\nopencluster_workers_registered %d\n", m.workers.Load())
	return n, nil
}

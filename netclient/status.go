package netclient

import (
	"encoding/json"
	"io"
	"log/slog"
	"math"
	"sync"
	"time"
)

// Phases a worker goes through in a round, in order.
const (
	PhaseRegister = "register" // introducing the key to the coordinator
	PhaseWait     = "wait"     // long-polling for a round
	PhaseDownload = "download" // fetching the base and the global adapter
	PhaseTrain    = "train"    // local steps
	PhaseSecure   = "secure"   // a secure-aggregation stage (keys, shares)
	PhaseUpload   = "upload"   // sending the signed, compressed delta
	PhaseDone     = "done"     // the round's update was answered
	PhaseRetry    = "retry"    // backing off after an error
)

// Event is one status record: what the worker is doing, how far along,
// and its running totals. With --json each is one line on stdout.
// The JSON names follow docs/json.md, shared by every command's --json.
type Event struct {
	// Phase is the kind of record ("event" in JSON, as in every --json
	// stream): one of the Phase constants.
	Phase    string    `json:"event"`
	Time     time.Time `json:"time"`
	ElapsedS float64   `json:"elapsed_s"` // seconds since the first event of this process
	Round    uint64    `json:"round,omitempty"`
	Progress float64   `json:"progress"` // 0..1 within the phase
	Step     int       `json:"step,omitempty"`
	Steps    int       `json:"steps,omitempty"`
	Loss     float64   `json:"loss,omitempty"` // training loss (step: this step; done: the round's mean)

	// BytesUp and BytesDown are the worker's totals since it started.
	BytesUp   int64 `json:"bytes_up"`
	BytesDown int64 `json:"bytes_down"`
	// RoundBytesUp/Down are this round's traffic (done events).
	RoundBytesUp   int64 `json:"round_bytes_up,omitempty"`
	RoundBytesDown int64 `json:"round_bytes_down,omitempty"`
	// UpdateBytes and CompressionRatio describe the upload: the signed
	// update's size and the dense fp32 delta's size over the payload's.
	UpdateBytes      int     `json:"update_bytes,omitempty"`
	CompressionRatio float64 `json:"compression_ratio,omitempty"`
	Tokens           int64   `json:"tokens,omitempty"`
	// EnergyJ is the energy of this round's training, when metered.
	EnergyJ float64 `json:"energy_j,omitempty"`
	// EnergyMeasured says EnergyJ came from a meter (RAPL, NVML), not an estimate.
	EnergyMeasured bool   `json:"energy_measured,omitempty"`
	Accepted       *bool  `json:"accepted,omitempty"`
	Message        string `json:"message,omitempty"`
}

// Reporter receives status events.
type Reporter interface{ Report(Event) }

// ReporterFunc adapts a function to Reporter.
type ReporterFunc func(Event)

// Report calls f.
func (f ReporterFunc) Report(e Event) { f(e) }

// JSONReporter writes one JSON object per event and line.
type JSONReporter struct {
	mu    sync.Mutex
	enc   *json.Encoder
	start time.Time
}

// NewJSONReporter writes to w.
func NewJSONReporter(w io.Writer) *JSONReporter { return &JSONReporter{enc: json.NewEncoder(w)} }

// Report writes e (non-finite numbers are dropped).
func (r *JSONReporter) Report(e Event) {
	e.Loss = finiteOr0(e.Loss)
	e.CompressionRatio = finiteOr0(e.CompressionRatio)
	e.EnergyJ = finiteOr0(e.EnergyJ)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.start.IsZero() {
		r.start = e.Time
	}
	e.ElapsedS = e.Time.Sub(r.start).Seconds()
	_ = r.enc.Encode(e) // a closed stdout must not stop the worker
}

func finiteOr0(x float64) float64 {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return 0
	}
	return x
}

// LogReporter logs phase changes and round results at info, steps at debug.
type LogReporter struct{ Logger *slog.Logger }

// Report logs e.
func (r LogReporter) Report(e Event) {
	log := r.Logger
	if log == nil {
		log = slog.Default()
	}
	attrs := []any{"event", e.Phase}
	if e.Round != 0 {
		attrs = append(attrs, "round", e.Round)
	}
	switch e.Phase {
	case PhaseTrain:
		attrs = append(attrs, "step", e.Step, "steps", e.Steps, "loss", round4(e.Loss))
		if e.Step > 0 && e.Step < e.Steps {
			log.Debug("training", attrs...)
			return
		}
	case PhaseDone:
		attrs = append(attrs, "accepted", e.Accepted != nil && *e.Accepted, "loss", round4(e.Loss), "tokens", e.Tokens,
			"update_bytes", e.UpdateBytes, "compression_ratio", round4(e.CompressionRatio),
			"round_bytes_up", e.RoundBytesUp, "round_bytes_down", e.RoundBytesDown, "energy_j", round4(e.EnergyJ))
	case PhaseRetry:
		attrs = append(attrs, "error", e.Message)
		log.Warn("retrying", attrs...)
		return
	}
	attrs = append(attrs, "bytes_up", e.BytesUp, "bytes_down", e.BytesDown)
	if e.Message != "" {
		attrs = append(attrs, "msg", e.Message)
	}
	log.Info("worker", attrs...)
}

func round4(x float64) float64 { return math.Round(x*1e4) / 1e4 }

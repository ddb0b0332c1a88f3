package train

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strings"
	"sync"
	"time"
)

// EventKind says what an Event reports.
type EventKind string

// The events Run reports, in order: one EventEval before the first step, one
// EventStep per optimizer step (with the validation loss on evaluation
// steps), and one EventSummary at the end of a successful run.
const (
	EventEval    EventKind = "eval"
	EventStep    EventKind = "step"
	EventSummary EventKind = "summary"
)

// Event is one progress record of a training run.
type Event struct {
	Kind     EventKind
	Step     int     // optimizer steps done so far (resumed steps included)
	Steps    int     // train.steps: where the run ends
	Loss     float64 // mean training loss of this step (summary: of the last step)
	ValLoss  float64 // validation loss, when HasVal
	HasVal   bool    // an evaluation ran at this step
	LR       float64 // learning rate used by this step
	GradNorm float64 // global gradient norm before clipping
	// TokensPerS is the steady rate: training tokens per second of compute
	// in this run, leaving out its first step (which allocates activations
	// and optimizer moments and faults their pages in, and runs cold; see
	// WarmupSteps). It is 0 until a step after the warm-up is done.
	TokensPerS float64
	// TokensPerSInclWarmup counts every step of this run, the first included.
	TokensPerSInclWarmup float64
	Elapsed              time.Duration // wall time since Run started

	// Summary only.
	InitialValLoss float64       // validation loss before this run's first step
	Tokens         int64         // training tokens processed in this run
	Out            string        // the file or folder written
	FinalSave      time.Duration // how long the run waited for its end's files after the last step and evaluation
	FinalWrite     time.Duration // how long writing them took (beside the final evaluation)
}

// Reporter receives a run's events. Run calls it from one goroutine.
type Reporter interface {
	Report(Event)
}

// ReporterFunc adapts a function to Reporter.
type ReporterFunc func(Event)

// Report calls f.
func (f ReporterFunc) Report(e Event) { f(e) }

// jsonEvent is Event's JSON line; pointers leave out what a kind lacks.
type jsonEvent struct {
	Event          EventKind `json:"event"`
	Step           int       `json:"step"`
	Steps          int       `json:"steps"`
	Loss           *float64  `json:"loss,omitempty"`
	ValLoss        *float64  `json:"val_loss,omitempty"`
	LR             *float64  `json:"lr,omitempty"`
	GradNorm       *float64  `json:"grad_norm,omitempty"`
	TokensPerS     *float64  `json:"tokens_per_s,omitempty"`
	TokensInclWU   *float64  `json:"tokens_per_s_incl_warmup,omitempty"`
	ElapsedS       float64   `json:"elapsed_s"`
	InitialValLoss *float64  `json:"initial_val_loss,omitempty"`
	Tokens         *int64    `json:"tokens,omitempty"`
	Out            string    `json:"out,omitempty"`
	FinalSaveS     *float64  `json:"final_save_s,omitempty"`
	FinalWriteS    *float64  `json:"final_write_s,omitempty"`
}

// finite makes a value JSON can carry: NaN and ±Inf become nil (left out).
func finite(x float64) *float64 {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return nil
	}
	return &x
}

// positive is finite for a rate: 0 (not measured yet) is left out too.
func positive(x float64) *float64 {
	if !(x > 0) {
		return nil
	}
	return finite(x)
}

// steadyOr is the steady rate, or the rate with the warm-up while no later
// step is done (for displays that always show a figure).
func steadyOr(e Event) float64 {
	if e.TokensPerS > 0 {
		return e.TokensPerS
	}
	return e.TokensPerSInclWarmup
}

// JSONReporter writes one JSON object per line: every step with step, loss,
// lr, grad_norm, tokens_per_s and elapsed_s (plus val_loss on evaluation
// steps), the initial evaluation, and a final summary object.
type JSONReporter struct {
	mu  sync.Mutex
	enc *json.Encoder
}

// NewJSONReporter writes JSON lines to w.
func NewJSONReporter(w io.Writer) *JSONReporter { return &JSONReporter{enc: json.NewEncoder(w)} }

// Report writes e as one line.
func (r *JSONReporter) Report(e Event) {
	j := jsonEvent{Event: e.Kind, Step: e.Step, Steps: e.Steps, ElapsedS: math.Round(e.Elapsed.Seconds()*1000) / 1000}
	if e.HasVal {
		j.ValLoss = finite(e.ValLoss)
	}
	switch e.Kind {
	case EventStep:
		j.Loss, j.LR, j.GradNorm, j.TokensPerS = finite(e.Loss), finite(e.LR), finite(e.GradNorm), positive(e.TokensPerS)
		j.TokensInclWU = positive(e.TokensPerSInclWarmup)
	case EventSummary:
		j.Loss, j.TokensPerS, j.InitialValLoss = finite(e.Loss), positive(e.TokensPerS), finite(e.InitialValLoss)
		j.TokensInclWU = positive(e.TokensPerSInclWarmup)
		j.Tokens, j.Out = &e.Tokens, e.Out
		j.FinalSaveS = positive(math.Round(e.FinalSave.Seconds()*1000) / 1000)
		j.FinalWriteS = positive(math.Round(e.FinalWrite.Seconds()*1000) / 1000)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	_ = r.enc.Encode(j) // a closed stdout must not stop training
}

// LogReporter logs through slog: the initial evaluation, every evaluation
// step (so one line per eval interval) and the summary. It suits output that
// is not a terminal, such as a CI log or a service journal.
type LogReporter struct{ Logger *slog.Logger }

// Report logs evaluation steps and the summary; other steps are dropped.
func (r LogReporter) Report(e Event) {
	l := r.Logger
	if l == nil {
		l = slog.Default()
	}
	switch {
	case e.Kind == EventEval:
		l.Info("evaluation", "step", e.Step, "val_loss", round4(e.ValLoss))
	case e.Kind == EventStep && e.HasVal:
		l.Info("training", "step", e.Step, "steps", e.Steps, "loss", round4(e.Loss), "val_loss", round4(e.ValLoss),
			"lr", e.LR, "grad_norm", round4(e.GradNorm), "tokens_per_s", math.Round(steadyOr(e)), "elapsed", e.Elapsed.Round(time.Millisecond))
	case e.Kind == EventSummary:
		l.Info("done", "steps", e.Step, "initial_val_loss", round4(e.InitialValLoss), "val_loss", round4(e.ValLoss),
			"tokens", e.Tokens, "tokens_per_s", math.Round(steadyOr(e)), "tokens_per_s_incl_warmup", math.Round(e.TokensPerSInclWarmup), "elapsed", e.Elapsed.Round(time.Millisecond), "final_save", e.FinalSave.Round(time.Millisecond), "final_write", e.FinalWrite.Round(time.Millisecond), "out", e.Out)
	}
}

func round4(x float64) float64 { return math.Round(x*1e4) / 1e4 }

// ProgressBar redraws one terminal line per step: a bar, the step count, the
// loss, the last validation loss, throughput and the time left. It is meant
// for stderr on an interactive terminal.
type ProgressBar struct {
	W     io.Writer
	Width int // bar cells; 0 means 30

	first      int           // step before this run's first step
	firstAt    time.Duration // elapsed at that point
	started    bool
	val        float64
	hasVal     bool
	lastDrawAt time.Duration
}

// Report redraws the bar (at most about ten times a second, and always on
// evaluation steps and the last step) and ends the line at the summary.
func (p *ProgressBar) Report(e Event) {
	switch e.Kind {
	case EventEval:
		p.first, p.firstAt, p.started = e.Step, e.Elapsed, true
		p.val, p.hasVal = e.ValLoss, true
		fmt.Fprintf(p.W, "\rstep %d/%d  val %.4f\x1b[K", e.Step, e.Steps, e.ValLoss)
	case EventStep:
		if !p.started {
			p.first, p.firstAt, p.started = e.Step-1, 0, true
		}
		if e.HasVal {
			p.val, p.hasVal = e.ValLoss, true
		}
		if !e.HasVal && e.Step != e.Steps && e.Elapsed-p.lastDrawAt < 100*time.Millisecond {
			return
		}
		p.lastDrawAt = e.Elapsed
		fmt.Fprint(p.W, "\r"+p.line(e)+"\x1b[K")
	case EventSummary:
		fmt.Fprintf(p.W, "\rdone: %d steps, val loss %.4f -> %.4f, %.0f tokens/s (%.0f with the first step), %s\x1b[K\n",
			e.Step, e.InitialValLoss, e.ValLoss, steadyOr(e), e.TokensPerSInclWarmup, e.Elapsed.Round(time.Second))
	}
}

// line formats the bar for a step event.
func (p *ProgressBar) line(e Event) string {
	width := p.Width
	if width <= 0 {
		width = 30
	}
	frac := 1.0
	if e.Steps > 0 {
		frac = math.Min(1, float64(e.Step)/float64(e.Steps))
	}
	filled := int(frac * float64(width))
	bar := strings.Repeat("=", filled)
	if filled < width {
		bar += ">" + strings.Repeat(" ", width-filled-1)
	}
	s := fmt.Sprintf("[%s] %d/%d %3.0f%% loss %.4f", bar, e.Step, e.Steps, 100*frac, e.Loss)
	if p.hasVal {
		s += fmt.Sprintf(" val %.4f", p.val)
	}
	s += fmt.Sprintf(" %.0f tok/s", steadyOr(e))
	if done := e.Step - p.first; done > 0 && e.Step < e.Steps {
		per := (e.Elapsed - p.firstAt) / time.Duration(done)
		s += " ETA " + fmtDuration(per*time.Duration(e.Steps-e.Step))
	}
	return s
}

// fmtDuration prints d as m:ss or h:mm:ss.
func fmtDuration(d time.Duration) string {
	s := int(d.Round(time.Second).Seconds())
	if s >= 3600 {
		return fmt.Sprintf("%d:%02d:%02d", s/3600, s/60%60, s%60)
	}
	return fmt.Sprintf("%d:%02d", s/60, s%60)
}

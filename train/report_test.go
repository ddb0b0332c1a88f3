package train

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"math"
	"strings"
	"testing"
	"time"
)

func TestJSONReporterLines(t *testing.T) {
	var buf bytes.Buffer
	r := NewJSONReporter(&buf)
	r.Report(Event{Kind: EventEval, Step: 0, Steps: 10, ValLoss: 5.5, HasVal: true})
	r.Report(Event{Kind: EventStep, Step: 1, Steps: 10, Loss: 5.4, LR: 1e-3, GradNorm: 2.5, TokensPerS: 1000, Elapsed: 1500 * time.Millisecond})
	r.Report(Event{Kind: EventStep, Step: 2, Steps: 10, Loss: 5.3, LR: 2e-3, GradNorm: math.NaN(), TokensPerS: 1000, ValLoss: 5.2, HasVal: true})
	r.Report(Event{Kind: EventSummary, Step: 10, Steps: 10, Loss: 3, ValLoss: 3.1, HasVal: true, InitialValLoss: 5.5, Tokens: 4096, Out: "base.safetensors"})
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("%d lines, want 4:\n%s", len(lines), buf.String())
	}
	var objs []map[string]any
	for _, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("line %q is not JSON: %v", l, err)
		}
		objs = append(objs, m)
	}
	step := objs[1]
	for _, k := range []string{"step", "loss", "tokens_per_s", "lr", "grad_norm", "elapsed_s"} {
		if _, ok := step[k]; !ok {
			t.Errorf("step line lacks %q: %s", k, lines[1])
		}
	}
	if _, ok := step["val_loss"]; ok {
		t.Errorf("a step without evaluation has val_loss: %s", lines[1])
	}
	if step["elapsed_s"] != 1.5 || step["event"] != "step" {
		t.Errorf("step line %s", lines[1])
	}
	if objs[2]["val_loss"] != 5.2 {
		t.Errorf("evaluation step lacks val_loss: %s", lines[2])
	}
	if _, ok := objs[2]["grad_norm"]; ok {
		t.Errorf("NaN must be left out, not written as invalid JSON: %s", lines[2])
	}
	sum := objs[3]
	if sum["event"] != "summary" || sum["initial_val_loss"] != 5.5 || sum["val_loss"] != 3.1 || sum["tokens"] != 4096.0 || sum["out"] != "base.safetensors" {
		t.Errorf("summary line %s", lines[3])
	}
}

func TestLogReporterOnlyEvaluations(t *testing.T) {
	var buf bytes.Buffer
	r := LogReporter{Logger: slog.New(slog.NewTextHandler(&buf, nil))}
	r.Report(Event{Kind: EventEval, ValLoss: 5})
	for s := 1; s <= 10; s++ {
		r.Report(Event{Kind: EventStep, Step: s, Steps: 10, Loss: 4, HasVal: s%5 == 0, ValLoss: 3})
	}
	r.Report(Event{Kind: EventSummary, Step: 10})
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("%d log lines, want 4 (initial eval, steps 5 and 10, summary):\n%s", len(lines), buf.String())
	}
	if !strings.Contains(lines[1], "step=5") || !strings.Contains(lines[1], "val_loss=3") {
		t.Errorf("line %q", lines[1])
	}
}

func TestProgressBar(t *testing.T) {
	var buf bytes.Buffer
	p := &ProgressBar{W: &buf, Width: 10}
	p.Report(Event{Kind: EventEval, Step: 0, Steps: 100, ValLoss: 5.5, HasVal: true})
	p.Report(Event{Kind: EventStep, Step: 50, Steps: 100, Loss: 2.25, TokensPerS: 900, ValLoss: 2.5, HasVal: true, Elapsed: 50 * time.Second})
	out := buf.String()
	for _, want := range []string{"[=====>    ]", "50/100", "loss 2.2500", "val 2.5000", "900 tok/s", "ETA 0:50"} {
		if !strings.Contains(out, want) {
			t.Errorf("bar %q lacks %q", out, want)
		}
	}
	// Between draws closer than 100ms, steps are not redrawn.
	buf.Reset()
	p.Report(Event{Kind: EventStep, Step: 51, Steps: 100, Elapsed: 50*time.Second + time.Millisecond})
	if buf.Len() != 0 {
		t.Errorf("redrew within 100ms: %q", buf.String())
	}
	p.Report(Event{Kind: EventSummary, Step: 100, InitialValLoss: 5.5, ValLoss: 2})
	if !strings.HasSuffix(buf.String(), "\n") || !strings.Contains(buf.String(), "5.5000 -> 2.0000") {
		t.Errorf("summary %q", buf.String())
	}
	if got := fmtDuration(3723 * time.Second); got != "1:02:03" {
		t.Errorf("fmtDuration = %q", got)
	}
}

func TestRatesLeaveOutTheWarmup(t *testing.T) {
	// Five steps of 100 tokens: the first took 2 s, the other four 0.5 s each.
	steady, incl := rates(500, 100, 5, 4*time.Second, 2*time.Second)
	if math.Abs(steady-200) > 1e-9 || math.Abs(incl-125) > 1e-9 {
		t.Fatalf("steady %v incl %v, want 200 and 125", steady, incl)
	}
	if steady, incl := rates(100, 100, 1, 2*time.Second, 2*time.Second); steady != 0 || incl != 50 {
		t.Fatalf("after one step: steady %v incl %v, want 0 (not measured yet) and 50", steady, incl)
	}

	var buf bytes.Buffer
	r := NewJSONReporter(&buf)
	r.Report(Event{Kind: EventStep, Step: 1, Steps: 5, Loss: 5, TokensPerSInclWarmup: 50})
	r.Report(Event{Kind: EventSummary, Step: 5, Steps: 5, Loss: 4, TokensPerS: 200, TokensPerSInclWarmup: 125})
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	var first, sum map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &first); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[1]), &sum); err != nil {
		t.Fatal(err)
	}
	if _, ok := first["tokens_per_s"]; ok || first["tokens_per_s_incl_warmup"] != 50.0 {
		t.Errorf("first step: %s; want no steady rate yet and tokens_per_s_incl_warmup 50", lines[0])
	}
	if sum["tokens_per_s"] != 200.0 || sum["tokens_per_s_incl_warmup"] != 125.0 {
		t.Errorf("summary %s", lines[1])
	}
}

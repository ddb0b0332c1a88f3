package sim

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strings"

	"github.com/opencluster/opencluster/protocol"
)

// RoundLine is one round in words, as `opencluster simulate` prints it.
func RoundLine(r protocol.RoundSummary) string {
	co2 := "-"
	if r.CO2Kg != nil {
		co2 = fmt.Sprintf("%.3g kg CO2", *r.CO2Kg)
	}
	failed := ""
	if r.Failed {
		failed = " FAILED (" + r.Reason + ")"
	}
	return fmt.Sprintf("round %d: selected %d, completed %d, dropped %d, late %d, %s, up %s, down %s, %.3g PFLOPS, %.3g kWh, %s, organiser %s%s",
		r.Round, r.Selected, r.Completed, r.Dropped, r.Late, Seconds(r.DurationS), Bytes(r.BytesUp), Bytes(r.BytesDown),
		r.DeliveredFLOPS/1e15, r.EnergyKWh, co2, r.Organiser, failed)
}

// WriteSummary prints a run's totals and the data-center comparison.
func WriteSummary(w io.Writer, cfg *Config, res *Result) {
	s := res.Summary
	fmt.Fprintf(w, "== %d rounds of %d updates (over-commit %.2gx) from %d nodes (%d can hold the %s job: %d on their GPU, %d on their CPU); organiser %s\n",
		s.Rounds, cfg.Cohort, cfg.OverCommit, s.Nodes, res.Eligible, cfg.Job.Model, res.OnGPU, res.Eligible-res.OnGPU, cfg.Organiser)
	fmt.Fprintf(w, "   per node and round: %s of FLOPs (%d steps x %d tokens), down %s (+ %s base once), up %s (%s, %.0fx smaller than the dense %s)\n",
		flopsWord(cfg.Job.FLOPs()), cfg.Job.Steps, cfg.Job.TokensPerStep, Bytes(cfg.Job.DownBytes), Bytes(cfg.Job.BaseBytes), Bytes(cfg.Job.UpBytes),
		cfg.Job.Codec, float64(cfg.Job.DenseBytes)/float64(cfg.Job.UpBytes), Bytes(cfg.Job.DenseBytes))
	fmt.Fprintf(w, "   selected %d, completed %d, dropped %d, late %d; refused updates: %s\n", res.Selected, res.Completed, res.Dropped, res.Late, refusals(res.Refused))
	fmt.Fprintf(w, "   virtual time %s (mean round %s), %s of useful FLOPs, delivered %.3g PFLOPS\n",
		Seconds(s.WallS), Seconds(res.MeanRoundS), flopsWord(s.FLOPs), s.DeliveredFLOPS/1e15)
	fmt.Fprintf(w, "   traffic up %s, down %s; energy %s kWh, %s kg CO2\n", Bytes(res.BytesUp), Bytes(res.BytesDown), num(s.EnergyKWh), num(s.CO2Kg))
	if res.Stopped != "" {
		fmt.Fprintf(w, "   STOPPED: %s\n", res.Stopped)
	}
	if res.FailedRounds > 0 {
		fmt.Fprintf(w, "   %d round(s) failed to aggregate\n", res.FailedRounds)
	}
	if dc := s.DataCenter; dc != nil {
		fmt.Fprintf(w, "== the same FLOPs in a data center: %s at %.0f TFLOPS x %.0f%% utilisation, %.0f W each with PUE %.2g, grid %.0f g/kWh (%s): %s accelerator-hours, %s kWh, %s kg CO2\n",
			dc.Accelerator, dc.PeakFLOPS/1e12, 100*dc.Utilisation, dc.PowerW, dc.PUE, dc.GridGPerKWh, cfg.DataCenter.GridNote, num(dc.Hours), num(dc.EnergyKWh), num(dc.CO2Kg))
		fmt.Fprintf(w, "   %s\n", dc.Verdict)
	}
	t := res.Tree
	fmt.Fprintf(w, "== tree aggregation (fan-out %d, depth %d, relays with the median links %.0f up / %.0f down Mbit/s): about %s to hand out the model and %s to gather the updates, per round\n",
		t.Fanout, t.Depth, t.RelayUp, t.RelayDn, Seconds(t.DownS), Seconds(t.UpS))
	fmt.Fprintf(w, "   events processed: %d\n", res.Events)
}

func refusals(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

// Bytes writes n in decimal units (kB, MB, GB, TB).
func Bytes(n int64) string {
	v := float64(n)
	for _, u := range []string{"B", "kB", "MB", "GB", "TB", "PB"} {
		if math.Abs(v) < 1000 || u == "PB" {
			if u == "B" {
				return fmt.Sprintf("%d B", n)
			}
			return fmt.Sprintf("%.3g %s", v, u)
		}
		v /= 1000
	}
	return ""
}

// Seconds writes a duration in s, min or h.
func Seconds(s float64) string {
	switch {
	case s < 120:
		return fmt.Sprintf("%.3g s", s)
	case s < 7200:
		return fmt.Sprintf("%.3g min", s/60)
	}
	return fmt.Sprintf("%.3g h", s/3600)
}

func flopsWord(f float64) string {
	switch {
	case f >= 1e18:
		return fmt.Sprintf("%.3g EFLOP", f/1e18)
	case f >= 1e15:
		return fmt.Sprintf("%.3g PFLOP", f/1e15)
	case f >= 1e12:
		return fmt.Sprintf("%.3g TFLOP", f/1e12)
	}
	return fmt.Sprintf("%.3g GFLOP", f/1e9)
}

// num writes v with four significant digits, without an exponent.
func num(v float64) string {
	if math.Abs(v) >= 1e4 {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.4g", v)
}

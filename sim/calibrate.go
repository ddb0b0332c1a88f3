package sim

import (
	"fmt"
	"time"

	"github.com/opencluster/opencluster/coordinator"
	"github.com/opencluster/opencluster/protocol"
)

// Machine is the machine `make demo` runs on, as `opencluster bench`
// describes and measures it.
type Machine struct {
	CPU   string
	Cores int
	// PeakFLOPS is cores x clock x fp32 FLOPs per cycle (bench's machine row).
	PeakFLOPS float64
	// Utilisation is the share of PeakFLOPS a QLoRA training step of the
	// demo's model sustains on all cores (bench's train_step tiny/qlora
	// fraction_of_peak, measured just before).
	Utilisation float64
}

// DemoOptions are the shape of `make demo`: worker processes on this
// machine, rounds, local steps and codec (cmd/opencluster/demo.go's
// defaults, which scripts/demo.sh passes).
type DemoOptions struct {
	Workers, Rounds int
	// EvalTokens is what the demo's own process scores after each round
	// (the new adapter on its validation batches), on the same cores while
	// the workers train the next round.
	EvalTokens int
}

// DemoConfig is a population of demo workers shaped like this machine:
// each is a CPU node with an equal share of its cores (the demo's workers
// share them), always available, on loopback links, running the demo's
// round policy (a cohort of every worker, closing at all of them, 90 s
// deadline). job must be the demo's job (tiny preset, its steps and codec).
func DemoConfig(m Machine, job Job, o DemoOptions) (Config, error) {
	if m.Cores < 1 || !(m.PeakFLOPS > 0) || !(m.Utilisation > 0 && m.Utilisation <= 1) {
		return Config{}, fmt.Errorf("calibrate-demo: machine %q with %d cores, peak %g FLOPS, utilisation %g: want them all positive", m.CPU, m.Cores, m.PeakFLOPS, m.Utilisation)
	}
	if o.Workers < 1 || o.Rounds < 1 {
		return Config{}, fmt.Errorf("calibrate-demo: %d workers, %d rounds: want at least 1 of each", o.Workers, o.Rounds)
	}
	share := m.PeakFLOPS / float64(o.Workers)
	if o.EvalTokens > 0 {
		// The evaluation is a forward pass: about half a QLoRA step's FLOPs
		// per token (4N: 2N forward, 2N for the input gradients). It takes
		// its part of the cores from the workers.
		train := float64(o.Workers*job.Steps*job.TokensPerStep) * job.FLOPsPerToken
		eval := float64(o.EvalTokens) * job.FLOPsPerToken / 2
		share *= train / (train + eval)
	}
	t := &Tables{
		// The world's 2024 average (Ember): the demo runs wherever it runs.
		Regions: []Region{{Code: "", Name: "this machine", PopulationM: 1, GridG: 472.94, GridYear: 2024}},
		// One core's worth of power per worker is a rough figure: the
		// calibration checks time, not energy.
		Hosts: []Host{{Name: fmt.Sprintf("%s, 1/%d of %d cores", m.CPU, o.Workers, m.Cores), Kind: "laptop", Cores: 1,
			GHz: share / 1e9, FlopsPerCycle: 1, RAMGB: 1e4, LoadW: 10 * float64(m.Cores) / float64(o.Workers), IdleW: 2, SharePct: 100}},
	}
	cfg := DefaultConfig()
	cfg.Tables, cfg.Job = t, job
	cfg.Nodes, cfg.Rounds, cfg.Cohort = o.Workers, o.Rounds, o.Workers
	cfg.OverCommit, cfg.MinUpdates = 1, float64(max(1, o.Workers-1))/float64(o.Workers)
	cfg.Deadline = 90 * time.Second
	cfg.CPUUtil = m.Utilisation
	cfg.FailRate = 0
	cfg.RTT = 0.002 // a request over loopback TLS
	cfg.CoordinatorMbps = 10000
	cfg.Aggregator = coordinator.AggFedAvg
	p := cfg.Population
	p.Laptops, p.Reachable, p.BudgetShare, p.CapShare, p.BaseCached = 1, 1, 0, 0, 0
	p.DownMbps = MustDist("down_mbps", "const:10000", 0.1, 1e5)
	p.UpMbps = MustDist("up_mbps", "const:10000", 0.1, 1e5)
	p.IdleStart = MustDist("idle_start_h", "const:0", 0, 24)
	p.IdleHours = MustDist("idle_hours", "const:24", 0, 24)
	p.Present = MustDist("present", "const:1", 0, 1)
	cfg.Population = p
	return cfg, nil
}

// MeanSteadyRound is the mean duration of the rounds after the first
// (the first also loads the base model, in the demo and here), or of the
// only round.
func MeanSteadyRound(rounds []protocol.RoundSummary) float64 {
	if len(rounds) == 0 {
		return 0
	}
	if len(rounds) > 1 {
		rounds = rounds[1:]
	}
	sum := 0.0
	for _, r := range rounds {
		sum += r.DurationS
	}
	return sum / float64(len(rounds))
}

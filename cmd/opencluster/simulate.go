package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/opencluster/opencluster/bench"
	"github.com/opencluster/opencluster/coordinator"
	"github.com/opencluster/opencluster/netclient"
	"github.com/opencluster/opencluster/protocol"
	"github.com/opencluster/opencluster/sim"
	"github.com/opencluster/opencluster/train"
	"github.com/opencluster/opencluster/web"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func init() { rootCmd.AddCommand(newSimulateCmd()) }

func newSimulateCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "simulate --nodes N --rounds R --cohort K --model PRESET|FILE|DIR --codec SPEC [--seed S] [--trace FILE] [--json]",
		Short: "Simulate the whole volunteer network on a virtual clock, from 10 to 1,000,000 machines",
		Long: `simulate runs federated rounds over a population of volunteer machines on a
virtual clock, through the coordinator's own round logic (cohort sampling
with over-commit, quorum or deadline close, late updates, the norm bound, the
aggregator and the server optimizer) on an in-memory store. Each node's time
is its compute (the job's FLOPs over its device's peak times a utilisation)
and its transfers (the real codec's bytes on the real adapter shapes over its
own links, and through the organiser's links); energy is power under the
owner's cap times time, CO2 that times the grid intensity of the node's
country. It prints every round and a summary with the same FLOPs on
data-center accelerators. The same seed gives the same output, byte for byte.
docs/simulation.md describes the model and every figure's source.

--calibrate-demo instead measures this machine (bench's train_step
tiny/qlora) and predicts the round duration of ` + "`make demo`" + `.`,
		Args: cobra.NoArgs,
		RunE: runSimulate,
	}
	d := sim.DefaultConfig()
	p := d.Population
	f := cmd.Flags()
	f.Int("nodes", d.Nodes, "registered volunteer machines")
	f.Int("rounds", d.Rounds, "rounds to run")
	f.Int("cohort", d.Cohort, "updates a round waits for (the quorum)")
	f.Float64("over-commit", d.OverCommit, "machines picked per round, as a multiple of --cohort")
	f.Float64("min-updates", d.MinUpdates, "share of --cohort a round needs at its deadline")
	f.String("model", "llama-7b", "the model: a configs/ preset, a YAML file like one, or a Hugging Face folder (config.json)")
	f.String("codec", "topk:0.01+int8:256", "update codec (docs/compression.md)")
	f.Int("steps", 20, "local training steps per round")
	f.Uint64("seed", d.Seed, "seed of every random draw")
	f.String("organiser", d.Organiser, "who organises a round: central (a coordinator in a data center) or random (a reachable volunteer, drawn each round)")
	f.String("trace", "", "population trace (CSV, docs/simulation.md) to use instead of drawing one")
	f.String("windows", "", "availability-window trace (CSV: id,start_s,end_s) replacing the diurnal model")
	f.String("trace-out", "", "write the population this run uses as a trace")
	f.Bool("json", false, "print one JSON object per round, then the totals")
	f.String("bench-out", "", "append bench rows (this machine, and the run's wall time, events/s and peak RSS) to FILE, as JSON lines")
	f.String("serve", "", "serve the dashboard and this run's events on ADDR (e.g. 127.0.0.1:8080)")
	f.Float64("pace", 600, "with --serve: virtual seconds per real second (0: as fast as possible)")
	f.Bool("calibrate-demo", false, "predict `make demo`'s round duration from this machine's measured speed")
	f.Int("demo-workers", 4, "with --calibrate-demo: the demo's worker processes")
	f.Int("demo-rounds", 8, "with --calibrate-demo: the demo's rounds")
	f.Int("demo-steps", 10, "with --calibrate-demo: the demo's local steps")
	f.Float64("gpu-util", d.GPUUtil, "share of a GPU's peak a QLoRA step sustains")
	f.Float64("cpu-util", d.CPUUtil, "share of a CPU's peak a QLoRA step sustains (bench train_step small/qlora fraction_of_peak)")
	f.Float64("coordinator-mbps", d.CoordinatorMbps, "the central coordinator's link, each direction, Mbit/s")
	f.Float64("rtt", d.RTT, "seconds a request costs before its bytes flow")
	f.Float64("fail-rate", d.FailRate, "chance a machine crashes or disconnects during a round")
	f.Float64("psu-efficiency", d.PSUEfficiency, "power supply efficiency (wall power = DC power / this)")
	f.Duration("deadline", d.Deadline, "round timeout: from cohort pick to deadline")
	f.String("late", d.Late, "updates after the deadline: reject or downweight")
	f.Float64("norm-bound", d.NormBound, "per-update L2 norm bound (0: norm-bound-factor x the round's median)")
	f.String("aggregator", d.Aggregator, "aggregator (coordinator.yaml's rounds.aggregator)")
	f.String("optimizer", d.Optimizer.Kind, "server optimizer: fedavg, fedavgm, nesterov or fedadam")
	f.Int("tree-fanout", d.TreeFanout, "fan-out of the tree-aggregation estimate")
	f.Float64("max-days", d.MaxVirtual.Hours()/24, "stop a run whose virtual time passes this many days")
	f.Float64("laptops", p.Laptops, "share of CPU-only laptops in the population")
	f.String("down-mbps", p.DownMbps.String(), "download bandwidth distribution, Mbit/s (const:V, uniform:LO,HI, lognormal:MEDIAN,SIGMA)")
	f.String("up-mbps", p.UpMbps.String(), "upload bandwidth distribution, Mbit/s")
	f.Float64("reachable", p.Reachable, "share of machines reachable from outside (not behind NAT)")
	f.String("idle-start", p.IdleStart.String(), "local hour the machine becomes idle")
	f.String("idle-hours", p.IdleHours.String(), "hours it stays idle")
	f.String("present", p.Present.String(), "probability it is on, on a given day")
	f.Float64("budget-share", p.BudgetShare, "share of owners with a time window")
	f.Float64("cap-share", p.CapShare, "share of owners who cap GPU power")
	f.String("power-cap", p.PowerCap.String(), "their cap, as a share of the card's board power")
	f.Float64("base-cached", p.BaseCached, "share of machines that already hold the base model")
	return cmd
}

func runSimulate(cmd *cobra.Command, _ []string) error {
	began := time.Now()
	f := cmd.Flags()
	ctx := cmd.Context()
	out := cmd.OutOrStdout()
	jsonOut, _ := f.GetBool("json")
	tables, err := sim.DefaultTables()
	if err != nil {
		return err
	}
	cfg := sim.DefaultConfig()
	cfg.Tables = tables
	if err := simFlags(f, &cfg); err != nil {
		return err
	}
	calibrate, _ := f.GetBool("calibrate-demo")
	var machine sim.Machine
	if calibrate {
		if cfg, machine, err = demoSimConfig(ctx, f); err != nil {
			return err
		}
	} else {
		model, _ := f.GetString("model")
		codec, _ := f.GetString("codec")
		steps, _ := f.GetInt("steps")
		if cfg.Job, err = simJob(model, codec, steps); err != nil {
			return err
		}
	}
	if err := simTraces(f, &cfg); err != nil {
		return err
	}
	var rounds []protocol.RoundSummary
	enc := json.NewEncoder(out)
	cfg.OnRound = func(r protocol.RoundSummary) {
		rounds = append(rounds, r)
		if jsonOut {
			enc.Encode(r)
		} else {
			fmt.Fprintln(out, sim.RoundLine(r))
		}
	}
	if addr, _ := f.GetString("serve"); addr != "" {
		stop, err := serveSim(ctx, cmd, addr, &cfg)
		if err != nil {
			return err
		}
		defer stop()
	}
	s, err := sim.New(cfg)
	if err != nil {
		return err
	}
	if path, _ := f.GetString("trace-out"); path != "" {
		if err := writeTrace(path, s.Population()); err != nil {
			return err
		}
	}
	start := time.Now()
	res, err := s.Run(ctx)
	if err != nil {
		return err
	}
	wall := time.Since(start)
	// Wall-clock figures go to the log, never to stdout, which must be the
	// same for the same seed.
	slog.Info("simulate: done", "events", res.Events, "wall", wall.Round(time.Millisecond), "events_per_s", int(float64(res.Events)/wall.Seconds()))
	if path, _ := f.GetString("bench-out"); path != "" {
		if err := writeSimBench(path, cmd, &cfg, res, time.Since(began)); err != nil {
			return err
		}
	}
	if calibrate {
		pred := sim.MeanSteadyRound(rounds)
		if jsonOut {
			return enc.Encode(map[string]any{"calibrate_demo": map[string]any{"predicted_round_s": pred, "cpu": machine.CPU, "cores": machine.Cores,
				"peak_gflops": machine.PeakFLOPS / 1e9, "utilisation": machine.Utilisation, "workers": cfg.Nodes, "rounds": cfg.Rounds}})
		}
		fmt.Fprintf(out, "== make demo on this machine (%s, %d cores, peak %.0f GFLOPS, QLoRA utilisation %.3f measured now): predicted round %.3f s (mean of rounds 2..%d)\n",
			machine.CPU, machine.Cores, machine.PeakFLOPS/1e9, machine.Utilisation, pred, cfg.Rounds)
		return nil
	}
	if jsonOut {
		return enc.Encode(res)
	}
	sim.WriteSummary(out, &cfg, res)
	if addr, _ := f.GetString("serve"); addr != "" {
		fmt.Fprintln(cmd.ErrOrStderr(), "simulate: the run is over; the dashboard stays up until Ctrl-C")
		<-ctx.Done()
	}
	return nil
}

// simFlags copies the flags into cfg, naming the flag of any bad value.
func simFlags(f *pflag.FlagSet, cfg *sim.Config) error {
	cfg.Nodes, _ = f.GetInt("nodes")
	cfg.Rounds, _ = f.GetInt("rounds")
	cfg.Cohort, _ = f.GetInt("cohort")
	cfg.OverCommit, _ = f.GetFloat64("over-commit")
	cfg.MinUpdates, _ = f.GetFloat64("min-updates")
	cfg.Seed, _ = f.GetUint64("seed")
	cfg.Organiser, _ = f.GetString("organiser")
	cfg.GPUUtil, _ = f.GetFloat64("gpu-util")
	cfg.CPUUtil, _ = f.GetFloat64("cpu-util")
	cfg.CoordinatorMbps, _ = f.GetFloat64("coordinator-mbps")
	cfg.RTT, _ = f.GetFloat64("rtt")
	cfg.FailRate, _ = f.GetFloat64("fail-rate")
	cfg.PSUEfficiency, _ = f.GetFloat64("psu-efficiency")
	cfg.Deadline, _ = f.GetDuration("deadline")
	cfg.Late, _ = f.GetString("late")
	cfg.NormBound, _ = f.GetFloat64("norm-bound")
	cfg.Aggregator, _ = f.GetString("aggregator")
	cfg.Optimizer.Kind, _ = f.GetString("optimizer")
	cfg.TreeFanout, _ = f.GetInt("tree-fanout")
	days, _ := f.GetFloat64("max-days")
	cfg.MaxVirtual = time.Duration(days * 24 * float64(time.Hour))
	p := &cfg.Population
	p.Laptops, _ = f.GetFloat64("laptops")
	p.Reachable, _ = f.GetFloat64("reachable")
	p.BudgetShare, _ = f.GetFloat64("budget-share")
	p.CapShare, _ = f.GetFloat64("cap-share")
	p.BaseCached, _ = f.GetFloat64("base-cached")
	for _, d := range []struct {
		flag   string
		dst    *sim.Dist
		lo, hi float64
	}{{"down-mbps", &p.DownMbps, 0.001, 1e5}, {"up-mbps", &p.UpMbps, 0.001, 1e5}, {"idle-start", &p.IdleStart, 0, 24},
		{"idle-hours", &p.IdleHours, 0, 24}, {"present", &p.Present, 0, 1}, {"power-cap", &p.PowerCap, 0.05, 1}} {
		spec, _ := f.GetString(d.flag)
		v, err := sim.ParseDist("--"+d.flag, spec, d.lo, d.hi)
		if err != nil {
			return err
		}
		*d.dst = v
	}
	if cfg.Late != coordinator.LateReject && cfg.Late != coordinator.LateDownweight {
		return fmt.Errorf("--late %q: want reject or downweight", cfg.Late)
	}
	if err := cfg.Optimizer.Validate(); err != nil {
		return fmt.Errorf("--optimizer: %w", err)
	}
	return nil
}

// simJob sizes one round's job from a model preset, YAML file or Hugging
// Face folder (whose lora, quant and train sections come from llama-7b's).
func simJob(model, codec string, steps int) (sim.Job, error) {
	var c train.Config
	if fi, err := os.Stat(model); err == nil && fi.IsDir() {
		if err := loadConfig("llama-7b", nil, nil, &c); err != nil {
			return sim.Job{}, err
		}
		if c.Model, err = train.ReadConfigDir(model); err != nil {
			return sim.Job{}, fmt.Errorf("--model %s: %w", model, err)
		}
	} else if err := loadConfig(model, nil, nil, &c); err != nil {
		return sim.Job{}, fmt.Errorf("--model %s: %w", model, err)
	}
	return jobOf(strings.TrimSuffix(model, ".yaml"), c, codec, steps)
}

func jobOf(name string, c train.Config, codec string, steps int) (sim.Job, error) {
	if err := c.Validate(); err != nil {
		return sim.Job{}, fmt.Errorf("--model %s: %w", name, err)
	}
	return sim.NewJob(sim.JobSpec{Name: name, Config: c, Shapes: netclient.AdapterShapes(c.Model, c.LoRA),
		FLOPsPerToken: bench.CountStepFLOPs(c.Model, &c.LoRA, c.Train.SeqLen).PerToken, Steps: steps,
		TokensPerStep: c.Train.SeqLen * c.Train.BatchSize * max(1, c.Train.GradAccum), Codec: codec})
}

// demoSimConfig measures this machine as the demo uses it (as many
// single-threaded tiny QLoRA trainers at once as the demo has workers,
// the median of about 3 s of steps each) and shapes the demo's population.
func demoSimConfig(ctx context.Context, f *pflag.FlagSet) (sim.Config, sim.Machine, error) {
	workers, _ := f.GetInt("demo-workers")
	rounds, _ := f.GetInt("demo-rounds")
	steps, _ := f.GetInt("demo-steps")
	tc, err := demoTrainConfig()
	if err != nil {
		return sim.Config{}, sim.Machine{}, err
	}
	tc.Model.VocabSize = demoVocab // the demo's BPE tokenizer
	job, err := jobOf("tiny", tc, demoCodec, steps)
	if err != nil {
		return sim.Config{}, sim.Machine{}, err
	}
	m := bench.DescribeMachine()
	row, err := bench.TrainStepConcurrent(ctx, "tiny", bench.ModeQLoRA, tc, bench.StepConfig{Presets: map[string]train.Config{"tiny": tc}, PeakGFLOPS: m.PeakGFLOPS()}, workers)
	if err != nil {
		return sim.Config{}, sim.Machine{}, fmt.Errorf("calibrate-demo: measuring a tiny QLoRA step: %w", err)
	}
	machine := sim.Machine{CPU: m.CPUModel, Cores: m.Cores, PeakFLOPS: m.PeakGFLOPS() * 1e9, Utilisation: row.FractionOfPeak}
	cfg, err := sim.DemoConfig(machine, job, sim.DemoOptions{Workers: workers, Rounds: rounds, EvalTokens: demoValBatches * tc.Train.BatchSize * tc.Train.SeqLen})
	return cfg, machine, err
}

func simTraces(f *pflag.FlagSet, cfg *sim.Config) error {
	if path, _ := f.GetString("trace"); path != "" {
		fh, err := os.Open(path)
		if err != nil {
			return fmt.Errorf("--trace: %w", err)
		}
		defer fh.Close()
		if cfg.Trace, err = sim.ReadPopulation(path, fh, cfg.Tables, cfg.Seed); err != nil {
			return err
		}
	}
	if path, _ := f.GetString("windows"); path != "" {
		fh, err := os.Open(path) // read as the run goes; closed when the process exits
		if err != nil {
			return fmt.Errorf("--windows: %w", err)
		}
		if cfg.Windows, err = sim.NewWindowReader(path, fh); err != nil {
			return err
		}
	}
	return nil
}

func writeTrace(path string, p *sim.Population) error {
	fh, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("--trace-out: %w", err)
	}
	if err := sim.WritePopulation(fh, p, p.WorkerIDs()); err != nil {
		fh.Close()
		return fmt.Errorf("--trace-out %s: %w", path, err)
	}
	return fh.Close()
}

// serveSim serves the dashboard (web.Handler) with a simulation hub on
// addr and paces the run's events to --pace virtual seconds per second.
func serveSim(ctx context.Context, cmd *cobra.Command, addr string, cfg *sim.Config) (func(), error) {
	pace, _ := cmd.Flags().GetFloat64("pace")
	if pace < 0 {
		return nil, fmt.Errorf("--pace %v: want >= 0", pace)
	}
	hub := web.NewHub(web.HubOptions{Source: protocol.SourceSim, Model: cfg.Job.Model, Now: func() int64 { return 0 }})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--serve %s: %w", addr, err)
	}
	srv := &http.Server{Handler: web.Handler(hub, nil), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	fmt.Fprintf(cmd.ErrOrStderr(), "simulate: dashboard on http://%s/\n", ln.Addr())
	cfg.Sink = sim.Paced(ctx, hub, pace)
	return func() {
		hub.Close()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
			srv.Close()
		}
	}, nil
}

// writeSimBench appends this machine's row and the run's row to path: the
// whole command's wall time (drawing the population and sizing the job
// included), events per second, the process's CPU time and peak RSS, with
// the load average the machine had, since other work on it slows the run.
func writeSimBench(path string, cmd *cobra.Command, cfg *sim.Config, res *sim.Result, wall time.Duration) error {
	load, _ := os.ReadFile("/proc/loadavg")
	rss := bench.PeakRSS()
	row := bench.Row{Name: "simulate", Size: fmt.Sprintf("%d nodes, cohort %d, %d rounds, %s, organiser %s", res.Summary.Nodes, cfg.Cohort, cfg.Rounds, cfg.Job.Model, cfg.Organiser),
		Extra: map[string]any{"command": "opencluster " + strings.Join(os.Args[1:], " "), "wall_s": wall.Seconds(), "events": res.Events,
			"events_per_s": float64(res.Events) / wall.Seconds(), "cpu_s": bench.CPUTime().Seconds(), "peak_rss_bytes": rss, "peak_rss_mib": float64(rss) / (1 << 20),
			"virtual_s": res.Summary.WallS, "loadavg": strings.TrimSpace(string(load)), "date": time.Now().UTC().Format(time.RFC3339)}}
	fh, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("--bench-out: %w", err)
	}
	enc := json.NewEncoder(fh)
	for _, r := range []bench.Row{bench.DescribeMachine().Row(), row} {
		if err := enc.Encode(r); err != nil {
			fh.Close()
			return fmt.Errorf("--bench-out %s: %w", path, err)
		}
	}
	return fh.Close()
}

package bench

// The big-model QLoRA rows: tokens/s and the peak resident memory of QLoRA
// training of a full-size model shape (llama-1b, llama-7b) on the CPU, in
// this process, beside what the memory model (train.EstimateMemory)
// predicts. `opencluster bench --only qlora --model llama-7b` runs one such
// row and nothing else, so the peak it reports is the process's, and
// `/usr/bin/time -v` on the same command measures the same thing from
// outside.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/opencluster/opencluster/train"
	"github.com/opencluster/opencluster/train/backend"
	"github.com/opencluster/opencluster/train/backend/sgemm"
)

// QLoRAConfig is one big-model QLoRA row.
type QLoRAConfig struct {
	// Preset names the model shape; Config is its whole config with
	// train.seq_len and train.batch_size as the row should run them.
	Preset string
	Config train.Config
	// Budget is the memory the plan must fit (bytes; --max-memory).
	Budget int64
	// Steps is the number of optimizer steps after the warm-up one
	// (0: one; the warm-up step is timed too when Steps < 0).
	Steps int
	// Threads for the CPU backend (0: every core).
	Threads int
	// Options supply the peer settings (NoPeer).
	Options Options
}

// QLoRAMemoryRow builds the model straight into 4-bit (random weights,
// train.NewQuantizedModel: never an fp32 copy), plans its memory within
// the budget (micro-batch, activation checkpointing), enables LoRA, runs a
// warm-up step and the timed steps, and reports tokens/s, the process's
// peak RSS and the memory model's estimate. The peer, OpenBLAS's sgemm at
// the step's largest product shape, runs first, before the model exists,
// so it does not raise the peak.
func QLoRAMemoryRow(ctx context.Context, qc QLoRAConfig) (Row, error) {
	cfg := qc.Config
	B, T := cfg.Train.BatchSize, cfg.Train.SeqLen
	row := Row{Name: "qlora_step", Size: fmt.Sprintf("%s seq %d batch %d", qc.Preset, T, B), Extra: map[string]any{}}
	if err := checkStepConfig(qc.Preset, ModeQLoRA, cfg); err != nil {
		return row, err
	}
	job := train.MemoryJob{Model: cfg.Model, Mode: train.ModeQLoRA, LoRA: cfg.LoRA, Quant: cfg.Quant, MicroBatch: B, SeqLen: T}
	plan, err := train.PlanMemory(job, qc.Budget, false)
	if err != nil {
		return row, fmt.Errorf("%s: %w", qc.Preset, err)
	}
	threads := threadsOf(qc.Threads)
	fl := CountStepFLOPs(cfg.Model, &cfg.LoRA, T)
	peerGFLOPS := qloraPeer(&row, qc.Options, threads, B*T, cfg.Model)
	if err := ctx.Err(); err != nil {
		return row, err
	}

	t0 := time.Now()
	be := backend.NewCPU(qc.Threads)
	m, err := train.NewQuantizedModel(cfg.Model, be, cfg.Train.Seed, cfg.Quant)
	if err != nil {
		return row, fmt.Errorf("%s: %w", qc.Preset, err)
	}
	if err := m.EnableLoRA(cfg.LoRA, cfg.Train.Seed); err != nil {
		return row, fmt.Errorf("%s: %w", qc.Preset, err)
	}
	m.SetCheckpointing(plan.Checkpointing)
	m.SetMicroBatch(plan.MicroBatch)
	buildS := time.Since(t0).Seconds()
	loadPeak, _ := processPeakRSS()

	st := newStepper(m, cfg)
	if err := st.run(); err != nil { // warm-up: allocates the activations and moments
		return row, fmt.Errorf("%s: warm-up step: %w", qc.Preset, err)
	}
	warmS := time.Since(t0).Seconds() - buildS
	steps := qc.Steps
	if steps == 0 {
		steps = 1
	}
	var times []float64
	if steps < 0 {
		times = []float64{warmS}
	}
	for range max(steps, 0) {
		if err := ctx.Err(); err != nil {
			return row, err
		}
		ts := time.Now()
		if err := st.run(); err != nil {
			return row, fmt.Errorf("%s: step %d: %w", qc.Preset, st.step, err)
		}
		times = append(times, time.Since(ts).Seconds())
	}
	peak, source := processPeakRSS()
	sec := median(times)
	tokens := float64(B * T)
	row.GFLOPS = fl.PerToken * tokens / sec / 1e9
	if peerGFLOPS > 0 {
		row.PeerGFLOPS = peerGFLOPS
		row.Ratio = row.GFLOPS / peerGFLOPS
	}
	if pk := DescribeMachine().PeakGFLOPS(); pk > 0 {
		row.PeakGFLOPS, row.FractionOfPeak = pk, row.GFLOPS/pk
	}
	est := plan.Estimate
	gib := func(b int64) float64 { return float64(b) / (1 << 30) }
	components := map[string]int64{}
	for _, it := range est.Items {
		components[it.Phase+": "+it.Name] += it.Bytes
	}
	row.Kernel = sgemm.Implementation()
	for k, v := range map[string]any{
		"tokens_per_s":             tokens / sec,
		"seconds_per_step":         sec,
		"steps_timed":              len(times),
		"build_s":                  buildS,
		"warmup_step_s":            warmS,
		"batch":                    B,
		"seq_len":                  T,
		"micro_batch":              plan.MicroBatch,
		"checkpointing":            plan.Checkpointing,
		"params":                   cfg.Model.NumParams(),
		"trainable":                m.NumTrainable(),
		"lora":                     fmt.Sprintf("rank %d on %s", cfg.LoRA.Rank, strings.Join(cfg.LoRA.Targets, ",")),
		"quant":                    fmt.Sprintf("%s block %d double_quant %v", cfg.Quant.Format, cfg.Quant.BlockSize, cfg.Quant.DoubleQuant),
		"flops_per_token":          fl.PerToken,
		"flops_formula":            fl.Formula + " (a checkpointed step also runs the forward twice; not counted)",
		"threads":                  threads,
		"loss":                     st.lastLoss,
		"peak_rss_bytes":           peak,
		"peak_rss_gib":             gib(peak),
		"peak_rss_source":          source,
		"peak_rss_after_build_gib": gib(loadPeak),
		"estimate_bytes":           est.Host,
		"estimate_gib":             gib(est.Host),
		"estimate_error":           float64(peak-est.Host) / float64(est.Host),
		"estimate_components":      components,
		"budget_gib":               gib(qc.Budget),
		"method": "this process only builds the model (random weights drawn straight into NF4), enables LoRA " +
			"and runs the steps; the peak is its VmHWM, which /usr/bin/time -v reports as maximum resident set size",
	} {
		row.Extra[k] = v
	}
	if peerGFLOPS > 0 {
		row.Extra["peer_shape"] = fmt.Sprintf("%dx%dx%d (tokens x hidden x dim, the step's largest product)", B*T, cfg.Model.HiddenDim, cfg.Model.Dim)
	}
	return row, nil
}

// qloraPeer times OpenBLAS's sgemm at the step's largest product (tokens
// x hidden x dim) and returns its GFLOPS (0 when there is no peer), then
// returns the operands' memory to the system before the model is built.
func qloraPeer(row *Row, opt Options, threads, M int, c train.ModelConfig) float64 {
	ob := attachPeer(row, opt, threads, " (sgemm at the step's largest product)")
	if ob == nil {
		return 0
	}
	defer func() {
		runtime.GC()
		debug.FreeOSMemory()
	}()
	N, K := c.HiddenDim, c.Dim
	rng := rand.New(rand.NewPCG(3, 4))
	a, b, out := randFloats(rng, M*K), randFloats(rng, K*N), make([]float32, M*N)
	call := func() error { return ob.Sgemm(false, false, M, N, K, 1, a, K, b, N, 0, out, N) }
	if _, err := timeIt(1, call); err != nil {
		row.Extra["peer_missing"] = err.Error()
		return 0
	}
	var secs []float64
	for range 3 {
		s, err := timeIt(1, call)
		if err != nil {
			row.Extra["peer_missing"] = err.Error()
			return 0
		}
		secs = append(secs, s)
	}
	time.Sleep(peerCooldown)
	return 2 * float64(M) * float64(N) * float64(K) / median(secs) / 1e9
}

// RunQLoRA emits the machine row, then one QLoRA row per config (a row
// that fails carries its Error); only a cancelled ctx stops it.
func RunQLoRA(ctx context.Context, rows []QLoRAConfig, emit func(Row)) error {
	emit(DescribeMachine().Row())
	for _, qc := range rows {
		if err := ctx.Err(); err != nil {
			return err
		}
		r, err := QLoRAMemoryRow(ctx, qc)
		emit(orError(r, err, "qlora_step", qc.Preset))
	}
	return ctx.Err()
}

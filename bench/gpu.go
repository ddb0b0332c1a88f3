package bench

// The GPU rows of `opencluster bench --device cuda` (the opencluster-cuda
// build). Everything here is plain Go over two small interfaces, so the row
// logic and the peak arithmetic are tested without a GPU; gpu_cuda.go (tag
// cuda) adapts the CUDA backend in kernels/ to them.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/opencluster/opencluster/train"
	"github.com/opencluster/opencluster/train/backend"
)

// GPUInfo is what a card's theoretical peaks are computed from: the CUDA
// device attributes (SM count, maximum SM clock, memory clock and bus width)
// and the compute capability, which picks the per-SM rates in smRates.
type GPUInfo struct {
	Index       int    `json:"index"`
	Name        string `json:"name"`
	CC          string `json:"compute_capability"` // "8.6"
	SMs         int    `json:"sms"`
	ClockMHz    int    `json:"max_sm_clock_mhz"`
	MemClockMHz int    `json:"mem_clock_mhz"`
	BusBits     int    `json:"mem_bus_bits"`
	MemBytes    uint64 `json:"mem_bytes"`
}

// smRate is the dense (no structured sparsity) throughput of one SM per
// clock, in FLOPs (2 per fused multiply-add), for one input type with fp32
// accumulation (int8: int32 accumulation, ops).
type smRate struct {
	FP32, TF32, BF16, FP16, INT8 float64
}

// smRates per compute capability. Sources: NVIDIA's architecture whitepapers
// (Turing TU102, A100, GA102, Ada AD102, H100), dense figures:
//
//	sm_75 Turing:  64 FP32 lanes; 8 tensor cores x 64 FMA (fp16, int8 2x); no tf32/bf16.
//	sm_80 A100:    64 FP32 lanes; 4 tensor cores x 256 FMA (fp16/bf16), tf32 half, int8 2x.
//	sm_86 GA10x:   128 FP32 lanes; 4 tensor cores x 128 FMA (fp16/bf16), tf32 half, int8 2x.
//	sm_89 Ada:     128 FP32 lanes; as sm_86 per clock for fp16/bf16/tf32/int8 (fp8 not used).
//	sm_90 H100:    128 FP32 lanes; 4 tensor cores x 512 FMA (fp16/bf16), tf32 half, int8 2x.
//
// GeForce parts of sm_75/86/89 run fp16/bf16 with fp32 accumulation at half
// these rates; the table gives the full (professional-card) rate, so on a
// gaming card fraction_of_peak reads low by up to 2x for those rows. An
// unknown capability falls back to the nearest lower one.
var smRates = map[string]smRate{
	"7.5": {FP32: 128, FP16: 1024, INT8: 2048},
	"8.0": {FP32: 128, TF32: 1024, BF16: 2048, FP16: 2048, INT8: 4096},
	"8.6": {FP32: 256, TF32: 512, BF16: 1024, FP16: 1024, INT8: 2048},
	"8.7": {FP32: 256, TF32: 512, BF16: 1024, FP16: 1024, INT8: 2048},
	"8.9": {FP32: 256, TF32: 512, BF16: 1024, FP16: 1024, INT8: 2048},
	"9.0": {FP32: 256, TF32: 2048, BF16: 4096, FP16: 4096, INT8: 8192},
}

// rates returns the per-SM rates for cc, falling back to the nearest lower
// known capability (a newer minor revision runs at least as fast).
func rates(cc string) (smRate, string, bool) {
	if r, ok := smRates[cc]; ok {
		return r, cc, true
	}
	var major, minor int
	if _, err := fmt.Sscanf(cc, "%d.%d", &major, &minor); err != nil {
		return smRate{}, "", false
	}
	want := major*100 + minor
	best, bestKey := -1, ""
	for k := range smRates {
		var a, b int
		fmt.Sscanf(k, "%d.%d", &a, &b)
		if v := a*100 + b; v <= want && v > best {
			best, bestKey = v, k
		}
	}
	if best < 0 {
		return smRate{}, "", false
	}
	return smRates[bestKey], bestKey, true
}

// PeakTFLOPS is SMs x max clock x FLOPs per SM per clock for dtype (fp32,
// tf32, bf16, fp16, int8), or 0 when the card has no such path or its
// capability is unknown.
func (g GPUInfo) PeakTFLOPS(dtype string) float64 {
	r, _, ok := rates(g.CC)
	if !ok {
		return 0
	}
	var perClock float64
	switch dtype {
	case "fp32":
		perClock = r.FP32
	case "tf32":
		perClock = r.TF32
	case "bf16":
		perClock = r.BF16
	case "fp16":
		perClock = r.FP16
	case "int8":
		perClock = r.INT8
	}
	return float64(g.SMs) * float64(g.ClockMHz) * 1e6 * perClock / 1e12
}

// PeakGBps is the memory bandwidth: 2 transfers per memory clock (the
// attribute reports the DDR clock) x bus width.
func (g GPUInfo) PeakGBps() float64 {
	return 2 * float64(g.MemClockMHz) * 1e6 * float64(g.BusBits) / 8 / 1e9
}

// Row reports the card as a row named "gpu".
func (g GPUInfo) Row() Row {
	_, used, _ := rates(g.CC)
	extra := map[string]any{
		"index": g.Index, "name": g.Name, "compute_capability": g.CC, "rates_of": used,
		"sms": g.SMs, "max_sm_clock_mhz": g.ClockMHz, "mem_clock_mhz": g.MemClockMHz,
		"mem_bus_bits": g.BusBits, "mem_gib": float64(g.MemBytes) / (1 << 30),
		"peak_gbps": g.PeakGBps(),
	}
	for _, dt := range gemmDtypes {
		extra["peak_tflops_"+dt] = g.PeakTFLOPS(dt)
	}
	return Row{Name: "gpu", PeakGFLOPS: 1000 * g.PeakTFLOPS("bf16"), Extra: extra}
}

// GPUKernels are the CUDA backend's timing helpers (kernels.CUDA's Bench*
// methods): each runs a warm-up, then times repetitions with CUDA events.
type GPUKernels interface {
	BenchGEMM(dtype string, m, n, k, iters int) (tflops float64, err error)
	BenchCopy(bytes int) (gbps float64, err error)
	BenchNF4Dequant(n int) (gbps float64, err error)
	BenchNF4Matmul(m, n, k int) (tflops float64, err error)
}

// GPUBackend is a device Backend that reports its memory. PeakBytes is the
// most device memory it has had allocated since it was opened or since
// ResetPeak, which restarts the count from what is allocated now.
type GPUBackend interface {
	backend.Backend
	MemInfo() (free, total uint64)
	PeakBytes() uint64
	ResetPeak()
	Close()
}

// QLoRAPreset is one model shape for the QLoRA step rows.
type QLoRAPreset struct {
	Name   string
	Config train.Config
}

// GPUOptions choose what RunGPU measures.
type GPUOptions struct {
	Info    GPUInfo
	Kernels GPUKernels
	// Open opens a fresh GPU backend for each QLoRA preset, so each peak
	// is that model's alone; nil skips the QLoRA rows.
	Open  func() (GPUBackend, error)
	QLoRA []QLoRAPreset
	// Steps is the number of timed QLoRA steps (default 5, quick 2) after
	// one warm-up step.
	Steps int
	Quick bool
}

// gemmDtypes are the GEMM precisions benched, in row order.
var gemmDtypes = []string{"fp32", "tf32", "bf16", "fp16", "int8"}

// GEMMShape is one GEMM size: C[M,N] = A[M,K] B[K,N].
type GEMMShape struct {
	Name    string
	M, N, K int
}

// GPUGEMMShapes are the GEMM sizes: the square 4096^3 the targets
// use, and llama-1b training shapes (512 tokens: the MLP up/gate and down
// projections, and the lm_head-sized product). Quick keeps 4096^3 only.
func GPUGEMMShapes(quick bool) []GEMMShape {
	s := []GEMMShape{{"square", 4096, 4096, 4096}}
	if quick {
		return s
	}
	return append(s,
		GEMMShape{"llama-1b mlp up", 512, 8192, 2048},
		GEMMShape{"llama-1b mlp down", 512, 2048, 8192},
		GEMMShape{"llama-7b mlp up", 512, 11008, 4096},
	)
}

// Size renders the shape as MxNxK.
func (s GEMMShape) Size() string { return fmt.Sprintf("%dx%dx%d", s.M, s.N, s.K) }

// RunGPU measures the GPU rows in order and hands each to emit as soon as it
// is done: the card, GEMM per dtype and shape, copy bandwidth, NF4
// dequantize (and its fraction of copy), the fused NF4 matmul, and QLoRA
// steps. A row that fails carries Error and the rest still run (an int8
// GEMM the backend lacks is such a row); only a cancelled ctx stops RunGPU.
func RunGPU(ctx context.Context, opt GPUOptions, emit func(Row)) error {
	if opt.Kernels == nil {
		return errors.New("bench: RunGPU needs the GPU's kernels")
	}
	g := opt.Info
	emit(g.Row())
	iters := 20
	if opt.Quick {
		iters = 5
	}
	for _, s := range GPUGEMMShapes(opt.Quick) {
		for _, dt := range gemmDtypes {
			if err := ctx.Err(); err != nil {
				return err
			}
			r := Row{Name: "gpu_gemm_" + dt, Size: s.Size(), Extra: map[string]any{"dtype": dt, "shape": s.Name}}
			peak := g.PeakTFLOPS(dt)
			if peak == 0 && dt != "fp32" {
				r.Error = fmt.Sprintf("%s GEMM: compute capability %s has no %s tensor-core path", dt, g.CC, dt)
				emit(r)
				continue
			}
			tf, err := opt.Kernels.BenchGEMM(dt, s.M, s.N, s.K, iters)
			emit(fillRate(r, tf, peak, err))
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	copyBytes := 1 << 30
	if opt.Quick {
		copyBytes = 256 << 20
	}
	copyGBps, err := opt.Kernels.BenchCopy(copyBytes)
	cr := Row{Name: "gpu_copy", Size: fmt.Sprintf("%d MiB", copyBytes>>20), GBps: copyGBps,
		Extra: map[string]any{"peak_gbps": g.PeakGBps()}}
	if err != nil {
		cr.Error = err.Error()
	} else {
		cr.Extra["fraction_of_peak_bw"] = frac(copyGBps, g.PeakGBps())
	}
	emit(cr)

	if err := ctx.Err(); err != nil {
		return err
	}
	n := 8192 * 8192
	if opt.Quick {
		n = 4096 * 4096
	}
	dq, err := opt.Kernels.BenchNF4Dequant(n)
	dr := Row{Name: "gpu_nf4_dequantize", Size: fmt.Sprintf("%d elements", n), GBps: dq,
		Extra: map[string]any{"copy_gbps": copyGBps, "peak_gbps": g.PeakGBps()}}
	if err != nil {
		dr.Error = err.Error()
	} else if copyGBps > 0 {
		dr.Extra["fraction_of_copy"] = frac(dq, copyGBps)
	}
	emit(dr)

	for _, s := range GPUGEMMShapes(opt.Quick) {
		if err := ctx.Err(); err != nil {
			return err
		}
		tf, err := opt.Kernels.BenchNF4Matmul(s.M, s.N, s.K)
		r := fillRate(Row{Name: "gpu_nf4_matmul", Size: s.Size(), Extra: map[string]any{"shape": s.Name}}, tf, g.PeakTFLOPS("bf16"), err)
		emit(r)
	}

	if opt.Open == nil {
		return nil
	}
	for _, p := range opt.QLoRA {
		if err := ctx.Err(); err != nil {
			return err
		}
		r, err := qloraRow(ctx, p, opt)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			r = Row{Name: "gpu_qlora_step", Size: p.Name, Error: err.Error()}
		}
		emit(r)
	}
	return nil
}

// fillRate completes a TFLOPS row: gflops, the peak and the fraction of it.
func fillRate(r Row, tflops, peak float64, err error) Row {
	if err != nil {
		r.Error = err.Error()
		return r
	}
	if math.IsNaN(tflops) || math.IsInf(tflops, 0) || tflops < 0 {
		r.Error = fmt.Sprintf("the kernel reported %v TFLOPS", tflops)
		return r
	}
	r.GFLOPS = 1000 * tflops
	r.PeakGFLOPS = 1000 * peak
	r.FractionOfPeak = frac(tflops, peak)
	r.Extra["tflops"] = tflops
	return r
}

func frac(a, b float64) float64 {
	if b <= 0 {
		return 0
	}
	return a / b
}

// qloraRow measures QLoRA training steps of one model shape on a fresh
// backend: random weights drawn straight into 4-bit on the host
// (train.NewQuantizedModel, the preset's quant section), LoRA on the
// preset's targets, then one warm-up step and Steps timed steps (forward,
// backward, AdamW), in mixed precision where the backend has it
// (SetMixedPrecision). The peak is counted from just before the model is
// built (the allocator's own count), and separately from after it is built.
func qloraRow(ctx context.Context, p QLoRAPreset, opt GPUOptions) (Row, error) {
	be, err := opt.Open()
	if err != nil {
		return Row{}, fmt.Errorf("opening the GPU backend: %w", err)
	}
	defer be.Close()
	steps := opt.Steps
	if steps <= 0 {
		steps = 5
		if opt.Quick {
			steps = 2
		}
	}
	r, err := QLoRAStep(ctx, be, p, steps)
	if err != nil {
		return Row{}, err
	}
	r.Name = "gpu_qlora_step"
	return r, nil
}

// QLoRAStep runs QLoRA steps of preset p on be (any backend: the CPU in
// tests) and returns a row with tokens/s and, when be reports memory, the
// peak device bytes. It is the measurement behind the gpu_qlora_step rows.
func QLoRAStep(ctx context.Context, be backend.Backend, p QLoRAPreset, steps int) (Row, error) {
	cfg := p.Config
	if err := cfg.Validate(); err != nil {
		return Row{}, fmt.Errorf("preset %s: %w", p.Name, err)
	}
	if steps < 1 {
		return Row{}, fmt.Errorf("preset %s: steps %d: want at least 1", p.Name, steps)
	}
	mem, hasMem := be.(GPUBackend)
	var plan *train.MemoryPlan
	var free uint64
	if hasMem {
		free, _ = mem.MemInfo()
	}
	if free > 0 {
		// Fit the step into the card's free memory (micro-batch, then
		// checkpointing, then AdamW moments on the host) before building.
		job := train.MemoryJob{Model: cfg.Model, Mode: train.ModeQLoRA, LoRA: cfg.LoRA, Quant: cfg.Quant,
			MicroBatch: cfg.Train.BatchSize, SeqLen: cfg.Train.SeqLen, CUDA: true}
		p2, err := train.PlanMemory(job, int64(free)-int64(free)/20, true)
		if err != nil {
			return Row{}, fmt.Errorf("preset %s: %w", p.Name, err)
		}
		plan = &p2
	}
	if hasMem {
		mem.ResetPeak()
	}
	// Quantized on the host as it is drawn: only the NF4 linears and the
	// bf16 embedding and lm_head are uploaded, never an fp32 model.
	m, err := train.NewQuantizedModel(cfg.Model, be, cfg.Train.Seed, cfg.Quant)
	if err != nil {
		return Row{}, fmt.Errorf("preset %s: building the quantized model: %w", p.Name, err)
	}
	defer m.Free()
	var buildPeak uint64
	if hasMem {
		buildPeak = mem.PeakBytes()
		mem.ResetPeak()
	}
	precision := "fp32"
	if mp, ok := be.(interface{ SetMixedPrecision() string }); ok {
		precision = mp.SetMixedPrecision()
	}
	if err := m.EnableLoRA(cfg.LoRA, cfg.Train.Seed); err != nil {
		return Row{}, fmt.Errorf("preset %s: LoRA: %w", p.Name, err)
	}
	if plan != nil {
		m.SetMicroBatch(plan.MicroBatch)
		m.SetCheckpointing(plan.Checkpointing)
		m.SetHostOptimizer(plan.HostOptimizer)
	}
	B, T := cfg.Train.BatchSize, cfg.Train.SeqLen
	rng := rand.New(rand.NewPCG(cfg.Train.Seed, 7))
	tokens := make([]int32, B*T)
	targets := make([]int32, B*T)
	for i := range tokens {
		tokens[i] = int32(rng.IntN(cfg.Model.VocabSize))
		targets[i] = int32(rng.IntN(cfg.Model.VocabSize))
	}
	step := func(i int) (float64, error) {
		m.ZeroGrad()
		loss, err := m.ForwardBackward(tokens, targets, B, T, 1, i)
		if err != nil {
			return 0, err
		}
		if cfg.Train.GradClip > 0 {
			m.ClipGradNorm(cfg.Train.GradClip)
		}
		m.OptimizerStep(cfg.Train, cfg.Train.LR, i)
		return loss, nil
	}
	loss0, err := step(1)
	if err != nil {
		return Row{}, fmt.Errorf("preset %s: warm-up step: %w", p.Name, err)
	}
	var loss float64
	start := time.Now()
	for i := 0; i < steps; i++ {
		if err := ctx.Err(); err != nil {
			return Row{}, err
		}
		if loss, err = step(2 + i); err != nil {
			return Row{}, fmt.Errorf("preset %s: step %d: %w", p.Name, 2+i, err)
		}
	}
	// ForwardBackward reads the losses back, so every step but the last
	// optimizer update is complete; SumSquares waits for that one too.
	one := be.Alloc(1)
	be.SumSquares(one)
	el := time.Since(start).Seconds()
	be.Free(one)
	if math.IsNaN(loss) || math.IsInf(loss, 0) {
		return Row{}, fmt.Errorf("preset %s: loss is %v after %d steps", p.Name, loss, steps+1)
	}
	tok := float64(steps*B*T) / el
	r := Row{Name: "qlora_step", Size: p.Name, Extra: map[string]any{
		"tokens_per_s": tok, "step_s": el / float64(steps), "steps": steps,
		"batch": B, "seq_len": T, "rank": cfg.LoRA.Rank, "targets": len(cfg.LoRA.Targets),
		"quant": cfg.Quant.Format, "params": cfg.Model.NumParams(), "trainable": m.NumTrainable(),
		"loss_first": loss0, "loss_last": loss, "backend": be.Name(), "precision": precision,
	}}
	// FLOPs: 6 per parameter per token is full training; QLoRA skips the
	// frozen weights' gradient (dW), leaving forward 2 + dX 2 = 4.
	r.GFLOPS = 4 * float64(cfg.Model.NumParams()) * tok / 1e9
	if plan != nil {
		r.Extra["micro_batch"], r.Extra["checkpointing"], r.Extra["host_optimizer"] = plan.MicroBatch, plan.Checkpointing, plan.HostOptimizer
		r.Extra["estimate_device_gib"] = float64(plan.Estimate.Device) / (1 << 30)
	}
	if hasMem {
		peak := mem.PeakBytes()
		r.Extra["peak_bytes"] = peak
		r.Extra["peak_gib"] = float64(peak) / (1 << 30)
		r.Extra["build_peak_gib"] = float64(buildPeak) / (1 << 30)
		free, total := mem.MemInfo()
		r.Extra["device_used_gib"] = float64(total-free) / (1 << 30)
	}
	return r, nil
}

package bench

// Training-step rows: tokens/s of whole optimizer steps (forward, backward,
// gradient clip, AdamW) on the CPU backend, in pretrain and QLoRA mode, with
// the achieved GFLOPS under a stated FLOP count, and the peak resident memory
// of one QLoRA step measured in a fresh child process.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/opencluster/opencluster/train"
	"github.com/opencluster/opencluster/train/backend"
	"github.com/opencluster/opencluster/train/backend/sgemm"
)

// Step modes, the part after the slash in a step name ("small/qlora").
const (
	ModePretrain  = "pretrain"   // every weight fp32 and trainable
	ModeQLoRA     = "qlora"      // NF4 base frozen, LoRA on the configured linears, train.compute_dtype
	ModeQLoRAFP32 = "qlora-fp32" // the same with the frozen products in fp32 whatever the CPU
	ModeQLoRARSS  = "qlora-rss"
)

// DefaultStepNames are the step rows `opencluster bench` measures: both
// modes on tiny and small, then the peak RSS of one small QLoRA step.
var DefaultStepNames = []string{
	"tiny/" + ModePretrain, "tiny/" + ModeQLoRA,
	"small/" + ModePretrain, "small/" + ModeQLoRA, "small/" + ModeQLoRAFP32,
	"small/" + ModeQLoRARSS,
}

// StepConfig is what NewStepBench needs; the command fills it, so nothing
// here reads files or flags.
type StepConfig struct {
	// Presets maps a preset name ("tiny") to its whole config: the model
	// shape, train.batch_size and train.seq_len (the tokens of one step), the
	// AdamW settings, lora and quant.
	Presets map[string]train.Config
	// Quick times one step after the warm-up instead of up to five.
	Quick bool
	// Threads for the CPU backend (0: every core).
	Threads int
	// PeakGFLOPS is the machine's theoretical peak (0: unknown, no fraction).
	PeakGFLOPS float64
	// Child builds the command that runs RunStepChild in a fresh process for
	// the qlora-rss row: preset is the preset name and base the packed 4-bit
	// base file to load. Nil: the RSS row is an error row saying so.
	Child func(ctx context.Context, preset, base string) *exec.Cmd
	// TempDir holds the packed base handed to the child ("": os.TempDir()).
	TempDir string
	// SaveChild builds the command that runs RunSaveChild for the
	// pretrain_save row in a fresh process, working in dir. Nil: that row
	// is an error row saying so.
	SaveChild func(ctx context.Context, preset, dir string) *exec.Cmd
	// Torch is the PyTorch CPU peer of the QLoRA rows (nil: none).
	Torch *TorchPeer
}

// NewStepBench returns the hook for Options.Step. Names are "preset/mode"
// with mode pretrain, qlora or qlora-rss; a bare preset name means pretrain.
func NewStepBench(sc StepConfig) StepBench {
	return func(ctx context.Context, name string) (Row, error) {
		preset, mode, ok := strings.Cut(name, "/")
		if !ok {
			mode = ModePretrain
		}
		cfg, found := sc.Presets[preset]
		if !found {
			return Row{}, fmt.Errorf("train step %q: no preset %q is loaded", name, preset)
		}
		switch mode {
		case ModePretrain, ModeQLoRA, ModeQLoRAFP32:
			return TrainStep(ctx, preset, mode, cfg, sc)
		case ModeQLoRARSS:
			return StepRSS(ctx, preset, cfg, sc)
		case ModeSave:
			return SaveRow(ctx, preset, cfg, sc)
		}
		return Row{}, fmt.Errorf("train step %q: mode %q is not %s, %s, %s, %s or %s", name, mode, ModePretrain, ModeQLoRA, ModeQLoRAFP32, ModeQLoRARSS, ModeSave)
	}
}

// StepFLOPs is the FLOP count of one training step per token, and the
// formula it came from (for the row's Extra).
type StepFLOPs struct {
	PerToken float64
	Formula  string
	// Dense is N, the weights in matrix products (decoder linears plus
	// lm_head; the embedding lookup and the norms are not products).
	Dense int64
	// Adapter is the LoRA parameter count (0 in pretrain).
	Adapter int64
}

// CountStepFLOPs counts a step's floating-point operations per token.
//
// Pretrain: the usual 6N (forward 2N, backward 2N for the input gradient
// and 2N for the weight gradient) plus causal attention: Q·Kᵀ and P·V cost
// 2·T·d each per token and layer over the full T x T square, half of that
// under the causal mask, and three times that for forward plus backward,
// so 6·L·d·T (llm.c's estimate; PaLM's 12·L·d·T counts the masked half too).
//
// QLoRA: the frozen base gets no weight gradient, so 4N (forward and the
// input gradient through the dequantized weights); each adapter is a pair of
// ordinary trainable products, 6·(r·in + r·out) = 6·N_lora; attention as
// above. Dequantization is not counted: it is overhead, not model FLOPs.
func CountStepFLOPs(c train.ModelConfig, lora *train.LoRAConfig, T int) StepFLOPs {
	d, v, L := int64(c.Dim), int64(c.VocabSize), int64(c.Layers)
	var dense, adapter int64
	for _, name := range train.LinearNames {
		in, out, _ := c.LinearShape(name)
		dense += L * int64(in) * int64(out)
		if lora != nil && targets(lora.Targets, name) {
			adapter += L * int64(lora.Rank) * int64(in+out)
		}
	}
	dense += v * d // lm_head (the tied embedding's product)
	attn := 6 * float64(L) * float64(d) * float64(T)
	f := StepFLOPs{Dense: dense, Adapter: adapter}
	if lora == nil {
		f.PerToken = 6*float64(dense) + attn
		f.Formula = fmt.Sprintf("6N + 6*L*d*T, N=%d (linears+lm_head), L=%d, d=%d, T=%d", dense, L, d, T)
		return f
	}
	f.PerToken = 4*float64(dense) + 6*float64(adapter) + attn
	f.Formula = fmt.Sprintf("4N + 6*N_lora + 6*L*d*T, N=%d frozen (linears+lm_head), N_lora=%d, L=%d, d=%d, T=%d",
		dense, adapter, L, d, T)
	return f
}

func targets(ts []string, name string) bool {
	for _, t := range ts {
		if t == name {
			return true
		}
	}
	return false
}

// stepModel builds the model of one mode with random weights (seeded, so
// every run times the same arithmetic) and random tokens for one step.
func stepModel(cfg train.Config, mode string, be backend.Backend) (*train.Model, error) {
	m, err := train.NewModel(cfg.Model, be, 1)
	if err != nil {
		return nil, err
	}
	if mode != ModePretrain {
		if err := m.QuantizeBase(cfg.Quant); err != nil {
			return nil, err
		}
		if err := m.EnableLoRA(cfg.LoRA, 1); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// checkStepConfig validates what a step row needs of a preset.
func checkStepConfig(preset, mode string, cfg train.Config) error {
	if err := cfg.Model.Validate(); err != nil {
		return fmt.Errorf("preset %s: %w", preset, err)
	}
	B, T := cfg.Train.BatchSize, cfg.Train.SeqLen
	if B <= 0 || T <= 0 || T > cfg.Model.MaxSeqLen {
		return fmt.Errorf("preset %s: train.batch_size %d and train.seq_len %d must be positive, seq_len at most model.max_seq_len %d",
			preset, B, T, cfg.Model.MaxSeqLen)
	}
	if mode != ModePretrain {
		if err := cfg.LoRA.Validate(); err != nil {
			return fmt.Errorf("preset %s: %w", preset, err)
		}
		if err := cfg.Quant.Validate(); err != nil {
			return fmt.Errorf("preset %s: %w", preset, err)
		}
	}
	return nil
}

// stepper runs optimizer steps on one fixed random batch.
type stepper struct {
	m               *train.Model
	tokens, targets []int32
	B, T            int
	tc              train.TrainConfig
	step            int
	lastLoss, norm  float64
	clip            float64
}

func newStepper(m *train.Model, cfg train.Config) *stepper {
	B, T := cfg.Train.BatchSize, cfg.Train.SeqLen
	rng := rand.New(rand.NewPCG(2, 3))
	tok := make([]int32, B*T)
	tgt := make([]int32, B*T)
	for i := range tok {
		tok[i] = int32(rng.IntN(cfg.Model.VocabSize))
		tgt[i] = int32(rng.IntN(cfg.Model.VocabSize))
	}
	tc := cfg.Train
	if tc.LR <= 0 { // a preset without optimizer settings still benches
		tc.LR, tc.Beta1, tc.Beta2, tc.Eps = 1e-3, 0.9, 0.95, 1e-8
	}
	clip := tc.GradClip
	if clip <= 0 {
		clip = 1
	}
	return &stepper{m: m, tokens: tok, targets: tgt, B: B, T: T, tc: tc, clip: clip}
}

// run does one whole optimizer step.
func (s *stepper) run() error {
	s.step++
	s.m.ZeroGrad()
	loss, err := s.m.ForwardBackward(s.tokens, s.targets, s.B, s.T, 1, s.step)
	if err != nil {
		return err
	}
	s.lastLoss = loss
	s.norm = s.m.ClipGradNorm(s.clip)
	s.m.OptimizerStep(s.tc, s.tc.LR, s.step)
	return nil
}

// stepTarget is how long the timed steps of one row should last in all.
func stepTarget(quick bool) (seconds float64, maxSteps int) {
	if quick {
		return 0.5, 3
	}
	return 3, 20
}

// TrainStep times whole optimizer steps of preset in mode (pretrain or
// qlora) on the CPU backend: one warm-up step (which also allocates the
// activations and the AdamW moments), then steps until about 3 s have passed
// (0.5 s with Quick; always at least one), each timed alone, and the median.
// tokens/s = batch_size*seq_len / median step time.
func TrainStep(ctx context.Context, preset, mode string, cfg train.Config, sc StepConfig) (Row, error) {
	row := Row{Name: "train_step", Size: preset + "/" + mode, PeakGFLOPS: sc.PeakGFLOPS, Kernel: sgemm.Implementation()}
	if mode != ModePretrain && mode != ModeQLoRA && mode != ModeQLoRAFP32 {
		return row, fmt.Errorf("train step %s: mode %q is not %s, %s or %s", preset, mode, ModePretrain, ModeQLoRA, ModeQLoRAFP32)
	}
	if err := checkStepConfig(preset, mode, cfg); err != nil {
		return row, err
	}
	if err := ctx.Err(); err != nil {
		return row, err
	}
	be := backend.NewCPU(sc.Threads)
	dtype := cfg.Train.ComputeDType
	if mode == ModeQLoRAFP32 {
		dtype = backend.ComputeFP32
	}
	dtype, err := backend.ApplyComputeDType(be, dtype)
	if err != nil {
		return row, fmt.Errorf("train step %s/%s: %w", preset, mode, err)
	}
	if mode != ModePretrain && dtype == backend.ComputeBF16 {
		row.Kernel = sgemm.BF16Implementation() + "+" + sgemm.Implementation()
	}
	m, err := stepModel(cfg, mode, be)
	if err != nil {
		return row, fmt.Errorf("train step %s/%s: %w", preset, mode, err)
	}
	st := newStepper(m, cfg)
	w0 := time.Now()
	if err := st.run(); err != nil { // warm-up
		return row, fmt.Errorf("train step %s/%s: %w", preset, mode, err)
	}
	warm := time.Since(w0).Seconds()
	target, maxSteps := stepTarget(sc.Quick)
	var times []float64
	var total float64
	for len(times) == 0 || (total < target && len(times) < maxSteps) {
		if err := ctx.Err(); err != nil {
			return row, err
		}
		t0 := time.Now()
		if err := st.run(); err != nil {
			return row, fmt.Errorf("train step %s/%s: %w", preset, mode, err)
		}
		s := time.Since(t0).Seconds()
		times = append(times, s)
		total += s
	}
	var lora *train.LoRAConfig
	if mode != ModePretrain {
		lora = &cfg.LoRA
	}
	fl := CountStepFLOPs(cfg.Model, lora, st.T)
	tokens := float64(st.B * st.T)
	sec := median(times)
	row.GFLOPS = fl.PerToken * tokens / sec / 1e9
	if row.PeakGFLOPS > 0 {
		row.FractionOfPeak = row.GFLOPS / row.PeakGFLOPS
	}
	row.Extra = map[string]any{
		"tokens_per_s":             tokens / sec,
		"tokens_per_s_incl_warmup": tokens * float64(1+len(times)) / (warm + total),
		"warmup_seconds":           warm,
		"seconds_per_step":         sec,
		"steps_timed":              len(times),
		"batch":                    st.B,
		"seq_len":                  st.T,
		"params":                   cfg.Model.NumParams(),
		"trainable":                m.NumTrainable(),
		"flops_per_token":          fl.PerToken,
		"flops_formula":            fl.Formula,
		"threads":                  threadsOf(sc.Threads),
		"loss":                     st.lastLoss,
	}
	if mode != ModePretrain {
		attachTorchPeer(ctx, &row, preset, cfg, sc.Torch, fl.PerToken)
		row.Extra["frozen_products"] = dtype
		row.Extra["quant"] = fmt.Sprintf("%s block %d double_quant %v", cfg.Quant.Format, cfg.Quant.BlockSize, cfg.Quant.DoubleQuant)
		row.Extra["lora"] = fmt.Sprintf("rank %d on %s", cfg.LoRA.Rank, strings.Join(cfg.LoRA.Targets, ","))
	}
	return row, nil
}

// attachTorchPeer adds the PyTorch fp32 LoRA step of the same shape to a
// QLoRA row: its tokens/s, GFLOPS under the same FLOP count, and ours/peer.
func attachTorchPeer(ctx context.Context, row *Row, preset string, cfg train.Config, tp *TorchPeer, flopsPerToken float64) {
	if tp == nil {
		row.Extra["peer_missing"] = "no PyTorch peer (--no-torch)"
		return
	}
	tok, extra, err := tp.LoRAStep(ctx, preset, cfg)
	if err != nil {
		row.Extra["peer_missing"] = err.Error()
		return
	}
	core, _ := extra["openblas_coretype"].(string)
	row.Peer = fmt.Sprintf("%v, %v threads", extra["peer"], extra["threads"])
	row.PeerKernel = "fp32 OpenBLAS " + core
	if core == "" {
		row.PeerKernel = "fp32 OpenBLAS (its own choice of core)"
	}
	row.PeerGFLOPS = flopsPerToken * tok / 1e9
	ours, _ := row.Extra["tokens_per_s"].(float64)
	row.Ratio = ours / tok
	row.Extra["peer_tokens_per_s"] = tok
	if rss, ok := extra["peak_rss_bytes"].(float64); ok {
		row.Extra["peer_peak_rss_mib"] = rss / (1 << 20)
	}
	// No plausibility warning here: the peer is a framework's whole step
	// (elementwise ops, autograd), not a tuned BLAS.
}

func threadsOf(t int) int {
	if t > 0 {
		return t
	}
	return Options{}.threads()
}

// ChildResult is what RunStepChild prints: one JSON line.
type ChildResult struct {
	Preset       string  `json:"preset"`
	PeakRSSBytes int64   `json:"peak_rss_bytes"`
	BeforeBytes  int64   `json:"peak_rss_before_step_bytes"` // after loading, before the first step
	Steps        int     `json:"steps"`
	Loss         float64 `json:"loss"`
	Trainable    int     `json:"trainable"`
	Source       string  `json:"source"` // how the peak was read (see processPeakRSS)
}

// RunStepChild is the body of the child process behind the qlora-rss row:
// it loads the packed 4-bit base file (so no fp32 copy of the linears ever
// exists in this process, as on a worker that downloaded a quantized base),
// enables LoRA, runs two optimizer steps (the first allocates the
// activations and the AdamW moments; the second shows nothing else grows),
// and writes a ChildResult with getrusage's maxrss to w. The process must
// do nothing else, so its peak is the step's.
func RunStepChild(ctx context.Context, preset string, cfg train.Config, base string, threads int, w io.Writer) error {
	if err := checkStepConfig(preset, ModeQLoRA, cfg); err != nil {
		return err
	}
	be := backend.NewCPU(threads)
	if _, err := backend.ApplyComputeDType(be, cfg.Train.ComputeDType); err != nil {
		return fmt.Errorf("step child: %w", err)
	}
	m, err := train.LoadModel(base, be)
	if err != nil {
		return fmt.Errorf("step child: %w", err)
	}
	if !m.Quantized() {
		return fmt.Errorf("step child: base %s is not 4-bit", base)
	}
	if m.Config != cfg.Model {
		return fmt.Errorf("step child: base %s has shape %+v, preset %s wants %+v", base, m.Config, preset, cfg.Model)
	}
	if err := m.EnableLoRA(cfg.LoRA, 1); err != nil {
		return fmt.Errorf("step child: %w", err)
	}
	before, _ := processPeakRSS()
	res := ChildResult{Preset: preset, BeforeBytes: before, Trainable: m.NumTrainable()}
	st := newStepper(m, cfg)
	for range 2 {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := st.run(); err != nil {
			return fmt.Errorf("step child: %w", err)
		}
	}
	res.Steps, res.Loss = st.step, st.lastLoss
	res.PeakRSSBytes, res.Source = processPeakRSS()
	return json.NewEncoder(w).Encode(res)
}

// processPeakRSS is this process image's peak resident set and where the
// figure came from. On Linux it is VmHWM from /proc/self/status, the high
// water mark of the current address space, which starts afresh at exec.
// getrusage's maxrss does not: Linux carries it across execve, and Go starts
// children with vfork semantics (sharing the parent's memory until exec), so
// a child's maxrss would start at the parent's peak. Elsewhere getrusage.
func processPeakRSS() (int64, string) {
	if data, err := os.ReadFile("/proc/self/status"); err == nil {
		if v, ok := parseVmHWM(data); ok {
			return v, "VmHWM (/proc/self/status)"
		}
	}
	return PeakRSS(), "getrusage maxrss"
}

// parseVmHWM finds the "VmHWM:   1234 kB" line of /proc/<pid>/status.
func parseVmHWM(status []byte) (int64, bool) {
	for _, line := range strings.Split(string(status), "\n") {
		rest, ok := strings.CutPrefix(line, "VmHWM:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, false
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil || kb <= 0 {
			return 0, false
		}
		return kb * 1024, true
	}
	return 0, false
}

// WritePackedBase writes preset's model, randomly initialised and quantized
// as cfg.Quant says, to a safetensors file under dir (bitsandbytes layout),
// atomically, and returns its path. The caller removes it.
func WritePackedBase(dir, preset string, cfg train.Config) (string, error) {
	m, err := stepModel(cfg, ModePretrain, backend.NewCPU(0))
	if err != nil {
		return "", fmt.Errorf("packed base for %s: %w", preset, err)
	}
	if err := m.QuantizeBase(cfg.Quant); err != nil {
		return "", fmt.Errorf("packed base for %s: %w", preset, err)
	}
	path := filepath.Join(dir, "bench-"+preset+"-base.safetensors")
	if err := m.SaveBase(path); err != nil {
		return "", fmt.Errorf("packed base for %s: %w", preset, err)
	}
	return path, nil
}

// StepRSS measures the peak resident memory of a QLoRA step of preset in a
// fresh child process (sc.Child): the parent has by now held GEMM operands
// and whole fp32 models, so its own maxrss says nothing about one step.
// The row reports the child's maxrss after two steps and before the first.
func StepRSS(ctx context.Context, preset string, cfg train.Config, sc StepConfig) (Row, error) {
	row := Row{Name: "train_step_peak_rss", Size: preset + "/" + ModeQLoRA}
	if sc.Child == nil {
		return row, errors.New("no child process runner: the peak RSS of one step needs a fresh process")
	}
	if err := checkStepConfig(preset, ModeQLoRA, cfg); err != nil {
		return row, err
	}
	dir, err := os.MkdirTemp(sc.TempDir, "opencluster-bench-")
	if err != nil {
		return row, fmt.Errorf("peak RSS of %s: %w", preset, err)
	}
	defer os.RemoveAll(dir)
	base, err := WritePackedBase(dir, preset, cfg)
	if err != nil {
		return row, err
	}
	fi, err := os.Stat(base)
	if err != nil {
		return row, err
	}
	cmd := sc.Child(ctx, preset, base)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return row, fmt.Errorf("peak RSS of %s: child %s: %w: %s", preset, cmd.Path, err, lastLine(stderr.String()))
	}
	res, err := ParseChildResult(stdout.Bytes())
	if err != nil {
		return row, fmt.Errorf("peak RSS of %s: child %s: %w", preset, cmd.Path, err)
	}
	if res.Preset != preset {
		return row, fmt.Errorf("peak RSS of %s: the child measured preset %q", preset, res.Preset)
	}
	mib := float64(res.PeakRSSBytes) / (1 << 20)
	row.Size = fmt.Sprintf("%s/%s %.0f MiB", preset, ModeQLoRA, mib)
	row.Extra = map[string]any{
		"bytes":           res.PeakRSSBytes,
		"mib":             mib,
		"before_step_mib": float64(res.BeforeBytes) / (1 << 20),
		"base_file_mib":   float64(fi.Size()) / (1 << 20),
		"trainable":       res.Trainable,
		"steps":           res.Steps,
		"batch":           cfg.Train.BatchSize,
		"seq_len":         cfg.Train.SeqLen,
		"source":          res.Source,
		"method": "peak resident set of a fresh child process that loads a packed 4-bit base file, " +
			"enables LoRA and runs two optimizer steps, and does nothing else (VmHWM on Linux, since " +
			"getrusage maxrss carries the parent's peak across exec)",
	}
	return row, nil
}

// ParseChildResult reads the last JSON line of a child's output.
func ParseChildResult(out []byte) (ChildResult, error) {
	var res ChildResult
	line := lastLine(string(out))
	if line == "" {
		return res, errors.New("printed nothing")
	}
	if err := json.Unmarshal([]byte(line), &res); err != nil {
		return res, fmt.Errorf("output %q: %w", line, err)
	}
	if res.PeakRSSBytes <= 0 {
		return res, fmt.Errorf("output %q: no peak RSS (getrusage unavailable?)", line)
	}
	return res, nil
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// TrainStepConcurrent times n single-threaded trainers of preset at once,
// each on its own model, as n worker processes sharing this machine run
// (the federated demo's workers use one thread each). GOMAXPROCS is raised
// to n meanwhile, so that, like n processes, they get n threads' share of
// a loaded machine. The row is the mean of the n: tokens/s and GFLOPS per
// trainer, fraction_of_peak against sc.PeakGFLOPS / n (one trainer's
// share of the machine).
func TrainStepConcurrent(ctx context.Context, preset, mode string, cfg train.Config, sc StepConfig, n int) (Row, error) {
	if n < 1 {
		return Row{}, fmt.Errorf("train step %s/%s: %d concurrent trainers", preset, mode, n)
	}
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(max(n, runtime.GOMAXPROCS(0))))
	sc.Threads, sc.PeakGFLOPS = 1, sc.PeakGFLOPS/float64(n)
	rows, errs := make([]Row, n), make([]error, n)
	var wg sync.WaitGroup
	for i := range rows {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rows[i], errs[i] = TrainStep(ctx, preset, mode, cfg, sc)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return Row{}, err
	}
	out := rows[0]
	out.Size += fmt.Sprintf(" x%d concurrent", n)
	var gflops, tps float64
	for _, r := range rows {
		gflops += r.GFLOPS / float64(n)
		tps += r.Extra["tokens_per_s"].(float64) / float64(n)
	}
	out.GFLOPS, out.Extra["tokens_per_s"], out.Extra["concurrent"] = gflops, tps, n
	if out.PeakGFLOPS > 0 {
		out.FractionOfPeak = gflops / out.PeakGFLOPS
	}
	return out, nil
}

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"github.com/opencluster/opencluster/bench"
	"github.com/opencluster/opencluster/train"
	"github.com/opencluster/opencluster/train/backend/sgemm"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

var benchCmd = &cobra.Command{
	Use:   "bench",
	Short: "Measure this machine's CPU kernels against OpenBLAS",
	Long: `bench measures the CPU paths training runs on: the fp32 matrix product at
512, 1024 and 2048 next to OpenBLAS's sgemm in the same run (when the library
is installed; scripts/install-bench-deps.sh installs it), NF4 dequantization
and the NF4 x fp32 product, against the machine's theoretical peak; then
whole training steps (forward, backward, clip, AdamW) of the tiny and small
presets in pretrain and QLoRA mode (random weights, NF4 base, LoRA on the
preset's linears) as tokens/s and GFLOPS, and the peak RSS of one small QLoRA
step measured in a fresh child process.

With --only qlora it measures instead QLoRA training of full-size model
shapes (--model llama-1b, llama-7b, ...; random weights made straight into
NF4, LoRA on the preset's linears) at --seq-len: tokens/s and the peak
resident memory of this process, next to the memory model's estimate
(docs/memory.md). One model per run gives a figure /usr/bin/time -v can
check:

  opencluster bench --device cpu --only qlora --model llama-7b --seq-len 512 --json

It prints a table, or with --json one JSON object per row.`,
	Args: cobra.NoArgs,
	RunE: runBench,
}

func init() {
	f := benchCmd.Flags()
	f.Bool("json", false, "print one JSON object per row instead of a table")
	f.Bool("quick", false, "fewer repetitions and smaller sizes (for CI)")
	f.Int("threads", 0, "threads for our kernels and the peer (0: every core)")
	f.Bool("no-peer", false, "skip the OpenBLAS peer even when it is installed")
	f.String("peer-coretype", bench.PeerCoreAuto, "OpenBLAS kernels for the peer: auto (when the library's own choice is older than this CPU, force the newest core the CPU runs), keep, or a core name such as SkylakeX")
	f.String("out", "", "also write the JSON rows to this file (atomically)")
	f.Bool("no-steps", false, "skip the training-step rows")
	f.String("torch-python", bench.DefaultTorchPython, "the Python whose torch is the QLoRA rows' peer (PyTorch's fp32 LoRA step of the same shape, on the CPU)")
	f.Bool("no-torch", false, "skip the PyTorch peer of the QLoRA rows")
	f.String("only", "", "measure only these rows: qlora (full-size QLoRA steps of --model, with peak RSS) or secagg (secure aggregation: upload bytes per worker at cohorts 10, 100, 1000 and the coordinator's time at 1000 with 30% dropouts)")
	f.String("model", "llama-1b", "with --only qlora: the model presets to train, comma-separated (e.g. llama-1b,llama-7b)")
	f.Int("seq-len", 0, "with --only qlora: tokens per sequence (0: the preset's train.seq_len)")
	f.Int("steps", 1, "with --only qlora: timed optimizer steps after the warm-up step")
	addMaxMemoryFlag(f)
	f.String("sgemm-kernel", "auto", "our kernel family: auto (the widest this CPU runs), avx512, avx2 or go; a narrower one measures that path on this CPU")
	// The child process behind the train_step_peak_rss row (bench.RunStepChild).
	f.String("step-child", "", "internal: run one QLoRA step of this preset and print its peak RSS")
	f.String("step-base", "", "internal: the packed 4-bit base the step child loads")
	// The child process behind the pretrain_save row (bench.RunSaveChild).
	f.String("save-child", "", "internal: pretrain the save row's model in this directory and print the end-of-run save and peak RSS")
	_ = f.MarkHidden("save-child")
	// The child process that reports which core OpenBLAS picks (bench.ProbeOpenBLAS).
	f.Bool("peer-probe", false, "internal: load OpenBLAS and print the core type it picked")
	_ = f.MarkHidden("step-child")
	_ = f.MarkHidden("step-base")
	_ = f.MarkHidden("peer-probe")
	rootCmd.AddCommand(benchCmd)
}

func runBench(cmd *cobra.Command, _ []string) error {
	f := cmd.Flags()
	// --device is the root's persistent flag (dispatch.go), which moves the
	// command to opencluster-cuda when a GPU is there; here it is checked
	// once more so this build never claims to bench a GPU.
	device := "auto"
	if fl := f.Lookup("device"); fl != nil {
		device = fl.Value.String()
	}
	asJSON, _ := f.GetBool("json")
	quick, _ := f.GetBool("quick")
	threads, _ := f.GetInt("threads")
	noPeer, _ := f.GetBool("no-peer")
	out, _ := f.GetString("out")
	noSteps, _ := f.GetBool("no-steps")
	coretype, _ := f.GetString("peer-coretype")
	if probe, _ := f.GetBool("peer-probe"); probe {
		return bench.ProbeOpenBLAS(cmd.OutOrStdout())
	}
	if dir, _ := f.GetString("save-child"); dir != "" {
		cfg, err := loadPreset(savePreset)
		if err != nil {
			return err
		}
		return bench.RunSaveChild(cmd.Context(), bench.SaveRunConfig(cfg, threads), dir, cmd.OutOrStdout())
	}
	if child, _ := f.GetString("step-child"); child != "" {
		base, _ := f.GetString("step-base")
		cfg, err := loadPreset(child)
		if err != nil {
			return err
		}
		return bench.RunStepChild(cmd.Context(), child, cfg, base, threads, cmd.OutOrStdout())
	}
	if onGPU, err := benchGPU(cmd, device); onGPU { // the CUDA build on a GPU (backend_cuda.go)
		return err
	}
	switch {
	case device == "cpu" || device == "auto":
	case device == "cuda" || strings.HasPrefix(device, "cuda:"):
		return errors.New("--device cuda: the CUDA bench needs the opencluster-cuda build (make cuda); this build benches the CPU only")
	default:
		return fmt.Errorf("--device %q: want cpu, auto or cuda[:N]", device)
	}
	if threads < 0 {
		return fmt.Errorf("--threads %d: must be 0 (every core) or more", threads)
	}
	if kernel, _ := f.GetString("sgemm-kernel"); kernel != "auto" {
		if err := sgemm.SetImplementation(kernel); err != nil {
			return fmt.Errorf("--sgemm-kernel: %w", err)
		}
	}

	opt := bench.Options{Quick: quick, Threads: threads, NoPeer: noPeer, PeerCoreType: coretype, Probe: peerProbe}
	switch only, _ := f.GetString("only"); only {
	case "":
	case "qlora":
		return runBenchQLoRA(cmd, opt, asJSON, out)
	case "secagg":
		return emitRows(cmd, asJSON, out, "bench: secure aggregation (a few minutes; --quick skips the cohort of 1000)...", func(emit func(bench.Row)) error {
			emit(bench.DescribeMachine().Row())
			return bench.SecAgg(cmd.Context(), quick, emit)
		})
	default:
		return fmt.Errorf("--only %q: the selectable rows are qlora and secagg", only)
	}
	if !noSteps {
		presets := map[string]train.Config{}
		for _, name := range []string{"tiny", "small", savePreset} {
			cfg, err := loadPreset(name)
			if err != nil {
				return err
			}
			presets[name] = cfg
		}
		opt.Step = bench.NewStepBench(bench.StepConfig{
			Presets:    presets,
			Quick:      quick,
			Threads:    threads,
			PeakGFLOPS: bench.DescribeMachine().PeakGFLOPS(),
			Child:      stepChild(threads),
			SaveChild:  saveChild(threads),
			Torch:      torchPeer(f, threads, quick),
		})
		opt.StepPresets = bench.DefaultStepNames
		if !quick {
			opt.StepPresets = append(append([]string(nil), opt.StepPresets...), savePreset+"/"+bench.ModeSave)
		}
	}
	return emitRows(cmd, asJSON, out, "bench: measuring (about a minute; --quick for less)...", func(emit func(bench.Row)) error {
		return bench.Run(cmd.Context(), opt, emit)
	})
}

// runBenchQLoRA runs the full-size QLoRA rows (--only qlora).
func runBenchQLoRA(cmd *cobra.Command, opt bench.Options, asJSON bool, out string) error {
	f := cmd.Flags()
	models, _ := f.GetString("model")
	seqLen, _ := f.GetInt("seq-len")
	steps, _ := f.GetInt("steps")
	memFlag, _ := f.GetString("max-memory")
	if seqLen < 0 || steps < 0 {
		return fmt.Errorf("--seq-len %d and --steps %d must not be negative", seqLen, steps)
	}
	budget, source, err := maxMemory(cmd.Context(), memFlag, "cpu")
	if err != nil {
		return err
	}
	limitHeap(budget)
	var rows []bench.QLoRAConfig
	for _, name := range strings.Split(models, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		cfg, err := loadPreset(name)
		if err != nil {
			return err
		}
		if seqLen > 0 {
			cfg.Train.SeqLen = seqLen
		}
		rows = append(rows, bench.QLoRAConfig{Preset: name, Config: cfg, Budget: budget, Steps: steps, Threads: opt.Threads, Options: opt})
	}
	if len(rows) == 0 {
		return errors.New("--model: no model preset given")
	}
	intro := fmt.Sprintf("bench: QLoRA of %s on the CPU within %.1f GiB (%s); a 7B step takes minutes...", models, float64(budget)/(1<<30), source)
	return emitRows(cmd, asJSON, out, intro, func(emit func(bench.Row)) error {
		return bench.RunQLoRA(cmd.Context(), rows, emit)
	})
}

// emitRows runs a bench and prints its rows as they come: a table, or one
// JSON object per line; with out, the JSON rows are also written atomically.
func emitRows(cmd *cobra.Command, asJSON bool, out, intro string, run func(func(bench.Row)) error) error {
	w := cmd.OutOrStdout()
	table := bench.NewTable(w)
	var rows []bench.Row
	var writeErr error
	emit := func(r bench.Row) {
		rows = append(rows, r)
		if asJSON {
			if err := bench.WriteJSON(w, r); err != nil && writeErr == nil {
				writeErr = err
			}
			return
		}
		table.Row(r)
	}
	if !asJSON {
		fmt.Fprintln(cmd.ErrOrStderr(), intro)
	}
	err := run(emit)
	if !asJSON {
		if ferr := table.Flush(); ferr != nil && writeErr == nil {
			writeErr = ferr
		}
	}
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if writeErr != nil {
		return fmt.Errorf("bench: writing the results: %w", writeErr)
	}
	if out != "" {
		var sb strings.Builder
		for _, r := range rows {
			if err := bench.WriteJSON(&sb, r); err != nil {
				return err
			}
		}
		if err := bench.WriteFileAtomic(out, []byte(sb.String())); err != nil {
			return fmt.Errorf("bench --out: %w", err)
		}
		fmt.Fprintln(cmd.ErrOrStderr(), "bench: rows written to", out)
	}
	return nil
}

// loadPreset reads an embedded preset's whole config (no flags:
// the bench rows are the presets as shipped).
func loadPreset(name string) (train.Config, error) {
	var cfg train.Config
	if err := loadConfig(name, nil, nil, &cfg); err != nil {
		return cfg, fmt.Errorf("bench: %w", err)
	}
	return cfg, nil
}

// stepChild runs this same binary as the step child: a fresh process whose
// peak RSS is one QLoRA step's and nothing else's.
func stepChild(threads int) func(ctx context.Context, preset, base string) *exec.Cmd {
	return func(ctx context.Context, preset, base string) *exec.Cmd {
		exe, err := os.Executable()
		if err != nil {
			exe = os.Args[0]
		}
		return exec.CommandContext(ctx, exe, "bench", "--device", "cpu", "--threads", strconv.Itoa(threads),
			"--step-child", preset, "--step-base", base)
	}
}

// torchPeer is the PyTorch CPU peer the flags ask for (nil: --no-torch).
func torchPeer(f *pflag.FlagSet, threads int, quick bool) *bench.TorchPeer {
	if off, _ := f.GetBool("no-torch"); off {
		return nil
	}
	py, _ := f.GetString("torch-python")
	return &bench.TorchPeer{Python: py, Threads: threads, Quick: quick}
}

// savePreset is the model shape of the pretrain_save row (with the
// byte-level vocabulary: 113M parameters).
const savePreset = "gpt2-124m"

// saveChild runs this same binary as the save child: a fresh process whose
// peak RSS is one pretrain's.
func saveChild(threads int) func(ctx context.Context, preset, dir string) *exec.Cmd {
	return func(ctx context.Context, preset, dir string) *exec.Cmd {
		exe, err := os.Executable()
		if err != nil {
			exe = os.Args[0]
		}
		return exec.CommandContext(ctx, exe, "bench", "--device", "cpu", "--threads", strconv.Itoa(threads), "--save-child", dir)
	}
}

// peerProbe runs this binary as the OpenBLAS probe child: a fresh process,
// since the library fixes its core type when it loads.
func peerProbe(ctx context.Context, coretype string, inherit bool) (bench.ProbeResult, error) {
	exe, err := os.Executable()
	if err != nil {
		exe = os.Args[0]
	}
	cmd := exec.CommandContext(ctx, exe, "bench", "--device", "cpu", "--peer-probe")
	env := bench.ProbeEnv(os.Environ(), coretype, inherit)
	cmd.Env = env
	out, err := cmd.Output()
	if err != nil {
		return bench.ProbeResult{}, fmt.Errorf("%s --peer-probe: %w", exe, err)
	}
	var res bench.ProbeResult
	if err := json.Unmarshal(out, &res); err != nil {
		return res, fmt.Errorf("%s --peer-probe printed %q: %w", exe, out, err)
	}
	return res, nil
}

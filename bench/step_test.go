package bench

import (
	"context"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/opencluster/opencluster/train"
	"github.com/opencluster/opencluster/train/backend"
)

// stepChildEnv makes the test binary act as the step child (see TestMain).
const stepChildEnv = "OPENCLUSTER_BENCH_TEST_STEP_CHILD"

// saveChildEnv makes the test binary act as the save child.
const saveChildEnv = "OPENCLUSTER_BENCH_TEST_SAVE_CHILD"

func TestMain(m *testing.M) {
	if dir := os.Getenv(saveChildEnv); dir != "" {
		if err := RunSaveChild(context.Background(), SaveRunConfig(tinyConfig(), 1), dir, os.Stdout); err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(3)
		}
		os.Exit(0)
	}
	if os.Getenv(probeChildEnv) != "" {
		if err := ProbeOpenBLAS(os.Stdout); err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(3)
		}
		os.Exit(0)
	}
	if base := os.Getenv(stepChildEnv); base != "" {
		if err := RunStepChild(context.Background(), "tiny", tinyConfig(), base, 1, os.Stdout); err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(3)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// tinyConfig is configs/tiny.yaml with a smaller batch so tests stay quick.
func tinyConfig() train.Config {
	return train.Config{
		Model: train.ModelConfig{VocabSize: 256, Dim: 64, Layers: 2, Heads: 4, KVHeads: 2, HiddenDim: 176,
			MaxSeqLen: 128, RopeTheta: 10000, NormEps: 1e-5, TiedEmbeddings: true},
		Train: train.TrainConfig{SeqLen: 32, BatchSize: 2, LR: 1e-3, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, GradClip: 1},
		LoRA:  train.LoRAConfig{Rank: 8, Alpha: 16, Targets: train.LinearNames},
		Quant: train.QuantConfig{Format: "nf4", BlockSize: 64, DoubleQuant: true},
	}
}

func TestCountStepFLOPs(t *testing.T) {
	cfg := tinyConfig()
	// tiny: d=64, kv width 32, hidden 176, V=256, L=2. Linears per layer:
	// 64*64*2 + 64*32*2 + 64*176*3 = 46080; N = 2*46080 + 256*64 = 108544.
	// LoRA r=8 per layer: 8*(128+96+96+128+240+240+240) = 9344; x2 = 18688.
	// Attention at T=64: 6*2*64*64 = 49152.
	tests := []struct {
		name     string
		lora     *train.LoRAConfig
		perToken float64
		adapter  int64
	}{
		{"pretrain", nil, 6*108544 + 49152, 0},
		{"qlora all linears", &cfg.LoRA, 4*108544 + 6*18688 + 49152, 18688},
		{"qlora q,v only", &train.LoRAConfig{Rank: 8, Alpha: 16, Targets: []string{"q_proj", "v_proj"}},
			4*108544 + 6*2*8*(128+96) + 49152, 2 * 8 * (128 + 96)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := CountStepFLOPs(cfg.Model, tc.lora, 64)
			if f.Dense != 108544 || f.Adapter != tc.adapter || f.PerToken != tc.perToken {
				t.Errorf("got N=%d N_lora=%d per token %v, want 108544, %d, %v", f.Dense, f.Adapter, f.PerToken, tc.adapter, tc.perToken)
			}
			if f.Formula == "" {
				t.Error("empty formula")
			}
		})
	}
	// N is every parameter but the norms (the tied embedding counts once, as lm_head).
	norms := int64(2*cfg.Model.Layers*cfg.Model.Dim + cfg.Model.Dim)
	if f := CountStepFLOPs(cfg.Model, nil, 64); f.Dense != cfg.Model.NumParams()-norms {
		t.Errorf("N = %d, want NumParams-norms = %d", f.Dense, cfg.Model.NumParams()-norms)
	}
}

func TestCountStepFLOPsAdapterMatchesModel(t *testing.T) {
	cfg := tinyConfig()
	m, err := train.NewModel(cfg.Model, backend.NewCPU(1), 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.EnableLoRA(cfg.LoRA, 1); err != nil {
		t.Fatal(err)
	}
	if f := CountStepFLOPs(cfg.Model, &cfg.LoRA, 32); f.Adapter != int64(m.NumTrainable()) {
		t.Errorf("N_lora = %d, the model has %d trainable", f.Adapter, m.NumTrainable())
	}
}

func TestStepBenchRows(t *testing.T) {
	sb := NewStepBench(StepConfig{Presets: map[string]train.Config{"tiny": tinyConfig()}, Quick: true, Threads: 2, PeakGFLOPS: 100})
	for _, name := range []string{"tiny", "tiny/pretrain", "tiny/qlora"} {
		t.Run(name, func(t *testing.T) {
			r, err := sb(context.Background(), name)
			if err != nil {
				t.Fatal(err)
			}
			wantSize := name
			if !strings.Contains(name, "/") {
				wantSize += "/pretrain"
			}
			if r.Name != "train_step" || r.Size != wantSize {
				t.Errorf("row %s %s, want train_step %s", r.Name, r.Size, wantSize)
			}
			tps, _ := r.Extra["tokens_per_s"].(float64)
			sec, _ := r.Extra["seconds_per_step"].(float64)
			if tps <= 0 || sec <= 0 || r.GFLOPS <= 0 {
				t.Fatalf("tokens/s %v, s/step %v, GFLOPS %v: want positive", tps, sec, r.GFLOPS)
			}
			// The figures must agree with each other: tokens/s = B*T/s, and
			// GFLOPS = flops/token * tokens/s.
			if got := 64 / sec; !near(got, tps) {
				t.Errorf("tokens/s %v, but 64 tokens / %v s = %v", tps, sec, got)
			}
			fpt, _ := r.Extra["flops_per_token"].(float64)
			if !near(fpt*tps/1e9, r.GFLOPS) || !near(r.FractionOfPeak, r.GFLOPS/100) {
				t.Errorf("GFLOPS %v fraction %v, flops/token %v at %v tokens/s", r.GFLOPS, r.FractionOfPeak, fpt, tps)
			}
			loss, _ := r.Extra["loss"].(float64)
			if loss < 4 || loss > 7 { // ln(256) = 5.55 at random init
				t.Errorf("loss %v, want about ln(256)", loss)
			}
			wantTrainable := tinyConfig().Model.NumParams()
			if strings.HasSuffix(name, "qlora") {
				wantTrainable = 18688
			}
			if got, _ := r.Extra["trainable"].(int); int64(got) != wantTrainable {
				t.Errorf("trainable %v, want %d", r.Extra["trainable"], wantTrainable)
			}
		})
	}
}

func near(a, b float64) bool { return a == b || (a-b)/b < 1e-9 && (b-a)/b < 1e-9 }

func TestStepBenchErrors(t *testing.T) {
	long := tinyConfig()
	long.Train.SeqLen = 4096
	badLoRA := tinyConfig()
	badLoRA.LoRA.Targets = []string{"qkv"}
	badQuant := tinyConfig()
	badQuant.Quant.Format = "int3"
	badModel := tinyConfig()
	badModel.Model.Heads = 5
	sb := NewStepBench(StepConfig{Presets: map[string]train.Config{
		"tiny": tinyConfig(), "long": long, "badlora": badLoRA, "badquant": badQuant, "badmodel": badModel}})
	tests := []struct{ name, want string }{
		{"huge/pretrain", `no preset "huge"`},
		{"tiny/fp8", `mode "fp8"`},
		{"long/pretrain", "seq_len 4096"},
		{"badlora/qlora", "qkv"},
		{"badquant/qlora", "int3"},
		{"badmodel/pretrain", "n_heads"},
		{"tiny/qlora-rss", "child process"}, // no Child runner given
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := sb(context.Background(), tc.name)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestStepBenchCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	sb := NewStepBench(StepConfig{Presets: map[string]train.Config{"tiny": tinyConfig()}, Quick: true})
	if _, err := sb(ctx, "tiny/pretrain"); err != context.Canceled {
		t.Errorf("error %v, want context.Canceled", err)
	}
}

// TestStepRSSFreshChild runs the RSS row with this test binary as the child.
// The parent first touches 256 MiB; the child's figure must not include it
// (getrusage maxrss would, on Linux: it survives exec).
func TestStepRSSFreshChild(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns a child process")
	}
	ballast := make([]byte, 256<<20)
	for i := 0; i < len(ballast); i += 4096 {
		ballast[i] = 1
	}
	exe, err := os.Executable()
	if err != nil {
		t.Skip("no executable path:", err)
	}
	sc := StepConfig{
		Presets: map[string]train.Config{"tiny": tinyConfig()},
		TempDir: t.TempDir(),
		Child: func(ctx context.Context, preset, base string) *exec.Cmd {
			cmd := exec.CommandContext(ctx, exe, "-test.run=^$")
			cmd.Env = append(os.Environ(), stepChildEnv+"="+base)
			return cmd
		},
	}
	r, err := NewStepBench(sc)(context.Background(), "tiny/qlora-rss")
	runtime.KeepAlive(ballast)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := r.Extra["bytes"].(int64)
	before, _ := r.Extra["before_step_mib"].(float64)
	if b <= 0 || float64(b)/(1<<20) < before {
		t.Errorf("peak %d bytes, before the step %v MiB: want positive and not below", b, before)
	}
	if runtime.GOOS == "linux" && b >= 256<<20 {
		t.Errorf("child peak %d MiB includes the parent's 256 MiB ballast (source %v)", b>>20, r.Extra["source"])
	}
	if steps, _ := r.Extra["steps"].(int); steps != 2 {
		t.Errorf("steps %v, want 2", r.Extra["steps"])
	}
	entries, _ := os.ReadDir(sc.TempDir)
	if len(entries) != 0 {
		t.Errorf("packed base left behind: %v", entries)
	}
}

func TestStepRSSChildFails(t *testing.T) {
	sc := StepConfig{
		Presets: map[string]train.Config{"tiny": tinyConfig()},
		TempDir: t.TempDir(),
		Child: func(ctx context.Context, preset, base string) *exec.Cmd {
			return exec.CommandContext(ctx, "sh", "-c", "echo 'cannot load base' >&2; exit 2")
		},
	}
	_, err := NewStepBench(sc)(context.Background(), "tiny/qlora-rss")
	if err == nil || !strings.Contains(err.Error(), "cannot load base") {
		t.Errorf("error %v, want the child's stderr", err)
	}
}

func TestRunStepChildRejectsBadBase(t *testing.T) {
	dir := t.TempDir()
	cfg := tinyConfig()
	fp32 := dir + "/fp32.safetensors"
	m, err := train.NewModel(cfg.Model, backend.NewCPU(1), 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.SaveBase(fp32); err != nil {
		t.Fatal(err)
	}
	truncated := dir + "/short.safetensors"
	if err := os.WriteFile(truncated, []byte{8, 0, 0}, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ base, want string }{
		{fp32, "not 4-bit"},
		{truncated, "short.safetensors"},
		{dir + "/missing", "missing"},
	} {
		var out strings.Builder
		err := RunStepChild(context.Background(), "tiny", cfg, tc.base, 1, &out)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("base %s: error %v, want one containing %q", tc.base, err, tc.want)
		}
		if out.Len() != 0 {
			t.Errorf("base %s: printed %q on failure", tc.base, out.String())
		}
	}
}

func TestParseChildResult(t *testing.T) {
	tests := []struct {
		name, out, want string
		rss             int64
	}{
		{"ok", "noise\n{\"preset\":\"tiny\",\"peak_rss_bytes\":1048576}\n", "", 1 << 20},
		{"empty", "", "printed nothing", 0},
		{"garbage", "segfault\n", "segfault", 0},
		{"no rss", `{"preset":"tiny","peak_rss_bytes":0}`, "no peak RSS", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, err := ParseChildResult([]byte(tc.out))
			if tc.want == "" {
				if err != nil || res.PeakRSSBytes != tc.rss {
					t.Errorf("got %+v, %v; want rss %d", res, err, tc.rss)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestParseVmHWM(t *testing.T) {
	tests := []struct {
		name, status string
		want         int64
		ok           bool
	}{
		{"linux", "Name:\tx\nVmPeak:\t  9000 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1000 kB\n", 2048 * 1024, true},
		{"missing", "Name:\tx\nVmRSS:\t 1000 kB\n", 0, false},
		{"bad unit", "VmHWM:\t 2048 MB\n", 0, false},
		{"bad number", "VmHWM:\t lots kB\n", 0, false},
		{"zero", "VmHWM:\t 0 kB\n", 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := parseVmHWM([]byte(tc.status))
			if got != tc.want || ok != tc.ok {
				t.Errorf("got %d, %v; want %d, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

// n trainers at once: the row is their mean, its fraction of peak taken
// against one trainer's share of the machine.
func TestTrainStepConcurrent(t *testing.T) {
	sc := StepConfig{Presets: map[string]train.Config{"tiny": tinyConfig()}, Quick: true, PeakGFLOPS: 100}
	r, err := TrainStepConcurrent(context.Background(), "tiny", ModeQLoRA, tinyConfig(), sc, 3)
	if err != nil {
		t.Fatal(err)
	}
	tps, _ := r.Extra["tokens_per_s"].(float64)
	fpt, _ := r.Extra["flops_per_token"].(float64)
	if r.Extra["concurrent"] != 3 || r.Extra["threads"] != 1 || tps <= 0 || !strings.HasSuffix(r.Size, "x3 concurrent") {
		t.Fatalf("row %+v", r)
	}
	if !near(fpt*tps/1e9, r.GFLOPS) || !near(r.FractionOfPeak, r.GFLOPS/(100.0/3)) {
		t.Errorf("GFLOPS %v fraction %v, flops/token %v at %v tokens/s per trainer", r.GFLOPS, r.FractionOfPeak, fpt, tps)
	}
	if _, err := TrainStepConcurrent(context.Background(), "tiny", ModeQLoRA, tinyConfig(), sc, 0); err == nil {
		t.Error("0 trainers: no error")
	}
}

func TestSaveRowInAChild(t *testing.T) {
	sc := StepConfig{TempDir: t.TempDir(), Threads: 1, SaveChild: func(ctx context.Context, preset, dir string) *exec.Cmd {
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), saveChildEnv+"="+dir)
		return cmd
	}}
	r, err := SaveRow(context.Background(), "tiny", tinyConfig(), sc)
	if err != nil {
		t.Fatal(err)
	}
	e := r.Extra
	for _, k := range []string{"final_write_s", "peak_rss_mib", "weights_mib", "grads_mib", "adamw_moments_mib", "activations_mib", "sum_mib", "peak_rss_over_sum"} {
		if v, _ := e[k].(float64); !(v > 0) {
			t.Errorf("%s = %v, want a positive figure", k, e[k])
		}
	}
	// The base file of the tiny model: its parameters in fp32 plus a header.
	params := SaveRunConfig(tinyConfig(), 1).Model.NumParams()
	if out, _ := e["out_mib"].(float64); out*(1<<20) < float64(4*params) {
		t.Errorf("base file %.2f MiB, smaller than %d fp32 parameters", out, params)
	}
	if w, m := e["weights_mib"].(float64), e["adamw_moments_mib"].(float64); m != 2*w {
		t.Errorf("moments %.2f MiB, want twice the weights' %.2f", m, w)
	}
	if _, err := SaveRow(context.Background(), "tiny", tinyConfig(), StepConfig{}); err == nil {
		t.Error("a save row without a child runner succeeded")
	}
}

package train

import (
	"context"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencluster/opencluster/train/backend"
	"github.com/opencluster/opencluster/train/backend/sgemm"
)

// TestBF16QLoRATracksFP32 trains the same adapters from the same base twice,
// with the frozen base's products in fp32 and in bf16, for 50 steps: every
// step's loss must stay within bf16 tolerance of the fp32 run's, and both
// runs must reach the same held-out loss.
func TestBF16QLoRATracksFP32(t *testing.T) {
	needModel(t)
	if !sgemm.BF16Supported() {
		t.Skip("this CPU has no AVX512_BF16")
	}
	cfg := testConfig(50)
	cfg.Model.Dim, cfg.Model.HiddenDim, cfg.Model.Heads, cfg.Model.KVHeads = 64, 128, 4, 2
	cfg.Train.EvalEvery = 10
	base := filepath.Join(t.TempDir(), "base.safetensors")
	pre := cfg
	pre.Train.Steps = 40
	if _, err := Run(context.Background(), RunOptions{Mode: ModePretrain, Config: pre, DataDir: corpus(t, t.TempDir(), 5, 2, 6000), Out: base, Logger: quiet()}); err != nil {
		t.Fatal(err)
	}
	other := upperCorpus(t, t.TempDir(), 6)
	cfg.Train.LR, cfg.Train.MinLR = 1e-2, 1e-3
	run := func(dtype string) Result {
		c := cfg
		c.Train.ComputeDType = dtype
		var dts []string
		res, err := Run(context.Background(), RunOptions{Mode: ModeQLoRA, Config: c, DataDir: other, Base: base,
			Out: filepath.Join(t.TempDir(), "adapter"), Logger: quiet(),
			Reporter: ReporterFunc(func(Event) {}),
			Backend:  dtypeSpy{backend.NewCPU(2), &dts}})
		if err != nil {
			t.Fatal(err)
		}
		if len(dts) != 1 || dts[0] != dtype {
			t.Fatalf("compute_dtype %s: the backend was set to %v", dtype, dts)
		}
		return res
	}
	f32, b16 := run("fp32"), run("bf16")
	if len(f32.Losses) != 50 || len(b16.Losses) != 50 {
		t.Fatalf("%d and %d steps", len(f32.Losses), len(b16.Losses))
	}
	var worst float64
	for i := range f32.Losses {
		d := math.Abs(b16.Losses[i]-f32.Losses[i]) / f32.Losses[i]
		worst = max(worst, d)
		if d > 0.02 {
			t.Errorf("step %d: bf16 loss %.5f, fp32 %.5f: %.2f%% apart, want within 2%%", i+1, b16.Losses[i], f32.Losses[i], 100*d)
		}
	}
	t.Logf("worst step-loss gap %.3f%%; val loss fp32 %.4f -> %.4f, bf16 %.4f -> %.4f", 100*worst,
		f32.InitialValLoss, f32.ValLoss, b16.InitialValLoss, b16.ValLoss)
	if !(f32.ValLoss < 0.9*f32.InitialValLoss) || !(b16.ValLoss < 0.9*b16.InitialValLoss) {
		t.Errorf("held-out loss did not fall 10%%: fp32 %.4f -> %.4f, bf16 %.4f -> %.4f", f32.InitialValLoss, f32.ValLoss, b16.InitialValLoss, b16.ValLoss)
	}
	if d := math.Abs(b16.ValLoss-f32.ValLoss) / f32.ValLoss; d > 0.02 {
		t.Errorf("final held-out loss bf16 %.4f vs fp32 %.4f: %.2f%% apart, want within 2%%", b16.ValLoss, f32.ValLoss, 100*d)
	}
	if b16.Losses[0] == f32.Losses[0] && b16.Losses[49] == f32.Losses[49] {
		t.Error("bf16 and fp32 runs gave identical losses: the bf16 path did not run")
	}
}

// dtypeSpy records the dtypes a run sets on its backend.
type dtypeSpy struct {
	backend.Backend
	set *[]string
}

func (d dtypeSpy) SetFrozenDType(dt string) error {
	*d.set = append(*d.set, dt)
	return d.Backend.(backend.FrozenDTyper).SetFrozenDType(dt)
}
func (d dtypeSpy) FrozenDType() string { return d.Backend.(backend.FrozenDTyper).FrozenDType() }
func (d dtypeSpy) BF16Available() bool { return d.Backend.(backend.FrozenDTyper).BF16Available() }

func TestComputeDTypeSetting(t *testing.T) {
	cfg := testConfig(1)
	cfg.Train.ComputeDType = "fp8"
	if err := cfg.Train.Validate(); err == nil || !strings.Contains(err.Error(), "train.compute_dtype") {
		t.Errorf("fp8 accepted: %v", err)
	}
	// fp16 is a GPU setting (Turing): valid in a config, refused by the CPU.
	cfg.Train.ComputeDType = "fp16"
	if err := cfg.Train.Validate(); err != nil {
		t.Errorf("fp16 refused by the config: %v", err)
	}
	if _, err := backend.ApplyComputeDType(backend.NewCPU(1), "fp16"); err == nil {
		t.Error("the CPU backend accepted fp16")
	}
	be := backend.NewCPU(1)
	got, err := backend.ApplyComputeDType(be, "auto")
	if err != nil {
		t.Fatal(err)
	}
	want := "fp32"
	if sgemm.BF16Supported() {
		want = "bf16"
	}
	if got != want || be.(backend.FrozenDTyper).FrozenDType() != want {
		t.Errorf("auto gave %s (backend %s), want %s on this CPU", got, be.(backend.FrozenDTyper).FrozenDType(), want)
	}
	if _, err := backend.ApplyComputeDType(be, "fp32"); err != nil || be.(backend.FrozenDTyper).FrozenDType() != "fp32" {
		t.Errorf("fp32: %v", err)
	}
	_, err = backend.ApplyComputeDType(be, "bf16")
	if sgemm.BF16Supported() != (err == nil) {
		t.Errorf("bf16 on a CPU with bf16=%v: error %v", sgemm.BF16Supported(), err)
	}
	if err != nil && !strings.Contains(err.Error(), "AVX512_BF16") {
		t.Errorf("the error should say what is missing: %v", err)
	}
	// A backend without the setting: auto and fp32 leave it alone, bf16 is an error.
	plain := struct{ backend.Backend }{backend.NewCPU(1)}
	if dt, err := backend.ApplyComputeDType(plain, "auto"); err != nil || dt != "fp32" {
		t.Errorf("auto on a backend without the setting: %s, %v", dt, err)
	}
	if _, err := backend.ApplyComputeDType(plain, "bf16"); err == nil {
		t.Error("bf16 on a backend without the setting succeeded")
	}
}

package train

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/opencluster/opencluster/train/backend"
)

// corpus writes n files of deterministic, learnable text (a small grammar of
// sentences) under dir and returns dir.
func corpus(t testing.TB, dir string, seed uint64, files, size int) string {
	t.Helper()
	subjects := []string{"the worker", "a volunteer", "the model", "each machine", "the coordinator"}
	verbs := []string{"trains", "sends", "checks", "keeps", "reads"}
	objects := []string{"the adapter", "its own data", "a small update", "the base weights", "every round"}
	r := rand.New(rand.NewPCG(seed, 3))
	for f := 0; f < files; f++ {
		var b bytes.Buffer
		for b.Len() < size {
			fmt.Fprintf(&b, "%s %s %s.\n", subjects[r.IntN(len(subjects))], verbs[r.IntN(len(verbs))], objects[r.IntN(len(objects))])
		}
		p := filepath.Join(dir, fmt.Sprintf("part%d", f%2), fmt.Sprintf("f%d.txt", f))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b.Bytes()[:size], 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// upperCorpus is corpus's grammar in upper case, text a base pretrained on
// corpus has not seen: what a QLoRA run adapts to.
func upperCorpus(t testing.TB, dir string, seed uint64) string {
	t.Helper()
	corpus(t, dir, seed, 2, 6000)
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			b, _ := os.ReadFile(p)
			os.WriteFile(p, bytes.ToUpper(b), 0o644)
		}
		return nil
	})
	return dir
}

// testConfig is a model small enough to train in well under a second a step
// under the race detector.
func testConfig(steps int) Config {
	return Config{
		Model: ModelConfig{VocabSize: 256, Dim: 32, Layers: 1, Heads: 2, KVHeads: 1, HiddenDim: 64,
			MaxSeqLen: 32, RopeTheta: 10000, NormEps: 1e-5, TiedEmbeddings: true},
		Train: TrainConfig{SeqLen: 16, BatchSize: 4, GradAccum: 2, Steps: steps, LR: 3e-3, MinLR: 3e-4,
			WarmupSteps: 3, WeightDecay: 0.01, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, GradClip: 1,
			EvalEvery: 5, EvalBatches: 2, ValFraction: 0.2, Seed: 7, Threads: 1, SaveFinalState: true},
		LoRA:  LoRAConfig{Rank: 4, Alpha: 8, Targets: []string{"q_proj", "v_proj", "down_proj"}},
		Quant: QuantConfig{Format: "nf4", BlockSize: 64, DoubleQuant: true},
	}
}

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

// needModel skips loop tests while the model is still a stub.
func needModel(t *testing.T) {
	t.Helper()
	if _, err := NewModel(testConfig(1).Model, backend.NewCPU(1), 1); err != nil && strings.Contains(err.Error(), "not implemented") {
		t.Skip("model not implemented yet")
	}
}

// stateParams loads a pretrain checkpoint into a fresh model and returns its
// trainable parameters and meta.
func stateParams(t *testing.T, cfg Config, path string) ([]float32, map[string]string) {
	t.Helper()
	m, err := NewModel(cfg.Model, backend.NewCPU(1), 999)
	if err != nil {
		t.Fatal(err)
	}
	meta, err := m.LoadTrainState(path)
	if err != nil {
		t.Fatal(err)
	}
	return append([]float32(nil), m.TrainableParams()...), meta
}

// cancelAfter is a Governor that cancels the run's context once n steps are done.
type cancelAfter struct {
	n, done, waits int
	cancel         context.CancelFunc
	busy           time.Duration
}

func (g *cancelAfter) Wait(ctx context.Context) error { g.waits++; return ctx.Err() }
func (g *cancelAfter) StepDone(busy time.Duration) {
	g.done++
	g.busy += busy
	if g.done == g.n {
		g.cancel()
	}
}

func TestResumeIsBitIdentical(t *testing.T) {
	needModel(t)
	dataDir := corpus(t, t.TempDir(), 1, 4, 6000)
	cfg := testConfig(20)
	cfg.Train.CheckpointEvery = 4

	straightOut := filepath.Join(t.TempDir(), "straight")
	straight, err := Run(context.Background(), RunOptions{Mode: ModePretrain, Config: cfg, DataDir: dataDir, Out: straightOut, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	if len(straight.Losses) != 20 {
		t.Fatalf("straight run did %d steps", len(straight.Losses))
	}

	// 10 steps, then Ctrl-C (a cancelled context), then --resume.
	out := filepath.Join(t.TempDir(), "split")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	gov := &cancelAfter{n: 10, cancel: cancel}
	first, err := Run(ctx, RunOptions{Mode: ModePretrain, Config: cfg, DataDir: dataDir, Out: out, Governor: gov, Logger: quiet()})
	if !errors.Is(err, ErrInterrupted) || !strings.Contains(err.Error(), "step 10") || !strings.Contains(err.Error(), "--resume") {
		t.Fatalf("interrupted run: error %v, want ErrInterrupted at step 10 mentioning --resume", err)
	}
	if gov.waits != 10 || gov.busy <= 0 {
		t.Errorf("governor: %d waits, busy %v; want 10 waits and some busy time", gov.waits, gov.busy)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("an interrupted run wrote its output %s (stat err %v)", out, err)
	}
	if _, meta := stateParams(t, cfg, CheckpointPath(ModePretrain, out)); meta["step"] != "10" {
		t.Fatalf("checkpoint after Ctrl-C is at step %q, want 10", meta["step"])
	}
	second, err := Run(context.Background(), RunOptions{Mode: ModePretrain, Config: cfg, DataDir: dataDir, Out: out, Resume: true, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	if second.StartStep != 10 || second.Step != 20 {
		t.Fatalf("resumed run went from %d to %d, want 10 to 20", second.StartStep, second.Step)
	}
	losses := append(append([]float64(nil), first.Losses...), second.Losses...)
	for i := range straight.Losses {
		if math.Float64bits(losses[i]) != math.Float64bits(straight.Losses[i]) {
			t.Fatalf("step %d: loss %v after resume, %v straight", i+1, losses[i], straight.Losses[i])
		}
	}
	if math.Float64bits(second.ValLoss) != math.Float64bits(straight.ValLoss) {
		t.Errorf("final val loss %v after resume, %v straight", second.ValLoss, straight.ValLoss)
	}
	a, _ := stateParams(t, cfg, CheckpointPath(ModePretrain, straightOut))
	b, _ := stateParams(t, cfg, CheckpointPath(ModePretrain, out))
	if len(a) != len(b) || len(a) == 0 {
		t.Fatalf("param lengths %d vs %d", len(a), len(b))
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			t.Fatalf("param %d: %v after resume, %v straight", i, b[i], a[i])
		}
	}
	for _, f := range []string{"model.safetensors", "config.json"} {
		sa, err := os.ReadFile(filepath.Join(straightOut, f))
		if err != nil {
			t.Fatal(err)
		}
		sb, err := os.ReadFile(filepath.Join(out, f))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(sa, sb) {
			t.Errorf("%s of the straight and resumed runs differ", f)
		}
	}
}

func TestNaNStopsAndKeepsLastGoodCheckpoint(t *testing.T) {
	needModel(t)
	dataDir := corpus(t, t.TempDir(), 2, 2, 5000)
	cfg := testConfig(10)
	cfg.Train.CheckpointEvery = 4
	out := filepath.Join(t.TempDir(), "base")
	ckpt := CheckpointPath(ModePretrain, out)
	var snapshot []byte
	rep := ReporterFunc(func(e Event) {
		if e.Kind == EventStep && e.Step == 5 {
			snapshot, _ = os.ReadFile(ckpt)
		}
	})
	for _, bad := range []float64{math.NaN(), math.Inf(1)} {
		_, err := Run(context.Background(), RunOptions{Mode: ModePretrain, Config: cfg, DataDir: dataDir, Out: out, Logger: quiet(), Reporter: rep,
			poison: func(step int, loss float64) float64 {
				if step == 6 {
					return bad
				}
				return loss
			}})
		if err == nil || !strings.Contains(err.Error(), "step 6") || !strings.Contains(err.Error(), fmt.Sprint(bad)) || !strings.Contains(err.Error(), "step 4") {
			t.Fatalf("error %v, want one naming step 6, %v and the good checkpoint at step 4", err, bad)
		}
		if len(snapshot) == 0 {
			t.Fatal("no checkpoint at step 4")
		}
		now, err := os.ReadFile(ckpt)
		if err != nil || !bytes.Equal(now, snapshot) {
			t.Fatalf("checkpoint changed after the %v step (read err %v)", bad, err)
		}
		if _, meta := stateParams(t, cfg, ckpt); meta["step"] != "4" {
			t.Fatalf("checkpoint meta step %q, want 4", meta["step"])
		}
		if _, err := os.Stat(out); !os.IsNotExist(err) {
			t.Fatalf("a run stopped by %v wrote its output", bad)
		}
	}
}

func TestInterruptBeforeFirstStepAndMidRun(t *testing.T) {
	needModel(t)
	dataDir := corpus(t, t.TempDir(), 3, 2, 5000)
	cfg := testConfig(50)
	out := filepath.Join(t.TempDir(), "base")

	// Cancelled between steps by a reporter (as Ctrl-C would).
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rep := ReporterFunc(func(e Event) {
		if e.Kind == EventStep && e.Step == 3 {
			cancel()
		}
	})
	res, err := Run(ctx, RunOptions{Mode: ModePretrain, Config: cfg, DataDir: dataDir, Out: out, Logger: quiet(), Reporter: rep})
	if !errors.Is(err, ErrInterrupted) || !strings.Contains(err.Error(), "interrupted at step 3") {
		t.Fatalf("error %v, want 'interrupted at step 3'", err)
	}
	if res.Step != 3 {
		t.Errorf("Result.Step = %d, want 3", res.Step)
	}
	if _, meta := stateParams(t, cfg, CheckpointPath(ModePretrain, out)); meta["step"] != "3" || meta["mode"] != "pretrain" || meta["seed"] != "7" || meta["config_hash"] == "" {
		t.Errorf("checkpoint meta %v", meta)
	}
}

func TestPretrainLowersValLoss(t *testing.T) {
	needModel(t)
	dataDir := corpus(t, t.TempDir(), 4, 3, 8000)
	cfg := testConfig(60)
	cfg.Train.EvalEvery = 20
	var events []Event
	res, err := Run(context.Background(), RunOptions{Mode: ModePretrain, Config: cfg, DataDir: dataDir,
		Out: filepath.Join(t.TempDir(), "out", "base"), Logger: quiet(),
		Reporter: ReporterFunc(func(e Event) { events = append(events, e) })})
	if err != nil {
		t.Fatal(err)
	}
	if res.ValLoss > 0.7*res.InitialValLoss {
		t.Errorf("val loss %.3f -> %.3f: want a cut of at least 30%%", res.InitialValLoss, res.ValLoss)
	}
	// One eval event, 60 step events (val on 20, 40, 60), one summary.
	if len(events) != 62 || events[0].Kind != EventEval || events[61].Kind != EventSummary {
		t.Fatalf("got %d events", len(events))
	}
	var vals []int
	for _, e := range events[1:61] {
		if e.HasVal {
			vals = append(vals, e.Step)
		}
	}
	if fmt.Sprint(vals) != "[20 40 60]" {
		t.Errorf("evaluations at steps %v, want [20 40 60]", vals)
	}
	if s := events[61]; s.Tokens != 60*2*4*16 || s.ValLoss != res.ValLoss || s.InitialValLoss != res.InitialValLoss {
		t.Errorf("summary %+v", s)
	}
}

func TestQLoRALowersValLossOnNewText(t *testing.T) {
	needModel(t)
	cfg := testConfig(40)
	base := filepath.Join(t.TempDir(), "base")
	if _, err := Run(context.Background(), RunOptions{Mode: ModePretrain, Config: cfg, DataDir: corpus(t, t.TempDir(), 5, 2, 6000), Out: base, Logger: quiet()}); err != nil {
		t.Fatal(err)
	}
	other := upperCorpus(t, t.TempDir(), 6)
	cfg.Train.LR = 1e-2
	cfg.Train.MinLR = 1e-3
	adapter := filepath.Join(t.TempDir(), "adapter")
	res, err := Run(context.Background(), RunOptions{Mode: ModeQLoRA, Config: cfg, DataDir: other, Base: base, Out: adapter, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	if !(res.ValLoss < res.InitialValLoss) {
		t.Errorf("QLoRA val loss %.3f -> %.3f: want lower", res.InitialValLoss, res.ValLoss)
	}
	for _, f := range []string{"adapter_model.safetensors", "adapter_config.json", "trainer_state.ckpt"} {
		if _, err := os.Stat(filepath.Join(adapter, f)); err != nil {
			t.Errorf("adapter folder lacks %s: %v", f, err)
		}
	}
	if got := readJSON(t, filepath.Join(adapter, "adapter_config.json"))["base_model_name_or_path"]; got != base || !filepath.IsAbs(base) {
		t.Errorf("base_model_name_or_path %v, want the base's absolute path %s", got, base)
	}
	if res.NumTrainable == 0 || res.NumTrainable >= int(cfg.Model.NumParams())/2 {
		t.Errorf("QLoRA trains %d of %d params", res.NumTrainable, cfg.Model.NumParams())
	}
}

func TestRunErrors(t *testing.T) {
	needModel(t)
	dataDir := corpus(t, t.TempDir(), 7, 2, 5000)
	dir := t.TempDir()
	out := filepath.Join(dir, "base")
	if _, err := Run(context.Background(), RunOptions{Mode: ModePretrain, Config: testConfig(2), DataDir: dataDir, Out: out, Logger: quiet()}); err != nil {
		t.Fatal(err)
	}
	changed := testConfig(2)
	changed.Train.LR = 1e-3
	badSeq := testConfig(2)
	badSeq.Train.SeqLen = 64 // > max_seq_len 32
	cases := []struct {
		name string
		o    RunOptions
		want []string
	}{
		{"unknown mode", RunOptions{Mode: "finetune", Config: testConfig(2), DataDir: dataDir, Out: out}, []string{"finetune"}},
		{"no data", RunOptions{Mode: ModePretrain, Config: testConfig(2), Out: out}, []string{"data directory"}},
		{"no out", RunOptions{Mode: ModePretrain, Config: testConfig(2), DataDir: dataDir}, []string{"output"}},
		{"no base", RunOptions{Mode: ModeQLoRA, Config: testConfig(2), DataDir: dataDir, Out: dir}, []string{"base"}},
		{"missing base", RunOptions{Mode: ModeQLoRA, Config: testConfig(2), DataDir: dataDir, Base: filepath.Join(dir, "nope.safetensors"), Out: filepath.Join(dir, "ad")}, []string{"nope.safetensors"}},
		{"missing data dir", RunOptions{Mode: ModePretrain, Config: testConfig(2), DataDir: filepath.Join(dir, "nodata"), Out: out}, []string{"nodata"}},
		{"seq_len too long", RunOptions{Mode: ModePretrain, Config: badSeq, DataDir: dataDir, Out: out}, []string{"seq_len"}},
		{"resume without checkpoint", RunOptions{Mode: ModePretrain, Config: testConfig(2), DataDir: dataDir, Out: filepath.Join(dir, "other"), Resume: true}, []string{"no checkpoint", "other.ckpt"}},
		{"resume with another config", RunOptions{Mode: ModePretrain, Config: changed, DataDir: dataDir, Out: out, Resume: true}, []string{"different config"}},
		{"resume a qlora checkpoint as pretrain", RunOptions{Mode: ModeQLoRA, Config: testConfig(2), DataDir: dataDir, Base: out, Out: dir, Checkpoint: CheckpointPath(ModePretrain, out), Resume: true}, []string{"base.ckpt"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.o.Logger = quiet()
			_, err := Run(context.Background(), c.o)
			if err == nil {
				t.Fatal("Run succeeded")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// stopGovernor refuses to go on after n steps.
type stopGovernor struct{ n, waits int }

func (g *stopGovernor) Wait(ctx context.Context) error {
	if g.waits == g.n {
		return errors.New("battery low")
	}
	g.waits++
	return nil
}
func (g *stopGovernor) StepDone(time.Duration) {}

func TestGovernorStopSavesState(t *testing.T) {
	needModel(t)
	dataDir := corpus(t, t.TempDir(), 8, 2, 5000)
	cfg := testConfig(10)
	out := filepath.Join(t.TempDir(), "base")
	_, err := Run(context.Background(), RunOptions{Mode: ModePretrain, Config: cfg, DataDir: dataDir, Out: out, Logger: quiet(), Governor: &stopGovernor{n: 4}})
	if err == nil || !strings.Contains(err.Error(), "battery low") || !strings.Contains(err.Error(), "step 4") {
		t.Fatalf("error %v, want the governor's reason at step 4", err)
	}
	if _, meta := stateParams(t, cfg, CheckpointPath(ModePretrain, out)); meta["step"] != "4" {
		t.Errorf("checkpoint at step %q, want 4", meta["step"])
	}
}

func TestSampleIsSeededAndBounded(t *testing.T) {
	needModel(t)
	m, err := NewModel(testConfig(1).Model, backend.NewCPU(1), 3)
	if err != nil {
		t.Fatal(err)
	}
	prompt := []int32{'t', 'h', 'e', ' '}
	o := SampleOptions{MaxTokens: 40, Temperature: 0.8, TopK: 10, Seed: 5}
	a, err := Sample(context.Background(), m, prompt, o)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Sample(context.Background(), m, prompt, o)
	if len(a) != 40 || fmt.Sprint(a) != fmt.Sprint(b) {
		t.Fatalf("two samples with seed 5 differ or have the wrong length (%d)", len(a))
	}
	greedy := SampleOptions{MaxTokens: 5}
	g1, _ := Sample(context.Background(), m, prompt, greedy)
	greedy.Seed = 99
	g2, _ := Sample(context.Background(), m, prompt, greedy)
	if fmt.Sprint(g1) != fmt.Sprint(g2) {
		t.Error("temperature 0 depends on the seed")
	}
	for _, bad := range []struct {
		p []int32
		o SampleOptions
	}{{nil, o}, {[]int32{300}, o}, {prompt, SampleOptions{MaxTokens: 1, Temperature: -1}}} {
		if _, err := Sample(context.Background(), m, bad.p, bad.o); err == nil {
			t.Errorf("Sample(%v, %+v) succeeded", bad.p, bad.o)
		}
	}
}

func TestPickTopK(t *testing.T) {
	logits := []float32{0, 5, 4, 3, -1}
	r := rand.New(rand.NewPCG(1, 2))
	seen := map[int32]bool{}
	for range 500 {
		k, err := pick(logits, SampleOptions{Temperature: 1, TopK: 2}, r)
		if err != nil {
			t.Fatal(err)
		}
		seen[k] = true
	}
	if len(seen) != 2 || !seen[1] || !seen[2] {
		t.Errorf("top-2 sampling drew %v, want only tokens 1 and 2", seen)
	}
	if _, err := pick([]float32{0, float32(math.NaN())}, SampleOptions{Temperature: 1}, r); err == nil || !strings.Contains(err.Error(), "logit 1") {
		t.Errorf("NaN logit: error %v", err)
	}
}

// TestRunPlansMemory: with MaxMemory the run follows the plan that fits
// (here a smaller micro-batch than the batch) and still learns; a budget below
// the job stops the run before the base is loaded, saying what it needs.
func TestRunPlansMemory(t *testing.T) {
	cfg := testConfig(12)
	dataDir := corpus(t, t.TempDir(), 5, 2, 6000)
	base := filepath.Join(t.TempDir(), "base.safetensors")
	if _, err := Run(context.Background(), RunOptions{Mode: ModePretrain, Config: cfg, DataDir: dataDir, Out: base, Logger: quiet()}); err != nil {
		t.Fatal(err)
	}
	job := MemoryJob{Model: cfg.Model, Mode: ModeQLoRA, LoRA: cfg.LoRA, Quant: cfg.Quant, MicroBatch: 1, SeqLen: cfg.Train.SeqLen,
		Batch: cfg.Train.BatchSize, Checkpointing: true}
	e, err := EstimateMemory(job)
	if err != nil {
		t.Fatal(err)
	}
	whole := job
	whole.MicroBatch, whole.Checkpointing = cfg.Train.BatchSize, false
	if w, _ := EstimateMemory(whole); w.Peak() <= e.Peak() {
		t.Fatalf("the whole batch (%d) fits the budget (%d): the test would prove nothing", w.Peak(), e.Peak())
	}
	cfg.Train.LR, cfg.Train.MinLR = 1e-2, 1e-3
	res, err := Run(context.Background(), RunOptions{Mode: ModeQLoRA, Config: cfg, DataDir: dataDir, Base: base,
		Out: filepath.Join(t.TempDir(), "adapter"), MaxMemory: e.Peak(), Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	if p := res.Plan; p.MicroBatch >= cfg.Train.BatchSize || p.Estimate.Peak() > e.Peak() {
		t.Errorf("plan micro-batch %d checkpointing %v peak %d, want a smaller micro-batch within %d", p.MicroBatch, p.Checkpointing, p.Estimate.Peak(), e.Peak())
	}
	if !(res.ValLoss < res.InitialValLoss) {
		t.Errorf("val loss %.3f -> %.3f under the plan: want lower", res.InitialValLoss, res.ValLoss)
	}
	_, err = Run(context.Background(), RunOptions{Mode: ModeQLoRA, Config: cfg, DataDir: dataDir, Base: base,
		Out: filepath.Join(t.TempDir(), "adapter2"), MaxMemory: e.Peak() / 2, Logger: quiet()})
	if !errors.Is(err, ErrDoesNotFit) || !strings.Contains(err.Error(), "needs") {
		t.Errorf("half the budget: %v, want ErrDoesNotFit saying what the job needs", err)
	}
}

// TestBackgroundCheckpointsAndFinalSave: periodic checkpoints are written in
// the background from the live buffers while the next step runs; each must
// still hold exactly the state after its step, so a run resumed from the
// last one ends bit for bit where the straight run did (under -race, a step
// that changed the buffers while they were being written would also be
// reported). Without train.save_final_state the end writes only the output.
func TestBackgroundCheckpointsAndFinalSave(t *testing.T) {
	needModel(t)
	dataDir := corpus(t, t.TempDir(), 1, 4, 6000)
	cfg := testConfig(12)
	cfg.Train.CheckpointEvery = 5
	cfg.Train.SaveFinalState = false
	dir := t.TempDir()
	straightOut := filepath.Join(dir, "straight.safetensors")
	// The background writer starts late: a step that did not wait for it
	// would change the parameters under it.
	slow := func() { time.Sleep(100 * time.Millisecond) }
	straight, err := Run(context.Background(), RunOptions{Mode: ModePretrain, Config: cfg, DataDir: dataDir, Out: straightOut, Logger: quiet(), slowSave: slow})
	if err != nil {
		t.Fatal(err)
	}
	if straight.Checkpoint != "" || straight.FinalSave <= 0 {
		t.Errorf("result checkpoint %q, final save %v: want none written at the end and a measured save", straight.Checkpoint, straight.FinalSave)
	}
	ckpt := CheckpointPath(ModePretrain, straightOut)
	if _, meta := stateParams(t, cfg, ckpt); meta["step"] != "10" {
		t.Fatalf("the checkpoint beside the output is at step %q, want the last periodic one, 10", meta["step"])
	}
	// Resume the last background checkpoint into another output.
	out := filepath.Join(dir, "resumed.safetensors")
	if err := os.Rename(ckpt, CheckpointPath(ModePretrain, out)); err != nil {
		t.Fatal(err)
	}
	resumed, err := Run(context.Background(), RunOptions{Mode: ModePretrain, Config: cfg, DataDir: dataDir, Out: out, Resume: true, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	if resumed.StartStep != 10 || !reflect.DeepEqual(resumed.Losses, straight.Losses[10:]) {
		t.Fatalf("resumed from step %d with losses %v, want step 10 and %v", resumed.StartStep, resumed.Losses, straight.Losses[10:])
	}
	a, _ := os.ReadFile(filepath.Join(straightOut, "model.safetensors"))
	b, _ := os.ReadFile(filepath.Join(out, "model.safetensors"))
	if len(a) == 0 || !bytes.Equal(a, b) {
		t.Error("the run resumed from a background checkpoint wrote a different base")
	}
}

// TestFinalFilesWaitForTheLastEvaluation: the end's files are written beside
// the last evaluation but put in place only when it passes; a NaN there
// leaves no output, no temporary files and the last checkpoint as it was.
func TestFinalFilesWaitForTheLastEvaluation(t *testing.T) {
	needModel(t)
	dataDir := corpus(t, t.TempDir(), 2, 2, 5000)
	cfg := testConfig(10)
	cfg.Train.CheckpointEvery = 4
	dir := t.TempDir()
	out := filepath.Join(dir, "base.safetensors")
	_, err := Run(context.Background(), RunOptions{Mode: ModePretrain, Config: cfg, DataDir: dataDir, Out: out, Logger: quiet(),
		poisonVal: func(step int, v float64) float64 {
			if step == 10 {
				return math.NaN()
			}
			return v
		}})
	if err == nil || !strings.Contains(err.Error(), "validation loss is NaN") || !strings.Contains(err.Error(), "step 8") {
		t.Fatalf("error %v, want the NaN validation loss and the good checkpoint at step 8", err)
	}
	if _, meta := stateParams(t, cfg, CheckpointPath(ModePretrain, out)); meta["step"] != "8" {
		t.Fatalf("checkpoint at step %q, want 8", meta["step"])
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Fatalf("the directory holds %v, want only the step-8 checkpoint", names)
	}
}

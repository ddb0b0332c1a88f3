package train

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/opencluster/opencluster/train/backend"
)

// TestMicroBatch: a batch run as micro-batches gives the whole batch's loss
// and gradient (to rounding), including a micro-batch whose targets are all
// ignored, and holds activations for the micro-batch only.
func TestMicroBatch(t *testing.T) {
	const B, T = 4, 6
	rng := rand.New(rand.NewPCG(2, 9))
	tok := randomTokens(rng, B*T, tinyConfig().VocabSize)
	tgt := randomTokens(rng, B*T, tinyConfig().VocabSize)
	for i := T; i < 2*T; i++ {
		tgt[i] = -1 // the second sequence scores nothing
	}
	tgt[0] = -1
	step := func(m *Model) (float64, float64, []float32) {
		m.ZeroGrad()
		loss, err := m.ForwardBackward(tok, tgt, B, T, 0.5, 1)
		if err != nil {
			t.Fatal(err)
		}
		eval, err := m.Loss(tok, tgt, B, T)
		if err != nil {
			t.Fatal(err)
		}
		return loss, eval, append([]float32(nil), m.TrainableGrads()...)
	}
	for _, mode := range []string{"pretrain", "qlora"} {
		build := func() *Model {
			if mode == "qlora" {
				return newQLoRA(t, 3, 0)
			}
			return newTiny(t, true, 3)
		}
		wantLoss, wantEval, wantGrad := step(build())
		for _, mb := range []int{1, 2, 3} {
			m := build()
			m.SetMicroBatch(mb)
			loss, eval, grad := step(m)
			if math.Abs(loss-wantLoss) > 1e-6*wantLoss || math.Abs(eval-wantEval) > 1e-6*wantEval {
				t.Errorf("%s micro-batch %d: loss %v eval %v, whole batch %v %v", mode, mb, loss, eval, wantLoss, wantEval)
			}
			for i := range wantGrad {
				if d := math.Abs(float64(grad[i] - wantGrad[i])); d > 1e-5*(1+math.Abs(float64(wantGrad[i]))) {
					t.Fatalf("%s micro-batch %d: gradient %d = %v, whole batch %v", mode, mb, i, grad[i], wantGrad[i])
				}
			}
			if a := m.acts[0]; a.B > mb {
				t.Errorf("%s micro-batch %d: activations laid out for %d sequences", mode, mb, a.B)
			}
		}
	}
}

// TestEstimateCountsWhatIsAllocated: the memory model's parts equal the
// buffers a real model holds after a step, item by item.
func TestEstimateCountsWhatIsAllocated(t *testing.T) {
	for _, ckpt := range []bool{false, true} {
		for _, dropout := range []float64{0, 0.1} {
			cfg := tinyConfig()
			lc := LoRAConfig{Rank: 3, Alpha: 6, Dropout: dropout, Targets: []string{"q_proj", "v_proj", "down_proj"}}
			m, err := NewQuantizedModel(cfg, backend.NewCPU(1), 1, testQuant)
			if err != nil {
				t.Fatal(err)
			}
			if err := m.EnableLoRA(lc, 1); err != nil {
				t.Fatal(err)
			}
			m.SetCheckpointing(ckpt)
			const B, T = 2, 5
			rng := rand.New(rand.NewPCG(1, 1))
			if _, err := m.ForwardBackward(randomTokens(rng, B*T, cfg.VocabSize), randomTokens(rng, B*T, cfg.VocabSize), B, T, 1, 1); err != nil {
				t.Fatal(err)
			}
			m.OptimizerStep(tinyTrainConfig(), 1e-3, 1)
			e, err := EstimateMemory(MemoryJob{Model: cfg, Mode: ModeQLoRA, LoRA: lc, Quant: testQuant, MicroBatch: B, SeqLen: T, Checkpointing: ckpt})
			if err != nil {
				t.Fatal(err)
			}
			var q4 int64
			for l := range m.layers {
				for _, q := range m.layers[l].q4host {
					q4 += q.StorageBytes() + 4*256 // Storage4 also counts the nested map
				}
			}
			a := m.acts[0]
			want := map[string]int64{
				"4-bit linears":        q4,
				"bf16 embedding":       2 * int64(len(m.wte16host)),
				"fp32 norms":           4 * int64(m.params.Len()),
				"lora adapters":        4 * int64(m.lora.params.Len()),
				"lora gradients":       4 * int64(m.lora.grads.Len()),
				"adamw moments":        8 * int64(m.m.Len()),
				"activations":          4 * int64(a.buf.Len()),
				"activation gradients": 4 * int64(a.grads.buf.Len()),
				"rope tables":          4 * int64(m.ropeCos.Len()+m.ropeSin.Len()),
				"per-row losses":       8 * int64(len(a.losses)),
			}
			got := map[string]int64{}
			for _, it := range e.Items {
				got[it.Name] += it.Bytes
			}
			for name, w := range want {
				if got[name] != w {
					t.Errorf("ckpt=%v dropout=%v: %s estimated %d bytes, the model holds %d", ckpt, dropout, name, got[name], w)
				}
			}
		}
	}
}

func TestPlanMemory(t *testing.T) {
	job := MemoryJob{Model: tinyConfig(), Mode: ModeQLoRA, LoRA: LoRAConfig{Rank: 4, Alpha: 8, Targets: LinearNames},
		Quant: testQuant, MicroBatch: 4, SeqLen: 128}
	cfg := job.Model
	cfg.Layers, cfg.MaxSeqLen = 8, 128 // the attention probabilities dominate
	job.Model = cfg
	est := func(mb int, ckpt bool) int64 {
		j := job
		j.Batch, j.MicroBatch, j.Checkpointing = job.MicroBatch, mb, ckpt
		e, err := EstimateMemory(j)
		if err != nil {
			t.Fatal(err)
		}
		return e.Peak()
	}
	full, half, ck1 := est(4, false), est(2, false), est(1, true)
	if !(ck1 < est(1, false) && half < full) {
		t.Fatalf("estimates do not shrink: full %d half %d ckpt1 %d", full, half, ck1)
	}
	cases := []struct {
		budget   int64
		mb       int
		ckpt     bool
		wantFail bool
	}{
		{full, 4, false, false},
		{full - 1, 2, false, false},
		{half, 2, false, false},
		{ck1, 1, true, false},
		{ck1 - 1, 0, false, true},
	}
	for _, c := range cases {
		p, err := PlanMemory(job, c.budget, false)
		if c.wantFail {
			if !errors.Is(err, ErrDoesNotFit) || !strings.Contains(err.Error(), "needs") || !strings.Contains(err.Error(), "--max-memory") {
				t.Errorf("budget %d: error %v, want ErrDoesNotFit saying what it needs and what to change", c.budget, err)
			}
			continue
		}
		if err != nil || p.MicroBatch != c.mb || p.Checkpointing != c.ckpt || p.Estimate.Peak() > c.budget {
			t.Errorf("budget %d: plan micro-batch %d ckpt %v peak %d (%v), want %d %v", c.budget, p.MicroBatch, p.Checkpointing, p.Estimate.Peak(), err, c.mb, c.ckpt)
		}
	}
	// A budget below the frozen model itself says so.
	_, err := PlanMemory(job, RuntimeHostBytes, false)
	if err == nil || !strings.Contains(err.Error(), "the model alone needs") {
		t.Errorf("tiny budget: %v", err)
	}
	// A shorter sequence that fits is suggested.
	long := job
	long.MicroBatch = 1
	j16 := long
	j16.SeqLen, j16.Checkpointing, j16.Batch = 16, true, 1
	e16, _ := EstimateMemory(j16)
	if _, err := PlanMemory(long, e16.Peak(), false); err == nil || !strings.Contains(err.Error(), "lower train.seq_len to 16") {
		t.Errorf("a budget that fits seq_len 16: %v", err)
	}
}

func TestFormatBytes(t *testing.T) {
	for b, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1536: "1.5 KiB", 6 << 30: "6.0 GiB", 5<<29 + 1: "2.5 GiB"} {
		if got := FormatBytes(b); got != want {
			t.Errorf("FormatBytes(%d) = %q, want %q", b, got, want)
		}
	}
}

func TestDivisorsOf(t *testing.T) {
	for n, want := range map[int]string{1: "[1]", 12: "[1 2 3 4 6 12]", 49: "[1 7 49]", 97: "[1 97]"} {
		if got := fmt.Sprint(divisorsOf(n)); got != want {
			t.Errorf("divisorsOf(%d) = %s, want %s", n, got, want)
		}
	}
}

// TestPlanMemoryHostileBatch: a batch of 2^35 sequences is planned (and
// refused) at once, not by trying its divisors one by one.
func TestPlanMemoryHostileBatch(t *testing.T) {
	job := MemoryJob{Model: tinyConfig(), Mode: ModeQLoRA, LoRA: LoRAConfig{Rank: 4, Alpha: 8, Targets: LinearNames},
		Quant: testQuant, MicroBatch: 1 << 35, SeqLen: 8}
	// The token ids alone take 256 GiB: refused, with a batch that fits.
	_, err := PlanMemory(job, 1<<30, false)
	if !errors.Is(err, ErrDoesNotFit) || !strings.Contains(err.Error(), "lower the batch to") {
		t.Fatalf("2^35 sequences in 1 GiB: %v", err)
	}
	// 2^20 sequences of 8 tokens (32 MiB of ids) fit in 1 GiB in micro-batches.
	job.MicroBatch = 1 << 20
	p, err := PlanMemory(job, 1<<30, false)
	if err != nil || p.MicroBatch >= 1<<20 || p.Estimate.Peak() > 1<<30 {
		t.Fatalf("plan micro-batch %d, peak %d: %v", p.MicroBatch, p.Estimate.Peak(), err)
	}
	next := job
	next.Batch, next.MicroBatch = 1<<20, p.MicroBatch*2
	if e, _ := EstimateMemory(next); e.Peak() <= 1<<30 {
		t.Errorf("micro-batch %d fits too, the plan took %d", next.MicroBatch, p.MicroBatch)
	}
}

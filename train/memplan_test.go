package train

import (
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"testing"

	"github.com/opencluster/opencluster/train/backend"
)

// stepResult is everything a training step changes, for exact comparisons.
type stepResult struct {
	losses []float64
	norms  []float64
	grads  []float32 // after the last backward, before clipping
	params []float32 // after the last AdamW step
}

// runSteps runs steps optimizer steps of m on fixed random batches (the
// same for every model built the same way), with padding targets.
func runSteps(t *testing.T, m *Model, steps, B, T int) stepResult {
	t.Helper()
	rng := rand.New(rand.NewPCG(8, 8))
	tc := tinyTrainConfig()
	var r stepResult
	for s := 1; s <= steps; s++ {
		tok := randomTokens(rng, B*T, m.Config.VocabSize)
		tgt := randomTokens(rng, B*T, m.Config.VocabSize)
		tgt[0], tgt[T+1] = -1, -1 // ignored positions
		m.ZeroGrad()
		loss, err := m.ForwardBackward(tok, tgt, B, T, 0.5, s)
		if err != nil {
			t.Fatal(err)
		}
		r.losses = append(r.losses, loss)
		r.grads = append(r.grads[:0], m.TrainableGrads()...)
		r.norms = append(r.norms, m.ClipGradNorm(tc.GradClip))
		m.OptimizerStep(tc, tc.LR, s)
	}
	r.params = append([]float32(nil), m.TrainableParams()...)
	return r
}

func sameBits(t *testing.T, what string, got, want stepResult) {
	t.Helper()
	if !reflect.DeepEqual(got.losses, want.losses) || !reflect.DeepEqual(got.norms, want.norms) {
		t.Fatalf("%s: losses %v norms %v, want %v %v", what, got.losses, got.norms, want.losses, want.norms)
	}
	for _, c := range []struct {
		name      string
		got, want []float32
	}{{"gradient", got.grads, want.grads}, {"parameter", got.params, want.params}} {
		if len(c.got) != len(c.want) {
			t.Fatalf("%s: %d %ss, want %d", what, len(c.got), c.name, len(c.want))
		}
		for i := range c.want {
			if math.Float32bits(c.got[i]) != math.Float32bits(c.want[i]) {
				t.Fatalf("%s: %s %d = %v, want %v (bit for bit)", what, c.name, i, c.got[i], c.want[i])
			}
		}
	}
}

// TestCheckpointingBitForBit: a step with activation checkpointing (every
// block's forward run again in backward) gives the same loss, gradients and
// parameters bit for bit as one that keeps every activation, in full
// training and in QLoRA with dropout, over several steps.
func TestCheckpointingBitForBit(t *testing.T) {
	for _, mode := range []string{"pretrain", "qlora"} {
		t.Run(mode, func(t *testing.T) {
			build := func(ckpt bool) *Model {
				var m *Model
				if mode == "qlora" {
					m = newQLoRA(t, 4, 0.2)
				} else {
					m = newTiny(t, false, 4)
				}
				m.SetCheckpointing(ckpt)
				return m
			}
			want := runSteps(t, build(false), 3, 2, 7)
			m := build(true)
			got := runSteps(t, m, 3, 2, 7)
			sameBits(t, "checkpointing", got, want)
			if a := m.acts[0]; a == nil || !a.ckpt || len(a.layers) != 1 {
				t.Fatal("the checkpointed model did not keep a single shared block of activations")
			}
		})
	}
}

// TestHostOptimizerBitForBit: the AdamW moments on the host give the same
// steps as on the backend, and survive a train-state round trip.
func TestHostOptimizerBitForBit(t *testing.T) {
	want := runSteps(t, newQLoRA(t, 6, 0.1), 3, 2, 5)
	m := newQLoRA(t, 6, 0.1)
	m.SetHostOptimizer(true)
	got := runSteps(t, m, 3, 2, 5)
	sameBits(t, "host optimizer", got, want)
	if m.m != nil || len(m.mHost) != m.NumTrainable() {
		t.Fatal("the moments are not on the host")
	}
	path := filepath.Join(t.TempDir(), "state.ckpt")
	if err := m.SaveTrainState(path, nil); err != nil {
		t.Fatal(err)
	}
	m2 := newQLoRA(t, 6, 0.1)
	if _, err := m2.LoadTrainState(path); err != nil {
		t.Fatal(err)
	}
	mt, vt := m2.momentTensors(m2.NumTrainable())
	mm, err1 := mt.Float32()
	vv, err2 := vt.Float32()
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	if !reflect.DeepEqual(mm, m.mHost) || !reflect.DeepEqual(vv, m.vHost) {
		t.Fatal("host moments differ after a train-state round trip into a device-moment model")
	}
}

// TestChunkedCrossEntropy scores the logits a few rows at a time (with a
// ragged last chunk and a chunk whose targets are all ignored) and compares
// the loss and gradients with scoring all rows at once.
func TestChunkedCrossEntropy(t *testing.T) {
	for _, mode := range []string{"pretrain", "qlora"} {
		t.Run(mode, func(t *testing.T) {
			build := func() *Model {
				if mode == "qlora" {
					return newQLoRA(t, 2, 0)
				}
				return newTiny(t, true, 2)
			}
			const B, T = 2, 7
			rng := rand.New(rand.NewPCG(3, 3))
			tok := randomTokens(rng, B*T, tinyConfig().VocabSize)
			tgt := randomTokens(rng, B*T, tinyConfig().VocabSize)
			for i := 0; i < 6; i++ { // the first two 3-row chunks score nothing
				tgt[i] = -1
			}
			step := func(m *Model) (float64, []float32) {
				m.ZeroGrad()
				loss, err := m.ForwardBackward(tok, tgt, B, T, 1, 1)
				if err != nil {
					t.Fatal(err)
				}
				return loss, append([]float32(nil), m.TrainableGrads()...)
			}
			wantLoss, wantGrad := step(build())
			old := ceChunkElems
			ceChunkElems = 3 * tinyConfig().VocabSize
			defer func() { ceChunkElems = old }()
			m := build()
			loss, grad := step(m)
			if got := m.acts[0].ceRows; got != 3 {
				t.Fatalf("%d rows per chunk, want 3", got)
			}
			if math.Abs(loss-wantLoss) > 1e-6*math.Abs(wantLoss) {
				t.Errorf("chunked loss %v, whole %v", loss, wantLoss)
			}
			for i := range wantGrad {
				if d := math.Abs(float64(grad[i] - wantGrad[i])); d > 1e-5*(1+math.Abs(float64(wantGrad[i]))) {
					t.Fatalf("gradient %d: chunked %v, whole %v", i, grad[i], wantGrad[i])
				}
			}
			if l, err := m.Loss(tok, tgt, B, T); err != nil || math.Abs(l-wantLoss) > 1e-6*math.Abs(wantLoss) {
				t.Errorf("chunked Loss = %v, %v; want %v", l, err, wantLoss)
			}
		})
	}
}

// TestNewQuantizedModelEqualsQuantizeBase: drawing the model straight into
// 4-bit gives NewModel + QuantizeBase exactly (same draws, same rounding).
func TestNewQuantizedModelEqualsQuantizeBase(t *testing.T) {
	for _, tied := range []bool{true, false} {
		cfg := tinyConfig()
		cfg.TiedEmbeddings = tied
		ref, err := NewModel(cfg, backend.NewCPU(2), 9)
		if err != nil {
			t.Fatal(err)
		}
		if err := ref.QuantizeBase(testQuant); err != nil {
			t.Fatal(err)
		}
		m, err := NewQuantizedModel(cfg, backend.NewCPU(2), 9, testQuant)
		if err != nil {
			t.Fatal(err)
		}
		if !m.Quantized() || m.params.Len() != ref.params.Len() {
			t.Fatalf("tied=%v: quantized %v, %d fp32 params, want %d", tied, m.Quantized(), m.params.Len(), ref.params.Len())
		}
		if !reflect.DeepEqual(logits(t, m), logits(t, ref)) {
			t.Errorf("tied=%v: logits differ from NewModel + QuantizeBase", tied)
		}
		if !reflect.DeepEqual(m.BaseTensor4(1, "down_proj"), ref.BaseTensor4(1, "down_proj")) {
			t.Errorf("tied=%v: layer 1 down_proj differs", tied)
		}
	}
}

// TestLoadQuantizedStreams: loading an fp32 file or a BF16 Hugging Face
// folder quantized as it streams equals loading it whole and quantizing,
// and never allocates anything near the fp32 model's size.
func TestLoadQuantizedStreams(t *testing.T) {
	cfg := ModelConfig{VocabSize: 2048, Dim: 512, Layers: 4, Heads: 8, KVHeads: 2, HiddenDim: 1536,
		MaxSeqLen: 16, RopeTheta: 10000, NormEps: 1e-5}
	m, err := NewModel(cfg, backend.NewCPU(2), 5)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "base.safetensors")
	if err := m.SaveBase(file); err != nil {
		t.Fatal(err)
	}
	hf := filepath.Join(dir, "hf")
	if err := os.Mkdir(hf, 0o755); err != nil {
		t.Fatal(err)
	}
	writeHF(t, m, hf)
	fp32Bytes := uint64(4 * cfg.NumParams())
	for _, path := range []string{file, hf} {
		ref, err := LoadModel(path, backend.NewCPU(2))
		if err != nil {
			t.Fatal(err)
		}
		if err := ref.QuantizeBase(testQuant); err != nil {
			t.Fatal(err)
		}
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		got, err := LoadQuantized(path, backend.NewCPU(2), testQuant)
		runtime.ReadMemStats(&after)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(logits(t, got), logits(t, ref)) {
			t.Errorf("%s: logits differ from LoadModel + QuantizeBase", path)
		}
		// The quantized model (~1/8 of fp32), one fp32 linear, the 8 MiB
		// read buffer and its widened chunk: well under half the fp32 size.
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > fp32Bytes/2 {
			t.Errorf("%s: loading allocated %d bytes, the fp32 model is %d: it was materialised", path, alloc, fp32Bytes)
		}
	}
}

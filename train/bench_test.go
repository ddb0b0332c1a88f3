package train

import (
	"math/rand/v2"
	"testing"

	"github.com/opencluster/opencluster/train/backend"
)

// Shapes of configs/tiny.yaml and configs/small.yaml (model and batch).
var (
	benchTiny = ModelConfig{VocabSize: 256, Dim: 64, Layers: 2, Heads: 4, KVHeads: 2, HiddenDim: 176,
		MaxSeqLen: 128, RopeTheta: 10000, NormEps: 1e-5, TiedEmbeddings: true}
	benchSmall = ModelConfig{VocabSize: 256, Dim: 384, Layers: 10, Heads: 6, KVHeads: 6, HiddenDim: 1152,
		MaxSeqLen: 512, RopeTheta: 10000, NormEps: 1e-5, TiedEmbeddings: true}
)

// benchStep times one optimizer step (forward, backward, clip, AdamW) and
// reports training tokens per second.
func benchStep(b *testing.B, cfg ModelConfig, B, T, rank int, qlora bool, dtype ...string) {
	be := backend.NewCPU(0)
	if len(dtype) > 0 {
		if _, err := backend.ApplyComputeDType(be, dtype[0]); err != nil {
			b.Skip(err)
		}
	}
	m, err := NewModel(cfg, be, 1)
	if err != nil {
		b.Fatal(err)
	}
	if qlora {
		if err := m.QuantizeBase(QuantConfig{Format: "nf4", BlockSize: 64, DoubleQuant: true}); err != nil {
			b.Fatal(err)
		}
		if err := m.EnableLoRA(LoRAConfig{Rank: rank, Alpha: float64(2 * rank), Targets: LinearNames}, 1); err != nil {
			b.Fatal(err)
		}
	}
	rng := rand.New(rand.NewPCG(1, 1))
	tokens := randomTokens(rng, B*T, cfg.VocabSize)
	targets := randomTokens(rng, B*T, cfg.VocabSize)
	tc := TrainConfig{LR: 1e-3, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.01}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		m.ZeroGrad()
		if _, err := m.ForwardBackward(tokens, targets, B, T, 1, i+1); err != nil {
			b.Fatal(err)
		}
		m.ClipGradNorm(1)
		m.OptimizerStep(tc, tc.LR, i+1)
	}
	b.ReportMetric(float64(B*T*b.N)/b.Elapsed().Seconds(), "tokens/s")
}

func BenchmarkTrainStepTiny(b *testing.B) {
	b.Run("pretrain", func(b *testing.B) { benchStep(b, benchTiny, 16, 64, 8, false) })
	b.Run("qlora", func(b *testing.B) { benchStep(b, benchTiny, 16, 64, 8, true) })
}

func BenchmarkTrainStepSmall(b *testing.B) {
	b.Run("pretrain", func(b *testing.B) { benchStep(b, benchSmall, 8, 256, 16, false) })
	b.Run("qlora", func(b *testing.B) { benchStep(b, benchSmall, 8, 256, 16, true) })
	b.Run("qlora-bf16", func(b *testing.B) { benchStep(b, benchSmall, 8, 256, 16, true, backend.ComputeBF16) })
}

// bench1B is configs/llama-1b.yaml's model: the Llama 3.2 1B shape.
var bench1B = ModelConfig{VocabSize: 128256, Dim: 2048, Layers: 16, Heads: 32, KVHeads: 8, HiddenDim: 8192,
	MaxSeqLen: 2048, RopeTheta: 500000, NormEps: 1e-5, TiedEmbeddings: true}

// genModels keeps the 1B models between the benchmark's calls (building one
// takes longer than the measurement).
var genModels = map[string]*Model{}

// BenchmarkGenerate1B times generation at the Llama 3.2 1B shape on the
// CPU: a 128-token prompt prefilled once, then one token per iteration
// through the KV cache (Decoder.Next), for the fp32 model and the NF4
// (QLoRA) base. Its peer is bench/peers/torch_generate.py, the same decode
// in PyTorch on the same threads. Run it alone:
//
//	go test -run '^$' -bench Generate1B -benchtime 32x -timeout 30m ./train/
func BenchmarkGenerate1B(b *testing.B) {
	for _, name := range []string{"fp32", "nf4"} {
		b.Run(name, func(b *testing.B) {
			m := genModels[name]
			if m == nil {
				var err error
				if name == "nf4" {
					m, err = NewQuantizedModel(bench1B, backend.NewCPU(0), 1, QuantConfig{Format: "nf4", BlockSize: 64, DoubleQuant: true})
				} else {
					m, err = NewModel(bench1B, backend.NewCPU(0), 1)
				}
				if err != nil {
					b.Fatal(err)
				}
				genModels[name] = m
			}
			rng := rand.New(rand.NewPCG(2, 2))
			prompt := randomTokens(rng, 128, bench1B.VocabSize)
			d, err := m.NewDecoder(bench1B.MaxSeqLen)
			if err != nil {
				b.Fatal(err)
			}
			defer d.Free()
			if _, err := d.Prefill(prompt); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if d.Len() == d.Cap() {
					b.StopTimer()
					d.Prefill(prompt)
					b.StartTimer()
				}
				if _, err := d.Next(int32(i % bench1B.VocabSize)); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
		})
		if name == "fp32" { // free its 5 GB before the NF4 model is built
			delete(genModels, name)
		}
	}
}

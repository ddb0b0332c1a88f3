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
func benchStep(b *testing.B, cfg ModelConfig, B, T, rank int, qlora bool) {
	m, err := NewModel(cfg, backend.NewCPU(0), 1)
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
}

package train

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/opencluster/opencluster/train/backend"
)

// tinyConfig is a 2-layer grouped-query model small enough for finite differences.
func tinyConfig() ModelConfig {
	return ModelConfig{VocabSize: 11, Dim: 16, Layers: 2, Heads: 4, KVHeads: 2, HiddenDim: 24,
		MaxSeqLen: 8, RopeTheta: 10000, NormEps: 1e-5}
}

func tinyTrainConfig() TrainConfig {
	return TrainConfig{SeqLen: 5, BatchSize: 2, GradAccum: 1, Steps: 10, LR: 1e-2, Beta1: 0.9,
		Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1, GradClip: 1, ValFraction: 0.1, Seed: 1}
}

func randomTokens(rng *rand.Rand, n, V int) []int32 {
	t := make([]int32, n)
	for i := range t {
		t[i] = int32(rng.IntN(V))
	}
	return t
}

func TestTrainingReducesLoss(t *testing.T) {
	for _, tied := range []bool{true, false} {
		cfg := tinyConfig()
		cfg.TiedEmbeddings = tied
		m, err := NewModel(cfg, backend.NewCPU(2), 1)
		if err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(1, 2))
		B, T := 2, 5
		tokens := randomTokens(rng, B*T, cfg.VocabSize)
		targets := randomTokens(rng, B*T, cfg.VocabSize)
		first, err := m.Loss(tokens, targets, B, T)
		if err != nil {
			t.Fatal(err)
		}
		if math.Abs(first-math.Log(float64(cfg.VocabSize))) > 0.1 {
			t.Errorf("tied=%v: initial loss %.4f, want about ln(V) = %.4f", tied, first, math.Log(float64(cfg.VocabSize)))
		}
		tc := tinyTrainConfig()
		var loss float64
		for step := 1; step <= 30; step++ {
			m.ZeroGrad()
			loss, err = m.ForwardBackward(tokens, targets, B, T, 1, step)
			if err != nil {
				t.Fatal(err)
			}
			m.ClipGradNorm(tc.GradClip)
			m.OptimizerStep(tc, tc.LR, step)
		}
		last, _ := m.Loss(tokens, targets, B, T)
		if !(last < first-1) {
			t.Errorf("tied=%v: loss %.4f -> %.4f (last step %.4f): memorising one batch should cut it by more than 1 nat", tied, first, last, loss)
		}
	}
}

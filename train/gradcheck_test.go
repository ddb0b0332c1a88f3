package train

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/opencluster/opencluster/train/backend"
)

// randomizeTrainable overwrites the trainable vector with N(0, std) values so
// that every path carries gradient (LoRA B starts at zero, which would
// leave A's gradient zero).
func randomizeTrainable(m *Model, seed uint64, std float64) {
	p := m.TrainableParams()
	rng := rand.New(rand.NewPCG(seed, 99))
	for i := range p {
		p[i] = float32(rng.NormFloat64() * std)
	}
}

// gradCheck compares the model's gradient with central finite differences
// of the loss on a sample of trainable parameters (drawn from pool, or from
// all of them when pool is nil), and returns the norm-wise relative error
// ||g - fd|| / ||fd|| over the sample.
func gradCheck(t *testing.T, m *Model, tokens, targets []int32, B, T, samples int, seed uint64, pool []int) float64 {
	t.Helper()
	const step = 3
	m.ZeroGrad()
	if _, err := m.ForwardBackward(tokens, targets, B, T, 1, step); err != nil {
		t.Fatal(err)
	}
	grad := append([]float32(nil), m.TrainableGrads()...)
	p := m.TrainableParams()
	rng := rand.New(rand.NewPCG(seed, 7))
	lossAt := func() float64 {
		l, err := m.ForwardBackward(tokens, targets, B, T, 1, step) // same step: same dropout masks
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	var num, den float64
	for s := 0; s < samples; s++ {
		i := rng.IntN(len(p))
		if pool != nil {
			i = pool[rng.IntN(len(pool))]
		}
		orig := p[i]
		h := float32(1e-2) * max(1, float32(math.Abs(float64(orig))))
		p[i] = orig + h
		lp := lossAt()
		p[i] = orig - h
		lm := lossAt()
		p[i] = orig
		fd := (lp - lm) / float64(2*h)
		d := float64(grad[i]) - fd
		num += d * d
		den += fd * fd
	}
	if den == 0 {
		t.Fatal("finite differences are all zero: the check would prove nothing")
	}
	return math.Sqrt(num / den)
}

func TestModelGradientFiniteDifferences(t *testing.T) {
	cases := []struct {
		name    string
		tied    bool
		qlora   bool
		dropout float64
		pad     bool
		hf      bool // biases everywhere, head_dim != dim/n_heads, llama3 RoPE scaling
	}{
		{name: "pretrain/tied", tied: true},
		{name: "pretrain/untied/padding", pad: true},
		{name: "pretrain/biases/head_dim/rope-llama3", hf: true},
		{name: "qlora/nf4", tied: true, qlora: true},
		{name: "qlora/nf4/dropout", qlora: true, dropout: 0.2},
		{name: "qlora/nf4/biases/head_dim/rope-llama3", qlora: true, hf: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tinyConfig()
			cfg.TiedEmbeddings = tc.tied
			if tc.hf {
				cfg.HeadSize, cfg.QKVBias, cfg.OBias, cfg.MLPBias = 6, true, true, true
				cfg.Rope = RopeScaling{Type: "llama3", Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPos: 4}
			}
			be := backend.NewCPU(2)
			if _, err := backend.ApplyComputeDType(be, backend.ComputeFP32); err != nil {
				t.Fatal(err)
			}
			m, err := NewModel(cfg, be, 3)
			if err != nil {
				t.Fatal(err)
			}
			if tc.qlora {
				if err := m.QuantizeBase(QuantConfig{Format: "nf4", BlockSize: 64, DoubleQuant: true}); err != nil {
					t.Fatal(err)
				}
				lc := LoRAConfig{Rank: 3, Alpha: 6, Dropout: tc.dropout, Targets: LinearNames}
				if err := m.EnableLoRA(lc, 5); err != nil {
					t.Fatal(err)
				}
				std := 0.3
				if tc.hf {
					std = 0.15 // at 0.3 float32 differences are too coarse for 1e-2 here
				}
				randomizeTrainable(m, 11, std)
			} else {
				randomizeTrainable(m, 11, 0.3)
				p := m.TrainableParams() // keep the norms near 1 so the net stays well conditioned
				for _, sp := range m.specs {
					if len(sp.shape) == 1 {
						for k := sp.off; k < sp.off+sp.n; k++ {
							p[k] = 1 + p[k]/3
						}
					}
				}
			}
			rng := rand.New(rand.NewPCG(4, 4))
			B, T := 2, 5
			tokens := randomTokens(rng, B*T, cfg.VocabSize)
			targets := randomTokens(rng, B*T, cfg.VocabSize)
			if tc.pad {
				targets[3], targets[7] = -1, -1
			}
			rel := gradCheck(t, m, tokens, targets, B, T, 150, 1, nil)
			t.Logf("relative error %.2e", rel)
			if rel > 1e-2 {
				t.Errorf("gradient differs from finite differences: relative error %.3e > 1e-2", rel)
			}
			if tc.hf && !tc.qlora { // the biases are a small share of the parameters: check them on their own
				var biases []int
				for _, sp := range m.specs {
					for k := sp.off; strings.HasSuffix(sp.name, ".bias") && k < sp.off+sp.n; k++ {
						biases = append(biases, k)
					}
				}
				rel := gradCheck(t, m, tokens, targets, B, T, 100, 2, biases)
				t.Logf("biases: relative error %.2e over %d bias parameters", rel, len(biases))
				if rel > 1e-2 {
					t.Errorf("bias gradients differ from finite differences: relative error %.3e > 1e-2", rel)
				}
			}
		})
	}
}

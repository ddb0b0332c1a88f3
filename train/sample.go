package train

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
)

// SampleOptions controls Sample.
type SampleOptions struct {
	MaxTokens   int     // tokens to generate
	Temperature float64 // softmax temperature; 0 picks the most likely token
	TopK        int     // keep only the K most likely tokens; 0 keeps all
	Seed        uint64  // the same seed, model and prompt give the same text
}

// Sample continues prompt with up to o.MaxTokens tokens drawn from the
// model's next-token distribution, feeding at most model.max_seq_len tokens
// of context, and returns the new tokens. Non-finite logits are an error
// naming the position.
func Sample(ctx context.Context, m *Model, prompt []int32, o SampleOptions) ([]int32, error) {
	if len(prompt) == 0 {
		return nil, errors.New("sample: the prompt is empty")
	}
	if o.MaxTokens < 0 || o.Temperature < 0 || o.TopK < 0 || math.IsNaN(o.Temperature) || math.IsInf(o.Temperature, 0) {
		return nil, fmt.Errorf("sample: max tokens (%d), temperature (%g) and top-k (%d) must be finite and not negative", o.MaxTokens, o.Temperature, o.TopK)
	}
	vocab := m.Config.VocabSize
	for i, t := range prompt {
		if t < 0 || int(t) >= vocab {
			return nil, fmt.Errorf("sample: prompt token %d at position %d is outside the vocabulary [0,%d)", t, i, vocab)
		}
	}
	rng := rand.New(rand.NewPCG(o.Seed, 0x5eed))
	ctxTokens := append([]int32(nil), prompt...)
	var out []int32
	for len(out) < o.MaxTokens {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		window := ctxTokens
		if n := m.Config.MaxSeqLen; n > 0 && len(window) > n {
			window = window[len(window)-n:]
		}
		logits, err := m.Logits(window)
		if err != nil {
			return out, fmt.Errorf("sample: token %d: %w", len(out), err)
		}
		next, err := pick(logits, o, rng)
		if err != nil {
			return out, fmt.Errorf("sample: token %d: %w", len(out), err)
		}
		out = append(out, next)
		ctxTokens = append(ctxTokens, next)
	}
	return out, nil
}

// pick draws one token from logits with temperature and top-k.
func pick(logits []float32, o SampleOptions, rng *rand.Rand) (int32, error) {
	if len(logits) == 0 {
		return 0, errors.New("no logits")
	}
	best := 0
	for i, l := range logits {
		if math.IsNaN(float64(l)) || math.IsInf(float64(l), 0) {
			return 0, fmt.Errorf("logit %d is %v", i, l)
		}
		if l > logits[best] {
			best = i
		}
	}
	if o.Temperature == 0 {
		return int32(best), nil
	}
	idx := make([]int, len(logits))
	for i := range idx {
		idx[i] = i
	}
	if o.TopK > 0 && o.TopK < len(idx) {
		sort.SliceStable(idx, func(a, b int) bool { return logits[idx[a]] > logits[idx[b]] })
		idx = idx[:o.TopK]
	}
	probs := make([]float64, len(idx))
	var sum float64
	for i, j := range idx {
		probs[i] = math.Exp((float64(logits[j]) - float64(logits[best])) / o.Temperature)
		sum += probs[i]
	}
	u := rng.Float64() * sum
	for i, p := range probs {
		u -= p
		if u < 0 {
			return int32(idx[i]), nil
		}
	}
	return int32(idx[len(idx)-1]), nil
}

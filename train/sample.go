package train

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
)

// SampleOptions controls Sample.
type SampleOptions struct {
	MaxTokens   int     // tokens to generate
	Temperature float64 // softmax temperature; 0 picks the most likely token
	TopK        int     // keep only the K most likely tokens; 0 keeps all
	// TopP keeps the smallest set of most likely tokens whose probabilities
	// (after temperature and top-k) add up to at least TopP (nucleus
	// sampling); 0 or 1 keeps all.
	TopP float64
	Seed uint64 // the same seed, model and prompt give the same text
	// Stop lists end-of-sequence ids: generation ends when one is drawn,
	// and it is not returned.
	Stop []int32
	// OnToken, when set, is called with each token as it is drawn.
	OnToken func(id int32)
}

// Sample continues prompt with up to o.MaxTokens tokens drawn from the
// model's next-token distribution and returns the new tokens, stopping
// early at a Stop token. It keeps a KV cache (Decoder): the prompt runs
// once, then each token costs one position. The context is the model's
// (max_seq_len, or the sliding window): a longer prompt keeps its end, and
// when the cache fills the last half of the context is run again and
// generation continues from it. Non-finite logits are an error naming the
// token.
func Sample(ctx context.Context, m *Model, prompt []int32, o SampleOptions) ([]int32, error) {
	if len(prompt) == 0 {
		return nil, errors.New("sample: the prompt is empty")
	}
	if o.MaxTokens < 0 || o.Temperature < 0 || o.TopK < 0 || math.IsNaN(o.Temperature) || math.IsInf(o.Temperature, 0) {
		return nil, fmt.Errorf("sample: max tokens (%d), temperature (%g) and top-k (%d) must be finite and not negative", o.MaxTokens, o.Temperature, o.TopK)
	}
	if !(o.TopP >= 0 && o.TopP <= 1) {
		return nil, fmt.Errorf("sample: top-p %g must be in [0,1]", o.TopP)
	}
	vocab := m.Config.VocabSize
	for i, t := range prompt {
		if t < 0 || int(t) >= vocab {
			return nil, fmt.Errorf("sample: prompt token %d at position %d is outside the vocabulary [0,%d)", t, i, vocab)
		}
	}
	if o.MaxTokens == 0 {
		return nil, nil
	}
	window := m.Config.Context()
	ctxTokens := prompt
	if len(ctxTokens) > window {
		ctxTokens = ctxTokens[len(ctxTokens)-window:]
	}
	ctxTokens = slices.Clone(ctxTokens)
	d, err := m.NewDecoder(min(window, len(ctxTokens)+o.MaxTokens))
	if err != nil {
		return nil, err
	}
	defer d.Free()
	logits, err := d.Prefill(ctxTokens)
	if err != nil {
		return nil, fmt.Errorf("sample: prompt: %w", err)
	}
	rng := rand.New(rand.NewPCG(o.Seed, 0x5eed))
	var out []int32
	for {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		next, err := pick(logits, o, rng)
		if err != nil {
			return out, fmt.Errorf("sample: token %d: %w", len(out), err)
		}
		if slices.Contains(o.Stop, next) {
			return out, nil
		}
		out = append(out, next)
		ctxTokens = append(ctxTokens, next)
		if o.OnToken != nil {
			o.OnToken(next)
		}
		if len(out) == o.MaxTokens {
			return out, nil
		}
		if d.Len() == d.Cap() { // full: start again from the last half of the context
			ctxTokens = slices.Clone(ctxTokens[len(ctxTokens)-max(1, window/2):])
			logits, err = d.Prefill(ctxTokens)
		} else {
			logits, err = d.Next(next)
		}
		if err != nil {
			return out, fmt.Errorf("sample: token %d: %w", len(out), err)
		}
	}
}

// pick draws one token from logits with temperature, top-k and top-p.
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
	nucleus := o.TopP > 0 && o.TopP < 1
	if (o.TopK > 0 && o.TopK < len(idx)) || nucleus {
		sort.SliceStable(idx, func(a, b int) bool { return logits[idx[a]] > logits[idx[b]] })
		if o.TopK > 0 && o.TopK < len(idx) {
			idx = idx[:o.TopK]
		}
	}
	probs := make([]float64, len(idx))
	var sum float64
	for i, j := range idx {
		probs[i] = math.Exp((float64(logits[j]) - float64(logits[best])) / o.Temperature)
		sum += probs[i]
	}
	if nucleus { // most likely first: keep the prefix that reaches TopP
		var cum float64
		for i, p := range probs {
			cum += p
			if cum >= o.TopP*sum {
				idx, probs, sum = idx[:i+1], probs[:i+1], cum
				break
			}
		}
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

package train

import (
	"context"
	"errors"
	"fmt"

	"github.com/opencluster/opencluster/train/data"
)

// EvalResult is a mean loss over scored tokens.
type EvalResult struct {
	Loss   float64 `json:"loss"`   // mean cross-entropy, nats per scored token
	Tokens int     `json:"tokens"` // scored tokens (targets >= 0)
}

// Evaluate runs the forward pass over batches and returns the mean
// cross-entropy in nats per scored token and the number of scored tokens.
// Every scored token weighs the same, whichever batch it is in, so the
// training loop's validation loss and the eval command report the same
// number for the same tokens.
func Evaluate(ctx context.Context, m *Model, batches []data.Batch) (EvalResult, error) {
	var sum float64
	var n int
	for i, b := range batches {
		if err := ctx.Err(); err != nil {
			return EvalResult{}, err
		}
		s, c, err := m.LossSum(b.Tokens, b.Targets, b.B, b.T)
		if err != nil {
			return EvalResult{}, fmt.Errorf("batch %d: %w", i, err)
		}
		sum += s
		n += c
	}
	if n == 0 {
		return EvalResult{}, errors.New("train: nothing to evaluate: no scored tokens")
	}
	return EvalResult{Loss: sum / float64(n), Tokens: n}, nil
}

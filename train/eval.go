package train

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

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

// EvalOptions describes what Eval scores: the base (and adapter) loaded as a
// QLoRA run loads them, on the validation split of the data exactly as a
// run splits it (RunOptions' Config, DataDir, Base, Backend, Logger and
// tokenizer settings; the rest is unused).
type EvalOptions struct {
	RunOptions
	// Adapter is a PEFT adapter folder to apply ("" for the base alone).
	Adapter string
	// Quantize holds a dense base in 4-bit as training does (the quant
	// section of Config), so the loss is the one a QLoRA run reports. It is
	// implied by Adapter; a bitsandbytes folder is 4-bit already.
	Quantize bool
	// AllBatches scores every validation batch instead of train.eval_batches.
	AllBatches bool
}

// Eval scores opts.Base (plus opts.Adapter) on the validation batches a
// training run with the same config and data evaluates, and returns the
// mean loss per scored token: the number that run reports as its
// validation loss (the initial one for the base, the final one for the
// base with the run's adapter).
func Eval(ctx context.Context, opts EvalOptions) (EvalResult, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	cfg := opts.Config
	if opts.Base == "" || opts.DataDir == "" {
		return EvalResult{}, errors.New("eval: a base and a data path are needed")
	}
	if err := cfg.Train.Validate(); err != nil {
		return EvalResult{}, err
	}
	ds, err := openData(opts.RunOptions, log)
	if err != nil {
		return EvalResult{}, err
	}
	defer ds.Close()
	n := max(1, cfg.Train.EvalBatches)
	if opts.AllBatches {
		n = ds.NumValBatches()
	}
	val, err := ds.ValBatches(n)
	if err != nil {
		return EvalResult{}, err
	}
	if len(val) == 0 {
		return EvalResult{}, fmt.Errorf("eval: %s has no validation window of %d tokens", opts.DataDir, cfg.Train.SeqLen)
	}
	be, err := opts.backend(cfg.Train)
	if err != nil {
		return EvalResult{}, err
	}
	var m *Model
	if opts.Quantize || opts.Adapter != "" {
		if err := cfg.Quant.Validate(); err != nil {
			return EvalResult{}, err
		}
		m, err = LoadQuantized(opts.Base, be, cfg.Quant)
	} else {
		m, err = LoadModel(opts.Base, be)
	}
	if err != nil {
		return EvalResult{}, fmt.Errorf("base %s: %w", opts.Base, err)
	}
	defer m.Free()
	if err := CheckTokenizer(m.Config, opts.Tokenizer); err != nil {
		return EvalResult{}, fmt.Errorf("base %s: %w", opts.Base, err)
	}
	if opts.Adapter != "" {
		if err := m.LoadAdapter(opts.Adapter); err != nil {
			return EvalResult{}, err
		}
	}
	return Evaluate(ctx, m, val)
}

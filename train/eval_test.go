package train

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
)

// eval reports exactly the validation losses a QLoRA run reports: the
// initial one for the base, the final one for the base with the adapter.
func TestEvalIsTheRunsValidationLoss(t *testing.T) {
	cfg := testConfig(6)
	tmp := t.TempDir()
	base := filepath.Join(tmp, "base")
	if _, err := Run(context.Background(), RunOptions{Mode: ModePretrain, Config: cfg, DataDir: corpus(t, filepath.Join(tmp, "a"), 1, 2, 6000), Out: base, Logger: quiet()}); err != nil {
		t.Fatal(err)
	}
	dataDir := corpus(t, filepath.Join(tmp, "b"), 2, 3, 6000)
	adapter := filepath.Join(tmp, "adapter")
	res, err := Run(context.Background(), RunOptions{Mode: ModeQLoRA, Config: cfg, DataDir: dataDir, Base: base, Out: adapter, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	opts := EvalOptions{RunOptions: RunOptions{Config: cfg, DataDir: dataDir, Base: base, Logger: quiet()}, Quantize: true}
	before, err := Eval(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	opts.Adapter = adapter
	after, err := Eval(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if before.Loss != res.InitialValLoss || after.Loss != res.ValLoss {
		t.Errorf("eval %.9f -> %.9f, the run reported %.9f -> %.9f", before.Loss, after.Loss, res.InitialValLoss, res.ValLoss)
	}
	if want := cfg.Train.EvalBatches * cfg.Train.BatchSize * cfg.Train.SeqLen; before.Tokens != want {
		t.Errorf("scored %d tokens, want %d", before.Tokens, want)
	}
	opts.AllBatches = true
	all, err := Eval(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if all.Tokens <= after.Tokens {
		t.Errorf("every validation batch: %d tokens, no more than eval_batches' %d", all.Tokens, after.Tokens)
	}
	opts.Adapter = filepath.Join(tmp, "nowhere")
	if _, err := Eval(context.Background(), opts); err == nil || !strings.Contains(err.Error(), "nowhere") {
		t.Errorf("missing adapter: %v", err)
	}
}

package bench

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/opencluster/opencluster/train"
)

// TestQLoRAMemoryRow: the row plans within its budget (here one that only
// fits with micro-batch 1 and checkpointing), trains, and reports tokens/s,
// the process's peak and the memory model's estimate.
func TestQLoRAMemoryRow(t *testing.T) {
	cfg := tinyConfig()
	job := train.MemoryJob{Model: cfg.Model, Mode: train.ModeQLoRA, LoRA: cfg.LoRA, Quant: cfg.Quant,
		MicroBatch: 1, Batch: cfg.Train.BatchSize, SeqLen: cfg.Train.SeqLen, Checkpointing: true}
	e, err := train.EstimateMemory(job)
	if err != nil {
		t.Fatal(err)
	}
	qc := QLoRAConfig{Preset: "tiny", Config: cfg, Budget: e.Peak(), Threads: 1, Options: Options{NoPeer: true}}
	r, err := QLoRAMemoryRow(context.Background(), qc)
	if err != nil {
		t.Fatal(err)
	}
	x := r.Extra
	if r.Name != "qlora_step" || !strings.HasPrefix(r.Size, "tiny seq 32") || r.GFLOPS <= 0 {
		t.Errorf("row %s %q gflops %v", r.Name, r.Size, r.GFLOPS)
	}
	if x["micro_batch"] != 1 || x["checkpointing"] != true {
		t.Errorf("plan micro_batch %v checkpointing %v, want 1 and true for a budget only that fits", x["micro_batch"], x["checkpointing"])
	}
	if tps, _ := x["tokens_per_s"].(float64); tps <= 0 {
		t.Errorf("tokens_per_s %v", x["tokens_per_s"])
	}
	if p, _ := x["peak_rss_bytes"].(int64); p <= 0 {
		t.Errorf("peak_rss_bytes %v", x["peak_rss_bytes"])
	}
	if est, _ := x["estimate_bytes"].(int64); est != e.Host {
		t.Errorf("estimate_bytes %v, want %d", x["estimate_bytes"], e.Host)
	}
	if x["peer_missing"] != "skipped (--no-peer)" {
		t.Errorf("peer_missing %v", x["peer_missing"])
	}

	qc.Budget = 1 << 20
	_, err = QLoRAMemoryRow(context.Background(), qc)
	if !errors.Is(err, train.ErrDoesNotFit) || !strings.Contains(err.Error(), "tiny") {
		t.Errorf("a 1 MiB budget: %v, want ErrDoesNotFit naming the preset", err)
	}
	var rows []Row
	if err := RunQLoRA(context.Background(), []QLoRAConfig{qc}, func(r Row) { rows = append(rows, r) }); err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 || rows[0].Name != "machine" || !strings.Contains(rows[1].Error, "does not fit") {
		t.Errorf("RunQLoRA rows %+v", rows)
	}
}

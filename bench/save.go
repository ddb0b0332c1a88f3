package bench

// The pretrain_save row: a short pretrain of a ~113M-parameter model in a
// fresh child process, timing how long the end of the run takes to write
// its files and reading the process's peak resident memory, next to what
// the weights, gradients, AdamW moments and activations take.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"

	"github.com/opencluster/opencluster/train"
	"github.com/opencluster/opencluster/train/backend"
)

// ModeSave is the step mode of the pretrain_save row ("gpt2-124m/save").
const ModeSave = "save"

// saveVocab is the byte-level vocabulary the save row's model uses: the
// gpt2-124m shape with it has 113M parameters (most of GPT-2's 124M vocab
// rows are then absent), the model pretrain builds on plain text.
const saveVocab = 256

// SaveRunConfig is the pretrain the save row runs: preset's shape with the
// byte-level vocabulary, 4 sequences of 256 tokens, 3 steps, an evaluation
// at the end, no periodic checkpoint, the state not kept at the end (the
// default), so the end writes the base file only. (A model whose
// max_seq_len is under 256 gets sequences of its max_seq_len.)
func SaveRunConfig(cfg train.Config, threads int) train.Config {
	c := cfg
	c.Model.VocabSize = saveVocab
	c.Train.BatchSize, c.Train.SeqLen, c.Train.GradAccum = 4, min(256, c.Model.MaxSeqLen), 1
	c.Train.Steps, c.Train.WarmupSteps = 3, 1
	c.Train.EvalEvery, c.Train.EvalBatches, c.Train.CheckpointEvery = 0, 2, 0
	c.Train.SaveFinalState = false
	c.Train.Threads = threads
	if c.Train.LR <= 0 {
		c.Train.LR, c.Train.Beta1, c.Train.Beta2, c.Train.Eps = 6e-4, 0.9, 0.95, 1e-8
	}
	if c.Train.ValFraction <= 0 {
		c.Train.ValFraction = 0.1
	}
	return c
}

// SaveResult is what the save child prints: one JSON line.
type SaveResult struct {
	Params       int64   `json:"params"`
	Steps        int     `json:"steps"`
	FinalWriteS  float64 `json:"final_write_s"`
	FinalSaveS   float64 `json:"final_save_s"`
	OutBytes     int64   `json:"out_bytes"`
	PeakRSSBytes int64   `json:"peak_rss_bytes"`
	Source       string  `json:"source"`
}

// RunSaveChild is the body of the save row's child process: it writes a
// text corpus under dir, pretrains cfg (SaveRunConfig) on it into
// the model folder dir/base, and writes a SaveResult to w.
func RunSaveChild(ctx context.Context, cfg train.Config, dir string, w io.Writer) error {
	data := filepath.Join(dir, "text")
	if err := writeText(data, 3<<20); err != nil {
		return err
	}
	out := filepath.Join(dir, "base")
	res, err := train.Run(ctx, train.RunOptions{Mode: train.ModePretrain, Config: cfg, DataDir: data, Out: out,
		Backend: backend.NewCPU(cfg.Train.Threads), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return fmt.Errorf("save child: %w", err)
	}
	size, err := dirBytes(out)
	if err != nil {
		return fmt.Errorf("save child: %w", err)
	}
	r := SaveResult{Params: cfg.Model.NumParams(), Steps: res.Step, FinalWriteS: res.FinalWrite.Seconds(),
		FinalSaveS: res.FinalSave.Seconds(), OutBytes: size}
	r.PeakRSSBytes, r.Source = processPeakRSS()
	return json.NewEncoder(w).Encode(r)
}

// dirBytes is the size of the files in dir (a model folder).
func dirBytes(dir string) (int64, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil {
			return 0, err
		}
		n += fi.Size()
	}
	return n, nil
}

// writeText writes n bytes of sentences from a small grammar under dir.
func writeText(dir string, n int) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	words := [][]string{
		{"the worker", "a volunteer", "the model", "each machine", "the coordinator"},
		{"trains", "sends", "checks", "keeps", "reads"},
		{"the adapter", "its own data", "a small update", "the base weights", "every round"},
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var b bytes.Buffer
	for b.Len() < n {
		fmt.Fprintf(&b, "%s %s %s.\n", words[0][rng.IntN(5)], words[1][rng.IntN(5)], words[2][rng.IntN(5)])
	}
	return os.WriteFile(filepath.Join(dir, "corpus.txt"), b.Bytes(), 0o644)
}

// SaveRow runs the save child for preset and reports the end-of-run save
// and the peak RSS against the memory the run needs by its parts.
func SaveRow(ctx context.Context, preset string, cfg train.Config, sc StepConfig) (Row, error) {
	row := Row{Name: "pretrain_save", Size: preset + " vocab 256"}
	if sc.SaveChild == nil {
		return row, errors.New("no child process runner: the save row needs a fresh process")
	}
	rc := SaveRunConfig(cfg, sc.Threads)
	if err := rc.Validate(); err != nil {
		return row, fmt.Errorf("save row %s: %w", preset, err)
	}
	dir, err := os.MkdirTemp(sc.TempDir, "opencluster-bench-save-")
	if err != nil {
		return row, err
	}
	defer os.RemoveAll(dir)
	cmd := sc.SaveChild(ctx, preset, dir)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return row, fmt.Errorf("save row %s: child %s: %w: %s", preset, cmd.Path, err, lastLine(stderr.String()))
	}
	var res SaveResult
	if err := json.Unmarshal([]byte(lastLine(stdout.String())), &res); err != nil {
		return row, fmt.Errorf("save row %s: child printed %q: %w", preset, lastLine(stdout.String()), err)
	}
	est, err := train.EstimateMemory(train.MemoryJob{Model: rc.Model, Mode: train.ModePretrain,
		MicroBatch: rc.Train.BatchSize, SeqLen: rc.Train.SeqLen})
	if err != nil {
		return row, err
	}
	parts := map[string]int64{}
	var need int64
	for _, it := range est.Items {
		switch it.Name {
		case "fp32 weights", "fp32 gradients", "adamw moments", "activations", "activation gradients":
			parts[it.Name] += it.Bytes
			need += it.Bytes
		}
	}
	mib := func(b int64) float64 { return float64(b) / (1 << 20) }
	row.Size = fmt.Sprintf("%s vocab 256 (%.0fM params), %d x %d tokens", preset, float64(res.Params)/1e6, rc.Train.BatchSize, rc.Train.SeqLen)
	row.Extra = map[string]any{
		"final_write_s":             res.FinalWriteS,
		"final_save_s":              res.FinalSaveS,
		"out_mib":                   mib(res.OutBytes),
		"peak_rss_mib":              mib(res.PeakRSSBytes),
		"weights_mib":               mib(parts["fp32 weights"]),
		"grads_mib":                 mib(parts["fp32 gradients"]),
		"adamw_moments_mib":         mib(parts["adamw moments"]),
		"activations_mib":           mib(parts["activations"] + parts["activation gradients"]),
		"sum_mib":                   mib(need),
		"peak_rss_over_sum":         float64(res.PeakRSSBytes) / float64(need),
		"model_estimate_peak_mib":   mib(est.Host),
		"steps":                     res.Steps,
		"rss_source":                res.Source,
		"save_method":               "the end of the run writes the base file (the training state is not kept at the end by default) from the live buffers, beside the final evaluation; final_write_s is that write from start to synced, final_save_s how long the run then still waited",
		"activations_incl_gradient": true,
	}
	return row, nil
}

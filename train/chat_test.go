package train

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/opencluster/opencluster/train/backend"
	"github.com/opencluster/opencluster/train/data"
	"github.com/opencluster/opencluster/train/tokenizer"
)

// chatData writes a JSONL file of conversations and a BPE tokenizer with a
// ChatML template, trained on the same kind of text.
func chatData(t *testing.T) (string, *tokenizer.Tokenizer) {
	t.Helper()
	dir := t.TempDir()
	var b strings.Builder
	var corpus []string
	for i := range 80 {
		line, _ := json.Marshal(map[string]any{"messages": []map[string]string{
			{"role": "user", "content": fmt.Sprintf("what does worker %d send?", i)},
			{"role": "assistant", "content": fmt.Sprintf("worker %d sends its adapter update.", i)},
		}})
		b.Write(line)
		b.WriteByte('\n')
		corpus = append(corpus, string(line))
	}
	path := filepath.Join(dir, "chat.jsonl")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	tok, _, err := tokenizer.Train(corpus, 320)
	if err != nil {
		t.Fatal(err)
	}
	return path, tok
}

// TestLossIgnoresPromptTokens proves chat fine-tuning learns only the
// assistant's tokens: the loss of a chat batch is the mean over the scored
// (assistant) targets alone, and prompt targets change nothing.
func TestLossIgnoresPromptTokens(t *testing.T) {
	needModel(t)
	path, tok := chatData(t)
	cfg := testConfig(1)
	cfg.Model.VocabSize = tok.VocabSize()
	cfg.Model.MaxSeqLen = 64
	ds, err := data.Open(data.Options{Dir: path, SeqLen: 48, BatchSize: 2, ValFraction: 0.1, Seed: 1,
		Tokenizer: tok, CacheDir: t.TempDir(), Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer ds.Close()
	b, err := ds.TrainBatch(1, 0)
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewModel(cfg.Model, backend.NewCPU(1), 3)
	if err != nil {
		t.Fatal(err)
	}
	loss, err := m.Loss(b.Tokens, b.Targets, b.B, b.T)
	if err != nil {
		t.Fatal(err)
	}
	var scored, masked []int
	for i, tg := range b.Targets {
		if tg >= 0 {
			scored = append(scored, i)
		} else {
			masked = append(masked, i)
		}
	}
	if len(scored) == 0 || len(masked) == 0 {
		t.Fatalf("%d scored and %d masked targets; want both", len(scored), len(masked))
	}
	// The mean of the per-position losses of the scored targets alone.
	var sum float64
	for _, i := range scored {
		one := make([]int32, len(b.Targets))
		for j := range one {
			one[j] = -1
		}
		one[i] = b.Targets[i]
		l, err := m.Loss(b.Tokens, one, b.B, b.T)
		if err != nil {
			t.Fatal(err)
		}
		sum += l
	}
	if want := sum / float64(len(scored)); math.Abs(loss-want) > 1e-9*math.Abs(want) {
		t.Errorf("chat batch loss %.12f, want the mean over the %d assistant targets %.12f", loss, len(scored), want)
	}
	// Scoring the prompt targets too gives a different loss: the mask is
	// what kept them out.
	all := append([]int32(nil), b.Targets...)
	r := rand.New(rand.NewPCG(1, 2))
	for _, i := range masked {
		all[i] = int32(r.IntN(tok.VocabSize()))
	}
	if l, _ := m.Loss(b.Tokens, all, b.B, b.T); l == loss {
		t.Error("scoring the prompt targets did not change the loss")
	}
}

// TestChatFineTuneResumes runs QLoRA on chat JSONL with a BPE tokenizer,
// interrupts it and resumes: the same losses as a straight run.
func TestChatFineTuneResumes(t *testing.T) {
	needModel(t)
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	path, tok := chatData(t)
	cfg := testConfig(8)
	cfg.Model.VocabSize = tok.VocabSize()
	cfg.Train.CheckpointEvery = 2
	base := filepath.Join(t.TempDir(), "base.safetensors")
	if _, err := Run(context.Background(), RunOptions{Mode: ModePretrain, Config: testConfig(2), DataDir: path, Out: base, Logger: quiet()}); err == nil || !strings.Contains(err.Error(), "needs a tokenizer") {
		t.Fatalf("chat data without a tokenizer: %v", err)
	}
	pre := cfg
	pre.Train.Steps = 2
	if _, err := Run(context.Background(), RunOptions{Mode: ModePretrain, Config: pre, DataDir: path, Out: base, Tokenizer: tok, TokenCache: t.TempDir(), Logger: quiet()}); err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	opts := func(out string) RunOptions {
		return RunOptions{Mode: ModeQLoRA, Config: cfg, DataDir: path, Base: base, Out: out, Tokenizer: tok, NoPack: true, Truncation: data.TruncateLeft, TokenCache: cache, Logger: quiet()}
	}
	straight, err := Run(context.Background(), opts(filepath.Join(t.TempDir(), "a")))
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "b")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	o := opts(out)
	o.Governor = &cancelAfter{n: 4, cancel: cancel}
	if _, err := Run(ctx, o); !errors.Is(err, ErrInterrupted) {
		t.Fatalf("interrupted run: %v", err)
	}
	o = opts(out)
	o.Resume = true
	resumed, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(resumed.Losses, straight.Losses[4:]) {
		t.Errorf("resumed losses %v, want %v", resumed.Losses, straight.Losses[4:])
	}
	// Resuming with other data settings is refused.
	o.NoPack = false
	if _, err := Run(context.Background(), o); err == nil {
		t.Error("resume with packing switched on was accepted")
	}
}

func TestTokenizerMustFitEmbedding(t *testing.T) {
	needModel(t)
	path, tok := chatData(t)
	cfg := testConfig(1)
	cfg.Model.VocabSize = tok.VocabSize() - 1
	_, err := Run(context.Background(), RunOptions{Mode: ModePretrain, Config: cfg, DataDir: path, Out: filepath.Join(t.TempDir(), "x.safetensors"), Tokenizer: tok, TokenCache: t.TempDir(), Logger: quiet()})
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("tokenizer has %d ids", tok.VocabSize())) {
		t.Errorf("tokenizer larger than the embedding: %v", err)
	}
}

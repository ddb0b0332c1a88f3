package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencluster/opencluster/train"
	"github.com/opencluster/opencluster/train/backend"
	"github.com/opencluster/opencluster/train/data"
	"github.com/opencluster/opencluster/train/tokenizer"
	"github.com/spf13/cobra"
)

// writes records every Write a command makes.
type writes struct{ chunks []string }

func (w *writes) Write(p []byte) (int, error) {
	w.chunks = append(w.chunks, string(p))
	return len(p), nil
}

// TestGenerateStreams samples from an untrained model (so the tokens are
// random: single bytes of multi-byte characters among them) and checks that
// generate prints the text in pieces as it is sampled, and that the pieces
// join to the text of the whole sequence, decoded at the end.
func TestGenerateStreams(t *testing.T) {
	model, m := untrainedModel(t, []string{"héllo wörld, 中文字符 and emoji 😀👩‍👧 ☃", "the worker trains the adapter."}, 320, 5)
	hf, err := tokenizer.Load(model)
	if err != nil {
		t.Fatal(err)
	}
	const prompt = "wörld 中"
	opts := train.SampleOptions{MaxTokens: 40, Temperature: 2, TopK: 0, TopP: 1, Stop: m.StopTokens(hf)}
	for _, chat := range []bool{false, true} {
		for seed := uint64(1); seed <= 4; seed++ {
			args := []string{"generate", "--base", model, "--prompt", prompt, "--max-tokens", "40", "--temperature", "2",
				"--top-k", "0", "--top-p", "1", "--threads", "1", "--seed", string(rune('0' + seed))}
			ids := hf.Encode(prompt, true)
			if chat {
				args = append(args, "--chat")
				if ids, err = train.ChatPrompt(hf, "", prompt); err != nil {
					t.Fatal(err)
				}
			}
			var w writes
			if err := executeTo(&w, args...); err != nil {
				t.Fatal(err)
			}
			// The reference: the whole reply, decoded at the end.
			opts.Seed = seed
			reply, err := train.Sample(context.Background(), m, ids, opts)
			if err != nil {
				t.Fatal(err)
			}
			text, err := data.HFTokenizer{T: hf}.Decode(reply)
			if err != nil {
				t.Fatal(err)
			}
			if !chat {
				text = append([]byte(prompt), text...)
			}
			if got, want := strings.Join(w.chunks, ""), data.Printable(text)+"\n"; got != want {
				t.Errorf("chat %v seed %d: generate printed %q, the whole reply decodes to %q", chat, seed, got, want)
			}
			if len(reply) > 4 && len(w.chunks) < 3 {
				t.Errorf("chat %v seed %d: %d tokens printed in %d writes %q: not as they were sampled", chat, seed, len(reply), len(w.chunks), w.chunks)
			}
		}
	}
}

// executeTo runs the command line with its standard output going to w.
func executeTo(w *writes, args ...string) error {
	root := &cobra.Command{Use: "opencluster", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(newGenerateCmd())
	root.SetOut(w)
	root.SetErr(&bytes.Buffer{})
	root.SetArgs(args)
	return root.ExecuteContext(context.Background())
}

// untrainedModel writes a Hugging Face folder with a randomly initialised
// one-layer model (init seed) and a byte-level BPE of vocab tokens trained
// on texts.
func untrainedModel(t *testing.T, texts []string, vocab int, seed uint64) (string, *train.Model) {
	t.Helper()
	dir := t.TempDir()
	tok, raw, err := tokenizer.Train(texts, vocab)
	if err != nil {
		t.Fatal(err)
	}
	tokDir, model := filepath.Join(dir, "tok"), filepath.Join(dir, "model")
	if err := tokenizer.WriteFolder(tokDir, raw); err != nil {
		t.Fatal(err)
	}
	m, err := train.NewModel(train.ModelConfig{VocabSize: tok.VocabSize(), Dim: 32, Layers: 1, Heads: 2, KVHeads: 1,
		HiddenDim: 64, MaxSeqLen: 64, RopeTheta: 10000, NormEps: 1e-5, TiedEmbeddings: true}, backend.NewCPU(1), seed)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.SaveHF(model, train.SaveOptions{TokenizerDir: tokDir}); err != nil {
		t.Fatal(err)
	}
	return model, m
}

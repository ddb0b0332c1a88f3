package train

import (
	"context"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/opencluster/opencluster/train/backend"
	"github.com/opencluster/opencluster/train/tokenizer"
)

// Every step of the KV-cache decoder gives the logits of running the whole
// sequence again, for plain, biased/head_dim/llama3-RoPE, and quantized
// models with an adapter and bfloat16 embeddings.
func TestDecoderMatchesFullForward(t *testing.T) {
	for _, tc := range []struct {
		name      string
		hf, qlora bool
	}{{"plain", false, false}, {"biases/head_dim/rope-llama3", true, false}, {"qlora/bf16 embedding/adapter", true, true}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tinyConfig()
			if tc.hf {
				cfg.HeadSize, cfg.QKVBias, cfg.OBias, cfg.MLPBias = 6, true, true, true
				cfg.Rope = RopeScaling{Type: "llama3", Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPos: 4}
			}
			m, err := NewModel(cfg, backend.NewCPU(2), 3)
			if err != nil {
				t.Fatal(err)
			}
			randomizeTrainable(m, 5, 0.3)
			if tc.qlora {
				if err := m.QuantizeBase(testQuant); err != nil {
					t.Fatal(err)
				}
				if err := m.EnableLoRA(LoRAConfig{Rank: 2, Alpha: 4, Targets: LinearNames}, 1); err != nil {
					t.Fatal(err)
				}
				randomizeTrainable(m, 6, 0.3)
			}
			rng := rand.New(rand.NewPCG(9, 9))
			seq := randomTokens(rng, cfg.MaxSeqLen, cfg.VocabSize)
			d, err := m.NewDecoder(cfg.MaxSeqLen)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Free()
			got, err := d.Prefill(seq[:3])
			if err != nil {
				t.Fatal(err)
			}
			for n := 3; ; n++ {
				want, err := m.Logits(seq[:n])
				if err != nil {
					t.Fatal(err)
				}
				for i := range want {
					if math.Abs(float64(got[i]-want[i])) > 1e-5*(1+math.Abs(float64(want[i]))) {
						t.Fatalf("after %d tokens: logit %d = %v with the cache, %v recomputed", n, i, got[i], want[i])
					}
				}
				if n == len(seq) {
					break
				}
				if got, err = d.Next(seq[n]); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := d.Next(1); err == nil {
				t.Error("Next on a full cache succeeded")
			}
		})
	}
}

// Sampling stops at a stop token and runs past the context by starting
// again from the last half of it.
func TestSampleStopsAndSlides(t *testing.T) {
	cfg := tinyConfig() // context 8
	m, err := NewModel(cfg, backend.NewCPU(1), 4)
	if err != nil {
		t.Fatal(err)
	}
	randomizeTrainable(m, 2, 0.5)
	prompt := []int32{1, 2, 3}
	var seen []int32
	long, err := Sample(context.Background(), m, prompt, SampleOptions{MaxTokens: 30, Temperature: 1, Seed: 3, OnToken: func(id int32) { seen = append(seen, id) }})
	if err != nil || len(long) != 30 {
		t.Fatalf("30 tokens past a context of 8: %d tokens, %v", len(long), err)
	}
	if !slices.Equal(seen, long) {
		t.Errorf("OnToken saw %v, Sample returned %v", seen, long)
	}
	// Greedy continuation equals argmax of the full forward at every step
	// while the context lasts.
	greedy, err := Sample(context.Background(), m, prompt, SampleOptions{MaxTokens: 5})
	if err != nil {
		t.Fatal(err)
	}
	ctx := slices.Clone(prompt)
	for i, tok := range greedy {
		l, _ := m.Logits(ctx)
		if want := int32(argmax(l)); tok != want {
			t.Fatalf("greedy token %d = %d, full forward's argmax %d", i, tok, want)
		}
		ctx = append(ctx, tok)
	}
	stopAt := greedy[2]
	got, err := Sample(context.Background(), m, prompt, SampleOptions{MaxTokens: 5, Stop: []int32{stopAt}})
	if err != nil {
		t.Fatal(err)
	}
	if want := greedy[:slices.Index(greedy, stopAt)]; !slices.Equal(got, want) {
		t.Errorf("with stop token %d: %v, want %v", stopAt, got, want)
	}
	if _, err := Sample(context.Background(), m, prompt, SampleOptions{MaxTokens: 1, TopP: 1.5}); err == nil {
		t.Error("top-p 1.5 accepted")
	}
}

func argmax(v []float32) int {
	best := 0
	for i, x := range v {
		if x > v[best] {
			best = i
		}
	}
	return best
}

func TestPickTopP(t *testing.T) {
	// probabilities at temperature 1: softmax of these logits is about
	// 0.64, 0.24, 0.09, 0.03: top-p 0.8 keeps the first two, 0.5 only one.
	logits := []float32{3, 2, 1, 0}
	r := rand.New(rand.NewPCG(1, 3))
	for _, tc := range []struct {
		p    float64
		want []int32
	}{{0.5, []int32{0}}, {0.8, []int32{0, 1}}, {0.95, []int32{0, 1, 2}}, {1, []int32{0, 1, 2, 3}}} {
		seen := map[int32]bool{}
		for range 2000 {
			k, err := pick(logits, SampleOptions{Temperature: 1, TopP: tc.p}, r)
			if err != nil {
				t.Fatal(err)
			}
			seen[k] = true
		}
		var got []int32
		for k := range seen {
			got = append(got, k)
		}
		slices.Sort(got)
		if !slices.Equal(got, tc.want) {
			t.Errorf("top-p %g drew %v, want %v", tc.p, got, tc.want)
		}
	}
}

// End-of-sequence ids come from config.json, generation_config.json and the
// tokenizer; a chat prompt is the template's rendering, special tokens
// written by the template, encoded without adding more.
func TestStopTokensAndChatPrompt(t *testing.T) {
	corpus := []string{"the worker trains the adapter.", "a volunteer keeps its own data."}
	tok, raw, err := tokenizer.Train(corpus, 300)
	if err != nil {
		t.Fatal(err)
	}
	tokDir, dir := filepath.Join(t.TempDir(), "tok"), filepath.Join(t.TempDir(), "model")
	if err := tokenizer.WriteFolder(tokDir, raw); err != nil {
		t.Fatal(err)
	}
	cfg := tinyConfig()
	cfg.VocabSize = tok.VocabSize()
	m, err := NewModel(cfg, backend.NewCPU(1), 1)
	if err != nil {
		t.Fatal(err)
	}
	m.Info.EOS = []int32{7}
	if err := m.SaveHF(dir, SaveOptions{TokenizerDir: tokDir}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "generation_config.json"), []byte(`{"eos_token_id": [7, 9], "do_sample": true}`), 0o644); err != nil {
		t.Fatal(err)
	}
	m2, err := LoadModel(dir, backend.NewCPU(1))
	if err != nil {
		t.Fatal(err)
	}
	_, eos, _ := tok.EOS()
	if got := m2.StopTokens(tok); !slices.Equal(got, []int32{7, 9, eos}) {
		t.Errorf("stop tokens %v, want [7 9 %d]", got, eos)
	}
	ids, err := ChatPrompt(tok, "be brief", "hello there")
	if err != nil {
		t.Fatal(err)
	}
	want := tok.Encode("<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhello there<|im_end|>\n<|im_start|>assistant\n", false)
	if !slices.Equal(ids, want) {
		t.Errorf("chat prompt %v, want %v", ids, want)
	}
	os.WriteFile(filepath.Join(dir, "generation_config.json"), []byte(`{"eos_token_id": "two"}`), 0o644)
	if _, err := LoadModel(dir, backend.NewCPU(1)); err == nil || !strings.Contains(err.Error(), "generation_config.json") {
		t.Errorf("bad generation_config.json: %v", err)
	}
}

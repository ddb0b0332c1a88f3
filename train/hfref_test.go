package train

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencluster/opencluster/quant/safetensors"
	"github.com/opencluster/opencluster/train/backend"
	"github.com/opencluster/opencluster/train/data"
)

// The reference forward (testdata/hf_reference.py) is plain torch written
// from transformers' modeling code; it shares nothing with this package.
// Without python3 and torch these tests skip, unless
// OPENCLUSTER_REQUIRE_TORCH=1 (CI) makes that a failure.

const refScript = "testdata/hf_reference.py"

// refResult is the reference's output: the mean loss, the scored tokens,
// and the losses of the variants asked for with extra arguments.
type refResult struct {
	Loss     float64            `json:"loss"`
	Count    int                `json:"count"`
	Variants map[string]float64 `json:"variants"`
}

// refModel is one model for the reference: a folder and, optionally, a
// PEFT adapter folder.
type refModel struct{ dir, adapter string }

// referenceLoss runs the reference on folder dir (and adapter when not "")
// over windows.
func referenceLoss(t *testing.T, dir, adapter string, windows []data.Batch, extra ...string) refResult {
	t.Helper()
	return referenceLosses(t, []refModel{{dir, adapter}}, windows, extra...)[0]
}

// referenceLosses scores several models in one run of the reference (one
// Python start: torch takes seconds to import).
func referenceLosses(t *testing.T, models []refModel, windows []data.Batch, extra ...string) []refResult {
	t.Helper()
	python := requireTorch(t)
	type model struct {
		Dir     string `json:"dir"`
		Adapter string `json:"adapter"`
	}
	var w struct {
		Models  []model   `json:"models"`
		Tokens  [][]int32 `json:"tokens"`
		Targets [][]int32 `json:"targets"`
	}
	for _, m := range models {
		w.Models = append(w.Models, model{m.dir, m.adapter})
	}
	for _, b := range windows {
		for r := 0; r < b.B; r++ {
			w.Tokens = append(w.Tokens, b.Tokens[r*b.T:(r+1)*b.T])
			w.Targets = append(w.Targets, b.Targets[r*b.T:(r+1)*b.T])
		}
	}
	wpath := filepath.Join(t.TempDir(), "job.json")
	js, _ := json.Marshal(w)
	if err := os.WriteFile(wpath, js, 0o644); err != nil {
		t.Fatal(err)
	}
	script, err := filepath.Abs(refScript)
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{script, wpath}, extra...)
	cmd := exec.Command(python, args...)
	cmd.Env = append(os.Environ(), "OMP_NUM_THREADS=1")
	out, err := cmd.Output()
	if err != nil {
		msg := ""
		if ee, ok := err.(*exec.ExitError); ok {
			msg = string(ee.Stderr)
		}
		t.Fatalf("reference %v: %v\n%s", args, err, msg)
	}
	var res []refResult
	dec := json.NewDecoder(bytes.NewReader(out))
	for range models {
		var r refResult
		if err := dec.Decode(&r); err != nil {
			t.Fatalf("reference output %q: %v", out, err)
		}
		res = append(res, r)
	}
	return res
}

// requireTorch returns the python3 that imports torch, or skips (fails
// under OPENCLUSTER_REQUIRE_TORCH=1).
func requireTorch(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/usr/bin/python3", "python3"} {
		if err := exec.Command(p, "-c", "import torch").Run(); err == nil {
			return p
		}
	}
	msg := "python3 with torch not found (scripts/install-torch.sh installs Debian's python3-torch); the reference forward cannot run"
	if os.Getenv("OPENCLUSTER_REQUIRE_TORCH") == "1" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// hfCase is a tiny Hugging Face folder: its config.json as transformers
// writes it, and how its weights are stored.
type hfCase struct {
	name   string
	config string // config.json
	dtype  string // F32, F16 or BF16
	shards int
	T      int      // sequence length of the evaluation windows
	drop   []string // config keys whose absence must change the reference's loss
}

var hfCases = []hfCase{
	{
		name: "llama3/rope-llama3/gqa/tied/bf16-sharded",
		config: `{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 67,
			"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
			"num_key_value_heads": 2, "head_dim": 8, "hidden_act": "silu", "max_position_embeddings": 64,
			"rms_norm_eps": 1e-05, "rope_theta": 500000.0, "attention_bias": false, "mlp_bias": false,
			"rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
			"original_max_position_embeddings": 16, "rope_type": "llama3"},
			"tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": [2, 3], "torch_dtype": "bfloat16",
			"pretraining_tp": 1, "use_cache": true, "transformers_version": "4.45.0"}`,
		dtype: "BF16", shards: 2, T: 24, drop: []string{"rope_scaling"},
	},
	{
		name: "qwen2/qkv-bias/untied/rope_parameters/f16",
		config: `{"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 71,
			"hidden_size": 32, "intermediate_size": 40, "num_hidden_layers": 2, "num_attention_heads": 4,
			"num_key_value_heads": 1, "hidden_act": "silu", "max_position_embeddings": 128,
			"rms_norm_eps": 1e-06, "rope_parameters": {"rope_type": "default", "rope_theta": 100.0},
			"tie_word_embeddings": false, "use_sliding_window": false, "sliding_window": 4096,
			"max_window_layers": 2, "attention_dropout": 0.0, "dtype": "float16"}`,
		dtype: "F16", shards: 1, T: 20, drop: []string{"rope_parameters"},
	},
	{
		name: "llama/attention+mlp bias/head_dim 12/linear rope/f32",
		config: `{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 50,
			"hidden_size": 32, "intermediate_size": 36, "num_hidden_layers": 2, "num_attention_heads": 4,
			"num_key_value_heads": 2, "head_dim": 12, "max_position_embeddings": 32,
			"rms_norm_eps": 1e-06, "rope_theta": 10000.0, "attention_bias": true, "mlp_bias": true,
			"rope_scaling": {"type": "linear", "factor": 4.0}, "tie_word_embeddings": false}`,
		dtype: "F32", shards: 1, T: 16, drop: []string{"rope_scaling"},
	},
	{
		name: "mistral/sliding window/mqa/bf16",
		config: `{"architectures": ["MistralForCausalLM"], "model_type": "mistral", "vocab_size": 60,
			"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
			"num_key_value_heads": 1, "hidden_act": "silu", "max_position_embeddings": 4096,
			"rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "sliding_window": 12, "tie_word_embeddings": false}`,
		dtype: "BF16", shards: 1, T: 12,
	},
}

// randomHF makes a model of the case's config with random weights, large
// enough that every field changes the loss (the default init leaves the
// logits nearly uniform, which would hide mistakes).
func randomHF(t *testing.T, c hfCase, seed uint64) *Model {
	t.Helper()
	cfg, _, err := parseHFConfig([]byte(c.config), c.name, true)
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewModel(cfg, backend.NewCPU(2), seed)
	if err != nil {
		t.Fatal(err)
	}
	p := m.TrainableParams()
	rng := rand.New(rand.NewPCG(seed, 77))
	for _, sp := range m.specs {
		v := p[sp.off : sp.off+sp.n]
		for i := range v {
			switch {
			case strings.HasSuffix(sp.name, "layernorm.weight") || sp.name == "model.norm.weight":
				v[i] = float32(1 + 0.2*rng.NormFloat64())
			case strings.HasSuffix(sp.name, ".bias"):
				v[i] = float32(0.5 * rng.NormFloat64())
			case sp.name == "model.embed_tokens.weight" || sp.name == "lm_head.weight":
				v[i] = float32(0.5 * rng.NormFloat64())
			default:
				v[i] = float32(0.3 * rng.NormFloat64())
			}
		}
	}
	return m
}

// writeTestFolder writes m's tensors to dir in dtype over shards files,
// with the case's own config.json.
func writeTestFolder(t *testing.T, m *Model, c hfCase, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(c.config), 0o644); err != nil {
		t.Fatal(err)
	}
	shards := make([][]safetensors.Named, c.shards)
	names := make([]string, c.shards)
	weightMap := map[string]string{}
	for i := range names {
		names[i] = "model.safetensors"
		if c.shards > 1 {
			names[i] = fmt.Sprintf("model-%05d-of-%05d.safetensors", i+1, c.shards)
		}
	}
	for i, sp := range m.specs {
		v := m.download(m.be.View(m.params, sp.off, sp.n))
		tt, err := safetensors.FloatTensor(c.dtype, sp.shape, v)
		if err != nil {
			t.Fatal(err)
		}
		shards[i%c.shards] = append(shards[i%c.shards], safetensors.Named{Name: sp.name, Tensor: tt})
		weightMap[sp.name] = names[i%c.shards]
	}
	for i, s := range shards {
		if err := safetensors.Write(filepath.Join(dir, names[i]), s, map[string]string{"format": "pt"}); err != nil {
			t.Fatal(err)
		}
	}
	if c.shards > 1 {
		idx, _ := json.Marshal(map[string]any{"metadata": map[string]any{}, "weight_map": weightMap})
		if err := os.WriteFile(filepath.Join(dir, "model.safetensors.index.json"), idx, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// randomWindows makes n windows of T tokens with next-token targets and a
// few unscored (-1) positions.
func randomWindows(V, n, T int, seed uint64) []data.Batch {
	rng := rand.New(rand.NewPCG(seed, 5))
	var out []data.Batch
	for i := 0; i < n; i++ {
		toks := randomTokens(rng, T+1, V)
		tg := append([]int32(nil), toks[1:]...)
		tg[rng.IntN(T)] = -1
		out = append(out, data.Batch{Tokens: toks[:T], Targets: tg, B: 1, T: T})
	}
	return out
}

func relDiff(a, b float64) float64 { return math.Abs(a-b) / math.Abs(b) }

func TestHFFoldersMatchReferenceForward(t *testing.T) {
	requireTorch(t)
	for i, c := range hfCases {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "model")
			writeTestFolder(t, randomHF(t, c, uint64(10+i)), c, dir)
			m, err := LoadModel(dir, backend.NewCPU(2))
			if err != nil {
				t.Fatal(err)
			}
			windows := randomWindows(m.Config.VocabSize, 3, c.T, uint64(i))
			got, err := Evaluate(context.Background(), m, windows)
			if err != nil {
				t.Fatal(err)
			}
			// The comparison must be able to fail: the reference without
			// the scaling, or without biases, is far from our loss.
			var extra []string
			for _, key := range c.drop {
				extra = append(extra, "--also-drop", key)
			}
			if m.Config.anyBias() {
				extra = append(extra, "--also-zero-biases")
			}
			ref := referenceLoss(t, dir, "", windows, extra...)
			t.Logf("loss %.6f, reference %.6f over %d tokens (ln V = %.3f); variants %v", got.Loss, ref.Loss, ref.Count, math.Log(float64(m.Config.VocabSize)), ref.Variants)
			if got.Tokens != ref.Count {
				t.Errorf("scored %d tokens, reference %d", got.Tokens, ref.Count)
			}
			if d := relDiff(got.Loss, ref.Loss); d > 1e-4 {
				t.Errorf("loss %.7f, reference %.7f: relative difference %.2e > 1e-4", got.Loss, ref.Loss, d)
			}
			if len(ref.Variants) != len(c.drop)+btoi(m.Config.anyBias()) {
				t.Fatalf("reference variants %v, want %d", ref.Variants, len(c.drop)+btoi(m.Config.anyBias()))
			}
			for name, off := range ref.Variants {
				if d := relDiff(got.Loss, off); d < 1e-3 {
					t.Errorf("reference variant %s moves the loss by only %.2e: the check could not notice that field ignored", name, d)
				}
			}
		})
	}
}

func TestSlidingWindowRefusesLongerSequences(t *testing.T) {
	c := hfCases[3]
	m := randomHF(t, c, 3)
	if m.Config.SlidingWindow != 12 {
		t.Fatalf("sliding window %d, want 12", m.Config.SlidingWindow)
	}
	w := randomWindows(m.Config.VocabSize, 1, 13, 1)
	_, err := m.Loss(w[0].Tokens, w[0].Targets, 1, 13)
	if err == nil || !strings.Contains(err.Error(), "sliding window 12") {
		t.Errorf("T=13 over a window of 12: error %v, want one naming the sliding window", err)
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

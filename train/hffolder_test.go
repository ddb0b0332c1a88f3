package train

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/opencluster/opencluster/quant/safetensors"
	"github.com/opencluster/opencluster/train/backend"
)

func readJSON(t *testing.T, path string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return m
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}

// A folder written by SaveHF loads back to the same model, with the
// config transformers needs and the base's tokenizer files beside it.
func TestSaveHFRoundTrip(t *testing.T) {
	c := hfCases[2] // biases, head_dim 12, linear RoPE scaling
	src := filepath.Join(t.TempDir(), "src")
	writeTestFolder(t, randomHF(t, c, 4), c, src)
	for _, f := range []string{"tokenizer.json", "tokenizer_config.json", "generation_config.json"} {
		if err := os.WriteFile(filepath.Join(src, f), []byte(`{"from": "`+f+`"}`), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m, err := LoadModel(src, backend.NewCPU(2))
	if err != nil {
		t.Fatal(err)
	}
	want := logits(t, m)
	for _, tc := range []struct {
		dtype  string
		shards int64
	}{{"F32", 0}, {"BF16", 0}, {"F16", 3000}} {
		t.Run(tc.dtype, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "out")
			if err := m.SaveHF(dir, SaveOptions{DType: tc.dtype, MaxShardBytes: tc.shards}); err != nil {
				t.Fatal(err)
			}
			cfg := readJSON(t, filepath.Join(dir, "config.json"))
			if cfg["torch_dtype"] != torchDType[tc.dtype] || cfg["head_dim"] != 12.0 || cfg["attention_bias"] != true {
				t.Errorf("config.json torch_dtype %v head_dim %v attention_bias %v", cfg["torch_dtype"], cfg["head_dim"], cfg["attention_bias"])
			}
			for _, f := range []string{"tokenizer.json", "tokenizer_config.json", "generation_config.json"} {
				if b, err := os.ReadFile(filepath.Join(dir, f)); err != nil || !strings.Contains(string(b), f) {
					t.Errorf("%s not copied: %v", f, err)
				}
			}
			files := listDir(t, dir)
			if tc.shards > 0 {
				idx := readJSON(t, filepath.Join(dir, "model.safetensors.index.json"))
				if len(idx["weight_map"].(map[string]any)) != len(m.specs) || !strings.Contains(strings.Join(files, " "), "model-00001-of-") {
					t.Errorf("sharded folder %v, index %v", files, idx)
				}
			} else if !reflect.DeepEqual(files, []string{"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}) {
				t.Errorf("folder holds %v", files)
			}
			m2, err := LoadModel(dir, backend.NewCPU(2))
			if err != nil {
				t.Fatal(err)
			}
			if m2.Config != m.Config {
				t.Fatalf("config %+v, want %+v", m2.Config, m.Config)
			}
			// Every weight is the original rounded to the dtype, nearest even.
			round := map[string]func(float32) float32{
				"F32":  func(x float32) float32 { return x },
				"BF16": func(x float32) float32 { return math.Float32frombits(uint32(safetensors.F32ToBF16(x)) << 16) },
				"F16":  func(x float32) float32 { return safetensors.F16ToF32(safetensors.F32ToF16(x)) },
			}[tc.dtype]
			p, p2 := m.TrainableParams(), m2.TrainableParams()
			for i := range p {
				if p2[i] != round(p[i]) {
					t.Fatalf("parameter %d = %v, want %v rounded to %s = %v", i, p2[i], p[i], tc.dtype, round(p[i]))
				}
			}
			if tc.dtype == "F32" && !reflect.DeepEqual(logits(t, m2), want) {
				t.Error("logits differ after an F32 round trip")
			}
		})
	}
	// Rewriting a folder replaces it whole: no shard of the old layout stays.
	dir := filepath.Join(t.TempDir(), "out")
	if err := m.SaveHF(dir, SaveOptions{MaxShardBytes: 3000}); err != nil {
		t.Fatal(err)
	}
	if err := m.SaveHF(dir, SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, f := range listDir(t, dir) {
		if strings.HasPrefix(f, "model-") || strings.Contains(f, "index") || strings.HasPrefix(f, ".") {
			t.Errorf("stale %s left in the rewritten folder", f)
		}
	}
	if names := listDir(t, filepath.Dir(dir)); len(names) != 1 {
		t.Errorf("temporary folders left beside it: %v", names)
	}
	// A folder that is not a model is never replaced.
	other := t.TempDir()
	os.WriteFile(filepath.Join(other, "notes.txt"), []byte("mine"), 0o644)
	if err := m.SaveHF(other, SaveOptions{}); err == nil || !strings.Contains(err.Error(), "not a model folder") {
		t.Errorf("SaveHF over a folder of other files: %v", err)
	}
	if err := m.SaveHF(filepath.Join(t.TempDir(), "x"), SaveOptions{DType: "I8"}); err == nil || !strings.Contains(err.Error(), `"I8"`) {
		t.Errorf("SaveHF with dtype I8: %v", err)
	}
}

// A quantized base is written in the bitsandbytes layout with its
// quantization_config and loads back bit for bit.
func TestSaveHFQuantizedFolder(t *testing.T) {
	c := hfCases[1] // Qwen2: q/k/v biases stay fp32 beside the 4-bit weights
	src := filepath.Join(t.TempDir(), "src")
	writeTestFolder(t, randomHF(t, c, 5), c, src)
	m, err := LoadQuantized(src, backend.NewCPU(2), testQuant)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "bnb")
	if err := m.SaveHF(dir, SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	qc := readJSON(t, filepath.Join(dir, "config.json"))["quantization_config"].(map[string]any)
	if qc["quant_method"] != "bitsandbytes" || qc["load_in_4bit"] != true || qc["bnb_4bit_quant_type"] != "nf4" || qc["bnb_4bit_use_double_quant"] != true {
		t.Errorf("quantization_config %v", qc)
	}
	f, err := safetensors.Read(filepath.Join(dir, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	for name, dtype := range map[string]string{"model.layers.1.self_attn.k_proj.weight": "U8", "model.layers.1.self_attn.k_proj.bias": "F32",
		"model.embed_tokens.weight": "BF16", "lm_head.weight": "BF16", "model.norm.weight": "F32",
		"model.layers.0.mlp.down_proj.weight.quant_state.bitsandbytes__nf4": "U8"} {
		if tt, err := f.Tensor(name); err != nil || tt.DType != dtype {
			t.Errorf("%s: %v %v, want %s", name, tt.DType, err, dtype)
		}
	}
	m2, err := LoadModel(dir, backend.NewCPU(2))
	if err != nil {
		t.Fatal(err)
	}
	if !m2.Quantized() || *m2.quant != testQuant {
		t.Fatalf("reloaded quantized %v %+v, want %+v", m2.Quantized(), m2.quant, testQuant)
	}
	if !reflect.DeepEqual(logits(t, m2), logits(t, m)) {
		t.Error("logits of the reloaded bitsandbytes folder differ")
	}
	// config.json claiming 4-bit over dense weights is refused.
	os.WriteFile(filepath.Join(src, "config.json"), []byte(strings.Replace(c.config, `"dtype"`,
		`"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": true, "bnb_4bit_quant_type": "nf4"}, "dtype"`, 1)), 0o644)
	if _, err := LoadModel(src, backend.NewCPU(1)); err == nil || !strings.Contains(err.Error(), "quantization_config") {
		t.Errorf("dense weights under a 4-bit config: %v", err)
	}
}

// The bitsandbytes folder and the merged export give the reference
// forward's loss, and the merge equals base plus adapter.
func TestQuantizedAndMergedFoldersMatchReference(t *testing.T) {
	requireTorch(t)
	for i, c := range hfCases[:2] {
		t.Run(c.name, func(t *testing.T) {
			tmp := t.TempDir()
			src := filepath.Join(tmp, "src")
			writeTestFolder(t, randomHF(t, c, uint64(20+i)), c, src)
			m, err := LoadQuantized(src, backend.NewCPU(2), testQuant)
			if err != nil {
				t.Fatal(err)
			}
			bnb := filepath.Join(tmp, "bnb")
			if err := m.SaveHF(bnb, SaveOptions{}); err != nil {
				t.Fatal(err)
			}
			windows := randomWindows(m.Config.VocabSize, 3, c.T, uint64(i+7))
			qm, err := LoadModel(bnb, backend.NewCPU(2))
			if err != nil {
				t.Fatal(err)
			}
			eval := func(m *Model) float64 {
				t.Helper()
				r, err := Evaluate(context.Background(), m, windows)
				if err != nil {
					t.Fatal(err)
				}
				return r.Loss
			}
			bnbLoss := eval(qm)
			// An adapter with non-zero B, as after training.
			if err := qm.EnableLoRA(LoRAConfig{Rank: 4, Alpha: 8, Targets: LinearNames}, 3); err != nil {
				t.Fatal(err)
			}
			randomizeTrainable(qm, 9, 0.2)
			adapter := filepath.Join(tmp, "adapter")
			if err := qm.SaveAdapter(adapter, bnb); err != nil {
				t.Fatal(err)
			}
			withAdapter := eval(qm)
			merged, bf16 := filepath.Join(tmp, "merged"), filepath.Join(tmp, "merged-bf16")
			if err := qm.SaveHF(merged, SaveOptions{Merge: true}); err != nil {
				t.Fatal(err)
			}
			if err := qm.SaveHF(bf16, SaveOptions{Merge: true, DType: "BF16"}); err != nil {
				t.Fatal(err)
			}
			if _, ok := readJSON(t, filepath.Join(merged, "config.json"))["quantization_config"]; ok {
				t.Error("the merged folder still claims 4-bit")
			}
			var mergedLoss, bf16Loss float64
			for _, f := range []struct {
				dir  string
				loss *float64
			}{{merged, &mergedLoss}, {bf16, &bf16Loss}} {
				mm, err := LoadModel(f.dir, backend.NewCPU(2))
				if err != nil {
					t.Fatal(err)
				}
				if mm.Quantized() {
					t.Errorf("%s loads as quantized", f.dir)
				}
				*f.loss = eval(mm)
			}
			refs := referenceLosses(t, []refModel{{bnb, ""}, {bnb, adapter}, {merged, ""}, {bf16, ""}}, windows)
			for k, got := range []struct {
				what string
				loss float64
			}{{"bitsandbytes folder", bnbLoss}, {"bitsandbytes folder + adapter", withAdapter},
				{"merged export (f32)", mergedLoss}, {"merged export (bf16)", bf16Loss}} {
				t.Logf("%s: loss %.6f, reference %.6f", got.what, got.loss, refs[k].Loss)
				if d := relDiff(got.loss, refs[k].Loss); d > 1e-4 {
					t.Errorf("%s: loss %.7f, reference %.7f: relative difference %.2e > 1e-4", got.what, got.loss, refs[k].Loss, d)
				}
			}
			if d := relDiff(mergedLoss, withAdapter); d > 1e-4 {
				t.Errorf("merged loss %.7f, base + adapter %.7f: relative difference %.2e", mergedLoss, withAdapter, d)
			}
		})
	}
}

func TestBaseName(t *testing.T) {
	m := newTiny(t, true, 1)
	abs, _ := filepath.Abs("some/base")
	if got := BaseName("", m, "some/base"); got != abs {
		t.Errorf("no name anywhere: %q, want the absolute path %q", got, abs)
	}
	m.Info.NameOrPath = "meta-llama/Llama-3.2-1B"
	if got := BaseName("", m, "some/base"); got != "meta-llama/Llama-3.2-1B" {
		t.Errorf("with _name_or_path: %q", got)
	}
	if got := BaseName("me/my-base", m, "some/base"); got != "me/my-base" {
		t.Errorf("explicit: %q", got)
	}
}

// SaveOptions.ChatTemplate replaces the template the copied tokenizer files
// carry: chat_template.jinja holds it, tokenizer_config.json keeps its other
// keys, and no processor chat_template.json is left to contradict it.
func TestSaveHFChatTemplate(t *testing.T) {
	tokDir := t.TempDir()
	for name, body := range map[string]string{
		"tokenizer_config.json": `{"eos_token": "</s>", "chat_template": "old", "model_max_length": 64}`,
		"chat_template.json":    `{"chat_template": "older"}`,
		"chat_template.jinja":   "oldest",
	} {
		if err := os.WriteFile(filepath.Join(tokDir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m, err := NewModel(ModelConfig{VocabSize: 16, Dim: 8, Layers: 1, Heads: 2, KVHeads: 1, HiddenDim: 16, MaxSeqLen: 8,
		RopeTheta: 10000, NormEps: 1e-5}, backend.NewCPU(1), 1)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "model")
	if err := m.SaveHF(out, SaveOptions{TokenizerDir: tokDir, ChatTemplate: "{{ messages }}"}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(out, "chat_template.jinja")); string(got) != "{{ messages }}" {
		t.Errorf("chat_template.jinja = %q", got)
	}
	if cfg := readJSON(t, filepath.Join(out, "tokenizer_config.json")); !reflect.DeepEqual(cfg, map[string]any{"eos_token": "</s>", "model_max_length": 64.0}) {
		t.Errorf("tokenizer_config.json = %v, want its keys but chat_template", cfg)
	}
	if _, err := os.Stat(filepath.Join(out, "chat_template.json")); !os.IsNotExist(err) {
		t.Errorf("chat_template.json was kept: %v", err)
	}
}

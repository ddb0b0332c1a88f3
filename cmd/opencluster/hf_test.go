package main

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencluster/opencluster/netclient"
	"github.com/opencluster/opencluster/train"
	"github.com/opencluster/opencluster/train/backend"
	"github.com/spf13/pflag"
)

// evalLoss runs eval --json and returns its loss and token count.
func evalLoss(t *testing.T, args ...string) (float64, int) {
	t.Helper()
	out, _, err := execute(t, append([]string{"eval", "--json"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		Loss   float64 `json:"loss"`
		Tokens int     `json:"tokens"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("eval printed %q: %v", out, err)
	}
	return r.Loss, r.Tokens
}

// The Hugging Face flow: a model folder, quantize to a bitsandbytes
// folder, train an adapter on it, eval before and after (the same numbers
// train reports), export the merged model, eval that.
func TestHuggingFaceFolderFlow(t *testing.T) {
	dir := t.TempDir()
	cfg := smallConfig(t, dir)
	data := writeCorpus(t, filepath.Join(dir, "data"), 2, true)
	mc := train.ModelConfig{VocabSize: 256, Dim: 32, Layers: 2, Heads: 4, KVHeads: 2, HiddenDim: 64,
		MaxSeqLen: 64, RopeTheta: 500000, NormEps: 1e-5, TiedEmbeddings: true,
		Rope: train.RopeScaling{Type: "llama3", Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPos: 16}}
	m, err := train.NewModel(mc, backend.NewCPU(1), 1)
	if err != nil {
		t.Fatal(err)
	}
	hf := filepath.Join(dir, "llama")
	if err := m.SaveHF(hf, train.SaveOptions{DType: "BF16"}); err != nil {
		t.Fatal(err)
	}

	bnb := filepath.Join(dir, "llama-bnb")
	out, _, err := execute(t, "quantize", "--in", hf, "--out", bnb, "--double-quant")
	if err != nil || !strings.Contains(out, "quantized 14 linears (nf4, block 64, double quant)") {
		t.Fatalf("quantize: %q, %v", out, err)
	}
	var c struct {
		Q map[string]any `json:"quantization_config"`
	}
	if b, err := os.ReadFile(filepath.Join(bnb, "config.json")); err != nil || json.Unmarshal(b, &c) != nil || c.Q["load_in_4bit"] != true {
		t.Fatalf("bnb config.json: %v %v", c.Q, err)
	}

	adapter := filepath.Join(dir, "adapter")
	out, _, err = execute(t, "train", "--config", cfg, "--base", bnb, "--data", data, "--out", adapter, "--steps", "8", "--json")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var sum struct {
		ValLoss        float64 `json:"val_loss"`
		InitialValLoss float64 `json:"initial_val_loss"`
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &sum); err != nil {
		t.Fatal(err)
	}
	var ac struct {
		Base string `json:"base_model_name_or_path"`
	}
	if b, err := os.ReadFile(filepath.Join(adapter, "adapter_config.json")); err != nil || json.Unmarshal(b, &ac) != nil || ac.Base != bnb {
		t.Errorf("base_model_name_or_path %q, want %q (%v)", ac.Base, bnb, err)
	}

	before, tokens := evalLoss(t, "--config", cfg, "--base", bnb, "--data", data)
	after, _ := evalLoss(t, "--config", cfg, "--base", bnb, "--adapter", adapter, "--data", data)
	if before != sum.InitialValLoss || after != sum.ValLoss || tokens != 2*4*32 {
		t.Errorf("eval %.9f -> %.9f over %d tokens; train reported %.9f -> %.9f", before, after, tokens, sum.InitialValLoss, sum.ValLoss)
	}
	// The dense folder quantized on load gives the same numbers.
	if q, _ := evalLoss(t, "--config", cfg, "--base", hf, "--quantize", "--data", data); q != before {
		t.Errorf("eval --quantize of the dense folder %.9f, of the bitsandbytes folder %.9f", q, before)
	}

	merged := filepath.Join(dir, "merged")
	if out, _, err = execute(t, "export", "--base", bnb, "--adapter", adapter, "--out", merged, "--dtype", "f32"); err != nil {
		t.Fatal(err)
	}
	got, _ := evalLoss(t, "--config", cfg, "--base", merged, "--data", data)
	if d := math.Abs(got-after) / after; d > 1e-5 {
		t.Errorf("merged export scores %.7f, base + adapter %.7f", got, after)
	}
	for _, bad := range [][]string{
		{"export", "--base", bnb, "--adapter", adapter, "--out", merged, "--dtype", "int8"},
		{"export", "--base", bnb, "--out", merged},
		{"eval", "--base", bnb},
		{"eval", "--data", data},
		{"quantize", "--in", hf, "--out", hf},
	} {
		if _, _, err := execute(t, bad...); err == nil {
			t.Errorf("%v succeeded", bad)
		}
	}
}

func TestGenerateChat(t *testing.T) {
	model, _ := untrainedModel(t, []string{"the worker trains the adapter.", "a volunteer keeps its data."}, 300, 1)
	args := []string{"generate", "--base", model, "--chat", "--system", "be brief", "--prompt", "hello", "--max-tokens", "12", "--seed", "4"}
	a, _, err := execute(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	b, _, _ := execute(t, args...)
	if a != b || strings.Contains(a, "hello") || strings.Contains(a, "<|im_start|>") {
		t.Errorf("chat replies %q then %q: want the same reply, without the prompt or the template", a, b)
	}
	for _, bad := range []struct {
		args []string
		want string
	}{
		{[]string{"generate", "--base", model, "--prompt", "x", "--top-p", "0"}, "--top-p"},
		{[]string{"generate", "--base", model, "--prompt", "x", "--system", "s"}, "--system needs --chat"},
	} {
		if _, _, err := execute(t, bad.args...); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%v: %v, want an error naming %s", bad.args, err, bad.want)
		}
	}
}

// coordinator --base DIR takes the adapter shapes from the folder's
// config.json and the workers' preset; shapes in an operator's file must fit.
func TestCoordinatorBaseFolderShapes(t *testing.T) {
	dir := t.TempDir()
	mc := train.ModelConfig{VocabSize: 300, Dim: 48, Layers: 2, Heads: 4, KVHeads: 2, HiddenDim: 96,
		MaxSeqLen: 64, RopeTheta: 10000, NormEps: 1e-5, Arch: train.ArchQwen2, QKVBias: true}
	m, err := train.NewModel(mc, backend.NewCPU(1), 1)
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(dir, "qwen")
	if err := m.SaveHF(base, train.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	cmd := newCoordinatorCmd()
	cmd.Flags().Set("base", base)
	cfg, err := loadCoordinatorConfig(cmd)
	if err != nil {
		t.Fatal(err)
	}
	var tiny train.Config
	if err := loadConfig("tiny", pflag.NewFlagSet("x", pflag.ContinueOnError), nil, &tiny); err != nil {
		t.Fatal(err)
	}
	if want := netclient.AdapterShapes(mc, tiny.LoRA); cfg.BaseModel != base || netclient.SameShapes(cfg.Rounds.Shapes, want) != nil {
		t.Errorf("base %q shapes %v, want %v", cfg.BaseModel, cfg.Rounds.Shapes[:2], want[:2])
	}
	own := filepath.Join(dir, "c.yaml")
	os.WriteFile(own, []byte("rounds:\n  shapes:\n    - {name: a, dims: [2, 3]}\n"), 0o644)
	cmd = newCoordinatorCmd()
	cmd.Flags().Set("base", base)
	cmd.Flags().Set("config", own)
	if _, err := loadCoordinatorConfig(cmd); err == nil || !strings.Contains(err.Error(), "do not fit base") {
		t.Errorf("shapes that do not fit the base: %v", err)
	}
}

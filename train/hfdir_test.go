package train

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadConfigDir(t *testing.T) {
	dir := t.TempDir()
	js := `{"architectures": ["LlamaForCausalLM"], "hidden_act": "silu", "hidden_size": 2048, "intermediate_size": 8192,
		"max_position_embeddings": 8192, "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16,
		"num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "tie_word_embeddings": true, "vocab_size": 128256}`
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(js), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := ReadConfigDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if c.Dim != 2048 || c.Layers != 16 || c.KVHeads != 8 || c.HiddenDim != 8192 || c.VocabSize != 128256 || !c.TiedEmbeddings {
		t.Errorf("read %+v", c)
	}
	if _, err := ReadConfigDir(t.TempDir()); err == nil || !strings.Contains(err.Error(), "config.json") {
		t.Errorf("a folder without config.json: %v, want an error naming config.json", err)
	}
	bad := strings.Replace(js, `"LlamaForCausalLM"`, `"GPT2LMHeadModel"`, 1)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadConfigDir(dir); err == nil {
		t.Error("an architecture we do not implement: no error")
	}
}

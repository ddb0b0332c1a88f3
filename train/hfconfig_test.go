package train

import (
	"reflect"
	"strings"
	"testing"
)

// Real config.json files (their shape keys as published), read as
// transformers reads them.
func TestParseRealConfigs(t *testing.T) {
	cases := []struct {
		name, json string
		want       ModelConfig
		eos        []int32
	}{
		{"Llama-3.2-1B", `{"architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
			"bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048,
			"initializer_range": 0.02, "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": false,
			"model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
			"pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0,
			"low_freq_factor": 1.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"},
			"rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
			"transformers_version": "4.45.0.dev0", "use_cache": true, "vocab_size": 128256}`,
			ModelConfig{VocabSize: 128256, Dim: 2048, Layers: 16, Heads: 32, KVHeads: 8, HiddenDim: 8192,
				MaxSeqLen: 131072, RopeTheta: 500000, NormEps: 1e-5, TiedEmbeddings: true,
				Rope: RopeScaling{Type: "llama3", Factor: 32, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPos: 8192}},
			[]int32{128001}},
		{"Qwen2.5-0.5B", `{"architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
			"eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
			"intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 24, "model_type": "qwen2",
			"num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
			"rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
			"transformers_version": "4.40.1", "use_cache": true, "use_sliding_window": false, "vocab_size": 151936}`,
			ModelConfig{VocabSize: 151936, Dim: 896, Layers: 24, Heads: 14, KVHeads: 2, HiddenDim: 4864,
				MaxSeqLen: 32768, RopeTheta: 1e6, NormEps: 1e-6, TiedEmbeddings: true, Arch: ArchQwen2, QKVBias: true},
			[]int32{151643}},
		{"Mistral-7B-v0.1", `{"architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
			"hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
			"max_position_embeddings": 32768, "model_type": "mistral", "num_attention_heads": 32, "num_hidden_layers": 32,
			"num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096,
			"tie_word_embeddings": false, "torch_dtype": "bfloat16", "transformers_version": "4.34.0.dev0",
			"use_cache": true, "vocab_size": 32000}`,
			ModelConfig{VocabSize: 32000, Dim: 4096, Layers: 32, Heads: 32, KVHeads: 8, HiddenDim: 14336,
				MaxSeqLen: 32768, RopeTheta: 10000, NormEps: 1e-5, Arch: ArchMistral, SlidingWindow: 4096},
			[]int32{2}},
		{"Mistral-7B-v0.3 (no window)", `{"architectures": ["MistralForCausalLM"], "hidden_size": 4096,
			"intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral", "num_attention_heads": 32,
			"num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
			"sliding_window": null, "vocab_size": 32768}`,
			ModelConfig{VocabSize: 32768, Dim: 4096, Layers: 32, Heads: 32, KVHeads: 8, HiddenDim: 14336,
				MaxSeqLen: 32768, RopeTheta: 1e6, NormEps: 1e-5, Arch: ArchMistral}, nil},
		{"SmolLM2-135M (keys transformers ignores)", `{"architectures": ["LlamaForCausalLM"], "attention_bias": false,
			"hidden_size": 576, "intermediate_size": 1536, "is_llama_config": true, "max_position_embeddings": 8192,
			"mlp_bias": false, "model_type": "llama", "num_attention_heads": 9, "num_hidden_layers": 30,
			"num_key_value_heads": 3, "rms_norm_eps": 1e-05, "rope_interleaved": false, "rope_scaling": null,
			"rope_theta": 100000, "tie_word_embeddings": true, "vocab_size": 49152, "eos_token_id": [0, 2]}`,
			ModelConfig{VocabSize: 49152, Dim: 576, Layers: 30, Heads: 9, KVHeads: 3, HiddenDim: 1536,
				MaxSeqLen: 8192, RopeTheta: 100000, NormEps: 1e-5, TiedEmbeddings: true}, []int32{0, 2}},
		{"transformers v5 rope_parameters", `{"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
			"intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 100,
			"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
			"low_freq_factor": 1.0, "high_freq_factor": 4.0}, "max_position_embeddings": 4096}`,
			ModelConfig{VocabSize: 100, Dim: 64, Layers: 2, Heads: 4, KVHeads: 4, HiddenDim: 128, MaxSeqLen: 4096,
				RopeTheta: 500000, NormEps: 1e-6,
				Rope: RopeScaling{Type: "llama3", Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPos: 4096}}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, info, err := parseHFConfig([]byte(tc.json), "config.json", true)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("config\n got %+v\nwant %+v", got, tc.want)
			}
			if !reflect.DeepEqual(info.EOS, tc.eos) {
				t.Errorf("eos %v, want %v", info.EOS, tc.eos)
			}
			// What we write reads back the same.
			b, err := got.HFConfigJSON(info, "float32", nil)
			if err != nil {
				t.Fatal(err)
			}
			again, info2, err := parseHFConfig(b, "written", true)
			if err != nil {
				t.Fatalf("%v\n%s", err, b)
			}
			if again != got || !reflect.DeepEqual(info2, info) {
				t.Errorf("written config reads back as %+v %+v, want %+v %+v\n%s", again, info2, got, info, b)
			}
		})
	}
}

// A field this model does not implement is an error naming it and its value.
func TestParseRefusesUnsupported(t *testing.T) {
	base := `"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 100`
	llama := `"architectures": ["LlamaForCausalLM"], ` + base
	cases := []struct{ json, want string }{
		{`{"architectures": ["GemmaForCausalLM"], ` + base + `}`, `architectures = [GemmaForCausalLM]`},
		{`{"architectures": ["LlamaForCausalLM", "MistralForCausalLM"], ` + base + `}`, `architectures`},
		{`{"architectures": ["LlamaForCausalLM"], "model_type": "qwen2", ` + base + `}`, `model_type = qwen2`},
		{`{"model_type": "gpt2", ` + base + `}`, `model_type = gpt2`},
		{`{` + base + `}`, `neither architectures nor model_type`},
		{`{` + llama + `, "hidden_act": "gelu"}`, `hidden_act = gelu`},
		{`{` + llama + `, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}`, `rope_scaling.rope_type = yarn`},
		{`{` + llama + `, "rope_scaling": {"type": "dynamic", "factor": 2.0}}`, `rope_scaling.rope_type = dynamic`},
		{`{` + llama + `, "rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}}`, `rope_parameters.rope_type = longrope`},
		{`{` + llama + `, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0}}`, `rope_scaling.high_freq_factor is missing`},
		{`{` + llama + `, "rope_scaling": {"rope_type": "linear"}}`, `rope_scaling.factor is missing`},
		{`{` + llama + `, "partial_rotary_factor": 0.5}`, `partial_rotary_factor = 0.5`},
		{`{` + llama + `, "attention_dropout": 0.1}`, `attention_dropout = 0.1`},
		{`{` + llama + `, "sliding_window": 256}`, `sliding_window = 256`},
		{`{` + llama + `, "auto_map": {"AutoModelForCausalLM": "modeling_x.X"}}`, `auto_map`},
		{`{"architectures": ["MistralForCausalLM"], ` + base + `, "attention_bias": true}`, `attention_bias = true`},
		{`{"architectures": ["Qwen2ForCausalLM"], ` + base + `, "mlp_bias": true}`, `mlp_bias = true`},
		{`{` + llama + `, "quantization_config": {"quant_method": "gptq", "bits": 4}}`, `quant_method = gptq`},
		{`{` + llama + `, "quantization_config": {"quant_method": "bitsandbytes", "load_in_8bit": true}}`, `load_in_4bit`},
		{`{` + llama + `, "num_key_value_heads": 3}`, `n_kv_heads`},
		{`{` + llama + `, "rope_theta": "big"}`, `rope_theta = "big"`},
		{`{"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 100}`, `intermediate_size is missing`},
	}
	for _, tc := range cases {
		_, _, err := parseHFConfig([]byte(tc.json), "config.json", true)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "config.json") {
			t.Errorf("%s:\n error %v, want one naming config.json and %q", tc.json, err, tc.want)
		}
	}
}

func TestParseDefaults(t *testing.T) {
	base := `"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 100`
	for _, tc := range []struct {
		json string
		want func(ModelConfig) bool
		what string
	}{
		{`{"model_type": "mistral", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 16, "num_hidden_layers": 2, "vocab_size": 100}`, func(c ModelConfig) bool { return c.SlidingWindow == 4096 && c.KVHeads == 8 && c.MaxSeqLen == 131072 },
			"Mistral without sliding_window keeps MistralConfig's 4096 window, 8 kv heads, 131072 positions"},
		{`{"model_type": "qwen2", ` + base + `, "use_sliding_window": true, "sliding_window": 64, "max_window_layers": 1}`,
			func(c ModelConfig) bool { return c.SlidingWindow == 64 && c.QKVBias && !c.OBias }, "Qwen2 with sliding layers"},
		{`{"model_type": "qwen2", ` + base + `, "use_sliding_window": true, "sliding_window": 64, "max_window_layers": 2}`,
			func(c ModelConfig) bool { return c.SlidingWindow == 0 }, "Qwen2 whose window starts past the last layer"},
		{`{"model_type": "llama", ` + base + `, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}, "max_position_embeddings": 512}`,
			func(c ModelConfig) bool { return c.Rope.OriginalMaxPos == 512 && c.RopeTheta == 10000 },
			"llama3 without original_max_position_embeddings uses max_position_embeddings"},
		{`{"model_type": "llama", ` + base + `, "attention_bias": true}`,
			func(c ModelConfig) bool { return c.QKVBias && c.OBias && !c.MLPBias }, "Llama's attention_bias covers o_proj too"},
	} {
		c, _, err := parseHFConfig([]byte(tc.json), "config.json", true)
		if err != nil || !tc.want(c) {
			t.Errorf("%s: got %+v, %v", tc.what, c, err)
		}
	}
}

package train

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// HFInfo is what a Hugging Face config.json says beyond the model's shape.
type HFInfo struct {
	// NameOrPath is _name_or_path: the hub id or folder the model came from.
	NameOrPath string
	// EOS lists the end-of-sequence ids (eos_token_id: one id or a list).
	EOS []int32
	// BOS is bos_token_id when HasBOS.
	BOS    int32
	HasBOS bool
	// Quant is the quantization_config of a bitsandbytes 4-bit folder.
	Quant *QuantConfig
	// Dir is the folder the model was loaded from ("" for a file); its
	// tokenizer files go along when the model is written again.
	Dir string
}

// hfModelType maps an architecture to config.json's model_type.
var hfModelType = map[string]string{ArchLlama: "llama", ArchMistral: "mistral", ArchQwen2: "qwen2"}

// hfKeys reads config.json keys one at a time, remembering the file for
// error messages.
type hfKeys struct {
	origin string
	m      map[string]json.RawMessage
}

// has reports whether key is present and not null.
func (h hfKeys) has(key string) bool {
	v, ok := h.m[key]
	return ok && !bytes.Equal(bytes.TrimSpace(v), []byte("null"))
}

// get decodes key into dst when present and not null; it reports presence.
func (h hfKeys) get(key string, dst any) (bool, error) {
	if !h.has(key) {
		return false, nil
	}
	if err := json.Unmarshal(h.m[key], dst); err != nil {
		return true, fmt.Errorf("%s: %s = %s: %w", h.origin, key, h.m[key], err)
	}
	return true, nil
}

func (h hfKeys) bad(key string, v any, why string) error {
	return fmt.Errorf("%s: %s = %v is not supported: %s", h.origin, key, v, why)
}

// parseHFConfig reads a Hugging Face config.json into a ModelConfig,
// applying the architecture's transformers defaults to absent keys. Every
// key that LlamaForCausalLM, MistralForCausalLM or Qwen2ForCausalLM reads is
// either honoured or, when it asks for something this model does not
// implement, refused with an error naming the key and its value; keys those
// models never read are ignored, as transformers ignores them.
//
// requireArch false accepts a config without architectures and model_type
// as Llama: the metadata copy inside checkpoints written before folders.
func parseHFConfig(b []byte, origin string, requireArch bool) (ModelConfig, HFInfo, error) {
	var info HFInfo
	h := hfKeys{origin: origin}
	if err := json.Unmarshal(b, &h.m); err != nil {
		return ModelConfig{}, info, fmt.Errorf("%s: bad model config JSON: %w", origin, err)
	}
	var c ModelConfig
	var err error
	if c.Arch, err = h.arch(requireArch); err != nil {
		return c, info, err
	}
	arch := c.Arch
	if arch == ArchLlama {
		c.Arch = "" // the zero value is Llama, as for the presets
	}
	for _, f := range []struct {
		key string
		dst *int
	}{{"vocab_size", &c.VocabSize}, {"hidden_size", &c.Dim}, {"num_hidden_layers", &c.Layers},
		{"num_attention_heads", &c.Heads}, {"intermediate_size", &c.HiddenDim}} {
		ok, err := h.get(f.key, f.dst)
		if err != nil {
			return c, info, err
		}
		if !ok {
			return c, info, fmt.Errorf("%s: %s is missing", origin, f.key)
		}
	}
	// Defaults as transformers' LlamaConfig, MistralConfig and Qwen2Config.
	c.KVHeads = c.Heads
	if arch == ArchMistral {
		c.KVHeads = 8
	}
	c.MaxSeqLen = map[string]int{ArchLlama: 2048, ArchMistral: 4096 * 32, ArchQwen2: 32768}[arch]
	c.RopeTheta, c.NormEps = 10000, 1e-6
	optional := []struct {
		key string
		dst any
	}{{"num_key_value_heads", &c.KVHeads}, {"max_position_embeddings", &c.MaxSeqLen},
		{"rope_theta", &c.RopeTheta}, {"rms_norm_eps", &c.NormEps},
		{"tie_word_embeddings", &c.TiedEmbeddings}, {"head_dim", &c.HeadSize}}
	for _, f := range optional {
		if _, err := h.get(f.key, f.dst); err != nil {
			return c, info, err
		}
	}
	if c.Heads > 0 && c.HeadSize*c.Heads == c.Dim {
		c.HeadSize = 0 // the derived width: 0 keeps configs comparable
	}
	if err := h.checkActivation(); err != nil {
		return c, info, err
	}
	if err := h.biases(&c, arch); err != nil {
		return c, info, err
	}
	if err := h.rope(&c); err != nil {
		return c, info, err
	}
	if c.SlidingWindow, err = h.slidingWindow(arch, c.Layers); err != nil {
		return c, info, err
	}
	if err := h.unsupportedExtras(); err != nil {
		return c, info, err
	}
	if info.Quant, err = h.quantization(); err != nil {
		return c, info, err
	}
	if err := h.tokenIDs(&info); err != nil {
		return c, info, err
	}
	if _, err := h.get("_name_or_path", &info.NameOrPath); err != nil {
		return c, info, err
	}
	if err := c.Validate(); err != nil {
		return c, info, fmt.Errorf("%s: %w", origin, err)
	}
	return c, info, nil
}

// arch checks architectures and model_type and returns the architecture.
func (h hfKeys) arch(require bool) (string, error) {
	var archs []string
	var modelType string
	if _, err := h.get("architectures", &archs); err != nil {
		return "", err
	}
	if _, err := h.get("model_type", &modelType); err != nil {
		return "", err
	}
	var arch string
	switch {
	case len(archs) > 1:
		return "", h.bad("architectures", archs, "one architecture expected")
	case len(archs) == 1:
		arch = archs[0]
		if _, ok := hfModelType[arch]; !ok {
			return "", h.bad("architectures", archs, "want LlamaForCausalLM, MistralForCausalLM or Qwen2ForCausalLM")
		}
		if modelType != "" && modelType != hfModelType[arch] {
			return "", h.bad("model_type", modelType, arch+" has model_type "+hfModelType[arch])
		}
	case modelType != "":
		for a, t := range hfModelType {
			if t == modelType {
				arch = a
			}
		}
		if arch == "" {
			return "", h.bad("model_type", modelType, "want llama, mistral or qwen2")
		}
	case require:
		return "", fmt.Errorf("%s: neither architectures nor model_type is set; cannot tell which model this is", h.origin)
	default:
		arch = ArchLlama
	}
	return arch, nil
}

// checkActivation accepts silu (swish is the same function in transformers).
func (h hfKeys) checkActivation() error {
	var act string
	if _, err := h.get("hidden_act", &act); err != nil {
		return err
	}
	if act != "" && act != "silu" && act != "swish" {
		return h.bad("hidden_act", act, "only silu is implemented")
	}
	return nil
}

// biases reads attention_bias and mlp_bias (Llama); Qwen2 always has q/k/v
// biases and Mistral never has any, whatever the keys say, so a key that
// claims otherwise is refused rather than silently dropped.
func (h hfKeys) biases(c *ModelConfig, arch string) error {
	var attn, mlp bool
	if _, err := h.get("attention_bias", &attn); err != nil {
		return err
	}
	if _, err := h.get("mlp_bias", &mlp); err != nil {
		return err
	}
	switch arch {
	case ArchLlama:
		c.QKVBias, c.OBias, c.MLPBias = attn, attn, mlp
		return nil
	case ArchQwen2:
		c.QKVBias = true
	}
	if attn {
		return h.bad("attention_bias", attn, arch+" ignores it in transformers")
	}
	if mlp {
		return h.bad("mlp_bias", mlp, arch+" ignores it in transformers")
	}
	return nil
}

// rope reads rope_scaling (transformers v4) or rope_parameters (v5, where
// rope_theta lives inside it).
func (h hfKeys) rope(c *ModelConfig) error {
	key := "rope_scaling"
	if !h.has(key) {
		key = "rope_parameters"
	}
	if !h.has(key) {
		return h.partialRotary("partial_rotary_factor", h.m["partial_rotary_factor"])
	}
	var p map[string]json.RawMessage
	if _, err := h.get(key, &p); err != nil {
		return err
	}
	sub := hfKeys{origin: h.origin, m: p}
	for _, lt := range []string{"full_attention", "sliding_attention"} {
		if sub.has(lt) {
			return h.bad(key, "{"+lt+": ...}", "per-layer-type RoPE parameters are not implemented")
		}
	}
	if _, err := sub.get("rope_theta", &c.RopeTheta); err != nil {
		return err
	}
	if err := h.partialRotary(key+".partial_rotary_factor", p["partial_rotary_factor"]); err != nil {
		return err
	}
	if err := h.partialRotary("partial_rotary_factor", h.m["partial_rotary_factor"]); err != nil {
		return err
	}
	r := &c.Rope
	sub.get("type", &r.Type)
	sub.get("rope_type", &r.Type)
	num := func(name string, dst *float64, required bool) error {
		ok, err := sub.get(name, dst)
		if err == nil && !ok && required {
			err = fmt.Errorf("%s: %s.%s is missing (rope type %q needs it)", h.origin, key, name, r.Type)
		}
		return err
	}
	switch r.Type {
	case "", "default":
		r.Type = ""
	case "linear":
		return num("factor", &r.Factor, true)
	case "llama3":
		for _, f := range []struct {
			name string
			dst  *float64
		}{{"factor", &r.Factor}, {"low_freq_factor", &r.LowFreqFactor}, {"high_freq_factor", &r.HighFreqFactor}} {
			if err := num(f.name, f.dst, true); err != nil {
				return err
			}
		}
		r.OriginalMaxPos = c.MaxSeqLen // transformers' default when absent
		if _, err := sub.get("original_max_position_embeddings", &r.OriginalMaxPos); err != nil {
			return err
		}
	default:
		return h.bad(key+".rope_type", r.Type, "implemented: default, linear, llama3")
	}
	return nil
}

func (h hfKeys) partialRotary(key string, raw json.RawMessage) error {
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	var f float64
	if err := json.Unmarshal(raw, &f); err != nil {
		return fmt.Errorf("%s: %s = %s: %w", h.origin, key, raw, err)
	}
	if f != 1 {
		return h.bad(key, f, "RoPE on part of each head is not implemented")
	}
	return nil
}

// slidingWindow returns the attention window of the layers that use one
// (0: none). Mistral uses sliding_window on every layer (4096 when the key
// is absent, none when null); Qwen2 only with use_sliding_window, on the
// layers from max_window_layers on (or as layer_types says).
func (h hfKeys) slidingWindow(arch string, layers int) (int, error) {
	var w int
	switch arch {
	case ArchMistral:
		if _, present := h.m["sliding_window"]; !present {
			return 4096, nil
		}
		_, err := h.get("sliding_window", &w)
		return w, err
	case ArchQwen2:
		var use bool
		var types []string
		if _, err := h.get("use_sliding_window", &use); err != nil {
			return 0, err
		}
		w = 4096
		if _, present := h.m["sliding_window"]; present {
			w = 0 // stays 0 when null
			if _, err := h.get("sliding_window", &w); err != nil {
				return 0, err
			}
		}
		maxWindowLayers := 28
		if _, err := h.get("max_window_layers", &maxWindowLayers); err != nil {
			return 0, err
		}
		windowed := use && maxWindowLayers < layers
		if ok, err := h.get("layer_types", &types); err != nil {
			return 0, err
		} else if ok {
			windowed = false
			for _, t := range types {
				switch t {
				case "sliding_attention":
					windowed = true
				case "full_attention":
				default:
					return 0, h.bad("layer_types", types, "want full_attention or sliding_attention")
				}
			}
			windowed = windowed && use
		}
		if windowed {
			return w, nil
		}
		return 0, nil
	default:
		if h.has("sliding_window") {
			var v any
			h.get("sliding_window", &v)
			return 0, h.bad("sliding_window", v, "LlamaForCausalLM has no sliding window")
		}
	}
	return 0, nil
}

// unsupportedExtras refuses settings of these architectures that change the
// forward or the training maths and are not implemented here.
func (h hfKeys) unsupportedExtras() error {
	var drop float64
	if _, err := h.get("attention_dropout", &drop); err != nil {
		return err
	}
	if drop != 0 {
		return h.bad("attention_dropout", drop, "attention dropout is not implemented")
	}
	var remote map[string]any
	if _, err := h.get("auto_map", &remote); err != nil {
		return err
	}
	if len(remote) > 0 {
		return h.bad("auto_map", keysOf(remote), "the model needs its own Python code")
	}
	return nil
}

func keysOf(m map[string]any) []string {
	var k []string
	for key := range m {
		k = append(k, key)
	}
	sort.Strings(k)
	return k
}

// hfQuantConfig is the quantization_config of a bitsandbytes folder.
type hfQuantConfig struct {
	Method       string   `json:"quant_method"`
	Load4bit     bool     `json:"load_in_4bit"`
	Load8bit     bool     `json:"load_in_8bit"`
	QuantType    string   `json:"bnb_4bit_quant_type"`
	DoubleQuant  bool     `json:"bnb_4bit_use_double_quant"`
	QuantStorage string   `json:"bnb_4bit_quant_storage"`
	SkipModules  []string `json:"llm_int8_skip_modules"`
}

// quantization reads quantization_config: only bitsandbytes 4-bit with
// every decoder linear quantized is understood.
func (h hfKeys) quantization() (*QuantConfig, error) {
	var q hfQuantConfig
	if ok, err := h.get("quantization_config", &q); err != nil || !ok {
		return nil, err
	}
	switch {
	case q.Method != "bitsandbytes":
		return nil, h.bad("quantization_config.quant_method", q.Method, "only bitsandbytes 4-bit is implemented")
	case q.Load8bit || !q.Load4bit:
		return nil, h.bad("quantization_config.load_in_4bit", q.Load4bit, "only bitsandbytes 4-bit is implemented")
	case q.QuantType != "nf4" && q.QuantType != "fp4":
		return nil, h.bad("quantization_config.bnb_4bit_quant_type", q.QuantType, "want nf4 or fp4")
	case q.QuantStorage != "" && q.QuantStorage != "uint8":
		return nil, h.bad("quantization_config.bnb_4bit_quant_storage", q.QuantStorage, "want uint8")
	}
	for _, s := range q.SkipModules {
		for _, n := range LinearNames {
			if s == n || strings.HasSuffix(s, "."+n) {
				return nil, h.bad("quantization_config.llm_int8_skip_modules", q.SkipModules, "every decoder linear must be 4-bit")
			}
		}
	}
	// the block size is read from each tensor's own quant state
	return &QuantConfig{Format: q.QuantType, DoubleQuant: q.DoubleQuant}, nil
}

// tokenIDs reads bos_token_id and eos_token_id (an id or a list of ids).
func (h hfKeys) tokenIDs(info *HFInfo) error {
	var bos int32
	if ok, err := h.get("bos_token_id", &bos); err != nil {
		return err
	} else if ok {
		info.BOS, info.HasBOS = bos, true
	}
	if !h.has("eos_token_id") {
		return nil
	}
	var one int32
	if err := json.Unmarshal(h.m["eos_token_id"], &one); err == nil {
		info.EOS = []int32{one}
		return nil
	}
	if _, err := h.get("eos_token_id", &info.EOS); err != nil {
		return err
	}
	return nil
}

// ReadHFConfig reads a model folder's config.json (and the end-of-sequence
// ids of generation_config.json) without touching its weights.
func ReadHFConfig(dir string) (ModelConfig, HFInfo, error) {
	path := filepath.Join(dir, "config.json")
	b, err := os.ReadFile(path)
	if err != nil {
		return ModelConfig{}, HFInfo{}, fmt.Errorf("train: base model folder: %w", err)
	}
	c, info, err := parseHFConfig(b, path, true)
	if err != nil {
		return c, info, fmt.Errorf("train: %w", err)
	}
	info.Dir = dir
	if err := readGenerationConfig(dir, &info); err != nil {
		return c, info, fmt.Errorf("train: %w", err)
	}
	return c, info, nil
}

// readGenerationConfig adds the eos_token_id of dir's generation_config.json
// (instruct models list their end-of-turn tokens there) to info.EOS.
func readGenerationConfig(dir string, info *HFInfo) error {
	path := filepath.Join(dir, "generation_config.json")
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	h := hfKeys{origin: path}
	if err := json.Unmarshal(b, &h.m); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	var gen HFInfo
	if err := h.tokenIDs(&gen); err != nil {
		return err
	}
	for _, id := range gen.EOS {
		if !slices.Contains(info.EOS, id) {
			info.EOS = append(info.EOS, id)
		}
	}
	return nil
}

// HFConfigJSON returns c as the config.json transformers reads back into the
// same model, with info's name and token ids and, when q is not nil, the
// bitsandbytes quantization_config. dtype is torch_dtype ("float32",
// "bfloat16", "float16").
func (c ModelConfig) HFConfigJSON(info HFInfo, dtype string, q *QuantConfig) ([]byte, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	arch := c.Architecture()
	m := map[string]any{
		"architectures": []string{arch}, "model_type": hfModelType[arch],
		"vocab_size": c.VocabSize, "hidden_size": c.Dim, "intermediate_size": c.HiddenDim,
		"num_hidden_layers": c.Layers, "num_attention_heads": c.Heads, "num_key_value_heads": c.KVHeads,
		"hidden_act": "silu", "max_position_embeddings": c.MaxSeqLen,
		"rms_norm_eps": c.NormEps, "rope_theta": c.RopeTheta, "rope_scaling": nil,
		"tie_word_embeddings": c.TiedEmbeddings, "attention_dropout": 0.0,
		"initializer_range": 0.02, "use_cache": true, "torch_dtype": dtype,
	}
	if c.HeadSize > 0 {
		m["head_dim"] = c.HeadSize
	}
	switch r := c.Rope; r.Type {
	case "linear":
		m["rope_scaling"] = map[string]any{"rope_type": "linear", "factor": r.Factor}
	case "llama3":
		m["rope_scaling"] = map[string]any{"rope_type": "llama3", "factor": r.Factor,
			"low_freq_factor": r.LowFreqFactor, "high_freq_factor": r.HighFreqFactor,
			"original_max_position_embeddings": r.OriginalMaxPos}
	}
	switch arch {
	case ArchLlama:
		m["attention_bias"], m["mlp_bias"] = c.QKVBias, c.MLPBias
	case ArchMistral:
		m["sliding_window"] = nil
		if c.SlidingWindow > 0 {
			m["sliding_window"] = c.SlidingWindow
		}
	case ArchQwen2:
		m["use_sliding_window"], m["sliding_window"], m["max_window_layers"] = false, nil, c.Layers
		if c.SlidingWindow > 0 {
			m["use_sliding_window"], m["sliding_window"], m["max_window_layers"] = true, c.SlidingWindow, 0
		}
	}
	if info.NameOrPath != "" {
		m["_name_or_path"] = info.NameOrPath
	}
	if info.HasBOS {
		m["bos_token_id"] = info.BOS
	}
	switch len(info.EOS) {
	case 0:
	case 1:
		m["eos_token_id"] = info.EOS[0]
	default:
		m["eos_token_id"] = info.EOS
	}
	if q != nil {
		m["quantization_config"] = map[string]any{
			"quant_method": "bitsandbytes", "load_in_4bit": true, "load_in_8bit": false,
			"bnb_4bit_quant_type": q.Format, "bnb_4bit_use_double_quant": q.DoubleQuant,
			"bnb_4bit_compute_dtype": "float32", "bnb_4bit_quant_storage": "uint8",
			"llm_int8_skip_modules": []string{"lm_head"}, "llm_int8_threshold": 6.0,
			"llm_int8_has_fp16_weight": false, "llm_int8_enable_fp32_cpu_offload": false,
		}
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// validArch checks that the biases can be written as arch's config.json.
func (c ModelConfig) validArch() error {
	switch c.Arch {
	case "", ArchLlama:
		if c.QKVBias != c.OBias {
			return fmt.Errorf("model: Llama's attention_bias covers q/k/v and o_proj together; qkv_bias %v with o_bias %v cannot be written", c.QKVBias, c.OBias)
		}
		if c.SlidingWindow > 0 {
			return fmt.Errorf("model: Llama has no sliding window (sliding_window %d)", c.SlidingWindow)
		}
	case ArchMistral:
		if c.anyBias() {
			return fmt.Errorf("model: %s has no biases", c.Arch)
		}
	case ArchQwen2:
		if !c.QKVBias || c.OBias || c.MLPBias {
			return fmt.Errorf("model: %s has q/k/v biases and no others", c.Arch)
		}
	}
	return nil
}

package train

import (
	"fmt"
	"strings"
)

// ModelConfig is the shape of a Llama-style decoder. Field names follow the
// YAML keys in configs/*.yaml; the JSON names follow Hugging Face's config.json
// so a base checkpoint's config can be read by either side.
type ModelConfig struct {
	VocabSize      int     `mapstructure:"vocab_size" json:"vocab_size"`
	Dim            int     `mapstructure:"dim" json:"hidden_size"`
	Layers         int     `mapstructure:"n_layers" json:"num_hidden_layers"`
	Heads          int     `mapstructure:"n_heads" json:"num_attention_heads"`
	KVHeads        int     `mapstructure:"n_kv_heads" json:"num_key_value_heads"`
	HiddenDim      int     `mapstructure:"hidden_dim" json:"intermediate_size"`
	MaxSeqLen      int     `mapstructure:"max_seq_len" json:"max_position_embeddings"`
	RopeTheta      float64 `mapstructure:"rope_theta" json:"rope_theta"`
	NormEps        float64 `mapstructure:"norm_eps" json:"rms_norm_eps"`
	TiedEmbeddings bool    `mapstructure:"tied_embeddings" json:"tie_word_embeddings"`

	// The fields below describe real Hugging Face checkpoints; the presets
	// leave them zero (a plain Llama).

	// Arch is the config.json architecture: LlamaForCausalLM (also when
	// empty), MistralForCausalLM or Qwen2ForCausalLM.
	Arch string `mapstructure:"architecture" json:"-"`
	// HeadSize is an explicit head_dim; 0 means dim/n_heads.
	HeadSize int `mapstructure:"head_dim" json:"-"`
	// QKVBias, OBias and MLPBias add a bias to q/k/v_proj, o_proj and
	// gate/up/down_proj (Llama's attention_bias sets QKV and O, Qwen2 has QKV).
	QKVBias bool `mapstructure:"qkv_bias" json:"-"`
	OBias   bool `mapstructure:"o_bias" json:"-"`
	MLPBias bool `mapstructure:"mlp_bias" json:"-"`
	// Rope scales the rotary frequencies (rope_scaling / rope_parameters).
	Rope RopeScaling `mapstructure:"rope_scaling" json:"-"`
	// SlidingWindow is Mistral's attention window in tokens (0: none).
	// Sequences longer than it are refused: every position of a shorter
	// one sees all earlier positions, exactly as the windowed model would.
	SlidingWindow int `mapstructure:"sliding_window" json:"-"`
}

// Supported architectures (config.json "architectures").
const (
	ArchLlama   = "LlamaForCausalLM"
	ArchMistral = "MistralForCausalLM"
	ArchQwen2   = "Qwen2ForCausalLM"
)

// RopeScaling is a rope_scaling (or v5 rope_parameters) block. Type ""
// or "default" leaves the frequencies as they are.
type RopeScaling struct {
	Type string `mapstructure:"type"` // "", "default", "linear" or "llama3"
	// Factor divides the frequencies (linear) or the low ones (llama3).
	Factor float64 `mapstructure:"factor"`
	// LowFreqFactor, HighFreqFactor and OriginalMaxPos shape llama3's
	// smooth transition between scaled and unscaled frequencies.
	LowFreqFactor  float64 `mapstructure:"low_freq_factor"`
	HighFreqFactor float64 `mapstructure:"high_freq_factor"`
	OriginalMaxPos int     `mapstructure:"original_max_position_embeddings"`
}

// Architecture is the config.json architecture of the model.
func (c ModelConfig) Architecture() string {
	if c.Arch == "" {
		return ArchLlama
	}
	return c.Arch
}

// HeadDim is the width of one attention head.
func (c ModelConfig) HeadDim() int {
	if c.HeadSize > 0 {
		return c.HeadSize
	}
	return c.Dim / c.Heads
}

// QDim is the width of the query projection and of o_proj's input: n_heads*head_dim.
func (c ModelConfig) QDim() int { return c.Heads * c.HeadDim() }

// KVDim is the width of the key and value projections.
func (c ModelConfig) KVDim() int { return c.KVHeads * c.HeadDim() }

// Context is the longest sequence the model takes: max_seq_len, or the
// sliding window when that is shorter.
func (c ModelConfig) Context() int {
	if c.SlidingWindow > 0 && c.SlidingWindow < c.MaxSeqLen {
		return c.SlidingWindow
	}
	return c.MaxSeqLen
}

// Validate reports the first field that makes the shape unusable.
func (c ModelConfig) Validate() error {
	switch {
	case c.VocabSize <= 0:
		return fmt.Errorf("model.vocab_size must be positive, got %d", c.VocabSize)
	case c.Dim <= 0:
		return fmt.Errorf("model.dim must be positive, got %d", c.Dim)
	case c.Layers <= 0:
		return fmt.Errorf("model.n_layers must be positive, got %d", c.Layers)
	case c.HeadSize < 0:
		return fmt.Errorf("model.head_dim must not be negative, got %d", c.HeadSize)
	case c.Heads <= 0 || (c.HeadSize == 0 && c.Dim%c.Heads != 0):
		return fmt.Errorf("model.n_heads (%d) must be positive and divide model.dim (%d)", c.Heads, c.Dim)
	case c.HeadDim()%2 != 0:
		return fmt.Errorf("model head width %d must be even for RoPE", c.HeadDim())
	case c.KVHeads <= 0 || c.Heads%c.KVHeads != 0:
		return fmt.Errorf("model.n_kv_heads (%d) must be positive and divide model.n_heads (%d)", c.KVHeads, c.Heads)
	case c.HiddenDim <= 0:
		return fmt.Errorf("model.hidden_dim must be positive, got %d", c.HiddenDim)
	case c.MaxSeqLen <= 0:
		return fmt.Errorf("model.max_seq_len must be positive, got %d", c.MaxSeqLen)
	case c.RopeTheta <= 0:
		return fmt.Errorf("model.rope_theta must be positive, got %g", c.RopeTheta)
	case c.NormEps <= 0:
		return fmt.Errorf("model.norm_eps must be positive, got %g", c.NormEps)
	case c.Arch != "" && c.Arch != ArchLlama && c.Arch != ArchMistral && c.Arch != ArchQwen2:
		return fmt.Errorf("model.architecture %q is not supported (want %s, %s or %s)", c.Arch, ArchLlama, ArchMistral, ArchQwen2)
	case c.SlidingWindow < 0:
		return fmt.Errorf("model.sliding_window must not be negative, got %d", c.SlidingWindow)
	}
	if err := c.validArch(); err != nil {
		return err
	}
	return c.Rope.validate()
}

func (r RopeScaling) validate() error {
	switch r.Type {
	case "", "default":
		return nil
	case "linear":
		if !(r.Factor >= 1) {
			return fmt.Errorf("model.rope_scaling.factor must be at least 1 for linear scaling, got %g", r.Factor)
		}
	case "llama3":
		switch {
		case !(r.Factor >= 1):
			return fmt.Errorf("model.rope_scaling.factor must be at least 1 for llama3 scaling, got %g", r.Factor)
		case !(r.LowFreqFactor > 0) || !(r.HighFreqFactor > r.LowFreqFactor):
			return fmt.Errorf("model.rope_scaling: llama3 needs 0 < low_freq_factor (%g) < high_freq_factor (%g)", r.LowFreqFactor, r.HighFreqFactor)
		case r.OriginalMaxPos <= 0:
			return fmt.Errorf("model.rope_scaling.original_max_position_embeddings must be positive, got %d", r.OriginalMaxPos)
		}
	default:
		return fmt.Errorf("model.rope_scaling.type %q is not supported (want default, linear or llama3)", r.Type)
	}
	return nil
}

// NumParams counts the parameters of the full-precision model.
func (c ModelConfig) NumParams() int64 {
	d, h, v := int64(c.Dim), int64(c.HiddenDim), int64(c.VocabSize)
	q, kv := int64(c.QDim()), int64(c.KVDim())
	perLayer := 2*d + 2*d*q + 2*d*kv + 3*d*h
	if c.QKVBias {
		perLayer += q + 2*kv
	}
	if c.OBias {
		perLayer += d
	}
	if c.MLPBias {
		perLayer += 2*h + d
	}
	n := v*d + int64(c.Layers)*perLayer + d
	if !c.TiedEmbeddings {
		n += v * d
	}
	return n
}

// TrainConfig holds the optimizer, schedule and batching of a training run.
type TrainConfig struct {
	SeqLen          int     `mapstructure:"seq_len"`
	BatchSize       int     `mapstructure:"batch_size"`
	GradAccum       int     `mapstructure:"grad_accum"`
	Steps           int     `mapstructure:"steps"`
	LR              float64 `mapstructure:"lr"`
	MinLR           float64 `mapstructure:"min_lr"`
	WarmupSteps     int     `mapstructure:"warmup_steps"`
	WeightDecay     float64 `mapstructure:"weight_decay"`
	Beta1           float64 `mapstructure:"beta1"`
	Beta2           float64 `mapstructure:"beta2"`
	Eps             float64 `mapstructure:"eps"`
	GradClip        float64 `mapstructure:"grad_clip"`
	EvalEvery       int     `mapstructure:"eval_every"`
	EvalBatches     int     `mapstructure:"eval_batches"`
	ValFraction     float64 `mapstructure:"val_fraction"`
	CheckpointEvery int     `mapstructure:"checkpoint_every"`
	Seed            uint64  `mapstructure:"seed"`
	Threads         int     `mapstructure:"threads"`
	// ComputeDType is the arithmetic of the products with the frozen base
	// (QLoRA): auto (bf16 where the CPU has AVX512_BF16; on a GPU, bf16
	// tensor cores on sm_80 and newer, fp16 on Turing), fp32, bf16 or fp16
	// (GPU: forward products in fp16, backward in fp32). Adapters,
	// gradients and AdamW stay fp32.
	ComputeDType string `mapstructure:"compute_dtype"`
	// SaveFinalState also writes the training state (parameters and AdamW
	// moments) at the end of a run, so it can be extended with --resume and
	// more steps. Off, the end writes only the output; checkpoint_every,
	// Ctrl-C and a budget stop always write the state.
	SaveFinalState bool `mapstructure:"save_final_state"`
}

// Validate reports the first setting that cannot work.
func (c TrainConfig) Validate() error {
	switch {
	case c.SeqLen <= 0:
		return fmt.Errorf("train.seq_len must be positive, got %d", c.SeqLen)
	case c.BatchSize <= 0:
		return fmt.Errorf("train.batch_size must be positive, got %d", c.BatchSize)
	case c.GradAccum <= 0:
		return fmt.Errorf("train.grad_accum must be positive, got %d", c.GradAccum)
	case c.Steps < 0:
		return fmt.Errorf("train.steps must not be negative, got %d", c.Steps)
	case c.LR <= 0:
		return fmt.Errorf("train.lr must be positive, got %g", c.LR)
	case c.MinLR < 0 || c.MinLR > c.LR:
		return fmt.Errorf("train.min_lr must be in [0, lr=%g], got %g", c.LR, c.MinLR)
	case c.WarmupSteps < 0:
		return fmt.Errorf("train.warmup_steps must not be negative, got %d", c.WarmupSteps)
	case c.Beta1 < 0 || c.Beta1 >= 1 || c.Beta2 < 0 || c.Beta2 >= 1:
		return fmt.Errorf("train.beta1 and train.beta2 must be in [0,1), got %g and %g", c.Beta1, c.Beta2)
	case c.Eps <= 0:
		return fmt.Errorf("train.eps must be positive, got %g", c.Eps)
	case c.GradClip < 0:
		return fmt.Errorf("train.grad_clip must not be negative (0 disables), got %g", c.GradClip)
	case c.ValFraction <= 0 || c.ValFraction >= 1:
		return fmt.Errorf("train.val_fraction must be in (0,1), got %g", c.ValFraction)
	case c.ComputeDType != "" && c.ComputeDType != "auto" && c.ComputeDType != "fp32" && c.ComputeDType != "bf16" && c.ComputeDType != "fp16":
		return fmt.Errorf("train.compute_dtype must be auto, fp32, bf16 or fp16, got %q", c.ComputeDType)
	}
	return nil
}

// LoRAConfig describes the trainable low-rank adapters of QLoRA mode.
type LoRAConfig struct {
	Rank    int      `mapstructure:"rank" json:"r"`
	Alpha   float64  `mapstructure:"alpha" json:"lora_alpha"`
	Dropout float64  `mapstructure:"dropout" json:"lora_dropout"`
	Targets []string `mapstructure:"targets" json:"target_modules"`
}

// LinearNames are the per-layer linear weights, named as in Hugging Face Llama.
var LinearNames = []string{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

// Validate checks the rank, scale, dropout and target names.
func (c LoRAConfig) Validate() error {
	if c.Rank <= 0 {
		return fmt.Errorf("lora.rank must be positive, got %d", c.Rank)
	}
	if c.Alpha <= 0 {
		return fmt.Errorf("lora.alpha must be positive, got %g", c.Alpha)
	}
	if c.Dropout < 0 || c.Dropout >= 1 {
		return fmt.Errorf("lora.dropout must be in [0,1), got %g", c.Dropout)
	}
	if len(c.Targets) == 0 {
		return fmt.Errorf("lora.targets is empty; choose from %s", strings.Join(LinearNames, ", "))
	}
	for _, t := range c.Targets {
		ok := false
		for _, n := range LinearNames {
			ok = ok || t == n
		}
		if !ok {
			return fmt.Errorf("lora.targets: unknown module %q; choose from %s", t, strings.Join(LinearNames, ", "))
		}
	}
	return nil
}

// QuantConfig says how the frozen base is stored in QLoRA mode.
type QuantConfig struct {
	Format      string `mapstructure:"format"`     // nf4 or fp4
	BlockSize   int    `mapstructure:"block_size"` // power of two, 32..4096
	DoubleQuant bool   `mapstructure:"double_quant"`
}

// Validate checks the format and block size.
func (c QuantConfig) Validate() error {
	if c.Format != "nf4" && c.Format != "fp4" {
		return fmt.Errorf("quant.format must be nf4 or fp4, got %q", c.Format)
	}
	if c.BlockSize < 32 || c.BlockSize > 4096 || c.BlockSize&(c.BlockSize-1) != 0 {
		return fmt.Errorf("quant.block_size must be a power of two in 32..4096, got %d", c.BlockSize)
	}
	return nil
}

// Config is one whole preset file: configs/tiny.yaml and friends.
type Config struct {
	Model ModelConfig `mapstructure:"model"`
	Train TrainConfig `mapstructure:"train"`
	LoRA  LoRAConfig  `mapstructure:"lora"`
	Quant QuantConfig `mapstructure:"quant"`
}

// Validate checks every section.
func (c Config) Validate() error {
	for _, err := range []error{c.Model.Validate(), c.Train.Validate(), c.LoRA.Validate(), c.Quant.Validate()} {
		if err != nil {
			return err
		}
	}
	if c.Train.SeqLen > c.Model.MaxSeqLen {
		return fmt.Errorf("train.seq_len (%d) exceeds model.max_seq_len (%d)", c.Train.SeqLen, c.Model.MaxSeqLen)
	}
	if c.Train.SeqLen > c.Model.Context() {
		return fmt.Errorf("train.seq_len (%d) exceeds the model's sliding window (%d), which is not implemented beyond refusing longer sequences", c.Train.SeqLen, c.Model.SlidingWindow)
	}
	return nil
}

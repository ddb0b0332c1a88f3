package train

// CONTRACT (skeleton): these are the entry points the training loop, the CLI
// and later the federated worker call. The model helper implements the bodies
// (and may add unexported fields and more methods); callers code against the
// signatures below. Keep the signatures stable.

import (
	"errors"

	"github.com/opencluster/opencluster/train/backend"
)

var errTODO = errors.New("not implemented yet")

// Model is a Llama-style decoder: token embedding, per layer RMSNorm ->
// attention (RoPE, causal, grouped-query) -> residual -> RMSNorm -> SwiGLU MLP
// -> residual, then a final RMSNorm and lm_head (tied or untied).
//
// Two modes: full training (every weight fp32 and trainable) and QLoRA (the
// linear weights frozen in packed NF4/FP4, LoRA A/B trainable on the targets).
type Model struct {
	Config ModelConfig
}

// NewModel builds a randomly initialised fp32 model (every weight trainable).
// The same seed gives the same weights bit for bit.
func NewModel(cfg ModelConfig, be backend.Backend, seed uint64) (*Model, error) {
	return nil, errTODO
}

// LoadModel reads a base checkpoint: an fp32 safetensors file written by
// SaveBase, a bitsandbytes-layout 4-bit file, or a Hugging Face model folder
// (config.json + *.safetensors). Missing or mis-shaped tensors are errors that
// name the tensor.
func LoadModel(path string, be backend.Backend) (*Model, error) {
	return nil, errTODO
}

// SaveBase writes the base weights (fp32, or the packed 4-bit layout when
// quantized) with the model config in the safetensors metadata, atomically.
func (m *Model) SaveBase(path string) error { return errTODO }

// QuantizeBase freezes every linear weight of the decoder layers in 4-bit.
// Embedding, norms and lm_head stay fp32 and frozen. No dequantized copy is kept.
func (m *Model) QuantizeBase(q QuantConfig) error { return errTODO }

// Quantized reports whether the base is held in 4-bit.
func (m *Model) Quantized() bool { return false }

// EnableLoRA switches to QLoRA mode: A Kaiming-uniform, B zero, on the target
// modules of every layer; only the adapters are trainable from then on.
func (m *Model) EnableLoRA(cfg LoRAConfig, seed uint64) error { return errTODO }

// SaveAdapter writes the adapters in PEFT layout: DIR/adapter_model.safetensors
// and DIR/adapter_config.json. baseName goes to base_model_name_or_path.
func (m *Model) SaveAdapter(dir, baseName string) error { return errTODO }

// LoadAdapter reads a PEFT adapter folder written by SaveAdapter (or PEFT).
func (m *Model) LoadAdapter(dir string) error { return errTODO }

// ZeroGrad clears the gradients of the trainable parameters.
func (m *Model) ZeroGrad() {}

// ForwardBackward runs one micro-batch of B sequences of T tokens (row-major
// [B*T]) and accumulates the gradient of mean cross-entropy, scaled by
// gradScale (1/grad_accum), into the trainable gradients. step keys the
// dropout masks so runs and resumes repeat bit for bit.
func (m *Model) ForwardBackward(tokens, targets []int32, B, T int, gradScale float32, step int) (loss float64, err error) {
	return 0, errTODO
}

// Loss runs the forward pass only and returns mean cross-entropy (no dropout).
func (m *Model) Loss(tokens, targets []int32, B, T int) (float64, error) { return 0, errTODO }

// Logits returns the next-token logits [VocabSize] after the last of tokens.
func (m *Model) Logits(tokens []int32) ([]float32, error) { return nil, errTODO }

// ClipGradNorm scales the gradients so their global L2 norm is at most max
// (max <= 0: no clipping) and returns the norm before clipping.
func (m *Model) ClipGradNorm(max float64) float64 { return 0 }

// OptimizerStep applies one AdamW step (decoupled weight decay) at learning
// rate lr to the trainable parameters; step counts from 1 for bias correction.
func (m *Model) OptimizerStep(cfg TrainConfig, lr float64, step int) {}

// TrainableParams returns the trainable parameters as one contiguous vector
// (the adapters in QLoRA mode). Federated code reads and writes it in place.
func (m *Model) TrainableParams() []float32 { return nil }

// NumTrainable is len(TrainableParams()).
func (m *Model) NumTrainable() int { return 0 }

// SaveTrainState writes what resuming needs (trainable parameters, AdamW
// moments) plus meta (the loop's step, data cursor, ...) to path, atomically.
func (m *Model) SaveTrainState(path string, meta map[string]string) error { return errTODO }

// LoadTrainState restores SaveTrainState's file and returns its meta.
func (m *Model) LoadTrainState(path string) (map[string]string, error) { return nil, errTODO }

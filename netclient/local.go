package netclient

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/opencluster/opencluster/protocol"
	"github.com/opencluster/opencluster/train"
	"github.com/opencluster/opencluster/train/backend"
	"github.com/opencluster/opencluster/train/data"
)

// Trainer is the local half of a federated round: it keeps one frozen
// 4-bit base in memory across rounds and, for each round, loads the global
// adapter, trains it for a few steps on the volunteer's data and returns
// the displacement delta = local - global. A Trainer is not safe for
// concurrent use.
type Trainer struct {
	cfg   train.Config
	model *train.Model
	dtype string // the frozen base's arithmetic (fp32, bf16, fp16)
}

// NewTrainer loads the base checkpoint at basePath on a CPU backend with
// threads workers (0: every core), freezes it in 4-bit as cfg.Quant says
// (unless the file already holds it packed) and adds LoRA adapters shaped
// by cfg.LoRA. cfg.Train supplies seq_len, batch_size, grad_clip and the
// AdamW settings of local training.
func NewTrainer(cfg train.Config, basePath string, threads int) (*Trainer, error) {
	return NewTrainerOn(cfg, basePath, backend.NewCPU(threads))
}

// NewTrainerOn is NewTrainer on a chosen backend.
func NewTrainerOn(cfg train.Config, basePath string, be backend.Backend) (*Trainer, error) {
	if err := cfg.LoRA.Validate(); err != nil {
		return nil, err
	}
	if err := cfg.Quant.Validate(); err != nil {
		return nil, err
	}
	// The frozen base's products run in train.compute_dtype, as for
	// `train` (auto: bf16 where the CPU has AVX512_BF16, tensor cores on a
	// GPU). Without this the worker ran them in fp32.
	dtype, err := backend.ApplyComputeDType(be, cfg.Train.ComputeDType)
	if err != nil {
		return nil, err
	}
	// Quantized as it streams in: the fp32 base is never in memory.
	m, err := train.LoadQuantized(basePath, be, cfg.Quant)
	if err != nil {
		return nil, fmt.Errorf("netclient: base %s: %w", basePath, err)
	}
	if err := m.EnableLoRA(cfg.LoRA, cfg.Train.Seed); err != nil {
		return nil, err
	}
	cfg.Model = m.Config
	if cfg.Train.SeqLen <= 0 || cfg.Train.SeqLen > m.Config.MaxSeqLen {
		return nil, fmt.Errorf("netclient: train.seq_len %d must be in [1, max_seq_len %d]", cfg.Train.SeqLen, m.Config.MaxSeqLen)
	}
	t := &Trainer{cfg: cfg, model: m, dtype: dtype}
	if got, want := m.NumTrainable(), ShapesLen(t.Shapes()); got != want {
		return nil, fmt.Errorf("netclient: model has %d trainable values, adapter shapes sum to %d", got, want)
	}
	return t, nil
}

// ApplyPlan runs the trainer's steps as the memory plan says (micro-batch,
// activation checkpointing, where the AdamW moments live).
func (t *Trainer) ApplyPlan(p train.MemoryPlan) {
	t.model.SetMicroBatch(p.MicroBatch)
	t.model.SetCheckpointing(p.Checkpointing)
	t.model.SetHostOptimizer(p.HostOptimizer)
}

// Free releases the model's memory on its backend (on a GPU, at once).
func (t *Trainer) Free() { t.model.Free() }

// ComputeDType is the arithmetic the frozen base's products run in.
func (t *Trainer) ComputeDType() string { return t.dtype }

// Config is the configuration the trainer runs with (model section filled
// from the base checkpoint).
func (t *Trainer) Config() train.Config { return t.cfg }

// Model is the underlying model (for generation and evaluation).
func (t *Trainer) Model() *train.Model { return t.model }

// NumParams is the length of the flat adapter vector.
func (t *Trainer) NumParams() int { return t.model.NumTrainable() }

// Shapes lists the adapter tensors in the order of the flat vector.
func (t *Trainer) Shapes() []protocol.Shape { return AdapterShapes(t.cfg.Model, t.cfg.LoRA) }

// AdapterShapes lists the LoRA tensors of a model in the order the model
// keeps them in its trainable vector (and the update's vector concatenates
// them): for each layer, for each target module in train.LinearNames order,
// lora_A [rank, in] then lora_B [out, rank], with PEFT names.
func AdapterShapes(mc train.ModelConfig, lc train.LoRAConfig) []protocol.Shape {
	var out []protocol.Shape
	for _, sp := range train.AdapterSpecs(mc, lc) {
		out = append(out, protocol.Shape{Name: sp.Name, Dims: sp.Shape})
	}
	return out
}

// ShapesLen is the number of elements the shapes hold.
func ShapesLen(shapes []protocol.Shape) int {
	n := 0
	for _, s := range shapes {
		p := 1
		for _, d := range s.Dims {
			p *= d
		}
		n += p
	}
	return n
}

// SameShapes reports the first difference between two shape tables, or nil.
func SameShapes(got, want []protocol.Shape) error {
	if len(got) != len(want) {
		return fmt.Errorf("netclient: %d adapter tensors, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i].Name != want[i].Name || fmt.Sprint(got[i].Dims) != fmt.Sprint(want[i].Dims) {
			return fmt.Errorf("netclient: adapter tensor %d is %s %v, want %s %v", i, got[i].Name, got[i].Dims, want[i].Name, want[i].Dims)
		}
	}
	return nil
}

// LocalOptions is one round of local training.
type LocalOptions struct {
	// Steps is the number of optimizer steps (the round's H).
	Steps int
	// LR is the learning rate, held constant over the round's few steps.
	LR float64
	// BatchSize is the sequences per step; 0 keeps train.batch_size.
	BatchSize int
	// MaxTokens caps the tokens read this round (the data budget); 0: none.
	MaxTokens int64
	// Stream picks this round's batches: step s reads the loader's batch
	// (Stream+s, 0), so each round sees fresh windows. Use the round seed.
	Stream uint64
	// Governor paces the steps (the budget controller); nil: none.
	Governor train.Governor
	// Progress, when set, is called after every step.
	Progress func(step, steps int, loss float64)
}

// LocalResult is what a round of local training produced.
type LocalResult struct {
	Delta             []float32 // local - global, the flat adapter vector
	Steps             int
	Tokens            int64
	Loss              float64 // mean training loss over the round's steps
	FLOPs             float64 // estimated: 6 x params touched x tokens (forward + backward)
	Started, Finished time.Time
}

// TrainLocal starts from the global adapter, trains opts.Steps steps on ds
// with a fresh AdamW state, and returns the delta. ds must have been opened
// with the trainer's seq_len; its batch size sets the sequences per step.
func (t *Trainer) TrainLocal(ctx context.Context, ds *data.Dataset, global []float32, opts LocalOptions) (LocalResult, error) {
	var res LocalResult
	n := t.NumParams()
	if len(global) != n {
		return res, fmt.Errorf("netclient: global adapter has %d values, the model %d", len(global), n)
	}
	if opts.Steps <= 0 {
		return res, fmt.Errorf("netclient: recipe steps %d must be positive", opts.Steps)
	}
	if !(opts.LR > 0) || math.IsInf(opts.LR, 0) {
		return res, fmt.Errorf("netclient: recipe lr %v must be positive and finite", opts.LR)
	}
	// The adapters take global's values and AdamW starts afresh; the
	// buffers and activations of earlier rounds are reused (re-enabling
	// LoRA each round reallocated them and drew A at random only to
	// overwrite it).
	t.model.ResetOptimizer()
	if err := t.model.SetTrainableParams(global); err != nil {
		return res, err
	}
	tc := t.cfg.Train
	res.Started = time.Now()
	// The stream offset keeps step indices positive and distinct per round.
	base := int(opts.Stream % (1 << 30))
	var lossSum float64
	for s := 1; s <= opts.Steps; s++ {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		if opts.Governor != nil {
			if err := opts.Governor.Wait(ctx); err != nil {
				return res, fmt.Errorf("netclient: budget stopped local training at step %d: %w", s-1, err)
			}
		}
		t0 := time.Now()
		b, err := ds.TrainBatch(base+s, 0)
		if err != nil {
			return res, fmt.Errorf("netclient: step %d: %w", s, err)
		}
		if opts.MaxTokens > 0 && res.Tokens+int64(b.B*b.T) > opts.MaxTokens {
			break
		}
		t.model.ZeroGrad()
		loss, err := t.model.ForwardBackward(b.Tokens, b.Targets, b.B, b.T, 1, s)
		if err != nil {
			return res, fmt.Errorf("netclient: step %d: %w", s, err)
		}
		if math.IsNaN(loss) || math.IsInf(loss, 0) {
			return res, fmt.Errorf("netclient: step %d: training loss is %v; lower the recipe's lr", s, loss)
		}
		if norm := t.model.ClipGradNorm(tc.GradClip); math.IsNaN(norm) || math.IsInf(norm, 0) {
			return res, fmt.Errorf("netclient: step %d: gradient norm is %v", s, norm)
		}
		t.model.OptimizerStep(tc, opts.LR, s)
		if opts.Governor != nil {
			opts.Governor.StepDone(time.Since(t0))
		}
		res.Steps = s
		res.Tokens += int64(b.B * b.T)
		lossSum += loss
		if opts.Progress != nil {
			opts.Progress(s, opts.Steps, loss)
		}
	}
	if res.Steps == 0 {
		return res, errors.New("netclient: the data budget (max_tokens) is smaller than one batch")
	}
	res.Loss = lossSum / float64(res.Steps)
	res.Finished = time.Now()
	local := t.model.TrainableParams()
	res.Delta = make([]float32, n)
	for i := range res.Delta {
		res.Delta[i] = local[i] - global[i]
	}
	res.FLOPs = 6 * float64(t.cfg.Model.NumParams()) * float64(res.Tokens)
	return res, nil
}

// Loss is the mean validation loss of the base plus adapter over batches.
func (t *Trainer) Loss(adapter []float32, batches []data.Batch) (float64, error) {
	if err := t.model.SetTrainableParams(adapter); err != nil {
		return 0, err
	}
	if len(batches) == 0 {
		return 0, errors.New("netclient: no validation batches")
	}
	var sum float64
	for i, b := range batches {
		l, err := t.model.Loss(b.Tokens, b.Targets, b.B, b.T)
		if err != nil {
			return 0, fmt.Errorf("netclient: validation batch %d: %w", i, err)
		}
		sum += l
	}
	return sum / float64(len(batches)), nil
}

// InitialAdapter is the adapter a federation starts from: what EnableLoRA
// makes with cfg's seed (A Kaiming-uniform, B zero, so the adapted model
// equals the base).
func (t *Trainer) InitialAdapter() ([]float32, error) {
	if err := t.model.EnableLoRA(t.cfg.LoRA, t.cfg.Train.Seed); err != nil {
		return nil, err
	}
	return append([]float32(nil), t.model.TrainableParams()...), nil
}

// EncodeAdapter is the adapter blob format the coordinator publishes: the
// flat vector as little-endian float32 and nothing else; its SHA-256 names it.
func EncodeAdapter(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

// DecodeAdapter reads EncodeAdapter's format for n values, refusing a wrong
// length and NaN or Inf (naming the first bad index).
func DecodeAdapter(b []byte, n int) ([]float32, error) {
	if len(b) != 4*n {
		return nil, fmt.Errorf("netclient: adapter blob has %d bytes, want %d (%d float32)", len(b), 4*n, n)
	}
	v := make([]float32, n)
	for i := range v {
		x := math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return nil, fmt.Errorf("netclient: adapter blob value %d is %v", i, x)
		}
		v[i] = x
	}
	return v, nil
}

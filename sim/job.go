package sim

import (
	"crypto/ed25519"
	"fmt"

	"github.com/opencluster/opencluster/compress"
	"github.com/opencluster/opencluster/coordinator"
	"github.com/opencluster/opencluster/protocol"
	"github.com/opencluster/opencluster/train"
)

// Job is one round's work for one node, for the configured model.
type Job struct {
	Model string
	// Params is the base model's parameter count.
	Params int64
	// FLOPsPerToken is one QLoRA training step's FLOPs per token
	// (bench.CountStepFLOPs: 4N + 6·N_lora + attention).
	FLOPsPerToken float64
	TokensPerStep int
	Steps         int
	// AdapterElems is the LoRA adapter's length; DenseBytes its fp32 size.
	AdapterElems int
	DenseBytes   int64
	// DownBytes is the global adapter a node downloads each round (the
	// coordinator serves it as dense fp32); BaseBytes the packed 4-bit
	// base model, downloaded once (from a mirror, not the organiser).
	DownBytes, BaseBytes int64
	// UpBytes is one signed update on the wire: the real codec's payload
	// on the real adapter shapes, with protocol's header and signature.
	UpBytes int64
	Codec   string
	// Memory is the job as train's memory model sees it (see Fit).
	Memory train.MemoryJob
}

// Fit reports whether the job fits in budget bytes of GPU memory (cuda)
// or RAM, as train.PlanMemory plans it (the largest micro-batch first,
// then with activation checkpointing), whether the plan recomputes
// activations, and what its smallest plan needs when it does not fit.
func (j Job) Fit(budget int64, cuda bool) (fits, checkpointing bool, need int64) {
	m := j.Memory
	m.CUDA = cuda
	p, err := train.PlanMemory(m, budget, false)
	if err != nil {
		return false, false, p.Estimate.Peak()
	}
	return true, p.Checkpointing, p.Estimate.Peak()
}

// FLOPs is the useful work of one node's round.
func (j Job) FLOPs() float64 {
	return j.FLOPsPerToken * float64(j.TokensPerStep) * float64(j.Steps)
}

// JobSpec is what a Job is computed from: the model's train config (model,
// lora, quant and train sections), the adapter's tensor shapes
// (netclient.AdapterShapes), the FLOPs per token of one QLoRA step and the
// recipe.
type JobSpec struct {
	Name          string
	Config        train.Config
	Shapes        []protocol.Shape
	FLOPsPerToken float64
	Steps         int
	TokensPerStep int
	Codec         string
}

// NewJob measures the update size by encoding a delta of the real shapes
// with the real codec and framing it as protocol.MarshalUpdate does.
func NewJob(s JobSpec) (Job, error) {
	codec, err := compress.Parse(s.Codec)
	if err != nil {
		return Job{}, fmt.Errorf("--codec: %w", err)
	}
	if s.Steps < 1 || s.TokensPerStep < 1 || !(s.FLOPsPerToken > 0) {
		return Job{}, fmt.Errorf("job %s: steps %d, tokens per step %d and FLOPs per token %g must be positive", s.Name, s.Steps, s.TokensPerStep, s.FLOPsPerToken)
	}
	n := (&coordinator.Config{Shapes: s.Shapes}).N()
	if n == 0 || n > compress.MaxN {
		return Job{}, fmt.Errorf("job %s: the adapter has %d elements; want 1..%d", s.Name, n, compress.MaxN)
	}
	up, err := updateBytes(codec, s.Shapes, n)
	if err != nil {
		return Job{}, fmt.Errorf("job %s: %w", s.Name, err)
	}
	c := s.Config
	mem := train.MemoryJob{Model: c.Model, Mode: train.ModeQLoRA, LoRA: c.LoRA, Quant: c.Quant,
		MicroBatch: max(1, s.TokensPerStep/max(1, c.Train.SeqLen)), SeqLen: c.Train.SeqLen}
	if err := mem.Validate(); err != nil {
		return Job{}, fmt.Errorf("job %s: %w", s.Name, err)
	}
	return Job{Model: s.Name, Params: s.Config.Model.NumParams(), FLOPsPerToken: s.FLOPsPerToken, TokensPerStep: s.TokensPerStep,
		Steps: s.Steps, AdapterElems: n, DenseBytes: 4 * int64(n), DownBytes: 4 * int64(n), BaseBytes: baseBytes(s.Config),
		UpBytes: up, Codec: codec.String(), Memory: mem}, nil
}

// updateBytes encodes a delta of n elements (every entry non-zero, as in
// a trained update) and frames
// it as a signed update from a worker id of the real length.
func updateBytes(codec compress.Codec, shapes []protocol.Shape, n int) (int64, error) {
	r := newStream(uint64(n), tagDelta)
	delta := make([]float32, n)
	for i := range delta { // any non-zero values: the codec's size depends on n alone
		delta[i] = float32(r.float()-0.5) * 1e-3
	}
	st, err := compress.NewState(n, 0)
	if err != nil {
		return 0, err
	}
	p, err := codec.Encode(delta, st, 1)
	if err != nil {
		return 0, err
	}
	key := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	u := &protocol.Update{Round: 1, WorkerID: "w-" + protocol.KeyID(key.Public().(ed25519.PublicKey)), N: n, Shapes: shapes,
		Codec: codec.String(), Seed: 1, Tokens: 1, Payload: p.Bytes}
	b, err := protocol.MarshalUpdate(u, key)
	if err != nil {
		return 0, err
	}
	return int64(len(b)), nil
}

// nf4Bits is bits per weight of NF4 with block 64 and double quantization
// (4 bits, plus an 8-bit absmax per 64 values, plus a second-level fp32
// scale per 256 absmax values): the figure configs/*.yaml state.
const nf4Bits = 4.127

// baseBytes is the packed base model: linear weights in NF4, embeddings
// (and an untied lm_head) in bf16, norms in fp32.
func baseBytes(c train.Config) int64 {
	m := c.Model
	emb := int64(m.VocabSize) * int64(m.Dim)
	if !m.TiedEmbeddings {
		emb *= 2
	}
	linear := m.NumParams() - emb - int64(m.Dim)*(2*int64(m.Layers)+1)
	return int64(float64(linear)*nf4Bits/8) + 2*emb + 4*int64(m.Dim)*(2*int64(m.Layers)+1)
}

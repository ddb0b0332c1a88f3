package sim

import (
	"crypto/ed25519"
	"fmt"
	"math"

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
	// MemGPU and MemCPU are the bytes a training step needs on a GPU and
	// in host memory (see jobMemory).
	MemGPU, MemCPU int64
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
	gpu, cpu := jobMemory(s.Config, s.TokensPerStep, n)
	return Job{Model: s.Name, Params: s.Config.Model.NumParams(), FLOPsPerToken: s.FLOPsPerToken, TokensPerStep: s.TokensPerStep,
		Steps: s.Steps, AdapterElems: n, DenseBytes: 4 * int64(n), DownBytes: 4 * int64(n), BaseBytes: baseBytes(s.Config),
		UpBytes: up, Codec: codec.String(), MemGPU: gpu, MemCPU: cpu}, nil
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

// jobMemory estimates the bytes one QLoRA step needs on a GPU and in host
// memory. It stands in for the memory model train/ is getting (issue 10)
// and is its only call site here, to be replaced by it:
//
//   - the packed base (baseBytes);
//   - the adapter in fp32 with its gradient and AdamW's two moments (16 B
//     per element);
//   - activations kept for the backward pass: Korthikanti et al. 2022
//     ("Reducing Activation Recomputation in Large Transformer Models",
//     eq. 1) give s·b·h·(34 + 5·a·s/h) bytes per layer in 16-bit; the CPU
//     backend keeps them in fp32, twice that;
//   - logits and their gradient in fp32 (2·tokens·vocab·4 B);
//   - 0.5 GB of CUDA context on a GPU, 0.25 GB of runtime on the CPU.
func jobMemory(c train.Config, tokens, adapterElems int) (gpu, cpu int64) {
	m := c.Model
	s := float64(c.Train.SeqLen)
	if s <= 0 || s > float64(tokens) {
		s = float64(tokens)
	}
	b := float64(tokens) / s
	h, a := float64(m.Dim), float64(m.Heads)
	act16 := s * b * h * (34 + 5*a*s/h) * float64(m.Layers)
	logits := 2 * float64(tokens) * float64(m.VocabSize) * 4
	fixed := float64(baseBytes(c)) + 16*float64(adapterElems) + logits
	gpu = int64(math.Ceil(fixed + act16 + 0.5e9))
	cpu = int64(math.Ceil(fixed + 2*act16 + 0.25e9))
	return gpu, cpu
}

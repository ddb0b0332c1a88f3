package train

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"

	"github.com/opencluster/opencluster/train/backend"
)

// loraState holds the trainable low-rank adapters of every target module in
// one contiguous buffer (A then B per module, layers in order), with their
// gradients in another.
type loraState struct {
	cfg           LoRAConfig
	seed          uint64
	params, grads backend.Buf
	specs         []paramSpec // PEFT tensor names
}

// adapter is one module's LoRA pair: y += (α/r)·(dropout(x)·Aᵀ)·Bᵀ.
type adapter struct {
	A, B   backend.Buf // A [r,in], B [out,r]
	dA, dB backend.Buf
}

// scale is α/r.
func (s *loraState) scale() float32 { return float32(s.cfg.Alpha / float64(s.cfg.Rank)) }

// dropout is the drop probability in effect (0 outside training).
func (s *loraState) dropout(train bool) float32 {
	if !train {
		return 0
	}
	return float32(s.cfg.Dropout)
}

// key names the dropout stream of (seed, step, layer, module); element i's
// mask is backend.DropoutMask(key, i, p), so nothing needs checkpointing.
func (s *loraState) key(step, l, j int) uint64 {
	k := backend.Mix64(s.seed ^ 0x6c6f7261) // "lora"
	k = backend.Mix64(k + uint64(step))
	return backend.Mix64(k + uint64(l)*uint64(numLinear) + uint64(j))
}

// peftName is the PEFT safetensors name of module j's lora_A or lora_B.
func peftName(l, j int, which string) string {
	return "base_model.model." + strings.TrimSuffix(linearName(l, j), ".weight") + ".lora_" + which + ".weight"
}

// loraSpecs lays out the adapters of cfg's target modules.
func loraSpecs(c ModelConfig, cfg LoRAConfig) ([]paramSpec, int) {
	target := map[string]bool{}
	for _, t := range cfg.Targets {
		target[t] = true
	}
	var specs []paramSpec
	off := 0
	for l := 0; l < c.Layers; l++ {
		for j, name := range LinearNames {
			if !target[name] {
				continue
			}
			in, out := c.linShape(j)
			specs = append(specs,
				paramSpec{name: peftName(l, j, "A"), shape: []int{cfg.Rank, in}, off: off, n: cfg.Rank * in},
				paramSpec{name: peftName(l, j, "B"), shape: []int{out, cfg.Rank}, off: off + cfg.Rank*in, n: out * cfg.Rank})
			off += cfg.Rank*in + out*cfg.Rank
		}
	}
	return specs, off
}

// TensorSpec names one tensor and its shape.
type TensorSpec struct {
	Name  string
	Shape []int
}

// AdapterSpecs lists the LoRA tensors of adapters cfg on a model of shape c,
// in the order of the trainable vector, with PEFT names: for each layer, for
// each target module in LinearNames order, lora_A [r,in] then lora_B [out,r].
func AdapterSpecs(c ModelConfig, cfg LoRAConfig) []TensorSpec {
	specs, _ := loraSpecs(c, cfg)
	out := make([]TensorSpec, len(specs))
	for i, sp := range specs {
		out[i] = TensorSpec{Name: sp.name, Shape: append([]int(nil), sp.shape...)}
	}
	return out
}

// EnableLoRA switches to LoRA mode: A Kaiming-uniform (PEFT's
// kaiming_uniform_ with a=sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in))), B zero,
// on the target modules of every layer; only the adapters are trainable from
// then on. Calling it again replaces the adapters. The optimizer state is reset.
func (m *Model) EnableLoRA(cfg LoRAConfig, seed uint64) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if err := m.allocLoRA(cfg, seed); err != nil {
		return err
	}
	host := make([]float32, m.lora.params.Len())
	for i, sp := range m.lora.specs {
		if !strings.HasSuffix(sp.name, "lora_A.weight") {
			continue // B stays zero so the adapted model starts equal to the base
		}
		bound := 1 / math.Sqrt(float64(sp.shape[1]))
		rng := rand.New(rand.NewPCG(seed, uint64(i)))
		for k := sp.off; k < sp.off+sp.n; k++ {
			host[k] = float32((2*rng.Float64() - 1) * bound)
		}
	}
	m.be.Upload(m.lora.params, host)
	return nil
}

// allocLoRA lays out zeroed adapters for cfg and binds them to the layers.
func (m *Model) allocLoRA(cfg LoRAConfig, seed uint64) error {
	specs, total := loraSpecs(m.Config, cfg)
	if total == 0 {
		return fmt.Errorf("train: lora.targets %v select no module", cfg.Targets)
	}
	st := &loraState{cfg: cfg, seed: seed, specs: specs, params: m.be.Alloc(total), grads: m.be.Alloc(total)}
	for l := range m.layers {
		m.layers[l].ad = [numLinear]*adapter{}
	}
	for i := 0; i < len(specs); i += 2 {
		spA, spB := specs[i], specs[i+1]
		var l, j int
		for l = 0; l < m.Config.Layers; l++ {
			for j = 0; j < numLinear; j++ {
				if peftName(l, j, "A") == spA.name {
					m.layers[l].ad[j] = &adapter{
						A: m.be.View(st.params, spA.off, spA.n), dA: m.be.View(st.grads, spA.off, spA.n),
						B: m.be.View(st.params, spB.off, spB.n), dB: m.be.View(st.grads, spB.off, spB.n),
					}
				}
			}
		}
	}
	if m.lora != nil {
		m.be.Free(m.lora.params)
		m.be.Free(m.lora.grads)
	}
	m.lora = st
	m.dropMoments()
	if m.grads != nil { // the base is frozen from now on
		m.be.Free(m.grads)
		m.grads = nil
		m.bindParams()
	}
	m.resetActivations()
	return nil
}

package train

import (
	"errors"
	"fmt"

	"github.com/opencluster/opencluster/quant"
	"github.com/opencluster/opencluster/quant/safetensors"
)

// QuantizeBase freezes every linear weight of the decoder layers in 4-bit.
// Embedding, norms and lm_head stay fp32 and frozen. No dequantized copy is
// kept: the fp32 parameter buffer is rebuilt without the linears. A NaN or
// Inf weight is an error naming the tensor. Adapters, if any, are kept.
func (m *Model) QuantizeBase(q QuantConfig) error {
	if err := q.Validate(); err != nil {
		return err
	}
	if m.quant != nil {
		return errors.New("train: the base is already quantized")
	}
	f, err := quant.ParseFormat(q.Format)
	if err != nil {
		return err
	}
	var q4 [][numLinear]*quant.Tensor4
	for l := range m.layers {
		var row [numLinear]*quant.Tensor4
		for j := 0; j < numLinear; j++ {
			in, out := m.Config.linShape(j)
			host := make([]float32, in*out)
			m.be.Download(host, m.layers[l].lin[j])
			t, err := quant.Quantize4(host, []int{out, in}, f, q.BlockSize, q.DoubleQuant)
			if err != nil {
				return fmt.Errorf("train: quantizing %s: %w", linearName(l, j), err)
			}
			row[j] = t
		}
		q4 = append(q4, row)
	}
	m.setQuantized(q, q4)
	return nil
}

// setQuantized installs 4-bit linears and shrinks the fp32 buffer to the
// remaining tensors (copied over by name).
func (m *Model) setQuantized(q QuantConfig, q4 [][numLinear]*quant.Tensor4) {
	old, oldSpecs := m.params, m.specs
	specs, total := baseSpecs(m.Config, false)
	params := m.be.Alloc(total)
	byName := map[string]paramSpec{}
	for _, sp := range oldSpecs {
		byName[sp.name] = sp
	}
	for _, sp := range specs {
		o := byName[sp.name]
		m.be.Copy(m.be.View(params, sp.off, sp.n), m.be.View(old, o.off, o.n))
	}
	m.params, m.specs, m.grads = params, specs, nil
	m.bindParams()
	for l := range m.layers {
		for j := 0; j < numLinear; j++ {
			m.layers[l].q4host[j] = q4[l][j]
			m.layers[l].q4[j] = m.be.UploadQ4(q4[l][j])
		}
	}
	qc := q
	m.quant = &qc
	if m.lora == nil {
		m.m, m.v = nil, nil
	}
}

// BaseTensor4 returns the frozen 4-bit weight of module name ("q_proj"...)
// in layer l, or nil when the base is not quantized.
func (m *Model) BaseTensor4(l int, name string) *quant.Tensor4 {
	for j, n := range LinearNames {
		if n == name && l >= 0 && l < len(m.layers) {
			return m.layers[l].q4host[j]
		}
	}
	return nil
}

// appendQuantized adds every 4-bit linear in the bitsandbytes layout.
func (m *Model) appendQuantized(out []safetensors.Named) ([]safetensors.Named, error) {
	for l := range m.layers {
		for j := 0; j < numLinear; j++ {
			t := m.layers[l].q4host[j]
			if t == nil {
				return nil, fmt.Errorf("no 4-bit tensor for %s", linearName(l, j))
			}
			out = quant.AppendBnb(out, linearName(l, j), t)
		}
	}
	return out, nil
}

// loadQuantized reads every linear from the bitsandbytes layout, checks its
// shape against the config and installs it. qc may be zero (a file from
// elsewhere): it is then taken from the first tensor.
func (m *Model) loadQuantized(src fileSet, qc QuantConfig) error {
	q4 := make([][numLinear]*quant.Tensor4, m.Config.Layers)
	for l := range q4 {
		for j := 0; j < numLinear; j++ {
			name := linearName(l, j)
			var f *safetensors.File
			for _, ff := range src {
				if ff.Has(name) {
					f = ff
				}
			}
			if f == nil {
				return fmt.Errorf("tensor %s is missing", name)
			}
			t, err := quant.ReadBnb(f, name)
			if err != nil {
				return fmt.Errorf("tensor %s: %w", name, err)
			}
			in, out := m.Config.linShape(j)
			if !sameShape(t.Shape, []int{out, in}) {
				return fmt.Errorf("tensor %s has shape %v, want %v", name, t.Shape, []int{out, in})
			}
			q4[l][j] = t
		}
	}
	if qc.Format == "" {
		t := q4[0][0]
		qc = QuantConfig{Format: t.Format.String(), BlockSize: t.BlockSize, DoubleQuant: t.Nested != nil}
	}
	m.setQuantized(qc, q4)
	return nil
}

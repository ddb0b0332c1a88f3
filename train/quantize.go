package train

import (
	"errors"
	"fmt"
	"runtime/debug"

	"github.com/opencluster/opencluster/quant"
	"github.com/opencluster/opencluster/quant/safetensors"
	"github.com/opencluster/opencluster/train/backend"
)

// A quantized base holds its decoder linears in 4-bit (frozen, packed as
// quant.Tensor4, uploaded to the backend as they are made) and its
// embedding and lm_head in bfloat16 (frozen, widened a tile at a time when
// used); only the norms stay in the fp32 parameter buffer. Nothing holds a
// dequantized or fp32 copy of a frozen weight.

// QuantizeBase freezes every linear weight of the decoder layers in 4-bit
// and the embedding and lm_head in bfloat16. The fp32 parameter buffer is
// rebuilt with only the norms and the old one freed; no dequantized copy is
// kept. A NaN or Inf weight is an error naming the tensor. Adapters, if any,
// are kept.
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
	c := m.Config
	q4 := make([][numLinear]*quant.Tensor4, c.Layers)
	for l := range m.layers {
		for j := 0; j < numLinear; j++ {
			in, out := c.linShape(j)
			t, err := quant.Quantize4(m.hostCopy(m.layers[l].lin[j]), []int{out, in}, f, q.BlockSize, q.DoubleQuant)
			if err != nil {
				return fmt.Errorf("train: quantizing %s: %w", linearName(l, j), err)
			}
			q4[l][j] = t
		}
	}
	emb := narrow(m.hostCopy(m.wte))
	var head []uint16
	if !c.TiedEmbeddings {
		head = narrow(m.hostCopy(m.lmHead))
	}
	// Everything is quantized: nothing can fail from here on.
	old, oldSpecs := m.params, m.specs
	specs, total := baseSpecs(c, true)
	params := m.be.Alloc(total)
	byName := map[string]paramSpec{}
	for _, sp := range oldSpecs {
		byName[sp.name] = sp
	}
	for _, sp := range specs {
		o := byName[sp.name]
		m.be.Copy(m.be.View(params, sp.off, sp.n), m.be.View(old, o.off, o.n))
	}
	m.be.Free(old)
	if m.grads != nil {
		m.be.Free(m.grads)
	}
	m.params, m.specs, m.grads = params, specs, nil
	m.bindParams()
	for l := range q4 {
		for j, t := range q4[l] {
			m.setLinear4(l, j, t)
		}
	}
	m.setEmbed16(emb, head)
	m.markQuantized(q)
	debug.FreeOSMemory() // the fp32 weights just dropped are most of the heap
	return nil
}

// hostCopy returns b's values on the host: its own memory on the CPU
// backend (read only), a downloaded copy elsewhere.
func (m *Model) hostCopy(b backend.Buf) []float32 {
	if h := backend.HostSlice(b); h != nil {
		return h
	}
	return m.download(b)
}

func narrow(v []float32) []uint16 {
	h := make([]uint16, len(v))
	quant.NarrowBF16(h, v)
	return h
}

// setLinear4 installs the frozen 4-bit weight of module j in layer l,
// uploading it to the backend at once.
func (m *Model) setLinear4(l, j int, t *quant.Tensor4) {
	L := &m.layers[l]
	if L.q4[j] != nil {
		m.be.Free(L.q4[j])
	}
	L.q4host[j] = t
	L.q4[j] = m.be.UploadQ4(t)
	L.lin[j], L.dlin[j] = nil, nil
}

// setEmbed16 installs the frozen bfloat16 embedding and, untied, lm_head.
func (m *Model) setEmbed16(emb, head []uint16) {
	m.wte16host, m.wte16 = emb, m.be.UploadBF16(emb)
	m.lmHead16host, m.lmHead16 = emb, m.wte16
	if !m.Config.TiedEmbeddings {
		m.lmHead16host, m.lmHead16 = head, m.be.UploadBF16(head)
	}
	m.wte, m.lmHead, m.dwte, m.dlmHead = nil, nil, nil, nil
}

// markQuantized records the quantization once every frozen piece is in.
func (m *Model) markQuantized(q QuantConfig) {
	qc := q
	m.quant = &qc
	if m.lora == nil {
		m.dropMoments()
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

// appendFrozen adds a quantized base's frozen tensors: the bfloat16
// embedding and lm_head, then every 4-bit linear in the bitsandbytes layout.
func (m *Model) appendFrozen(out []safetensors.Named) ([]safetensors.Named, error) {
	c := m.Config
	out = append(out, safetensors.Named{Name: "model.embed_tokens.weight",
		Tensor: safetensors.BF16Tensor([]int{c.VocabSize, c.Dim}, m.wte16host)})
	if !c.TiedEmbeddings {
		out = append(out, safetensors.Named{Name: "lm_head.weight",
			Tensor: safetensors.BF16Tensor([]int{c.VocabSize, c.Dim}, m.lmHead16host)})
	}
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

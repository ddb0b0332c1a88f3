package train

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/opencluster/opencluster/quant"
	"github.com/opencluster/opencluster/quant/safetensors"
	"github.com/opencluster/opencluster/train/backend"
)

// Loading streams: each safetensors file is read tensor by tensor through a
// bounded buffer (safetensors.Reader), a linear being quantized goes through
// one reused fp32 buffer the size of the largest linear, and the frozen
// pieces are uploaded as they are made. The whole checkpoint is never in
// memory, and a quantized base never exists in fp32.

// readChunkBytes is the read buffer of a streaming load.
const readChunkBytes = 8 << 20

// LoadModel reads a base checkpoint: an fp32 safetensors file written by
// SaveBase, a bitsandbytes-layout 4-bit file (then the model is quantized:
// 4-bit linears, bfloat16 embedding and lm_head), or a Hugging Face model
// folder (config.json + model.safetensors, or shards listed in
// model.safetensors.index.json; F32/F16/BF16 weights). Missing or
// mis-shaped tensors are errors that name the tensor.
func LoadModel(path string, be backend.Backend) (*Model, error) {
	return loadBase(path, be, nil)
}

// LoadQuantized reads a base checkpoint as LoadModel does, but freezes it as
// it streams in: each linear is quantized as q says the moment it is read
// (unless the file holds it packed already, whose own settings then win),
// and the embedding and lm_head are held in bfloat16. The fp32 model is
// never materialised: peak memory is the quantized model plus one linear.
func LoadQuantized(path string, be backend.Backend, q QuantConfig) (*Model, error) {
	if err := q.Validate(); err != nil {
		return nil, err
	}
	return loadBase(path, be, &q)
}

// NewQuantizedModel builds NewModel's randomly initialised model straight
// into its quantized form: each linear is drawn into one reused fp32 buffer
// and quantized at once, the embedding and lm_head are drawn a row at a
// time into bfloat16. The values are NewModel's (same seed, same streams),
// so the result equals NewModel followed by QuantizeBase, without ever
// holding the fp32 model.
func NewQuantizedModel(cfg ModelConfig, be backend.Backend, seed uint64, q QuantConfig) (*Model, error) {
	if err := q.Validate(); err != nil {
		return nil, err
	}
	f, err := quant.ParseFormat(q.Format)
	if err != nil {
		return nil, err
	}
	m, err := newEmpty(cfg, be, true)
	if err != nil {
		return nil, err
	}
	full, _ := baseSpecs(cfg, false)
	own := m.specIndex()
	lin := linearIndexByName(cfg)
	var emb, head []uint16
	var scratch []float32
	for i, sp := range full {
		init := newInit(cfg, sp, seed, i)
		if osp, ok := own[sp.name]; ok {
			m.fillParam(osp, init.fill)
			continue
		}
		if lj, ok := lin[sp.name]; ok {
			if cap(scratch) < sp.n {
				scratch = make([]float32, maxLinear(cfg))
			}
			w := scratch[:sp.n]
			init.fill(w)
			t, err := quant.Quantize4(w, sp.shape, f, q.BlockSize, q.DoubleQuant)
			if err != nil {
				return nil, fmt.Errorf("train: quantizing %s: %w", sp.name, err)
			}
			m.setLinear4(lj[0], lj[1], t)
			continue
		}
		bits := make([]uint16, sp.n) // the embedding or lm_head, a row at a time
		row := make([]float32, cfg.Dim)
		for r := 0; r < sp.n; r += cfg.Dim {
			init.fill(row)
			quant.NarrowBF16(bits[r:], row)
		}
		if sp.name == "lm_head.weight" {
			head = bits
		} else {
			emb = bits
		}
	}
	m.setEmbed16(emb, head)
	m.markQuantized(q)
	releaseScratch()
	return m, nil
}

// releaseScratch collects the load's scratch (the fp32 linear, the read
// buffers) once the model is built, so the first step's allocations reuse
// those pages instead of adding to the peak. The model's memory holds no
// pointers, so the collection is quick even for a 7B model.
func releaseScratch() { runtime.GC() }

// specIndex maps the names of m's fp32 tensors to their specs.
func (m *Model) specIndex() map[string]paramSpec {
	idx := make(map[string]paramSpec, len(m.specs))
	for _, sp := range m.specs {
		idx[sp.name] = sp
	}
	return idx
}

// linearIndexByName maps every decoder linear's name to its (layer, module).
func linearIndexByName(c ModelConfig) map[string][2]int {
	idx := make(map[string][2]int, c.Layers*numLinear)
	for l := 0; l < c.Layers; l++ {
		for j := 0; j < numLinear; j++ {
			idx[linearName(l, j)] = [2]int{l, j}
		}
	}
	return idx
}

// maxLinear is the element count of the largest decoder linear.
func maxLinear(c ModelConfig) int {
	n := 0
	for j := 0; j < numLinear; j++ {
		in, out := c.linShape(j)
		n = max(n, in*out)
	}
	return n
}

// baseFiles are the safetensors files of one checkpoint, open for
// tensor-by-tensor reads. It is a safetensors.Source over all of them.
type baseFiles []*safetensors.Reader

func (fs baseFiles) find(name string) *safetensors.Reader {
	for _, f := range fs {
		if f.Has(name) {
			return f
		}
	}
	return nil
}

func (fs baseFiles) Has(name string) bool { return fs.find(name) != nil }

func (fs baseFiles) Tensor(name string) (safetensors.Tensor, error) {
	f := fs.find(name)
	if f == nil {
		return safetensors.Tensor{}, fmt.Errorf("tensor %s is missing", name)
	}
	return f.Tensor(name)
}

func (fs baseFiles) Close() {
	for _, f := range fs {
		f.Close()
	}
}

// openBase opens a checkpoint file or Hugging Face folder and reads its
// config; quantMeta is the opencluster.quant metadata of a file we wrote.
func openBase(path string) (cfg ModelConfig, info HFInfo, files baseFiles, quantMeta string, err error) {
	st, err := os.Stat(path)
	if err != nil {
		return cfg, info, nil, "", fmt.Errorf("train: base model: %w", err)
	}
	defer func() {
		if err != nil {
			files.Close()
			files = nil
		}
	}()
	if st.IsDir() {
		if cfg, info, err = ReadHFConfig(path); err != nil {
			return cfg, info, nil, "", err
		}
		names, err := shardNames(path)
		if err != nil {
			return cfg, info, nil, "", err
		}
		for _, n := range names {
			f, err := safetensors.OpenReader(filepath.Join(path, n))
			if err != nil {
				return cfg, info, files, "", fmt.Errorf("train: %w", err)
			}
			files = append(files, f)
		}
		return cfg, info, files, "", nil
	}
	f, err := safetensors.OpenReader(path)
	if err != nil {
		return cfg, info, nil, "", fmt.Errorf("train: %w", err)
	}
	files = baseFiles{f}
	js, ok := f.Metadata[metaConfig]
	if !ok {
		return cfg, info, files, "", fmt.Errorf("train: %s has no %q metadata; pass a Hugging Face folder (config.json + safetensors) instead", path, metaConfig)
	}
	if cfg, info, err = parseHFConfig([]byte(js), path+" metadata "+metaConfig, false); err != nil {
		return cfg, info, files, "", fmt.Errorf("train: %w", err)
	}
	return cfg, info, files, f.Metadata[metaQuant], nil
}

// ReadBaseConfig reads only the model shape of a base checkpoint (its
// config.json or metadata), so a job can be planned before it is loaded.
func ReadBaseConfig(path string) (ModelConfig, error) {
	cfg, _, files, _, err := openBase(path)
	files.Close()
	return cfg, err
}

// loadBase reads the checkpoint at path; q non-nil quantizes it as it loads.
func loadBase(path string, be backend.Backend, q *QuantConfig) (*Model, error) {
	cfg, info, files, quantMeta, err := openBase(path)
	if err != nil {
		return nil, err
	}
	defer files.Close()
	packed := quantMeta != ""
	if f := files.find(linearName(0, modQ)); f != nil {
		if dt, _, _ := f.Info(linearName(0, modQ)); dt == "U8" {
			packed = true // a 4-bit file written by someone else: packed U8 weights
		}
	}
	if info.Quant != nil && !packed {
		return nil, fmt.Errorf("train: %s: config.json has a bitsandbytes quantization_config but %s is not a packed 4-bit tensor", path, linearName(0, modQ))
	}
	m, err := newEmpty(cfg, be, packed || q != nil)
	if err != nil {
		return nil, fmt.Errorf("train: %s: %w", path, err)
	}
	var largest int64 = 8
	for _, f := range files {
		largest = max(largest, f.MaxTensorBytes())
	}
	ld := &loader{files: files, buf: make([]byte, min(readChunkBytes, largest))}
	if err := m.loadFrom(ld, packed, quantMeta, q); err != nil {
		return nil, fmt.Errorf("train: %s: %w", path, err)
	}
	m.Info = info
	releaseScratch()
	return m, nil
}

// loadFrom fills m (laid out by newEmpty) from the checkpoint.
func (m *Model) loadFrom(ld *loader, packed bool, quantMeta string, q *QuantConfig) error {
	for _, sp := range m.specs {
		if err := m.loadParam(ld, sp); err != nil {
			return err
		}
	}
	if !packed && q == nil {
		return nil
	}
	c := m.Config
	shape := []int{c.VocabSize, c.Dim}
	emb, err := ld.bf16("model.embed_tokens.weight", shape)
	if err != nil {
		return err
	}
	var head []uint16
	if !c.TiedEmbeddings {
		if head, err = ld.bf16("lm_head.weight", shape); err != nil {
			return err
		}
	}
	var qc QuantConfig
	if packed {
		if quantMeta != "" {
			if err := json.Unmarshal([]byte(quantMeta), &qc); err != nil {
				return fmt.Errorf("metadata %s: %w", metaQuant, err)
			}
		}
		for l := 0; l < c.Layers; l++ {
			for j := 0; j < numLinear; j++ {
				in, out := c.linShape(j)
				t, err := ld.packed4(linearName(l, j), in, out)
				if err != nil {
					return err
				}
				m.setLinear4(l, j, t)
			}
		}
		if qc.Format == "" { // a file from elsewhere: its first tensor says
			t := m.layers[0].q4host[0]
			qc = QuantConfig{Format: t.Format.String(), BlockSize: t.BlockSize, DoubleQuant: t.Nested != nil}
		}
	} else {
		qc = *q
		f, err := quant.ParseFormat(qc.Format)
		if err != nil {
			return err
		}
		scratch := make([]float32, maxLinear(c))
		for l := 0; l < c.Layers; l++ {
			for j := 0; j < numLinear; j++ {
				in, out := c.linShape(j)
				w := scratch[:in*out]
				name := linearName(l, j)
				if err := ld.f32(name, []int{out, in}, w); err != nil {
					return err
				}
				t, err := quant.Quantize4(w, []int{out, in}, f, qc.BlockSize, qc.DoubleQuant)
				if err != nil {
					return fmt.Errorf("quantizing %s: %w", name, err)
				}
				m.setLinear4(l, j, t)
			}
		}
	}
	m.setEmbed16(emb, head)
	m.markQuantized(qc)
	return nil
}

// loadParam reads one fp32 tensor into the parameter buffer: in place on the
// CPU, through one tensor-sized host buffer elsewhere.
func (m *Model) loadParam(ld *loader, sp paramSpec) error {
	view := m.be.View(m.params, sp.off, sp.n)
	dst := backend.HostSlice(view)
	if dst == nil {
		dst = make([]float32, sp.n)
	}
	if err := ld.f32(sp.name, sp.shape, dst); err != nil {
		return err
	}
	if backend.HostSlice(view) == nil {
		m.be.Upload(view, dst)
	}
	return nil
}

// loader reads tensors of a checkpoint through one bounded buffer.
type loader struct {
	files baseFiles
	buf   []byte
	wide  []float32 // one chunk widened, for bf16
}

// open finds tensor name and checks its shape and that it is a float tensor.
func (ld *loader) open(name string, shape []int) (*safetensors.Reader, string, error) {
	f := ld.files.find(name)
	if f == nil {
		return nil, "", fmt.Errorf("tensor %s is missing", name)
	}
	dt, sh, err := f.Info(name)
	if err != nil {
		return nil, "", err
	}
	if !sameShape(sh, shape) {
		return nil, "", fmt.Errorf("tensor %s has shape %v, want %v", name, sh, shape)
	}
	if !(safetensors.Tensor{DType: dt}).IsFloat() {
		return nil, "", fmt.Errorf("tensor %s has dtype %s, want F32, F16 or BF16", name, dt)
	}
	return f, dt, nil
}

// f32 reads tensor name (of shape) into dst as float32, refusing NaN and Inf.
func (ld *loader) f32(name string, shape []int, dst []float32) error {
	f, dt, err := ld.open(name, shape)
	if err != nil {
		return err
	}
	err = f.ReadChunks(name, ld.buf, func(first int, data []byte) error {
		size, _ := safetensors.DTypeSize(dt)
		return safetensors.DecodeFloat32(dst[first:first+len(data)/size], dt, data)
	})
	if err != nil {
		return fmt.Errorf("tensor %s: %w", name, err)
	}
	if i := firstNonFinite(dst); i >= 0 {
		return fmt.Errorf("tensor %s: element %d is %v", name, i, dst[i])
	}
	return nil
}

// bf16 reads tensor name (of shape) rounded to bfloat16, refusing NaN and
// Inf. A BF16 tensor comes through unchanged.
func (ld *loader) bf16(name string, shape []int) ([]uint16, error) {
	f, dt, err := ld.open(name, shape)
	if err != nil {
		return nil, err
	}
	size, _ := safetensors.DTypeSize(dt)
	out := make([]uint16, shapeProduct(shape))
	err = f.ReadChunks(name, ld.buf, func(first int, data []byte) error {
		n := len(data) / size
		if cap(ld.wide) < n {
			ld.wide = make([]float32, min(len(ld.buf)/size, len(out)))
		}
		w := ld.wide[:n]
		if err := safetensors.DecodeFloat32(w, dt, data); err != nil {
			return err
		}
		if i := firstNonFinite(w); i >= 0 {
			return fmt.Errorf("element %d is %v", first+i, w[i])
		}
		quant.NarrowBF16(out[first:], w)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("tensor %s: %w", name, err)
	}
	return out, nil
}

// packed4 reads a 4-bit linear in the bitsandbytes layout and checks its shape.
func (ld *loader) packed4(name string, in, out int) (*quant.Tensor4, error) {
	if !ld.files.Has(name) {
		return nil, fmt.Errorf("tensor %s is missing", name)
	}
	t, err := quant.ReadBnb(ld.files, name)
	if err != nil {
		return nil, fmt.Errorf("tensor %s: %w", name, err)
	}
	if !sameShape(t.Shape, []int{out, in}) {
		return nil, fmt.Errorf("tensor %s has shape %v, want %v", name, t.Shape, []int{out, in})
	}
	return t, nil
}

func shapeProduct(shape []int) int {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return n
}

package train

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"

	"github.com/opencluster/opencluster/internal/atomicfile"
	"github.com/opencluster/opencluster/quant"
	"github.com/opencluster/opencluster/quant/safetensors"
)

// SaveOptions says how SaveHF writes a Hugging Face model folder.
type SaveOptions struct {
	// DType is the dtype of the dense float tensors: "F32" (the default),
	// "BF16" or "F16". A quantized base keeps its bfloat16 embedding.
	DType string
	// Merge writes every decoder linear dense: 4-bit weights dequantized
	// and each LoRA adapter added as (α/r)·B·A, so the folder is the
	// fine-tuned model on its own (no quantization_config, no adapter).
	Merge bool
	// NameOrPath is written as _name_or_path; "" keeps the base's.
	NameOrPath string
	// TokenizerDir is a folder whose tokenizer files are copied beside the
	// weights; "" copies them from the folder the model was loaded from.
	TokenizerDir string
	// ChatTemplate, when set, replaces the tokenizer's chat template: it is
	// written as chat_template.jinja, as transformers saves one, and the
	// chat_template key of the copied tokenizer_config.json is dropped, so
	// the folder holds one template.
	ChatTemplate string
	// MaxShardBytes splits the weights into model-0000k-of-0000n files
	// with an index once they outgrow it; 0 means DefaultMaxShardBytes.
	MaxShardBytes int64
}

// DefaultMaxShardBytes bounds one safetensors shard, and with it the
// memory SaveHF holds at once.
const DefaultMaxShardBytes = 2 << 30

// TokenizerFiles are the files of a Hugging Face folder that describe its
// tokenizer and generation defaults; SaveHF copies the ones present.
var TokenizerFiles = []string{"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
	"tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja",
	"chat_template.json", "generation_config.json"}

// folderTensor is one entry of the folder's weights, made only when its
// shard is written.
type folderTensor struct {
	name  string
	bytes int64
	make  func() ([]safetensors.Named, error)
}

// SaveHF writes the model as a Hugging Face folder that transformers loads
// as it is: config.json, model.safetensors (or shards with
// model.safetensors.index.json) and the tokenizer files. A quantized base is
// written in the bitsandbytes 4-bit layout with quantization_config (unless
// o.Merge). The folder is built beside dir and swapped in at the end, so a
// failure leaves dir as it was; an existing dir that is not a model folder
// (no config.json) is refused rather than replaced.
func (m *Model) SaveHF(dir string, o SaveOptions) error {
	stage, err := m.prepareHF(dir, o)
	if err != nil {
		return err
	}
	return commitStaged(stage)
}

// prepareHF checks the folder and gathers its tensors (fp32 ones as views
// of the live weights on the CPU backend) and returns the function that
// writes the whole folder beside dir, to be swapped in by its Commit.
func (m *Model) prepareHF(dir string, o SaveOptions) (func() (staged, error), error) {
	if o.DType == "" {
		o.DType = "F32"
	}
	if _, err := safetensors.DTypeSize(o.DType); err != nil || !(safetensors.Tensor{DType: o.DType}).IsFloat() || o.DType == "F64" {
		return nil, fmt.Errorf("train: SaveHF: dtype %q: want F32, BF16 or F16", o.DType)
	}
	if o.MaxShardBytes <= 0 {
		o.MaxShardBytes = DefaultMaxShardBytes
	}
	if err := checkReplaceable(dir); err != nil {
		return nil, err
	}
	tensors, err := m.folderTensors(o)
	if err != nil {
		return nil, fmt.Errorf("train: SaveHF %s: %w", dir, err)
	}
	info := m.Info
	if o.NameOrPath != "" {
		info.NameOrPath = o.NameOrPath
	}
	var q *QuantConfig
	if m.quant != nil && !o.Merge {
		q = m.quant
	}
	cfg, err := m.Config.HFConfigJSON(info, torchDType[o.DType], q)
	if err != nil {
		return nil, fmt.Errorf("train: SaveHF %s: %w", dir, err)
	}
	src := o.TokenizerDir
	if src == "" {
		src = m.Info.Dir
	}
	return func() (_ staged, err error) {
		parent := filepath.Dir(filepath.Clean(dir))
		if err := os.MkdirAll(parent, 0o755); err != nil {
			return nil, fmt.Errorf("train: SaveHF: %w", err)
		}
		tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".tmp*")
		if err != nil {
			return nil, fmt.Errorf("train: SaveHF: %w", err)
		}
		defer func() {
			if err != nil {
				os.RemoveAll(tmp)
			}
		}()
		if err := writeShards(tmp, tensors, o.MaxShardBytes); err != nil {
			return nil, fmt.Errorf("train: SaveHF %s: %w", dir, err)
		}
		if err := atomicfile.WriteFile(filepath.Join(tmp, "config.json"), cfg, 0o644); err != nil {
			return nil, fmt.Errorf("train: SaveHF: %w", err)
		}
		if err := copyTokenizerFiles(src, tmp); err != nil {
			return nil, fmt.Errorf("train: SaveHF %s: %w", dir, err)
		}
		if o.ChatTemplate != "" {
			if err := writeChatTemplate(tmp, o.ChatTemplate); err != nil {
				return nil, fmt.Errorf("train: SaveHF %s: %w", dir, err)
			}
		}
		return staged{stagedDir{tmp: tmp, dir: dir}}, nil
	}, nil
}

// stagedDir is a folder written in full at tmp, to be swapped in at dir.
type stagedDir struct{ tmp, dir string }

func (d stagedDir) Commit() error { return swapDir(d.tmp, d.dir) }
func (d stagedDir) Abort()        { os.RemoveAll(d.tmp) }

var torchDType = map[string]string{"F32": "float32", "BF16": "bfloat16", "F16": "float16"}

// checkReplaceable refuses to replace a folder that is not a model folder.
func checkReplaceable(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("train: SaveHF: %w", err)
	}
	if len(entries) == 0 {
		return nil
	}
	if _, err := os.Stat(filepath.Join(dir, "config.json")); err != nil {
		return fmt.Errorf("train: SaveHF: %s exists and is not a model folder (no config.json); refusing to replace it", dir)
	}
	return nil
}

// swapDir puts the finished folder tmp in place of dir.
func swapDir(tmp, dir string) error {
	var old string
	if _, err := os.Stat(dir); err == nil {
		old = fmt.Sprintf("%s.old%d", tmp, rand.Uint32())
		if err := os.Rename(dir, old); err != nil {
			return fmt.Errorf("train: SaveHF: %w", err)
		}
	}
	if err := os.Rename(tmp, dir); err != nil {
		if old != "" {
			os.Rename(old, dir)
		}
		return fmt.Errorf("train: SaveHF: %w", err)
	}
	if old != "" {
		os.RemoveAll(old)
	}
	return nil
}

// copyTokenizerFiles copies the tokenizer files present in src to dst.
func copyTokenizerFiles(src, dst string) error {
	if src == "" {
		return nil
	}
	for _, name := range TokenizerFiles {
		b, err := os.ReadFile(filepath.Join(src, name))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		if err := atomicfile.WriteFile(filepath.Join(dst, name), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// writeChatTemplate writes src as dir/chat_template.jinja and removes the
// other places a template could come from: tokenizer_config.json's
// chat_template key and a processor's chat_template.json.
func writeChatTemplate(dir, src string) error {
	if err := atomicfile.WriteFile(filepath.Join(dir, "chat_template.jinja"), []byte(src), 0o644); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(dir, "chat_template.json")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	path := filepath.Join(dir, "tokenizer_config.json")
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var cfg map[string]json.RawMessage
	if err := json.Unmarshal(b, &cfg); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if _, ok := cfg["chat_template"]; !ok {
		return nil
	}
	delete(cfg, "chat_template")
	out, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(path, append(out, '\n'), 0o644)
}

// writeShards writes the tensors in order, a shard of at most maxBytes at
// a time (a tensor larger than that gets a shard of its own).
func writeShards(dir string, tensors []folderTensor, maxBytes int64) error {
	var shards [][]folderTensor
	var size int64
	for _, t := range tensors {
		if len(shards) == 0 || (size+t.bytes > maxBytes && size > 0) {
			shards = append(shards, nil)
			size = 0
		}
		shards[len(shards)-1] = append(shards[len(shards)-1], t)
		size += t.bytes
	}
	weightMap := map[string]string{}
	var total int64
	for i, shard := range shards {
		name := "model.safetensors"
		if len(shards) > 1 {
			name = fmt.Sprintf("model-%05d-of-%05d.safetensors", i+1, len(shards))
		}
		var named []safetensors.Named
		for _, t := range shard {
			n, err := t.make()
			if err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
			for _, x := range n {
				weightMap[x.Name] = name
				total += int64(len(x.Tensor.Data))
			}
			named = append(named, n...)
		}
		if err := safetensors.Write(filepath.Join(dir, name), named, map[string]string{"format": "pt"}); err != nil {
			return err
		}
	}
	if len(shards) < 2 {
		return nil
	}
	idx, err := json.MarshalIndent(map[string]any{"metadata": map[string]any{"total_size": total}, "weight_map": weightMap}, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(dir, "model.safetensors.index.json"), append(idx, '\n'), 0o644)
}

// folderTensors lists the model's tensors in Hugging Face order.
func (m *Model) folderTensors(o SaveOptions) ([]folderTensor, error) {
	c := m.Config
	size, _ := safetensors.DTypeSize(o.DType)
	specs := m.specIndex()
	var out []folderTensor
	dense := func(name string, shape []int, values func() ([]float32, error)) {
		out = append(out, folderTensor{name: name, bytes: int64(shapeProduct(shape) * size), make: func() ([]safetensors.Named, error) {
			v, err := values()
			if err != nil {
				return nil, err
			}
			t, err := safetensors.FloatTensor(o.DType, shape, v)
			return []safetensors.Named{{Name: name, Tensor: t}}, err
		}})
	}
	var missing []string
	param := func(name string) {
		sp, ok := specs[name]
		if !ok {
			missing = append(missing, name)
			return
		}
		view := m.be.View(m.params, sp.off, sp.n)
		if o.DType == "F32" { // written from the live weights where they are in host memory
			out = append(out, folderTensor{name: name, bytes: 4 * int64(sp.n), make: func() ([]safetensors.Named, error) {
				return []safetensors.Named{{Name: name, Tensor: m.tensorOf(sp.shape, view)}}, nil
			}})
			return
		}
		dense(name, sp.shape, func() ([]float32, error) { return m.download(view), nil })
	}
	embedding := func(name string, bits []uint16) { // a quantized base's bfloat16 embedding or lm_head
		shape := []int{c.VocabSize, c.Dim}
		if o.Merge {
			dense(name, shape, func() ([]float32, error) {
				v := make([]float32, len(bits))
				quant.WidenBF16(v, bits)
				return v, nil
			})
			return
		}
		out = append(out, folderTensor{name: name, bytes: int64(2 * len(bits)), make: func() ([]safetensors.Named, error) {
			return []safetensors.Named{{Name: name, Tensor: safetensors.BF16Tensor(shape, bits)}}, nil
		}})
	}
	if m.wte16 != nil {
		embedding("model.embed_tokens.weight", m.wte16host)
	} else {
		param("model.embed_tokens.weight")
	}
	for l := 0; l < c.Layers; l++ {
		for j := 0; j < numLinear; j++ {
			if j == modQ {
				param(layerName(l, "input_layernorm.weight"))
			}
			if j == modGate {
				param(layerName(l, "post_attention_layernorm.weight"))
			}
			name := linearName(l, j)
			in, outDim := c.linShape(j)
			L := &m.layers[l]
			switch {
			case o.Merge:
				l, j := l, j
				dense(name, []int{outDim, in}, func() ([]float32, error) { return m.mergedLinear(l, j), nil })
			case L.q4host[j] != nil:
				t := L.q4host[j]
				out = append(out, folderTensor{name: name, bytes: int64(len(t.Packed) + 4*len(t.Absmax)), make: func() ([]safetensors.Named, error) {
					return quant.AppendBnb(nil, name, t), nil
				}})
			default:
				param(name)
			}
			if c.hasBias(j) {
				param(biasName(l, j))
			}
		}
	}
	param("model.norm.weight")
	if !c.TiedEmbeddings {
		if m.lmHead16 != nil {
			embedding("lm_head.weight", m.lmHead16host)
		} else {
			param("lm_head.weight")
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("the model holds no tensor %s", strings.Join(missing, ", "))
	}
	return out, nil
}

// mergedLinear returns the dense weight [out,in] of module j in layer l:
// the fp32 or dequantized 4-bit base plus, with an adapter, (α/r)·B·A.
func (m *Model) mergedLinear(l, j int) []float32 {
	L := &m.layers[l]
	in, out := m.Config.linShape(j)
	w := make([]float32, in*out)
	if t := L.q4host[j]; t != nil {
		t.Dequantize(w)
	} else {
		m.be.Download(w, L.lin[j])
	}
	ad := L.ad[j]
	if ad == nil {
		return w
	}
	buf := m.be.Alloc(in * out)
	defer m.be.Free(buf)
	m.be.Upload(buf, w)
	// W += scale·B[out,r]·A[r,in]: the input-gradient product dinp += dout·w
	// with dout = B and w = A.
	m.be.MatmulBackward(buf, nil, ad.B, nil, ad.A, out, in, m.lora.cfg.Rank, m.lora.scale())
	m.be.Download(w, buf)
	return w
}

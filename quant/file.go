package quant

import (
	"fmt"
	"os"
	"strings"

	"github.com/opencluster/opencluster/quant/safetensors"
)

// Options says how QuantizeFile quantizes a checkpoint.
type Options struct {
	Format            Format
	BlockSize         int  // 0 means DefaultBlockSize
	DoubleQuant       bool // double-quantize the absmax values
	IncludeLMHead     bool // also quantize lm_head.weight
	IncludeEmbeddings bool // also quantize token/position embeddings
}

// Report summarizes what QuantizeFile did.
type Report struct {
	Quantized    int   // tensors quantized
	Copied       int   // tensors copied unchanged
	Params       int64 // elements in the quantized tensors
	BytesBefore  int64 // size of the input file
	BytesAfter   int64 // size of the output file
	BitsPerParam float64
}

// ShouldQuantize reports whether QuantizeFile quantizes the tensor called
// name with shape: 2-D linear weights ("*.weight"), but not norms,
// embeddings (embed_tokens, wte, wpe) or lm_head unless opts asks for them.
func ShouldQuantize(name string, shape []int, opts Options) bool {
	if !strings.HasSuffix(name, ".weight") || len(shape) != 2 {
		return false
	}
	base := strings.TrimSuffix(name, ".weight")
	last := base[strings.LastIndexByte(base, '.')+1:]
	switch {
	case strings.Contains(last, "norm") || strings.HasPrefix(last, "ln_"):
		return false
	case last == "embed_tokens" || last == "wte" || last == "wpe" || strings.Contains(last, "embed"):
		return opts.IncludeEmbeddings
	case last == "lm_head":
		return opts.IncludeLMHead
	}
	return true
}

// QuantizeFile reads the safetensors checkpoint in, quantizes the tensors
// ShouldQuantize picks into the bitsandbytes 4-bit layout, copies every other
// tensor (and tensors already in that layout) unchanged, keeps the metadata,
// and writes out atomically. A NaN or Inf weight is an error naming the
// tensor and element.
func QuantizeFile(in, out string, opts Options) (Report, error) {
	var rep Report
	if opts.BlockSize == 0 {
		opts.BlockSize = DefaultBlockSize
	}
	if err := checkBlockSize(opts.BlockSize); err != nil {
		return rep, err
	}
	if opts.Format != NF4 && opts.Format != FP4 {
		return rep, fmt.Errorf("quant: unknown 4-bit format %d", opts.Format)
	}
	f, err := safetensors.Read(in)
	if err != nil {
		return rep, err
	}
	if st, err := os.Stat(in); err == nil {
		rep.BytesBefore = st.Size()
	}
	var outT []safetensors.Named
	var bits float64
	for _, name := range f.Names() {
		t, _ := f.Tensor(name)
		if !t.IsFloat() || IsBnb(f, name) || IsBnbCompanion(name) || !ShouldQuantize(name, t.Shape, opts) {
			outT = append(outT, safetensors.Named{Name: name, Tensor: t})
			rep.Copied++
			continue
		}
		data, err := t.Float32()
		if err != nil {
			return rep, fmt.Errorf("%s: tensor %q: %w", in, name, err)
		}
		q, err := Quantize4(data, t.Shape, opts.Format, opts.BlockSize, opts.DoubleQuant)
		if err != nil {
			return rep, fmt.Errorf("%s: tensor %q: %w", in, name, err)
		}
		outT = AppendBnb(outT, name, q)
		rep.Quantized++
		rep.Params += int64(q.Len())
		bits += q.BitsPerParam() * float64(q.Len())
	}
	if rep.Params > 0 {
		rep.BitsPerParam = bits / float64(rep.Params)
	}
	if err := safetensors.Write(out, outT, f.Metadata); err != nil {
		return rep, err
	}
	if st, err := os.Stat(out); err == nil {
		rep.BytesAfter = st.Size()
	}
	return rep, nil
}

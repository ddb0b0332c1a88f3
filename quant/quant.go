// Package quant implements blockwise 4-bit (NF4, FP4) and 8-bit quantization
// exactly as bitsandbytes defines it, double quantization of the absmax
// values, and the Hugging Face bitsandbytes safetensors layout.
//
// A 4-bit tensor is cut into blocks of BlockSize elements (64 by default).
// Each block keeps its largest magnitude (absmax) in fp32; each element is
// multiplied by 1/absmax and coded as the nearest of 16 values through
// bitsandbytes' decision tree. Two codes share a byte, the first element of
// the pair in the high nibble. With double quantization the absmax values
// minus their mean are themselves coded in 8 bits with the signed dynamic map
// in blocks of 256, which brings the cost from 4.5 to about 4.127 bits per
// parameter at block size 64.
//
// The plain loops here are the reference; DequantizeRange is the fast path
// the CPU backend calls inside its NF4 matmul, and it never allocates.
package quant

import (
	"fmt"
	"math"
	"runtime"
	"sync"
)

// Format is a 4-bit code book.
type Format uint8

const (
	NF4 Format = iota // bitsandbytes' normal-float code values
	FP4               // sign bit + bitsandbytes' 3-bit magnitude table
)

// String returns "nf4" or "fp4", the names bitsandbytes uses for quant_type.
func (f Format) String() string {
	switch f {
	case NF4:
		return "nf4"
	case FP4:
		return "fp4"
	}
	return fmt.Sprintf("Format(%d)", uint8(f))
}

// ParseFormat turns "nf4" or "fp4" into a Format.
func ParseFormat(s string) (Format, error) {
	switch s {
	case "nf4":
		return NF4, nil
	case "fp4":
		return FP4, nil
	}
	return 0, fmt.Errorf("quant: unknown 4-bit format %q: want nf4 or fp4", s)
}

const (
	// DefaultBlockSize is bitsandbytes' default 4-bit block size.
	DefaultBlockSize = 64
	// NestedBlockSize is the block size bitsandbytes uses to quantize the
	// absmax values in double quantization.
	NestedBlockSize = 256
)

// Tensor4 is a 4-bit blockwise-quantized tensor: two codes per byte, the
// first element of each pair in the high nibble, one absmax per block.
type Tensor4 struct {
	Format    Format
	BlockSize int
	Shape     []int
	Packed    []byte    // (n+1)/2 bytes
	Absmax    []float32 // one per block; nil when Nested holds them
	Nested    *Nested   // double quantization of the absmax values, or nil
}

// Nested is the 8-bit double quantization of a Tensor4's absmax values:
// absmax - Offset, coded with the signed dynamic map in blocks of BlockSize.
type Nested struct {
	Codes     []byte
	Absmax    []float32
	Offset    float32
	BlockSize int
	Map       [256]float32
}

// Quantize4 quantizes data (shape's product long) into 4-bit blocks of
// blockSize (a power of two in 32..4096), as bitsandbytes' quantize_4bit does
// on the GPU; with double set it also double-quantizes the absmax values
// (compress_statistics=True). NaN or Inf in data is an error naming the
// element. The padding nibble of an odd length codes 0.0, as in bitsandbytes.
func Quantize4(data []float32, shape []int, f Format, blockSize int, double bool) (*Tensor4, error) {
	if f != NF4 && f != FP4 {
		return nil, fmt.Errorf("quant: unknown 4-bit format %d", f)
	}
	if err := checkBlockSize(blockSize); err != nil {
		return nil, err
	}
	n, err := shapeLen(shape)
	if err != nil {
		return nil, err
	}
	if n != len(data) {
		return nil, fmt.Errorf("quant: shape %v holds %d elements, data has %d", shape, n, len(data))
	}
	if i, ok := firstNonFinite(data); ok {
		return nil, fmt.Errorf("quant: element %d is %v: cannot quantize NaN or Inf", i, data[i])
	}
	nb := (n + blockSize - 1) / blockSize
	t := &Tensor4{
		Format:    f,
		BlockSize: blockSize,
		Shape:     append([]int(nil), shape...),
		Packed:    make([]byte, (n+1)/2),
	}
	if double {
		// The fp32 absmax only lives until it is double-quantized: take it
		// from a pool, so quantizing a model tensor by tensor makes no garbage.
		buf := absmaxPool.Get().(*[]float32)
		if cap(*buf) < nb {
			*buf = make([]float32, nb)
		}
		t.Absmax = (*buf)[:nb]
		defer absmaxPool.Put(buf)
	} else {
		t.Absmax = make([]float32, nb)
	}
	parallelBlocks(nb, n, func(b0, b1 int) {
		for b := b0; b < b1; b++ {
			quantizeBlock4(t, data, b)
		}
	})
	if double {
		t.Nested = nestAbsmax(t.Absmax)
		t.Absmax = nil
	}
	return t, nil
}

var absmaxPool = sync.Pool{New: func() any { return new([]float32) }}

// quantizeBlock4 codes block b of data into t.Packed and t.Absmax[b], as one
// thread block of bitsandbytes' kQuantizeBlockwise (NF4/FP4) does: the
// reciprocal of the absmax is taken once in float32 and every element is
// multiplied by it (an all-zero block gives 0 * Inf = NaN, which both trees
// map to code 0; dequantized that is 0 * value = 0 again).
func quantizeBlock4(t *Tensor4, data []float32, b int) {
	bs := t.BlockSize
	blk := data[b*bs : min((b+1)*bs, len(data))]
	am := blockAbsmax(blk)
	t.Absmax[b] = am
	scale := 1 / am
	q := quantizeNF4Fast
	if t.Format == FP4 {
		q = quantizeFP4
	}
	out := t.Packed[b*bs/2:]
	i := 0
	for ; i+1 < len(blk); i += 2 {
		out[i/2] = q(blk[i]*scale)<<4 | q(blk[i+1]*scale)
	}
	if i < len(blk) {
		// Odd tail of the whole tensor: bitsandbytes loads the missing
		// element as 0.0 and codes it like the rest (NF4 code 7, FP4 code 0;
		// code 0 in an all-zero block, where 0 * Inf is NaN).
		var pad float32
		out[i/2] = q(blk[i]*scale)<<4 | q(pad*scale)
	}
}

// nestAbsmax double-quantizes absmax (overwriting it) as bitsandbytes'
// quantize_4bit does with compress_statistics: offset = mean(absmax), then
// quantize_blockwise of
// absmax - offset in blocks of 256 with the signed dynamic map. The mean is
// summed in float64 and rounded once (torch's float32 reduction order is not
// reproducible bit for bit; the file stores the offset, so readers agree).
func nestAbsmax(absmax []float32) *Nested {
	var sum float64
	for _, a := range absmax {
		sum += float64(a)
	}
	var offset float32
	if len(absmax) > 0 {
		offset = float32(sum / float64(len(absmax)))
	}
	for i, a := range absmax { // centred in place: the caller drops absmax
		absmax[i] = a - offset
	}
	nd := &Nested{Offset: offset, BlockSize: NestedBlockSize, Map: dynamicMap}
	nd.Codes, nd.Absmax = quantizeBlockwise8(&nd.Map, absmax, NestedBlockSize)
	return nd
}

// Len is the number of elements.
func (t *Tensor4) Len() int {
	n := 1
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// NumBlocks is the number of 4-bit blocks, ceil(Len/BlockSize).
func (t *Tensor4) NumBlocks() int { return (t.Len() + t.BlockSize - 1) / t.BlockSize }

// AbsmaxAt returns the scale of block b. For a nested tensor it resolves the
// double quantization as bitsandbytes' dequantize_4bit does:
// dequantize_blockwise(codes) (Map[code] * nested absmax, rounded to float32)
// plus the offset.
func (t *Tensor4) AbsmaxAt(b int) float32 {
	if nd := t.Nested; nd != nil {
		return float32(nd.Map[nd.Codes[b]]*nd.Absmax[b/nd.BlockSize]) + nd.Offset
	}
	return t.Absmax[b]
}

// BitsPerParam is the storage cost per element: the packed codes plus the
// per-block scales (fp32 absmax, or 8-bit codes + fp32 nested absmax + the
// fp32 offset). The constant code books are not counted. It is 4.5 at block
// size 64 and about 4.127 with double quantization.
func (t *Tensor4) BitsPerParam() float64 {
	n := t.Len()
	if n == 0 {
		return 0
	}
	bits := 8 * len(t.Packed)
	if nd := t.Nested; nd != nil {
		bits += 8*len(nd.Codes) + 32*len(nd.Absmax) + 32
	} else {
		bits += 32 * len(t.Absmax)
	}
	return float64(bits) / float64(n)
}

// StorageBytes is the number of bytes the tensor's data takes (the same
// quantities BitsPerParam counts).
func (t *Tensor4) StorageBytes() int64 {
	b := int64(len(t.Packed))
	if nd := t.Nested; nd != nil {
		b += int64(len(nd.Codes)) + 4*int64(len(nd.Absmax)) + 4
	} else {
		b += 4 * int64(len(t.Absmax))
	}
	return b
}

// Storage4 is the memory a Tensor4 of n elements takes, as Quantize4 makes
// it: the packed codes, the per-block scales (fp32, or the 8-bit codes, the
// nested fp32 absmax and the nested map), so memory plans can be sized
// before anything is quantized.
func Storage4(n, blockSize int, double bool) int64 {
	blocks := int64((n + blockSize - 1) / blockSize)
	b := int64((n + 1) / 2)
	if double {
		nested := (blocks + NestedBlockSize - 1) / NestedBlockSize
		return b + blocks + 4*nested + 4*256 + 4
	}
	return b + 4*blocks
}

// Validate checks that every slice has the length the shape and block sizes
// call for and that every scale is finite, so the dequantizers cannot index
// out of range. Tensors read from files go through it.
func (t *Tensor4) Validate() error {
	if t.Format != NF4 && t.Format != FP4 {
		return fmt.Errorf("quant: unknown 4-bit format %d", t.Format)
	}
	if err := checkBlockSize(t.BlockSize); err != nil {
		return err
	}
	n, err := shapeLen(t.Shape)
	if err != nil {
		return err
	}
	if len(t.Packed) != (n+1)/2 {
		return fmt.Errorf("quant: %d packed bytes for %d elements (shape %v), want %d", len(t.Packed), n, t.Shape, (n+1)/2)
	}
	nb := (n + t.BlockSize - 1) / t.BlockSize
	if t.Nested == nil {
		if len(t.Absmax) != nb {
			return fmt.Errorf("quant: %d absmax values for %d blocks", len(t.Absmax), nb)
		}
		if i, ok := firstNonFinite(t.Absmax); ok {
			return fmt.Errorf("quant: absmax %d is %v", i, t.Absmax[i])
		}
		return nil
	}
	if t.Absmax != nil {
		return fmt.Errorf("quant: both Absmax and Nested are set")
	}
	nd := t.Nested
	if len(nd.Codes) != nb {
		return fmt.Errorf("quant: %d nested absmax codes for %d blocks", len(nd.Codes), nb)
	}
	nested := Blockwise8{BlockSize: nd.BlockSize, Codes: nd.Codes, Absmax: nd.Absmax, Map: nd.Map}
	if err := nested.Validate(); err != nil {
		return fmt.Errorf("nested absmax: %w", err)
	}
	if math.IsNaN(float64(nd.Offset)) || math.IsInf(float64(nd.Offset), 0) {
		return fmt.Errorf("quant: nested offset is %v", nd.Offset)
	}
	return nil
}

// checkBlockSize accepts the block sizes bitsandbytes supports.
func checkBlockSize(bs int) error {
	if bs < 32 || bs > 4096 || bs&(bs-1) != 0 {
		return fmt.Errorf("quant: block size %d: want a power of two in 32..4096", bs)
	}
	return nil
}

// shapeLen multiplies out a shape, rejecting negative dimensions and
// overflow.
func shapeLen(shape []int) (int, error) {
	n := 1
	for _, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("quant: shape %v has a negative dimension", shape)
		}
		if d != 0 && n > math.MaxInt/d {
			return 0, fmt.Errorf("quant: shape %v is too large", shape)
		}
		n *= d
	}
	return n, nil
}

// blockAbsmax is max |x| over a block (fmaxf of fabsf, as the kernel).
func blockAbsmax(blk []float32) float32 {
	var m float32
	for _, v := range blk {
		if v < 0 {
			v = -v
		}
		if v > m {
			m = v
		}
	}
	return m
}

// firstNonFinite reports the index of the first NaN or Inf.
func firstNonFinite(x []float32) (int, bool) {
	for i, v := range x {
		if v-v != 0 { // NaN - NaN and Inf - Inf are NaN
			return i, true
		}
	}
	return 0, false
}

// parallelBlocks runs fn over [0, nblocks) in contiguous chunks, on several
// goroutines when there are enough elements (n) to pay for them.
func parallelBlocks(nblocks, n int, fn func(b0, b1 int)) {
	const minPerWorker = 1 << 18
	workers := min(runtime.GOMAXPROCS(0), n/minPerWorker, nblocks)
	if workers <= 1 {
		fn(0, nblocks)
		return
	}
	var wg sync.WaitGroup
	per := (nblocks + workers - 1) / workers
	for b0 := 0; b0 < nblocks; b0 += per {
		b1 := min(b0+per, nblocks)
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(b0, b1)
		}()
	}
	wg.Wait()
}

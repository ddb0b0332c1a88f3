// Package quant implements blockwise 4-bit (NF4, FP4) and 8-bit quantization
// exactly as bitsandbytes defines it, double quantization of the absmax
// values, and the Hugging Face bitsandbytes safetensors layout.
//
// CONTRACT (skeleton): the quant helper implements these; callers (the model,
// the CPU backend, the bench) rely on the signatures.
package quant

import "errors"

var errTODO = errors.New("not implemented yet")

// Format is a 4-bit code book.
type Format uint8

const (
	NF4 Format = iota // bitsandbytes' normal-float code values
	FP4               // sign bit + bitsandbytes' 3-bit magnitude table
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

// Quantize4 quantizes data (shape's product long) into 4-bit blocks.
func Quantize4(data []float32, shape []int, f Format, blockSize int, double bool) (*Tensor4, error) {
	return nil, errTODO
}

// Len is the number of elements.
func (t *Tensor4) Len() int { return 0 }

// DequantizeRange writes elements [off, off+len(dst)) into dst.
func (t *Tensor4) DequantizeRange(dst []float32, off int) {}

// Dequantize writes every element into dst (len(dst) == t.Len()).
func (t *Tensor4) Dequantize(dst []float32) { t.DequantizeRange(dst, 0) }

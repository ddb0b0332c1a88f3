package quant

import (
	"math"

	"github.com/opencluster/opencluster/quant/safetensors"
)

// bfloat16 keeps the top 16 bits of an IEEE float32 (sign, 8-bit exponent,
// 7-bit mantissa): the same range as float32 at about 3 significant digits.
// Frozen embeddings and lm_head are held this way, at half the memory of
// fp32, and widened exactly back to fp32 a tile at a time when used.

// BF16FromFloat32 rounds x to the nearest bfloat16, ties to even (as
// PyTorch's .to(torch.bfloat16)); NaN stays a quiet NaN with its sign.
func BF16FromFloat32(x float32) uint16 { return safetensors.F32ToBF16(x) }

// BF16ToFloat32 widens a bfloat16 exactly.
func BF16ToFloat32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// NarrowBF16 rounds src into dst (len(dst) >= len(src)).
func NarrowBF16(dst []uint16, src []float32) {
	dst = dst[:len(src)]
	for i, x := range src {
		dst[i] = BF16FromFloat32(x)
	}
}

// WidenBF16 widens src into dst (len(dst) >= len(src)).
func WidenBF16(dst []float32, src []uint16) {
	dst = dst[:len(src)]
	for i, h := range src {
		dst[i] = math.Float32frombits(uint32(h) << 16)
	}
}

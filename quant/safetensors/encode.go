package safetensors

import (
	"encoding/binary"
	"fmt"
	"math"
)

// F32ToBF16 rounds a float32 to bfloat16 (round to nearest, ties to even),
// as torch's .to(torch.bfloat16) does; NaN stays NaN.
func F32ToBF16(x float32) uint16 {
	bits := math.Float32bits(x)
	if bits&0x7FFFFFFF > 0x7F800000 {
		return uint16(bits>>16) | 0x40 // keep it a NaN whatever the dropped bits were
	}
	return uint16((bits + 0x7FFF + (bits>>16)&1) >> 16)
}

// F32ToF16 rounds a float32 to IEEE half precision (round to nearest, ties
// to even), with subnormals, overflow to infinity and NaN as torch does.
func F32ToF16(x float32) uint16 {
	bits := math.Float32bits(x)
	sign := uint16(bits>>16) & 0x8000
	exp := int(bits>>23) & 0xFF
	mant := bits & 0x7FFFFF
	switch {
	case exp == 0xFF: // Inf or NaN
		if mant != 0 {
			return sign | 0x7E00
		}
		return sign | 0x7C00
	case exp-127 > 15: // too large: infinity
		return sign | 0x7C00
	}
	e := exp - 127 + 15
	if e <= 0 { // subnormal half (or zero)
		if e < -10 {
			return sign
		}
		m := mant | 0x800000 // the implicit bit
		shift := uint32(14 - e)
		h := m >> shift
		rem := m & (1<<shift - 1)
		half := uint32(1) << (shift - 1)
		if rem > half || (rem == half && h&1 == 1) {
			h++
		}
		return sign | uint16(h)
	}
	h := uint32(e)<<10 | mant>>13
	rem := mant & 0x1FFF
	if rem > 0x1000 || (rem == 0x1000 && h&1 == 1) {
		h++ // may carry into the exponent, up to infinity: still correct
	}
	return sign | uint16(h)
}

// FloatTensor makes a tensor of dtype F32, F16 or BF16 from v, rounding to
// nearest even.
func FloatTensor(dtype string, shape []int, v []float32) (Tensor, error) {
	var b []byte
	switch dtype {
	case "F32":
		return F32Tensor(shape, v), nil
	case "F16":
		b = make([]byte, 2*len(v))
		for i, x := range v {
			binary.LittleEndian.PutUint16(b[2*i:], F32ToF16(x))
		}
	case "BF16":
		b = make([]byte, 2*len(v))
		for i, x := range v {
			binary.LittleEndian.PutUint16(b[2*i:], F32ToBF16(x))
		}
	default:
		return Tensor{}, fmt.Errorf("safetensors: cannot write dtype %q (want F32, F16 or BF16)", dtype)
	}
	return Tensor{DType: dtype, Shape: append([]int(nil), shape...), Data: b}, nil
}

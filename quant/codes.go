package quant

import "math"

// This file holds the 4-bit code books and the decision trees that pick a
// code for a normalized value. Every constant is bitsandbytes' own: the tree
// thresholds are compared in float32, as the CUDA kernels compare them, so a
// value on either side of a threshold lands on the same code as there. Go
// rounds the untyped constants straight from decimal to float32, as nvcc
// rounds the kernels' "f" literals; this matters, because several NF4
// thresholds sit within a hair of the midpoint between two float32s, where
// rounding through float64 first would pick the other neighbour.

// nf4Values is bitsandbytes' NormalFloat4 code book: the 16 values of
// get_4bit_type("nf4") in bitsandbytes/functional.py, which are also the
// nf4_dequantization_lut / dDequantizeNF4 constants in csrc/kernels.cu.
// Code i dequantizes to nf4Values[i] * absmax.
var nf4Values = [16]float32{
	-1.0,
	-0.6961928009986877,
	-0.5250730514526367,
	-0.39491748809814453,
	-0.28444138169288635,
	-0.18477343022823334,
	-0.09105003625154495,
	0.0,
	0.07958029955625534,
	0.16093020141124725,
	0.24611230194568634,
	0.33791524171829224,
	0.44070982933044434,
	0.5626170039176941,
	0.7229568362236023,
	1.0,
}

// fp4Magnitudes is the 3-bit magnitude table of bitsandbytes' FP4
// (fp4_dequantization_lut / dDequantizeFP4Tree in csrc/kernels.cu): the
// e2m1-style values 0, 0.0625, 8, 12, 4, 6, 2, 3 divided by 12, its absmax.
// Bit 3 of a code is the sign.
var fp4Magnitudes = [8]float32{
	0.0,
	5.208333333e-03,
	0.66666667,
	1.0,
	0.33333333,
	0.5,
	0.16666667,
	0.25,
}

// fp4Values is the full 16-entry FP4 code book (sign bit 3), as the
// dequantizer multiplies it out: magnitude * absmax * sign. The sign product is
// exact, so the table holds the signed magnitudes.
var fp4Values = func() [16]float32 {
	var v [16]float32
	for i := 0; i < 8; i++ {
		v[i] = fp4Magnitudes[i]
		v[i+8] = -fp4Magnitudes[i]
	}
	return v
}()

// CodeValues returns the 16 values a 4-bit code of format f stands for
// (before scaling by the block's absmax). They are the dequantization tables
// of bitsandbytes' kernels.
func CodeValues(f Format) [16]float32 {
	if f == FP4 {
		return fp4Values
	}
	return nf4Values
}

// QuantMap returns what bitsandbytes stores as "quant_map" for format f: the
// tensor get_4bit_type builds in float32 (for FP4 each signed value divided by
// 12 in float32, which equals the kernel's constants). Readers compare a
// file's quant_map against it.
func QuantMap(f Format) [16]float32 {
	if f == NF4 {
		return nf4Values
	}
	raw := [16]float32{0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, 0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0}
	var m [16]float32
	for i, v := range raw {
		m[i] = v / 12
	}
	return m
}

// quantizeNF4 mirrors dQuantizeNF4 in bitsandbytes' csrc/kernels.cu: a binary
// decision tree over the midpoints between neighbouring NF4 values. x is the
// value already multiplied by 1/absmax. NaN (0 * Inf in an all-zero block)
// fails every comparison and lands on code 0, exactly as on the GPU.
func quantizeNF4(x float32) byte {
	if x > 0.03979014977812767 {
		if x > 0.3893125355243683 {
			if x > 0.6427869200706482 {
				if x > 0.8614784181118011 {
					return 0b1111
				}
				return 0b1110
			}
			if x > 0.5016634166240692 {
				return 0b1101
			}
			return 0b1100
		}
		if x > 0.2035212516784668 {
			if x > 0.2920137718319893 {
				return 0b1011
			}
			return 0b1010
		}
		if x > 0.1202552504837513 {
			return 0b1001
		}
		return 0b1000
	}
	if x > -0.33967943489551544 {
		if x > -0.13791173323988914 {
			if x > -0.045525018125772476 {
				return 0b0111
			}
			return 0b0110
		}
		if x > -0.23460740596055984 {
			return 0b0101
		}
		return 0b0100
	}
	if x > -0.6106329262256622 {
		if x > -0.4599952697753906 {
			return 0b0011
		}
		return 0b0010
	}
	if x > -0.8480964004993439 {
		return 0b0001
	}
	return 0b0000
}

// quantizeFP4 mirrors dQuantizeFP4 in bitsandbytes' csrc/kernels.cu: the sign
// goes to bit 3 (only for x < 0, so -0 and NaN are positive), the magnitude
// through a tree whose pivots are the FP4 midpoints divided by 12.
func quantizeFP4(x float32) byte {
	var sign byte
	if x < 0 {
		sign = 0b1000
		x = -x
	}
	if x > 0.29166667 {
		if x > 0.583333 {
			if x > 0.8333333 {
				return 0b0011 + sign
			}
			return 0b0010 + sign
		}
		if x > 0.4166667 {
			return 0b0101 + sign
		}
		return 0b0100 + sign
	}
	if x > 0.0859375 {
		if x > 0.20833333 {
			return 0b0111 + sign
		}
		return 0b0110 + sign
	}
	if x > 0.00260417 {
		return 0b0001 + sign
	}
	return 0b0000 + sign
}

// nf4Thresholds are dQuantizeNF4's comparison constants in ascending order,
// padded with +Inf to 16 entries.
var nf4Thresholds = [16]float32{
	-0.8480964004993439, -0.6106329262256622, -0.4599952697753906,
	-0.33967943489551544, -0.23460740596055984, -0.13791173323988914, -0.045525018125772476,
	0.03979014977812767, 0.1202552504837513, 0.2035212516784668, 0.2920137718319893,
	0.3893125355243683, 0.5016634166240692, 0.6427869200706482, 0.8614784181118011,
	float32(math.Inf(1)),
}

// quantizeNF4Fast gives quantizeNF4's answer with four data-independent
// steps: the tree is a binary search over the sorted thresholds, so its code
// is the number of thresholds x exceeds, found here by a branch-free binary
// search (NaN exceeds none: code 0, as in the tree). Random weights make the
// tree's branches unpredictable; these compile to conditional moves.
func quantizeNF4Fast(x float32) byte {
	th := &nf4Thresholds
	i := 0
	if x > th[i+7] {
		i += 8
	}
	if x > th[i+3] {
		i += 4
	}
	if x > th[i+1] {
		i += 2
	}
	if x > th[i] {
		i++
	}
	return byte(i)
}

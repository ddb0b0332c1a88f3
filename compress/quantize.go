package compress

import (
	"fmt"
	"math"
)

// Stochastic blockwise quantization. Each block of up to B values shares
// one fp32 scale s = absmax/L (L = 32767 for int16, 127 for int8, 7 for
// 4-bit). A value x
// becomes the integer q = floor(x/s + u), u uniform in [0, 1) from the
// rounding stream, so q is x/s rounded down or up with probabilities that
// make E[q*s] = x: the quantizer is unbiased, and its error is below one
// step s per value. Decoding is q*s.

// levels is the largest code magnitude of a quantizer.
func levels(q Quantizer) int {
	switch q {
	case Q4:
		return 7
	case Int16:
		return 32767
	}
	return 127
}

// quantize codes vals in blocks of block values: scales gets one scale per
// block, codes one integer in [-L, L] per value, deq the decoded values
// (what the receiver will see, used for error feedback).
func quantize(vals []float32, block, L int, r *splitmix64, scales []float32, codes []int16, deq []float32) error {
	for b := 0; b*block < len(vals); b++ {
		lo, hi := b*block, min((b+1)*block, len(vals))
		var absmax float32
		for _, v := range vals[lo:hi] {
			absmax = max(absmax, float32(math.Abs(float64(v))))
		}
		if absmax == 0 {
			scales[b] = 0
			for i := lo; i < hi; i++ {
				codes[i], deq[i] = 0, 0
			}
			continue
		}
		s := absmax / float32(L)
		if s == 0 { // absmax is a tiny subnormal
			s = math.SmallestNonzeroFloat32
		}
		if math.IsInf(float64(float32(L)*s), 0) {
			return fmt.Errorf("compress: value block %d: magnitude %g too large to quantize", b, absmax)
		}
		scales[b] = s
		inv := 1 / float64(s)
		fl := float64(L)
		for i := lo; i < hi; i++ {
			q := math.Floor(float64(vals[i])*inv + r.float64())
			q = min(max(q, -fl), fl)
			codes[i] = int16(q)
			deq[i] = float32(q) * s
		}
	}
	return nil
}

// dequantize is the receiver's half: vals[i] = codes[i]*scales[i/block].
func dequantize(codes []int16, scales []float32, block int, vals []float32) {
	for i, c := range codes {
		vals[i] = float32(c) * scales[i/block]
	}
}

// packQ4 stores codes in [-7, 7] as nibbles q+8, two per byte, the first
// value in the high nibble (as bitsandbytes does). An odd count leaves the
// last low nibble 0.
func packQ4(codes []int16, dst []byte) {
	for i := 0; i < len(codes); i += 2 {
		b := byte(codes[i]+8) << 4
		if i+1 < len(codes) {
			b |= byte(codes[i+1] + 8)
		}
		dst[i/2] = b
	}
}

// unpackQ4 reverses packQ4. Nibble 0 (code -8) never comes out of the
// encoder and is rejected, as is a non-zero padding nibble.
func unpackQ4(src []byte, codes []int16) error {
	for i := range codes {
		nib := src[i/2] >> 4
		if i%2 == 1 {
			nib = src[i/2] & 0x0f
		}
		if nib == 0 {
			return fmt.Errorf("q4 value %d: nibble 0 is not a valid code", i)
		}
		codes[i] = int16(nib) - 8
	}
	if len(codes)%2 == 1 && src[len(codes)/2]&0x0f != 0 {
		return fmt.Errorf("q4 padding nibble is not zero")
	}
	return nil
}

package sgemm

import (
	"fmt"
	"math"

	"github.com/opencluster/opencluster/quant"
)

// Weight is a frozen matrix W (Rows x Cols, row-major) that GemmBF16
// multiplies in bfloat16: held as 4-bit codes (NF4/FP4, dequantized a tile
// at a time straight to bf16 inside the packing), as bf16 bits, or as fp32
// (rounded to bf16 as it is packed).
type Weight struct {
	Rows, Cols int
	q4         *quant.Tensor4
	bf16       []uint16
	f32        []float32
}

// WeightQ4 wraps a 4-bit tensor holding a rows x cols matrix.
func WeightQ4(t *quant.Tensor4, rows, cols int) Weight {
	if t.Len() != rows*cols {
		panic(fmt.Sprintf("sgemm: WeightQ4: a %d-element tensor is not %d x %d", t.Len(), rows, cols))
	}
	return Weight{Rows: rows, Cols: cols, q4: t}
}

// WeightBF16 wraps bfloat16 bits holding a rows x cols matrix.
func WeightBF16(bits []uint16, rows, cols int) Weight {
	if len(bits) != rows*cols {
		panic(fmt.Sprintf("sgemm: WeightBF16: %d values are not %d x %d", len(bits), rows, cols))
	}
	return Weight{Rows: rows, Cols: cols, bf16: bits}
}

// WeightF32 wraps an fp32 rows x cols matrix (rounded to bf16 when packed).
func WeightF32(w []float32, rows, cols int) Weight {
	if len(w) != rows*cols {
		panic(fmt.Sprintf("sgemm: WeightF32: %d values are not %d x %d", len(w), rows, cols))
	}
	return Weight{Rows: rows, Cols: cols, f32: w}
}

// At is W[r][c] rounded to bfloat16 exactly as the packing rounds it,
// widened back to fp32: the value the product multiplies.
func (w Weight) At(r, c int) float32 {
	e := r*w.Cols + c
	switch {
	case w.bf16 != nil:
		return quant.BF16ToFloat32(w.bf16[e])
	case w.f32 != nil:
		return RoundBF16(w.f32[e])
	}
	vals := quant.CodeValues(w.q4.Format)
	return RoundBF16(vals[w.q4.Code(e)] * w.q4.AbsmaxAt(e/w.q4.BlockSize))
}

// Values is every At(r, c), row-major: the bf16 matrix the product sees.
func (w Weight) Values() []float32 {
	out := make([]float32, w.Rows*w.Cols)
	for r := 0; r < w.Rows; r++ {
		for c := 0; c < w.Cols; c++ {
			out[r*w.Cols+c] = w.At(r, c)
		}
	}
	return out
}

// RoundBF16 rounds x to the nearest bfloat16 (ties to even) and widens it
// back, as the CPU's vcvtneps2bf16 does: denormals become a signed zero and
// a NaN stays NaN.
func RoundBF16(x float32) float32 {
	b := math.Float32bits(x)
	switch {
	case b&0x7fffffff > 0x7f800000:
		return x
	case b&0x7f800000 == 0:
		return math.Float32frombits(b & 0x80000000)
	}
	return quant.BF16ToFloat32(quant.BF16FromFloat32(x))
}

// BF16Supported reports whether GemmBF16 can run here: a CPU with
// AVX512_BF16 (vdpbf16ps), a cgo build for x86-64, and Sgemm on its AVX-512
// kernels. SetImplementation("avx2") or ("go") turns the bf16 path off too,
// so that a narrower kernel family measures everything the way a CPU without
// AVX-512 runs it.
func BF16Supported() bool { return bf16OK && int(impl.Load()) == implAVX512 }

// BF16Implementation names GemmBF16's kernel ("avx512-bf16"), or "" when
// BF16Supported is false.
func BF16Implementation() string {
	if BF16Supported() {
		return "avx512-bf16"
	}
	return ""
}

// GemmBF16 computes C = alpha*A*op(W) + beta*C with bfloat16 operands and
// fp32 accumulation: op(W) is W transposed when transW (W is n x k: the
// forward product X.Wᵀ of a linear layer) and W itself otherwise (W is
// k x n: the input gradient dY.W). A (m x k, row-major, stride lda) is fp32
// and rounded to bf16 as it is packed, W's values are rounded to bf16 (a
// 4-bit W is dequantized straight to bf16), and each pair of products along
// k is summed into fp32 by vdpbf16ps. Every element of C is summed in the
// same order whatever the thread count, so results repeat bit for bit on
// one CPU (another CPU model may round the pair sums differently).
//
// It panics when BF16Supported is false or an argument is out of range,
// like an index error: callers choose the bf16 path only where it runs.
func GemmBF16(transW bool, m, n, k int, alpha float32, a []float32, lda int, w Weight, beta float32, c []float32, ldc int) {
	if !BF16Supported() {
		panic("sgemm: GemmBF16 needs a CPU with AVX512_BF16 and Sgemm on its AVX-512 kernels (check BF16Supported)")
	}
	wr, wc := k, n
	if transW {
		wr, wc = n, k
	}
	if w.Rows != wr || w.Cols != wc {
		panic(fmt.Sprintf("sgemm: GemmBF16: W is %dx%d, the product needs %dx%d", w.Rows, w.Cols, wr, wc))
	}
	if err := checkMatrix("A", m, k, len(a), lda); err != nil {
		panic(err)
	}
	if err := checkMatrix("C", m, n, len(c), ldc); err != nil {
		panic(err)
	}
	if trivial(m, n, k, alpha, beta, c, ldc) {
		return
	}
	gemmBF16(transW, m, n, k, alpha, a, lda, w, beta, c, ldc, threadsFor(m, n, k))
}

// blockKCBF16 is the depth of a bf16 slice: 256 pairs of k, so a packed W
// panel (256 pairs x 32 columns x 4 bytes = 32 KiB) stays in L1 like the
// fp32 panel of depth 256.
const blockKCBF16 = 512

// ReferenceBF16 is GemmBF16's arithmetic as a plain loop: A and W rounded to
// bf16 as the packing rounds them, products summed in float64. It is what
// the fast path is tested against (the fast path sums pairs in fp32, so the
// two agree to fp32 accumulation error, not bit for bit).
func ReferenceBF16(transW bool, m, n, k int, alpha float32, a []float32, lda int, w Weight, beta float32, c []float32, ldc int) {
	wd := w.Values()
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			var s float64
			for p := 0; p < k; p++ {
				idx := p*w.Cols + j
				if transW {
					idx = j*w.Cols + p
				}
				wv := wd[idx]
				s += float64(RoundBF16(a[i*lda+p])) * float64(wv)
			}
			v := float64(alpha) * s
			if beta != 0 {
				v += float64(beta) * float64(c[i*ldc+j])
			}
			c[i*ldc+j] = float32(v)
		}
	}
}

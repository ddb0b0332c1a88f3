package sgemm

import (
	"fmt"
	"sync"

	"github.com/opencluster/opencluster/quant"
)

// GemvMaxRows is the most rows of A Gemv takes. Generation runs one row
// per step; a product with more rows reuses each weight often enough for
// the packed, blocked kernels to win.
const GemvMaxRows = 4

// Gemv computes C = A·Wᵀ for a few rows of A (m <= GemvMaxRows): A is
// m x W.Cols with row stride lda, C is m x W.Rows with row stride ldc and
// is overwritten. It is the decode step of generation, where each weight is
// used once per row of A, so the product is bound by reading W: W is read
// once, as it is held, with no dequantized or packed copy. A 4-bit W's
// elements are its code values times their block's absmax in float32 (the
// values quant.DequantizeRange writes); a bf16 W's are widened exactly. The
// products are summed in float32. An fp32 W is not taken (Sgemm is its
// path).
//
// Threads split W's rows and each element of C is summed by one thread in a
// fixed order, so results repeat bit for bit whatever the thread count (the
// AVX-512, AVX2 and Go kernels sum in different orders). Bad arguments
// panic with a message naming them, as Sgemm's do.
func Gemv(m int, a []float32, lda int, w Weight, c []float32, ldc int) {
	if m < 0 || m > GemvMaxRows {
		panic(fmt.Sprintf("sgemm: Gemv: %d rows of A; it takes 0 to %d", m, GemvMaxRows))
	}
	if w.q4 == nil && w.bf16 == nil {
		panic("sgemm: Gemv: W must be 4-bit or bf16")
	}
	if err := checkMatrix("A", m, w.Cols, len(a), lda); err != nil {
		panic(err)
	}
	if err := checkMatrix("C", m, w.Rows, len(c), ldc); err != nil {
		panic(err)
	}
	if m == 0 || w.Rows == 0 {
		return
	}
	if w.Cols == 0 {
		scaleC(m, w.Rows, 0, c, ldc)
		return
	}
	kind := int(impl.Load())
	var hv *halves
	if w.q4 != nil {
		hv = splitRows(m, a, lda, w.Cols, w.Rows)
		defer halvesPool.Put(hv)
	}
	t := 1
	if m*w.Rows*w.Cols >= gemvParallelWork {
		t = min(Threads(), w.Rows)
	}
	run := func(part int) {
		r0, r1 := split(w.Rows, t, part)
		if r0 == r1 {
			return
		}
		if kind == implGo {
			gemvGo(m, a, lda, w, r0, r1, c, ldc)
		} else {
			gemvC(kind, m, a, lda, w, hv, r0, r1, c, ldc)
		}
	}
	parallel(t, run)
}

// gemvParallelWork is the product size (multiply-adds) from which Gemv
// uses every thread: below it, handing work to the pool costs more than it
// saves.
const gemvParallelWork = 1 << 16

// halves holds the rows of A divided into even and odd elements, for the
// 4-bit kernels (kernel_gemv.h): for row i and parity p (1 when a row of W
// starts on an odd element), even half-row (i*2+p)*2 holds A[i][p+2j] and
// the odd one after it A[i][p+2j+1], each h long.
type halves struct {
	de []float32
	h  int
}

var halvesPool = sync.Pool{New: func() any { return new(halves) }}

func splitRows(m int, a []float32, lda, cols, rows int) *halves {
	s := halvesPool.Get().(*halves)
	s.h = cols/2 + 16 // zero padding past the end keeps every index in range
	n := m * 2 * 2 * s.h
	if cap(s.de) < n {
		s.de = make([]float32, n)
	}
	s.de = s.de[:n]
	clear(s.de)
	parities := 1
	if cols%2 == 1 && rows > 1 {
		parities = 2
	}
	for i := 0; i < m; i++ {
		row := a[i*lda : i*lda+cols]
		for p := 0; p < parities; p++ {
			ev := s.de[(i*2+p)*2*s.h:]
			od := ev[s.h:]
			for j := 0; p+2*j < cols; j++ {
				ev[j] = row[p+2*j]
				if p+2*j+1 < cols {
					od[j] = row[p+2*j+1]
				}
			}
		}
	}
	return s
}

// gemvGo is the portable kernel: rows [r0, r1) of W, a block's scaled code
// values computed once per block as in the C kernels.
func gemvGo(m int, a []float32, lda int, w Weight, r0, r1 int, c []float32, ldc int) {
	cols := w.Cols
	if w.bf16 != nil {
		for r := r0; r < r1; r++ {
			row := w.bf16[r*cols : (r+1)*cols]
			for i := 0; i < m; i++ {
				x := a[i*lda : i*lda+cols]
				var s float32
				for k, h := range row {
					s += quant.BF16ToFloat32(h) * x[k]
				}
				c[i*ldc+r] = s
			}
		}
		return
	}
	t := w.q4
	vals := quant.CodeValues(t.Format)
	var acc [GemvMaxRows]float32
	var tab [16]float32
	for r := r0; r < r1; r++ {
		acc = [GemvMaxRows]float32{}
		e0 := r * cols
		for col := 0; col < cols; {
			b := (e0 + col) / t.BlockSize
			end := min((b+1)*t.BlockSize-e0, cols)
			am := t.AbsmaxAt(b)
			for k, v := range vals {
				tab[k] = v * am
			}
			for ; col < end; col++ {
				v := tab[t.Code(e0+col)]
				for i := 0; i < m; i++ {
					acc[i] += v * a[i*lda+col]
				}
			}
		}
		for i := 0; i < m; i++ {
			c[i*ldc+r] = acc[i]
		}
	}
}

// GemvReference is Gemv as a plain loop, what the kernels are tested
// against: W dequantized by quant's reference loop (or widened), products
// summed in float64.
func GemvReference(m int, a []float32, lda int, w Weight, c []float32, ldc int) {
	wd := make([]float32, w.Rows*w.Cols)
	if w.q4 != nil {
		w.q4.DequantizeReference(wd)
	} else {
		quant.WidenBF16(wd, w.bf16)
	}
	for i := 0; i < m; i++ {
		for r := 0; r < w.Rows; r++ {
			var s float64
			for k := 0; k < w.Cols; k++ {
				s += float64(a[i*lda+k]) * float64(wd[r*w.Cols+k])
			}
			c[i*ldc+r] = float32(s)
		}
	}
}

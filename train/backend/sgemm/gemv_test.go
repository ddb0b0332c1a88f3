package sgemm

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/opencluster/opencluster/quant"
)

// gemvWeights returns rows x cols weights held every way Gemv takes them:
// NF4 and FP4 as quant.Quantize4 codes them (bitsandbytes' algorithm, with
// and without double quantization, at several block sizes) and bf16.
func gemvWeights(t testing.TB, rng *rand.Rand, rows, cols int) map[string]Weight {
	w := randSlice(rng, rows*cols)
	out := map[string]Weight{}
	for _, f := range []quant.Format{quant.NF4, quant.FP4} {
		for _, bs := range []int{32, 64, 256} {
			for _, double := range []bool{false, true} {
				if f == quant.FP4 && (bs != 64 || double) {
					continue
				}
				q, err := quant.Quantize4(w, []int{rows, cols}, f, bs, double)
				if err != nil {
					t.Fatal(err)
				}
				out[fmt.Sprintf("%v/bs%d/double=%v", f, bs, double)] = WeightQ4(q, rows, cols)
			}
		}
	}
	h := make([]uint16, len(w))
	quant.NarrowBF16(h, w)
	out["bf16"] = WeightBF16(h, rows, cols)
	return out
}

// checkGemv runs Gemv on w with m rows of random A (strides padded, C's
// padding holding a canary) and compares with GemvReference: float32
// summation of k products errs by at most about k*eps*sum|a*w|.
func checkGemv(t *testing.T, label string, rng *rand.Rand, m int, w Weight) {
	t.Helper()
	lda, ldc := w.Cols+3, w.Rows+2
	a := randSlice(rng, m*lda)
	got := make([]float32, m*ldc)
	for i := range got {
		got[i] = canary
	}
	Gemv(m, a, lda, w, got, ldc)
	want := make([]float32, m*ldc)
	GemvReference(m, a, lda, w, want, ldc)
	wd := make([]float32, w.Rows*w.Cols)
	if w.q4 != nil {
		w.q4.DequantizeReference(wd)
	} else {
		quant.WidenBF16(wd, w.bf16)
	}
	const eps = 1.0 / (1 << 23)
	bad := 0
	for i := 0; i < m; i++ {
		for r := 0; r < ldc; r++ {
			g := got[i*ldc+r]
			if r >= w.Rows {
				if g != canary {
					t.Fatalf("%s: C[%d][%d] past the last column was written: %v", label, i, r, g)
				}
				continue
			}
			var mag float64
			for k := 0; k < w.Cols; k++ {
				mag += math.Abs(float64(a[i*lda+k]) * float64(wd[r*w.Cols+k]))
			}
			if d := math.Abs(float64(g) - float64(want[i*ldc+r])); d > float64(w.Cols+3)*eps*mag+1e-30 || math.IsNaN(float64(g)) {
				if bad++; bad <= 3 {
					t.Errorf("%s: C[%d][%d] = %v, want %v (|diff| %.3g, bound %.3g)", label, i, r, g, want[i*ldc+r], d, float64(w.Cols+3)*eps*mag)
				}
			}
		}
	}
}

// TestGemvMatchesReference covers every kernel family this machine runs,
// at sizes where rows start on odd elements (odd cols), blocks straddle
// rows, and runs end before a whole vector step.
func TestGemvMatchesReference(t *testing.T) {
	defer SetImplementation("auto")
	rng := rand.New(rand.NewPCG(11, 12))
	shapes := [][2]int{{1, 1}, {3, 5}, {2, 31}, {5, 32}, {7, 33}, {4, 63}, {9, 64}, {3, 65}, {17, 127}, {5, 128}, {6, 200}, {33, 257}, {3, 512}, {7, 768}, {2, 1000}, {130, 96}, {64, 2049}}
	for _, sh := range shapes {
		ws := gemvWeights(t, rng, sh[0], sh[1])
		for _, k := range kinds() {
			if err := SetImplementation(kindName(k)); err != nil {
				t.Fatal(err)
			}
			for name, w := range ws {
				for m := 1; m <= GemvMaxRows; m++ {
					checkGemv(t, fmt.Sprintf("%s %s %dx%d m=%d", kindName(k), name, sh[0], sh[1], m), rng, m, w)
				}
			}
		}
	}
}

// TestGemvEveryCode fills 4-bit weights with each code in each nibble
// position, blocks of absmax zero among them, and checks every kernel.
func TestGemvEveryCode(t *testing.T) {
	defer SetImplementation("auto")
	rng := rand.New(rand.NewPCG(5, 6))
	rows, cols := 24, 97 // odd: rows start on both nibbles
	for _, f := range []quant.Format{quant.NF4, quant.FP4} {
		q, err := quant.Quantize4(make([]float32, rows*cols), []int{rows, cols}, f, 32, false)
		if err != nil {
			t.Fatal(err)
		}
		for i := range q.Packed {
			q.Packed[i] = byte(i*7) ^ byte(i>>4)
		}
		for b := range q.Absmax {
			if b%5 != 2 {
				q.Absmax[b] = float32(rng.ExpFloat64())
			}
		}
		for _, k := range kinds() {
			if err := SetImplementation(kindName(k)); err != nil {
				t.Fatal(err)
			}
			for m := 1; m <= GemvMaxRows; m++ {
				checkGemv(t, fmt.Sprintf("%s %v m=%d", kindName(k), f, m), rng, m, WeightQ4(q, rows, cols))
			}
		}
	}
}

// TestGemvDeterministic: the same call gives the same bits on 1, 2 and 3
// threads, and again.
func TestGemvDeterministic(t *testing.T) {
	defer SetThreads(0)
	rng := rand.New(rand.NewPCG(1, 3))
	rows, cols := 301, 515
	for name, w := range gemvWeights(t, rng, rows, cols) {
		a := randSlice(rng, 3*cols)
		var first []float32
		for _, threads := range []int{1, 2, 3, 2} {
			SetThreads(threads)
			c := make([]float32, 3*rows)
			Gemv(3, a, cols, w, c, rows)
			if first == nil {
				first = c
				continue
			}
			for i := range c {
				if math.Float32bits(c[i]) != math.Float32bits(first[i]) {
					t.Fatalf("%s: element %d is %v on %d threads, %v on one", name, i, c[i], threads, first[i])
				}
			}
		}
	}
}

func TestGemvPanics(t *testing.T) {
	rng := rand.New(rand.NewPCG(2, 2))
	w := gemvWeights(t, rng, 4, 8)["bf16"]
	for _, c := range []struct {
		name, want string
		f          func()
	}{
		{"too many rows", "5 rows of A", func() { Gemv(5, make([]float32, 40), 8, w, make([]float32, 20), 4) }},
		{"fp32 weight", "4-bit or bf16", func() { Gemv(1, make([]float32, 8), 8, WeightF32(make([]float32, 32), 4, 8), make([]float32, 4), 4) }},
		{"short A", "A is 2x8", func() { Gemv(2, make([]float32, 10), 8, w, make([]float32, 8), 4) }},
		{"short C", "C is 1x4", func() { Gemv(1, make([]float32, 8), 8, w, make([]float32, 3), 4) }},
	} {
		func() {
			defer func() {
				if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), c.want) {
					t.Errorf("%s: panic %v, want one naming %q", c.name, r, c.want)
				}
			}()
			c.f()
		}()
	}
}

// BenchmarkGemv times one token's product with a 2048 x 8192 weight (a
// Llama 3.2 1B MLP projection): Gemv on NF4 and bf16, and beside them what
// the CPU backend did before (dequantize to fp32 tiles, then Sgemm).
func BenchmarkGemv(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 1))
	rows, cols := 2048, 8192
	w := randSlice(rng, rows*cols)
	q, err := quant.Quantize4(w, []int{rows, cols}, quant.NF4, 64, true)
	if err != nil {
		b.Fatal(err)
	}
	h := make([]uint16, len(w))
	quant.NarrowBF16(h, w)
	a, c := randSlice(rng, cols), make([]float32, rows)
	b.Run("nf4", func(b *testing.B) {
		b.SetBytes(q.StorageBytes())
		for i := 0; i < b.N; i++ {
			Gemv(1, a, cols, WeightQ4(q, rows, cols), c, rows)
		}
	})
	b.Run("bf16", func(b *testing.B) {
		b.SetBytes(int64(2 * len(h)))
		for i := 0; i < b.N; i++ {
			Gemv(1, a, cols, WeightBF16(h, rows, cols), c, rows)
		}
	})
	b.Run("nf4-tiles-sgemm", func(b *testing.B) {
		b.SetBytes(q.StorageBytes())
		tile := make([]float32, (1<<16)/cols*cols)
		for i := 0; i < b.N; i++ {
			for r0 := 0; r0 < rows; r0 += len(tile) / cols {
				nr := min(len(tile)/cols, rows-r0)
				q.DequantizeRange(tile[:nr*cols], r0*cols)
				Sgemm(false, true, 1, nr, cols, 1, a, cols, tile[:nr*cols], cols, 0, c[r0:], rows)
			}
		}
	})
	b.Run("fp32-sgemm", func(b *testing.B) {
		b.SetBytes(int64(4 * len(w)))
		for i := 0; i < b.N; i++ {
			Sgemm(false, true, 1, rows, cols, 1, a, cols, w, cols, 0, c, rows)
		}
	})
}

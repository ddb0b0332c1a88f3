package sgemm

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/opencluster/opencluster/quant"
)

func needBF16(t testing.TB) {
	if !BF16Supported() {
		t.Skip("this CPU has no AVX512_BF16")
	}
}

// bf16Weights builds a rows x cols matrix of random N(0, 0.02) weights in
// every form GemmBF16 takes.
func bf16Weights(t testing.TB, rng *rand.Rand, rows, cols int) map[string]Weight {
	w := make([]float32, rows*cols)
	for i := range w {
		w[i] = float32(rng.NormFloat64() * 0.02)
	}
	out := map[string]Weight{"f32": WeightF32(w, rows, cols)}
	bits := make([]uint16, len(w))
	for i, v := range w {
		bits[i] = uint16(math.Float32bits(RoundBF16(v)) >> 16)
	}
	out["bf16"] = WeightBF16(bits, rows, cols)
	for _, q := range []struct {
		name   string
		f      quant.Format
		bs     int
		double bool
	}{{"nf4", quant.NF4, 64, false}, {"nf4-dq", quant.NF4, 64, true}, {"fp4-b32", quant.FP4, 32, false}} {
		qt, err := quant.Quantize4(w, []int{rows, cols}, q.f, q.bs, q.double)
		if err != nil {
			t.Fatal(err)
		}
		out[q.name] = WeightQ4(qt, rows, cols)
	}
	return out
}

// checkBF16 compares got with the float64 reference: the fast path sums
// pairs of exact bf16 products in fp32, so the error is fp32 accumulation
// error, bounded by about k * 2^-23 * sum |a*w| per element.
func checkBF16(t *testing.T, label string, transW bool, m, n, k int, alpha float32, a []float32, w Weight, beta float32, c0, got []float32) {
	t.Helper()
	want := append([]float32(nil), c0...)
	ReferenceBF16(transW, m, n, k, alpha, a, k, w, beta, want, n)
	wd := w.Values()
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			var mag float64
			for p := 0; p < k; p++ {
				idx := p*w.Cols + j
				if transW {
					idx = j*w.Cols + p
				}
				wv := wd[idx]
				mag += math.Abs(float64(RoundBF16(a[i*k+p])) * float64(wv))
			}
			tol := 4*float64(k+2)*0x1p-24*(math.Abs(float64(alpha))*mag+math.Abs(float64(beta*c0[i*n+j]))) + 1e-30
			if d := math.Abs(float64(got[i*n+j]) - float64(want[i*n+j])); !(d <= tol) {
				t.Fatalf("%s: C[%d,%d] = %v, want %v (diff %g > tol %g)", label, i, j, got[i*n+j], want[i*n+j], d, tol)
			}
		}
	}
}

func TestGemmBF16MatchesReference(t *testing.T) {
	needBF16(t)
	rng := rand.New(rand.NewPCG(21, 22))
	shapes := []struct{ m, n, k int }{
		{1, 1, 1}, {3, 5, 7}, {12, 32, 64}, {13, 33, 65}, {40, 70, 96}, {25, 64, 1100}, {200, 50, 130}, {7, 100, 33},
	}
	for _, sh := range shapes {
		for _, transW := range []bool{true, false} {
			wr, wc := sh.k, sh.n
			if transW {
				wr, wc = sh.n, sh.k
			}
			a := randSlice(rng, sh.m*sh.k)
			c0 := randSlice(rng, sh.m*sh.n)
			for name, w := range bf16Weights(t, rng, wr, wc) {
				for _, ab := range []struct{ alpha, beta float32 }{{1, 0}, {-0.5, 1.25}} {
					label := fmt.Sprintf("%s/transW=%v/%dx%dx%d/alpha=%v,beta=%v", name, transW, sh.m, sh.n, sh.k, ab.alpha, ab.beta)
					first := append([]float32(nil), c0...)
					gemmBF16(transW, sh.m, sh.n, sh.k, ab.alpha, a, sh.k, w, ab.beta, first, sh.n, 1)
					checkBF16(t, label, transW, sh.m, sh.n, sh.k, ab.alpha, a, w, ab.beta, c0, first)
					// Other thread counts must give the same bits.
					for _, threads := range []int{2, 3} {
						got := append([]float32(nil), c0...)
						gemmBF16(transW, sh.m, sh.n, sh.k, ab.alpha, a, sh.k, w, ab.beta, got, sh.n, threads)
						for i := range got {
							if math.Float32bits(got[i]) != math.Float32bits(first[i]) {
								t.Fatalf("%s: %d threads: C[%d] = %v, one thread gave %v", label, threads, i, got[i], first[i])
							}
						}
					}
				}
			}
		}
	}
}

func TestGemmBF16RoundsLikeTheReference(t *testing.T) {
	needBF16(t)
	rng := rand.New(rand.NewPCG(23, 24))
	special := []float32{1, -1, 1.00390625, 1.01171875, 1e-39, -1e-39, 0x1p-100, 3.3895314e38, 65504, 0, float32(math.Copysign(0, -1))}
	for _, n := range []int{32, 45} {
		m := 40
		a := randSlice(rng, m)
		copy(a, special)
		wf := randSlice(rng, n)
		copy(wf[5:], special)
		for _, name := range []string{"f32", "nf4"} {
			var w Weight
			if name == "f32" {
				w = WeightF32(wf, n, 1)
			} else {
				w = bf16Weights(t, rng, n, 1)["nf4"]
			}
			c := make([]float32, m*n)
			gemmBF16(true, m, n, 1, 1, a, 1, w, 0, c, n, 1)
			for i := 0; i < m; i++ {
				for j := 0; j < n; j++ {
					// The accumulator starts at +0, so a -0 product sums to +0.
					var zero float32
					want := zero + RoundBF16(a[i])*w.At(j, 0)
					if math.Float32bits(c[i*n+j]) != math.Float32bits(want) {
						t.Fatalf("%s n=%d: C[%d,%d] = %v (a %v, w %v), want %v", name, n, i, j, c[i*n+j], a[i], w.At(j, 0), want)
					}
				}
			}
		}
	}
}

func TestGemmBF16Deterministic(t *testing.T) {
	needBF16(t)
	rng := rand.New(rand.NewPCG(25, 26))
	m, n, k := 301, 290, 1300
	a := randSlice(rng, m*k)
	for _, transW := range []bool{true, false} {
		wr, wc := k, n
		if transW {
			wr, wc = n, k
		}
		w := bf16Weights(t, rng, wr, wc)["nf4-dq"]
		var first []float32
		for _, threads := range []int{2, 1, 3, 2} {
			got := make([]float32, m*n)
			gemmBF16(transW, m, n, k, 1, a, k, w, 0, got, n, threads)
			if first == nil {
				first = got
				continue
			}
			for i := range got {
				if math.Float32bits(got[i]) != math.Float32bits(first[i]) {
					t.Fatalf("transW=%v threads=%d: C[%d] = %v, first run %v", transW, threads, i, got[i], first[i])
				}
			}
		}
	}
}

func TestGemmBF16Checks(t *testing.T) {
	needBF16(t)
	w := WeightF32(make([]float32, 6), 2, 3)
	for _, f := range []func(){
		func() { GemmBF16(true, 1, 3, 2, 1, make([]float32, 2), 2, w, 0, make([]float32, 3), 3) },  // W is 2x3, needs 3x2
		func() { GemmBF16(false, 2, 3, 2, 1, make([]float32, 3), 2, w, 0, make([]float32, 6), 3) }, // A too short
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Error("bad arguments did not panic")
				}
			}()
			f()
		}()
	}
}

func benchBF16(b *testing.B, m, n, k int, transW bool) {
	needBF16(b)
	rng := rand.New(rand.NewPCG(27, 28))
	a, c := randSlice(rng, m*k), make([]float32, m*n)
	wr, wc := k, n
	if transW {
		wr, wc = n, k
	}
	ws := bf16Weights(b, rng, wr, wc)
	for _, name := range []string{"nf4-dq", "bf16"} {
		w := ws[name]
		b.Run(name, func(b *testing.B) {
			GemmBF16(transW, m, n, k, 1, a, k, w, 0, c, n)
			b.ResetTimer()
			for range b.N {
				GemmBF16(transW, m, n, k, 1, a, k, w, 0, c, n)
			}
			b.ReportMetric(2*float64(m)*float64(n)*float64(k)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOPS")
		})
	}
}

// The QLoRA forward product of the bench's nf4_matmul row, and its input
// gradient.
func BenchmarkGemmBF16Forward(b *testing.B)  { benchBF16(b, 512, 2048, 2048, true) }
func BenchmarkGemmBF16Backward(b *testing.B) { benchBF16(b, 512, 2048, 2048, false) }

// TestBF16FollowsImplementation: holding Sgemm to a narrower kernel family
// (bench --sgemm-kernel avx2, to measure the path a CPU without AVX-512
// takes) turns the bf16 products off too, and GemmBF16 refuses to run; auto
// brings them back.
func TestBF16FollowsImplementation(t *testing.T) {
	needBF16(t)
	defer SetImplementation("auto")
	for _, k := range kinds() {
		if err := SetImplementation(kindName(k)); err != nil {
			t.Fatal(err)
		}
		want := k == implAVX512
		if got := BF16Supported(); got != want {
			t.Errorf("kernel %s: BF16Supported %v, want %v", kindName(k), got, want)
		}
		if got := BF16Implementation() != ""; got != want {
			t.Errorf("kernel %s: BF16Implementation %q", kindName(k), BF16Implementation())
		}
	}
	if err := SetImplementation("avx2"); err != nil {
		t.Fatal(err)
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("GemmBF16 ran with Sgemm held to avx2")
			}
		}()
		w := WeightF32(make([]float32, 4*4), 4, 4)
		GemmBF16(true, 4, 4, 4, 1, make([]float32, 16), 4, w, 0, make([]float32, 16), 4)
	}()
	if err := SetImplementation("auto"); err != nil {
		t.Fatal(err)
	}
	if !BF16Supported() || BF16Implementation() != "avx512-bf16" {
		t.Errorf("auto: BF16Supported %v, %q", BF16Supported(), BF16Implementation())
	}
}

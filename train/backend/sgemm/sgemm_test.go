package sgemm

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"
)

// kinds lists the kernel families this machine can run, narrowest first.
func kinds() []int {
	ks := []int{implGo}
	for k := implAVX2; k <= archBest(); k++ {
		ks = append(ks, k)
	}
	return ks
}

func kindName(k int) string { return [...]string{"go", "avx2", "avx512"}[k] }

// problem is one Sgemm call with random operands and padded strides.
type problem struct {
	transA, transB bool
	m, n, k        int
	alpha, beta    float32
	a, b, c        []float32
	lda, ldb, ldc  int
}

func newProblem(rng *rand.Rand, transA, transB bool, m, n, k, pad int, alpha, beta float32) *problem {
	p := &problem{transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, beta: beta}
	ar, ac := m, k
	if transA {
		ar, ac = k, m
	}
	br, bc := k, n
	if transB {
		br, bc = n, k
	}
	p.lda, p.ldb, p.ldc = ac+pad, bc+pad, n+pad
	p.a = randSlice(rng, max(0, (ar-1)*p.lda+ac))
	p.b = randSlice(rng, max(0, (br-1)*p.ldb+bc))
	// C is whole rows of ldc so the padding after the last column can be
	// checked too; the padding holds a canary the product must not touch.
	p.c = randSlice(rng, m*p.ldc)
	for i := 0; i < m; i++ {
		for j := n; j < p.ldc; j++ {
			p.c[i*p.ldc+j] = canary
		}
	}
	return p
}

const canary = -12345.5

func randSlice(rng *rand.Rand, n int) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = float32(rng.NormFloat64())
	}
	return s
}

// tolerance bounds |fast - exact| for element (i, j): float32 summation of
// k products errs by at most about k*eps*sum|a*b|, plus one rounding for
// each of alpha and beta.
func (p *problem) tolerance(i, j int, c0 []float32) float64 {
	var s float64
	for q := 0; q < p.k; q++ {
		s += math.Abs(float64(p.at(p.a, p.lda, p.transA, i, q)) * float64(p.at(p.b, p.ldb, p.transB, q, j)))
	}
	const eps = 1.0 / (1 << 23)
	mag := math.Abs(float64(p.alpha))*s + math.Abs(float64(p.beta)*float64(c0[i*p.ldc+j]))
	return (float64(p.k)+3)*eps*mag + 1e-30
}

// at reads op(X)(r, col) from x.
func (p *problem) at(x []float32, ld int, trans bool, r, col int) float32 {
	if trans {
		return x[col*ld+r]
	}
	return x[r*ld+col]
}

func (p *problem) check(t *testing.T, label string, got, c0 []float32) {
	t.Helper()
	want := append([]float32(nil), c0...)
	Reference(p.transA, p.transB, p.m, p.n, p.k, p.alpha, p.a, p.lda, p.b, p.ldb, p.beta, want, p.ldc)
	bad := 0
	for i := 0; i < p.m; i++ {
		for j := 0; j < p.ldc; j++ {
			g, w := got[i*p.ldc+j], want[i*p.ldc+j]
			if j >= p.n {
				if g != canary {
					t.Fatalf("%s: C[%d,%d] beyond column n=%d was written: %v", label, i, j, p.n, g)
				}
				continue
			}
			if d := math.Abs(float64(g) - float64(w)); !(d <= p.tolerance(i, j, c0)) {
				if bad++; bad <= 3 {
					t.Errorf("%s: C[%d,%d] = %v, want %v (diff %g, tolerance %g)", label, i, j, g, w, d, p.tolerance(i, j, c0))
				}
			}
		}
	}
	if bad > 3 {
		t.Errorf("%s: %d elements out of tolerance", label, bad)
	}
}

var shapes = []struct{ m, n, k int }{
	{1, 1, 1},
	{7, 13, 5},
	{12, 32, 8},     // exactly one AVX-512 tile
	{13, 33, 257},   // one over the tile and over KC
	{1000, 3, 1001}, // tall and thin, deep
	{3, 1000, 301},  // short and wide: threads split by columns
	{200, 70, 513},  // more than MC rows, three KC slices
	{64, 64, 64},
	{5, 4100, 3}, // more than NC columns
	{97, 129, 1},
}

// TestSgemmMatchesReference checks every kernel family, thread count,
// transpose combination and stride against the float64 reference.
func TestSgemmMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	ab := []struct{ alpha, beta float32 }{{1, 0}, {-0.5, 1.25}, {2, 1}}
	for _, kind := range kinds() {
		for _, sh := range shapes {
			for tr := 0; tr < 4; tr++ {
				transA, transB := tr&1 != 0, tr&2 != 0
				x := ab[(sh.m+tr)%len(ab)]
				pad := (sh.m + sh.n + tr) % 3
				p := newProblem(rng, transA, transB, sh.m, sh.n, sh.k, pad, x.alpha, x.beta)
				threadCounts := []int{1, 2}
				if kind == archBest() {
					threadCounts = append(threadCounts, 3) // more threads than cores
				}
				for _, threads := range threadCounts {
					label := fmt.Sprintf("%s/t%d/%dx%dx%d/tA=%v,tB=%v/pad%d/alpha=%v,beta=%v",
						kindName(kind), threads, sh.m, sh.n, sh.k, transA, transB, pad, x.alpha, x.beta)
					got := append([]float32(nil), p.c...)
					run(kind, threads, transA, transB, sh.m, sh.n, sh.k, p.alpha, p.a, p.lda, p.b, p.ldb, p.beta, got, p.ldc)
					p.check(t, label, got, p.c)
				}
			}
		}
	}
}

// TestSgemmDeepBlocking runs the KC = blockKCLarge path (used for big C)
// on small matrices by lowering its threshold.
func TestSgemmDeepBlocking(t *testing.T) {
	defer func(v int) { blockKCLargeC = v }(blockKCLargeC)
	blockKCLargeC = 1
	rng := rand.New(rand.NewPCG(13, 14))
	for _, kind := range kinds() {
		for _, sh := range []struct{ m, n, k int }{{37, 45, 1100}, {5, 70, 513}} {
			for tr := 0; tr < 4; tr++ {
				p := newProblem(rng, tr&1 != 0, tr&2 != 0, sh.m, sh.n, sh.k, 1, 1.5, 0.5)
				for _, threads := range []int{1, 2} {
					got := append([]float32(nil), p.c...)
					run(kind, threads, p.transA, p.transB, p.m, p.n, p.k, p.alpha, p.a, p.lda, p.b, p.ldb, p.beta, got, p.ldc)
					p.check(t, fmt.Sprintf("%s/t%d/%dx%dx%d/tr=%d", kindName(kind), threads, sh.m, sh.n, sh.k, tr), got, p.c)
				}
			}
		}
	}
}

// TestSgemmPublic goes through Sgemm itself (size heuristics, trivial cases).
func TestSgemmPublic(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	cases := []struct {
		m, n, k     int
		alpha, beta float32
	}{
		{1, 1, 1, 1, 0}, {7, 13, 5, 1, 1}, {150, 130, 170, 0.5, -1}, {300, 300, 300, 1, 0},
		{4, 5, 0, 1, 2}, {4, 5, 6, 0, 3}, {0, 5, 6, 1, 0}, {5, 0, 6, 1, 0},
	}
	for _, cs := range cases {
		for tr := 0; tr < 4; tr++ {
			p := newProblem(rng, tr&1 != 0, tr&2 != 0, cs.m, cs.n, cs.k, 1, cs.alpha, cs.beta)
			got := append([]float32(nil), p.c...)
			Sgemm(p.transA, p.transB, p.m, p.n, p.k, p.alpha, p.a, p.lda, p.b, p.ldb, p.beta, got, p.ldc)
			p.check(t, fmt.Sprintf("Sgemm %dx%dx%d tr=%d alpha=%v beta=%v", cs.m, cs.n, cs.k, tr, cs.alpha, cs.beta), got, p.c)
		}
	}
}

// TestSgemmPoisonedC fills C with NaN and Inf: beta == 0 must overwrite them.
func TestSgemmPoisonedC(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, kind := range kinds() {
		for _, sh := range []struct{ m, n, k int }{{1, 1, 1}, {7, 13, 5}, {33, 65, 300}, {130, 70, 40}} {
			for _, alpha := range []float32{1, 0} {
				for _, threads := range []int{1, 2} {
					p := newProblem(rng, false, true, sh.m, sh.n, sh.k, 0, alpha, 0)
					for i := range p.c {
						p.c[i] = float32(math.NaN())
						if i%3 == 0 {
							p.c[i] = float32(math.Inf(1))
						}
					}
					label := fmt.Sprintf("%s/t%d/%dx%dx%d/alpha=%v", kindName(kind), threads, sh.m, sh.n, sh.k, alpha)
					got := append([]float32(nil), p.c...)
					if alpha == 0 {
						// alpha == 0 is Sgemm's own path (no kernel runs).
						Sgemm(p.transA, p.transB, p.m, p.n, p.k, alpha, p.a, p.lda, p.b, p.ldb, 0, got, p.ldc)
					} else {
						run(kind, threads, p.transA, p.transB, p.m, p.n, p.k, alpha, p.a, p.lda, p.b, p.ldb, 0, got, p.ldc)
					}
					for i, v := range got {
						if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
							t.Fatalf("%s: C[%d] = %v after beta=0: the old C leaked", label, i, v)
						}
					}
					zero := make([]float32, len(p.c))
					p.check(t, label, got, zero)
				}
			}
		}
	}
}

// TestSgemmDeterministic: the same call twice, and on 1, 2 or 3 threads,
// gives the same bits.
func TestSgemmDeterministic(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for _, kind := range kinds() {
		for _, p := range []*problem{
			newProblem(rng, true, false, 301, 290, 700, 3, 0.75, 0.5),
			// C past blockKCLargeC: the deep slices (blockKCLarge).
			newProblem(rng, false, true, 1100, 1931, 37, 1, 1, 0.5),
		} {
			var first []float32
			for _, threads := range []int{2, 2, 1, 3} {
				got := append([]float32(nil), p.c...)
				run(kind, threads, p.transA, p.transB, p.m, p.n, p.k, p.alpha, p.a, p.lda, p.b, p.ldb, p.beta, got, p.ldc)
				if first == nil {
					first = got
					continue
				}
				for i := range got {
					if math.Float32bits(got[i]) != math.Float32bits(first[i]) {
						t.Fatalf("%s %dx%d: threads=%d: C[%d] = %v, first run gave %v", kindName(kind), p.m, p.n, threads, i, got[i], first[i])
					}
				}
			}
		}
	}
}

// TestSgemmConcurrentCalls runs independent products from several
// goroutines at once (run it with -race): the shared buffer pool must not
// hand one workspace to two calls.
func TestSgemmConcurrentCalls(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	ps := make([]*problem, 4)
	for i := range ps {
		ps[i] = newProblem(rng, i&1 != 0, i&2 != 0, 120+i, 110, 130, 1, 1, 0)
	}
	var wg sync.WaitGroup
	out := make([][]float32, len(ps))
	for i, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got := append([]float32(nil), p.c...)
			for range 3 {
				Sgemm(p.transA, p.transB, p.m, p.n, p.k, p.alpha, p.a, p.lda, p.b, p.ldb, p.beta, got, p.ldc)
			}
			out[i] = got
		}()
	}
	wg.Wait()
	for i, p := range ps {
		p.check(t, fmt.Sprintf("goroutine %d", i), out[i], p.c)
	}
}

func TestCheckNamesTheBadArgument(t *testing.T) {
	tests := []struct {
		name                               string
		transA, transB                     bool
		m, n, k, la, lda, lb, ldb, lc, ldc int
		want                               string
	}{
		{"negative", false, false, -1, 2, 2, 4, 2, 4, 2, 4, 2, "negative dimension"},
		{"short A", false, false, 2, 2, 3, 5, 3, 6, 2, 4, 2, "A is 2x3"},
		{"lda too small", false, false, 2, 2, 3, 6, 2, 6, 2, 4, 2, "lda=2"},
		{"short B transposed", false, true, 2, 4, 3, 6, 3, 11, 3, 8, 4, "B is 4x3"},
		{"ldc too small", false, false, 2, 4, 1, 2, 1, 4, 4, 8, 3, "ldc=3"},
		{"short C", false, false, 2, 4, 1, 2, 1, 4, 4, 7, 4, "C is 2x4"},
		{"transposed A ok", true, false, 2, 2, 3, 6, 2, 6, 2, 4, 2, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Check(tt.transA, tt.transB, tt.m, tt.n, tt.k, tt.la, tt.lda, tt.lb, tt.ldb, tt.lc, tt.ldc)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Check = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Check = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestSgemmPanicsWithMessage(t *testing.T) {
	defer func() {
		r := recover()
		err, ok := r.(error)
		if !ok || !strings.Contains(err.Error(), "needs") {
			t.Fatalf("recovered %v, want an error about the short slice", r)
		}
	}()
	Sgemm(false, false, 4, 4, 4, 1, make([]float32, 15), 4, make([]float32, 16), 4, 0, make([]float32, 16), 4)
}

func TestSetThreads(t *testing.T) {
	defer SetThreads(0)
	SetThreads(3)
	if got := Threads(); got != 3 {
		t.Fatalf("Threads() = %d after SetThreads(3)", got)
	}
	SetThreads(-1)
	if got := Threads(); got < 1 {
		t.Fatalf("Threads() = %d after SetThreads(-1), want at least 1", got)
	}
}

// benchSgemm times n x n x n products with every kernel family this
// machine runs, as sub-benchmarks (BenchmarkSgemm1024/avx2, ...).
func benchSgemm(b *testing.B, n int) {
	rng := rand.New(rand.NewPCG(11, 12))
	a, bm, c := randSlice(rng, n*n), randSlice(rng, n*n), make([]float32, n*n)
	for _, k := range kinds() {
		b.Run(kindName(k), func(b *testing.B) {
			defer SetImplementation("auto")
			if err := SetImplementation(kindName(k)); err != nil {
				b.Fatal(err)
			}
			Sgemm(false, false, n, n, n, 1, a, n, bm, n, 0, c, n)
			b.ResetTimer()
			for range b.N {
				Sgemm(false, false, n, n, n, 1, a, n, bm, n, 0, c, n)
			}
			b.ReportMetric(2*float64(n)*float64(n)*float64(n)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOPS")
		})
	}
}

func BenchmarkSgemm512(b *testing.B)  { benchSgemm(b, 512) }
func BenchmarkSgemm1024(b *testing.B) { benchSgemm(b, 1024) }
func BenchmarkSgemm2048(b *testing.B) { benchSgemm(b, 2048) }

func TestSetImplementation(t *testing.T) {
	defer SetImplementation("auto")
	for _, k := range kinds() {
		if err := SetImplementation(kindName(k)); err != nil || Implementation() != kindName(k) {
			t.Fatalf("SetImplementation(%s): %v, now %s", kindName(k), err, Implementation())
		}
	}
	if err := SetImplementation("sse9"); err == nil || !strings.Contains(err.Error(), "sse9") {
		t.Errorf("unknown kernel: %v", err)
	}
	if archBest() < implAVX512 {
		if err := SetImplementation("avx512"); err == nil {
			t.Error("avx512 accepted on a CPU without it")
		}
	}
	SetImplementation("auto")
	if Implementation() != kindName(archBest()) {
		t.Errorf("auto gives %s, want %s", Implementation(), kindName(archBest()))
	}
}

// TestColumnBlocksFinishInAnyOrder: a short, wide, shallow product (LoRA's
// dA of a 8192-wide down_proj: 16 x 8192 x 512, two column blocks of two
// slices each) on two threads, repeated. The first slice of the second
// column block does not wait for the first block's last slice, so a
// rectangle of each may finish in either order; the completion count used
// to be lowered by the late one, and the next slice then waited forever
// (it hung a llama-1b QLoRA step). Each product is also checked.
func TestColumnBlocksFinishInAnyOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 22))
	p := newProblem(rng, true, false, 16, 8192, 512, 0, 1, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 40; i++ {
			got := append([]float32(nil), p.c...)
			run(archBest(), 2, true, false, 16, 8192, 512, p.alpha, p.a, p.lda, p.b, p.ldb, p.beta, got, p.ldc)
			if i%10 == 0 {
				p.check(t, fmt.Sprintf("repeat %d", i), got, p.c)
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		t.Fatal("a 16x8192x512 product on two threads never finished: the scheduler deadlocked")
	}
}

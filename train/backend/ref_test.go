package backend

import (
	"math"
	"math/rand/v2"
	"testing"
)

func randVec(rng *rand.Rand, n int, std float64) []float64 {
	v := make([]float64, n)
	for i := range v {
		v[i] = rng.NormFloat64() * std
	}
	return v
}

// layerCase is one layer under test in float64: fwd computes the output from
// the inputs; bwd accumulates the input gradients for output gradient dout.
type layerCase struct {
	name   string
	inputs [][]float64
	fwd    func() []float64
	bwd    func(dout []float64) [][]float64
}

// layerCases builds every reference layer on small random inputs.
func layerCases(seed uint64) []layerCase {
	rng := rand.New(rand.NewPCG(seed, 1))
	const B, T, H, KVH, hd = 2, 4, 4, 2, 6
	N := B * T
	C, KC := H*hd, KVH*hd
	var cases []layerCase

	{ // matmul: y = x·Wᵀ (alpha 0.7)
		const OC = 5
		x, w := randVec(rng, N*C, 1), randVec(rng, OC*C, 1)
		cases = append(cases, layerCase{"matmul", [][]float64{x, w},
			func() []float64 { o := make([]float64, N*OC); MatmulForward(o, x, w, N, C, OC, 0.7, 0); return o },
			func(d []float64) [][]float64 {
				dx, dw := make([]float64, len(x)), make([]float64, len(w))
				MatmulBackward(dx, dw, d, x, w, N, C, OC, 0.7)
				return [][]float64{dx, dw}
			}})
	}
	{ // rmsnorm
		x, w := randVec(rng, N*C, 1), randVec(rng, C, 1)
		cases = append(cases, layerCase{"rmsnorm", [][]float64{x, w},
			func() []float64 {
				o, r := make([]float64, N*C), make([]float64, N)
				RMSNormForward(o, r, x, w, N, C, 1e-5)
				return o
			},
			func(d []float64) [][]float64 {
				o, r := make([]float64, N*C), make([]float64, N)
				RMSNormForward(o, r, x, w, N, C, 1e-5)
				dx, dw := make([]float64, len(x)), make([]float64, len(w))
				RMSNormBackward(dx, dw, d, x, w, r, N, C)
				return [][]float64{dx, dw}
			}})
	}
	{ // rope
		x := randVec(rng, N*C, 1)
		cos, sin := RoPETables(T, hd, 10000)
		cases = append(cases, layerCase{"rope", [][]float64{x},
			func() []float64 { o := append([]float64(nil), x...); RoPEForward(o, cos, sin, N, T, H, hd); return o },
			func(d []float64) [][]float64 {
				dx := append([]float64(nil), d...)
				RoPEBackward(dx, cos, sin, N, T, H, hd)
				return [][]float64{dx}
			}})
	}
	{ // attention, grouped-query
		q, k, v := randVec(rng, N*C, 1), randVec(rng, N*KC, 1), randVec(rng, N*KC, 1)
		fwd := func() ([]float64, []float64) {
			o, att := make([]float64, N*C), make([]float64, B*H*T*T)
			AttentionForward(o, att, q, k, v, B, T, H, KVH, hd, 0, B*H)
			return o, att
		}
		cases = append(cases, layerCase{"attention", [][]float64{q, k, v},
			func() []float64 { o, _ := fwd(); return o },
			func(d []float64) [][]float64 {
				_, att := fwd()
				dq, dk, dv := make([]float64, len(q)), make([]float64, len(k)), make([]float64, len(v))
				AttentionBackward(dq, dk, dv, make([]float64, T), d, att, q, k, v, B, T, H, KVH, hd, 0, B*KVH)
				return [][]float64{dq, dk, dv}
			}})
	}
	{ // swiglu
		g, u := randVec(rng, N*C, 2), randVec(rng, N*C, 1)
		cases = append(cases, layerCase{"swiglu", [][]float64{g, u},
			func() []float64 { o := make([]float64, len(g)); SwiGLUForward(o, g, u); return o },
			func(d []float64) [][]float64 {
				dg, du := make([]float64, len(g)), make([]float64, len(u))
				SwiGLUBackward(dg, du, d, g, u)
				return [][]float64{dg, du}
			}})
	}
	{ // encoder (token embedding), with a repeated token
		const V = 5
		w := randVec(rng, V*C, 1)
		tokens := []int32{0, 3, 3, 1, 4, 2, 3, 0}
		cases = append(cases, layerCase{"encoder", [][]float64{w},
			func() []float64 { o := make([]float64, N*C); EncoderForward(o, w, tokens, N, C); return o },
			func(d []float64) [][]float64 {
				dw := make([]float64, len(w))
				EncoderBackward(dw, d, tokens, N, C, 0, C)
				return [][]float64{dw}
			}})
	}
	{ // dropout: a fixed mask makes it linear
		x := randVec(rng, N*C, 1)
		cases = append(cases, layerCase{"dropout", [][]float64{x},
			func() []float64 { o := make([]float64, len(x)); DropoutForward(o, x, 0.3, 42, 0, len(x)); return o },
			func(d []float64) [][]float64 {
				dx := make([]float64, len(x))
				DropoutBackward(dx, d, 0.3, 42, 0, len(x))
				return [][]float64{dx}
			}})
	}
	return cases
}

// TestLayersFiniteDifferences checks every layer's backward against central
// differences of L = Σ out·R in float64.
func TestLayersFiniteDifferences(t *testing.T) {
	for _, lc := range layerCases(1) {
		t.Run(lc.name, func(t *testing.T) {
			out := lc.fwd()
			rng := rand.New(rand.NewPCG(2, 2))
			r := randVec(rng, len(out), 1)
			loss := func() float64 {
				var s float64
				for i, o := range lc.fwd() {
					s += o * r[i]
				}
				return s
			}
			grads := lc.bwd(r)
			const h = 1e-6
			for a, in := range lc.inputs {
				for i := range in {
					orig := in[i]
					in[i] = orig + h
					lp := loss()
					in[i] = orig - h
					lm := loss()
					in[i] = orig
					fd := (lp - lm) / (2 * h)
					if d := math.Abs(grads[a][i] - fd); d > 1e-6*(1+math.Abs(fd)) {
						t.Fatalf("input %d element %d: backward %.10g, finite difference %.10g", a, i, grads[a][i], fd)
					}
				}
			}
		})
	}
}

func TestCrossEntropyFiniteDifferences(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	const N, V = 4, 7
	logits := randVec(rng, N*V, 2)
	targets := []int32{0, 6, -1, 3} // -1 is padding
	loss := func() float64 {
		l := append([]float64(nil), logits...)
		losses := make([]float64, N)
		CrossEntropy(l, losses, targets, N, V, 1, false)
		var s float64
		for _, x := range losses {
			s += x
		}
		return s
	}
	d := append([]float64(nil), logits...)
	CrossEntropy(d, make([]float64, N), targets, N, V, 1, true)
	const h = 1e-6
	for i := range logits {
		orig := logits[i]
		logits[i] = orig + h
		lp := loss()
		logits[i] = orig - h
		lm := loss()
		logits[i] = orig
		fd := (lp - lm) / (2 * h)
		if math.Abs(d[i]-fd) > 1e-7 {
			t.Fatalf("dlogits[%d] = %.10g, finite difference %.10g", i, d[i], fd)
		}
	}
}

func TestRoPEMatchesRotateHalf(t *testing.T) {
	// HF: q*cos + rotate_half(q)*sin with rotate_half(x) = cat(-x2, x1) and cos/sin repeated twice.
	const hd, pos = 8, 3
	x := []float64{1, 2, 3, 4, 5, 6, 7, 8}
	cos, sin := RoPETables(pos+1, hd, 10000)
	got := make([]float64, hd*(pos+1))
	copy(got[pos*hd:], x)
	RoPEForward(got, cos, sin, pos+1, pos+1, 1, hd)
	for i := 0; i < hd; i++ {
		f := i % (hd / 2)
		ang := float64(pos) / math.Pow(10000, float64(2*f)/hd)
		var rot float64
		if i < hd/2 {
			rot = -x[i+hd/2]
		} else {
			rot = x[i-hd/2]
		}
		want := x[i]*math.Cos(ang) + rot*math.Sin(ang)
		if math.Abs(got[pos*hd+i]-want) > 1e-12 {
			t.Errorf("element %d: %v, want %v", i, got[pos*hd+i], want)
		}
	}
}

func TestAdamWMatchesFormula(t *testing.T) {
	p, g := []float64{1, -2}, []float64{0.5, -0.25}
	m, v := []float64{0.1, 0.2}, []float64{0.01, 0.02}
	lr, b1, b2, eps, wd, step := 0.01, 0.9, 0.95, 1e-8, 0.1, 3
	AdamW(p, g, m, v, lr, b1, b2, eps, wd, step)
	m0 := 0.9*0.1 + 0.1*0.5
	v0 := 0.95*0.01 + 0.05*0.25
	want := 1 - lr*((m0/(1-math.Pow(b1, 3)))/(math.Sqrt(v0/(1-math.Pow(b2, 3)))+eps)+wd*1)
	if math.Abs(p[0]-want) > 1e-15 || math.Abs(m[0]-m0) > 1e-15 || math.Abs(v[0]-v0) > 1e-15 {
		t.Errorf("p %v m %v v %v; want %v %v %v", p[0], m[0], v[0], want, m0, v0)
	}
}

func TestDropoutMaskRate(t *testing.T) {
	kept := 0
	const n = 100000
	for i := 0; i < n; i++ {
		if DropoutMask(7, i, 0.25) {
			kept++
		}
	}
	if r := float64(kept) / n; math.Abs(r-0.75) > 0.01 {
		t.Errorf("kept fraction %.4f, want 0.75", r)
	}
	if DropoutMask(7, 5, 0) != true {
		t.Error("p = 0 dropped an element")
	}
}

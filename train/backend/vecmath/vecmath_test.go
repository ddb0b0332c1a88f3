package vecmath

import (
	"math"
	"math/rand/v2"
	"testing"
)

func near(t *testing.T, what string, i int, got, want float64, rel float64) {
	t.Helper()
	if d := math.Abs(got - want); !(d <= rel*math.Abs(want)+1e-30) {
		t.Fatalf("%s[%d] = %v, want %v (relative error %.2g > %.2g)", what, i, got, want, d/math.Abs(want), rel)
	}
}

// The reference: the same formulas with exp in float64.
func sigmoid64(g float32) float64 { return 1 / (1 + math.Exp(-float64(g))) }

func TestSwiGLUMatchesFloat64(t *testing.T) {
	t.Logf("implementation %s", Implementation())
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{1, 15, 16, 17, 33, 1000} {
		gate, up, dout := make([]float32, n), make([]float32, n), make([]float32, n)
		for i := range gate {
			gate[i] = float32(rng.NormFloat64() * 4)
			up[i] = float32(rng.NormFloat64())
			dout[i] = float32(rng.NormFloat64())
		}
		if n > 3 {
			gate[0], gate[1], gate[2] = 100, -100, 0 // saturated both ways, and the middle
		}
		out := make([]float32, n)
		SwiGLUForward(out, gate, up)
		dgate, dup := make([]float32, n), make([]float32, n)
		for i := range dgate {
			dgate[i], dup[i] = 1, -1 // the backward accumulates
		}
		SwiGLUBackward(dgate, dup, dout, gate, up)
		for i, g := range gate {
			s := sigmoid64(g)
			near(t, "out", i, float64(out[i]), float64(g)*s*float64(up[i]), 1e-6)
			wantDg := 1 + float64(dout[i])*float64(up[i])*s*(1+float64(g)*(1-s))
			wantDu := -1 + float64(dout[i])*float64(g)*s
			// accumulating into 1 and -1 costs float32 rounding of the sum
			if d := math.Abs(float64(dgate[i]) - wantDg); d > 1e-6*(1+math.Abs(wantDg)) {
				t.Fatalf("dgate[%d] = %v, want %v", i, dgate[i], wantDg)
			}
			if d := math.Abs(float64(dup[i]) - wantDu); d > 1e-6*(1+math.Abs(wantDu)) {
				t.Fatalf("dup[%d] = %v, want %v", i, dup[i], wantDu)
			}
		}
	}
}

func TestCausalSoftmax(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	n := 70
	for _, tt := range []int{0, 1, 15, 16, 17, 40, 69} {
		row := make([]float32, n)
		for i := range row {
			row[i] = float32(rng.NormFloat64() * 5)
		}
		want := make([]float64, tt+1)
		maxv := math.Inf(-1)
		for _, x := range row[:tt+1] {
			maxv = math.Max(maxv, float64(x))
		}
		var sum float64
		for i, x := range row[:tt+1] {
			want[i] = math.Exp(float64(x) - maxv)
			sum += want[i]
		}
		CausalSoftmax(row, tt)
		var got float64
		for i := range want {
			near(t, "p", i, float64(row[i]), want[i]/sum, 2e-6)
			got += float64(row[i])
		}
		if math.Abs(got-1) > 1e-5 {
			t.Fatalf("t=%d: probabilities sum to %v", tt, got)
		}
		for i := tt + 1; i < n; i++ {
			if row[i] != 0 {
				t.Fatalf("t=%d: masked row[%d] = %v", tt, i, row[i])
			}
		}
	}
}

package backend

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/opencluster/opencluster/quant"
	"github.com/opencluster/opencluster/train/backend/sgemm"
)

// TestFrozenBF16Products runs the 4-bit products in fp32 and in bf16 on the
// same operands: bf16 rounds each operand to 8 significant bits, so the
// results agree to within a few parts in a thousand of the output's scale.
func TestFrozenBF16Products(t *testing.T) {
	if !sgemm.BF16Supported() {
		t.Skip("this CPU has no AVX512_BF16")
	}
	rng := rand.New(rand.NewPCG(3, 9))
	N, C, OC := 37, 192, 100
	w := make([]float32, OC*C)
	for i := range w {
		w[i] = float32(rng.NormFloat64() * 0.05)
	}
	q, err := quant.Quantize4(w, []int{OC, C}, quant.NF4, 64, true)
	if err != nil {
		t.Fatal(err)
	}
	x := make([]float32, N*C)
	dy := make([]float32, N*OC)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	for i := range dy {
		dy[i] = float32(rng.NormFloat64())
	}
	results := map[string][2][]float32{}
	for _, dt := range []string{ComputeFP32, ComputeBF16} {
		be := NewCPU(2)
		if _, err := ApplyComputeDType(be, dt); err != nil {
			t.Fatal(err)
		}
		qb := be.UploadQ4(q)
		xb, dyb := be.Alloc(N*C), be.Alloc(N*OC)
		be.Upload(xb, x)
		be.Upload(dyb, dy)
		out, dx := be.Alloc(N*OC), be.Alloc(N*C)
		be.MatmulQ4Forward(out, xb, qb, N, C, OC)
		be.Upload(dx, x) // the backward accumulates: start from x
		be.MatmulQ4Backward(dx, dyb, qb, N, C, OC)
		results[dt] = [2][]float32{HostSlice(out), HostSlice(dx)}
	}
	for i, name := range []string{"forward", "backward"} {
		a, b := results[ComputeFP32][i], results[ComputeBF16][i]
		var scale, worst float64
		for j := range a {
			scale = max(scale, math.Abs(float64(a[j])))
			worst = max(worst, math.Abs(float64(a[j]-b[j])))
		}
		t.Logf("%s: max |bf16 - fp32| = %.2e of a scale %.2e", name, worst, scale)
		if worst > 1e-2*scale || worst == 0 {
			t.Errorf("%s: bf16 and fp32 differ by %g (scale %g): want a bf16-sized difference, not none and not more", name, worst, scale)
		}
	}
}

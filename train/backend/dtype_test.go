package backend

import (
	"math"
	"math/rand/v2"
	"strings"
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

// gpuLike answers as the CUDA backend does on a GPU without bf16 (Turing).
type gpuLike struct {
	Backend
	bf16, set string
}

func (g *gpuLike) SetFrozenDType(d string) error { g.set = d; return nil }
func (g *gpuLike) FrozenDType() string           { return g.set }
func (g *gpuLike) BF16Available() bool           { return g.bf16 == "yes" }
func (g *gpuLike) FP16Available() bool           { return true }

// TestApplyComputeDTypeGPU: auto picks bf16 where there is bf16 and fp16
// (forward only, on the backend's side) where there is not; fp16 is no CPU
// setting.
func TestApplyComputeDTypeGPU(t *testing.T) {
	for _, c := range []struct{ bf16, want string }{{"yes", ComputeBF16}, {"no", ComputeFP16}} {
		g := &gpuLike{Backend: NewCPU(1), bf16: c.bf16, set: ComputeFP32}
		got, err := ApplyComputeDType(g, ComputeAuto)
		if err != nil || got != c.want || g.set != c.want {
			t.Errorf("bf16 %s: auto gave %q (set %q, %v), want %q", c.bf16, got, g.set, err, c.want)
		}
	}
	if _, err := ApplyComputeDType(NewCPU(1), ComputeFP16); err == nil || !strings.Contains(err.Error(), "fp16") {
		t.Errorf("fp16 on the CPU: %v", err)
	}
}

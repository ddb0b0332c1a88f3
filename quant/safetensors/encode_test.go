package safetensors

import (
	"bytes"
	"encoding/binary"
	"math"
	"math/rand/v2"
	"testing"
)

// Every half and bfloat16 value widens exactly and narrows back to itself;
// values between two neighbours round to the nearer (ties to even), which
// is checked against the widened neighbours in float64.
func TestNarrowingRoundsToNearestEven(t *testing.T) {
	for h := 0; h < 1<<16; h++ {
		f := F16ToF32(uint16(h))
		if f != f {
			if g := F32ToF16(f); F16ToF32(g) == F16ToF32(g) {
				t.Fatalf("F16 NaN %#x narrowed to non-NaN %#x", h, g)
			}
			continue
		}
		if g := F32ToF16(f); g != uint16(h) && !(f == 0 && g^uint16(h) == 0x8000) {
			t.Fatalf("F16 %#x = %v narrows to %#x", h, f, g)
		}
		bf := math.Float32frombits(uint32(h) << 16)
		if bf == bf {
			if g := F32ToBF16(bf); g != uint16(h) {
				t.Fatalf("BF16 %#x narrows to %#x", h, g)
			}
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 200000; i++ {
		x := float32(rng.NormFloat64() * math.Pow(2, float64(rng.IntN(40)-30)))
		checkNearest(t, "F16", x, F16ToF32(F32ToF16(x)))
		checkNearest(t, "BF16", x, math.Float32frombits(uint32(F32ToBF16(x))<<16))
	}
	if F32ToF16(1e6) != 0x7C00 || F32ToF16(-1e6) != 0xFC00 {
		t.Error("overflow does not give infinity")
	}
}

// checkNearest checks that |x - got| is at most half a step of the narrow
// format at got.
func checkNearest(t *testing.T, what string, x, got float32) {
	t.Helper()
	if math.IsInf(float64(got), 0) {
		return
	}
	d := math.Abs(float64(x) - float64(got))
	ulp := math.Abs(float64(got)) * math.Pow(2, -10)
	if what == "BF16" {
		ulp = math.Abs(float64(got)) * math.Pow(2, -7)
	}
	if what == "F16" && math.Abs(float64(got)) < math.Pow(2, -14) {
		ulp = math.Pow(2, -24) // subnormal spacing
	}
	if d > ulp/2*1.0000001+1e-45 && d > math.Pow(2, -25) {
		t.Fatalf("%s(%v) = %v: off by %g, more than half a step %g", what, x, got, d, ulp/2)
	}
}

func TestF32ViewWritesTheSameBytesWithoutACopy(t *testing.T) {
	v := []float32{1, -2.5, float32(math.Inf(1)), 3e-39, 0}
	view, cp := F32View([]int{5}, v), F32Tensor([]int{5}, v)
	if !bytes.Equal(view.Data, cp.Data) || view.DType != "F32" {
		t.Fatalf("view %v, copy %v", view.Data, cp.Data)
	}
	if littleEndian {
		v[1] = 7 // the view aliases v
		if got := math.Float32frombits(binary.LittleEndian.Uint32(view.Data[4:])); got != 7 {
			t.Fatalf("view reads %v after v changed, want the live value 7", got)
		}
	}
	if e := F32View([]int{0}, nil); len(e.Data) != 0 {
		t.Fatal("empty view has data")
	}
}

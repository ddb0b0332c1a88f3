package quant

import (
	"math"
	"math/rand/v2"
	"testing"
)

func TestBF16KnownAnswers(t *testing.T) {
	cases := []struct {
		x    float32
		want uint16
	}{
		{1, 0x3F80},
		{-2, 0xC000},
		{0, 0},
		{float32(math.Copysign(0, -1)), 0x8000},
		{1 + 1.0/256, 0x3F80},            // halfway between 1 and 1+2^-7: ties to even (down)
		{1 + 3.0/256, 0x3F82},            // halfway between 1+2^-7 (odd) and 1+2^-6: up to even
		{1 + 1.0/256 + 1.0/4096, 0x3F81}, // just above halfway: up
		{math.MaxFloat32, 0x7F80},        // overflows to +Inf, as PyTorch
		{float32(math.Inf(-1)), 0xFF80},
		{math.SmallestNonzeroFloat32, 0}, // subnormals round like any value
	}
	for _, c := range cases {
		if got := BF16FromFloat32(c.x); got != c.want {
			t.Errorf("BF16FromFloat32(%g) = %#04x, want %#04x", c.x, got, c.want)
		}
	}
	nan := BF16FromFloat32(float32(math.NaN()))
	if v := BF16ToFloat32(nan); !math.IsNaN(float64(v)) {
		t.Errorf("NaN became %v", v)
	}
	// A NaN whose payload sits only in the low 16 bits must not become Inf.
	if v := BF16ToFloat32(BF16FromFloat32(math.Float32frombits(0x7F800001))); !math.IsNaN(float64(v)) {
		t.Errorf("low-payload NaN became %v", v)
	}
}

// TestBF16NearestEven checks every rounding against a float64 reference:
// the two bfloat16 neighbours of x, the nearer one, ties to the even one.
func TestBF16NearestEven(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 200000; i++ {
		x := math.Float32frombits(rng.Uint32())
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			continue
		}
		lo := math.Float32frombits(math.Float32bits(x) &^ 0xFFFF) // toward zero
		loBits := uint16(math.Float32bits(lo) >> 16)
		hiBits := loBits + 1 // away from zero (may be Inf)
		hi := float64(BF16ToFloat32(hiBits))
		if math.IsInf(hi, 0) { // IEEE: overflow when past max + half an ulp, as if 2^128 followed
			hi = math.Copysign(math.Ldexp(1, 128), hi)
		}
		dlo := math.Abs(float64(x) - float64(lo))
		dhi := math.Abs(hi - float64(x))
		want := loBits
		if dhi < dlo || (dhi == dlo && loBits&1 == 1) {
			want = hiBits
		}
		if got := BF16FromFloat32(x); got != want {
			t.Fatalf("BF16FromFloat32(%g [%#08x]) = %#04x, want %#04x", x, math.Float32bits(x), got, want)
		}
	}
}

func TestBF16WidenNarrowRoundTrip(t *testing.T) {
	src := []float32{1.5, -0.007812500, 3.140625, 65536}
	h := make([]uint16, len(src))
	NarrowBF16(h, src)
	back := make([]float32, len(src))
	WidenBF16(back, h)
	for i := range src { // each value is exactly representable in bf16
		if back[i] != src[i] {
			t.Errorf("value %d: %v -> %v", i, src[i], back[i])
		}
	}
}

package quant

import (
	"math"
	"math/rand/v2"
	"testing"
)

func TestDynamicMap(t *testing.T) {
	m := DynamicMap()
	for i := 1; i < 256; i++ {
		if !(m[i] > m[i-1]) {
			t.Fatalf("map not strictly increasing at %d: %v <= %v", i, m[i], m[i-1])
		}
	}
	// create_dynamic_map(signed=True): 127 negatives, 0 at 127, 1.0 at 255,
	// and the largest mean below 1 is (1 - 0.9/128) = 0.99296875.
	if m[127] != 0 || m[255] != 1 || m[254] != 0.99296875 || m[0] != -0.99296875 {
		t.Fatalf("map ends: m[0]=%v m[127]=%v m[254]=%v m[255]=%v", m[0], m[127], m[254], m[255])
	}
	for i := 0; i < 127; i++ {
		if m[i] != -m[253-i+1] {
			t.Fatalf("map not symmetric: m[%d]=%v m[%d]=%v", i, m[i], 254-i, m[254-i])
		}
	}
	// The smallest magnitude: 1e-6 * (0.1 + 1)/2 = 5.5e-7 in float32 steps.
	if got := m[128]; math.Abs(float64(got)-5.5e-7) > 1e-12 {
		t.Fatalf("m[128] = %v, want about 5.5e-7", got)
	}
	// Known answer from torch's float32 linspace, which the CPU kernel
	// computes with fused multiply-adds from each end: entry 20 is
	// -0.7117187976837158; a naive start+i*step in
	// float32 gives -0.71171874 instead.
	if got, want := m[20], float32(-0.7117187976837158); got != want {
		t.Fatalf("m[20] = %v, want %v (torch.linspace rounding)", got, want)
	}
	if got, want := m[41], float32(-0.4164062440395355); got != want {
		t.Fatalf("m[41] = %v, want %v (torch.linspace rounding)", got, want)
	}
}

func TestQuantize8(t *testing.T) {
	m := DynamicMap()
	// dQuantize<0>: exact code values map to themselves, ±1 to the ends, NaN
	// to 0.
	for i, v := range m {
		if got := quantize8(&m, v); got != byte(i) {
			t.Fatalf("quantize8(m[%d]=%v) = %d", i, v, got)
		}
	}
	if got := quantize8(&m, -1); got != 0 {
		t.Errorf("quantize8(-1) = %d, want 0", got)
	}
	if got := quantize8(&m, float32(math.NaN())); got != 0 {
		t.Errorf("quantize8(NaN) = %d, want 0", got)
	}
	// Otherwise the nearest code (up to a float32 midpoint tie).
	rng := rand.New(rand.NewPCG(1, 1))
	for k := 0; k < 20000; k++ {
		x := float32(rng.Float64()*2 - 1)
		if k%2 == 0 {
			x *= float32(math.Pow(10, -rng.Float64()*6))
		}
		c := quantize8(&m, x)
		best := math.Inf(1)
		for _, v := range m {
			best = min(best, math.Abs(float64(x-v)))
		}
		if d := math.Abs(float64(x - m[c])); d > best+1e-7*math.Abs(float64(x))+1e-12 {
			t.Fatalf("quantize8(%v) = %d (%v), error %g but nearest is %g", x, c, m[c], d, best)
		}
	}
}

func TestBlockwise8RoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(2, 2))
	data := randNormal(rng, 256*5+11)
	data[300] = 0.5
	b, err := QuantizeBlockwise8(data, 256)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(b.Absmax) != 6 || b.Absmax[1] != 0.5 {
		t.Fatalf("absmax = %v", b.Absmax)
	}
	out := make([]float32, len(data))
	b.Dequantize(out)
	m := DynamicMap()
	gap := maxGap(m[:])
	for i, v := range data {
		if d := math.Abs(float64(v - out[i])); d > gap/2*float64(b.Absmax[i/256])*(1+1e-5) {
			t.Fatalf("element %d: %v came back %v", i, v, out[i])
		}
	}
	if out[300] != 0.5 {
		t.Fatalf("the absmax element came back %v, want exactly 0.5 (code 255 = 1.0)", out[300])
	}
	if _, err := QuantizeBlockwise8([]float32{float32(math.Inf(-1))}, 256); err == nil {
		t.Fatal("QuantizeBlockwise8 accepted -Inf")
	}
	if _, err := QuantizeBlockwise8(data, 100); err == nil {
		t.Fatal("QuantizeBlockwise8 accepted block size 100")
	}
}

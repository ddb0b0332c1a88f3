package quant

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// bitsandbytes cannot run here (no GPU, no Python packages), so the
// known-answer vectors below are derived by hand from its algorithm and
// say which call they correspond to.

func TestNF4CodeValues(t *testing.T) {
	// get_4bit_type("nf4") in bitsandbytes/functional.py, in order.
	want := []float64{-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
		-0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
		0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
		0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0}
	got := CodeValues(NF4)
	for i, w := range want {
		if got[i] != float32(w) {
			t.Errorf("NF4 code %d = %v, want %v", i, got[i], float32(w))
		}
	}
	if QuantMap(NF4) != got {
		t.Error("NF4 quant_map differs from the dequantization table")
	}
}

func TestFP4CodeValues(t *testing.T) {
	// get_4bit_type("fp4"): [0, .0625, 8, 12, 4, 6, 2, 3] / 12, sign in bit 3.
	raw := []float32{0, 0.0625, 8, 12, 4, 6, 2, 3}
	got := CodeValues(FP4)
	qm := QuantMap(FP4)
	for i, r := range raw {
		w := r / 12
		if got[i] != w || got[i+8] != -w {
			t.Errorf("FP4 code %d/%d = %v/%v, want ±%v", i, i+8, got[i], got[i+8], w)
		}
		if qm[i] != w {
			t.Errorf("FP4 quant_map[%d] = %v, want %v", i, qm[i], w)
		}
	}
}

// below and above step one float32 down or up from c.
func below(c float32) float32 { return math.Nextafter32(c, float32(math.Inf(-1))) }
func above(c float32) float32 { return math.Nextafter32(c, float32(math.Inf(1))) }

func TestQuantizeNF4Thresholds(t *testing.T) {
	// dQuantizeNF4 compares x > threshold: a value equal to a threshold takes
	// the lower code, the next float32 up takes the upper one. The literals
	// are rounded straight from decimal to float32, as nvcc rounds the
	// kernel's "f" constants (going through float64 first would round four
	// of them, which sit almost exactly between two float32s, the other way).
	thresholds := []float32{-0.8480964004993439, -0.6106329262256622, -0.4599952697753906,
		-0.33967943489551544, -0.23460740596055984, -0.13791173323988914, -0.045525018125772476,
		0.03979014977812767, 0.1202552504837513, 0.2035212516784668, 0.2920137718319893,
		0.3893125355243683, 0.5016634166240692, 0.6427869200706482, 0.8614784181118011}
	for lower, th := range thresholds {
		if got := quantizeNF4(th); got != byte(lower) {
			t.Errorf("quantizeNF4(%v) = %d, want %d", th, got, lower)
		}
		if got := quantizeNF4(above(th)); got != byte(lower+1) {
			t.Errorf("quantizeNF4(%v) = %d, want %d", above(th), got, lower+1)
		}
		if got := quantizeNF4(below(th)); got != byte(lower) {
			t.Errorf("quantizeNF4(%v) = %d, want %d", below(th), got, lower)
		}
	}
	for _, c := range []struct {
		x    float32
		want byte
	}{{-1, 0}, {1, 15}, {0, 7}, {float32(math.NaN()), 0}, {-2, 0}, {2, 15}} {
		if got := quantizeNF4(c.x); got != c.want {
			t.Errorf("quantizeNF4(%v) = %d, want %d", c.x, got, c.want)
		}
	}
}

func TestQuantizeFP4(t *testing.T) {
	// dQuantizeFP4: sign bit only for x < 0; thresholds on |x|.
	cases := []struct {
		x    float32
		want byte
	}{
		{0, 0b0000}, {float32(math.Copysign(0, -1)), 0b0000}, {float32(math.NaN()), 0b0000},
		{0.002, 0b0000}, {0.003, 0b0001}, {-0.002, 0b1000},
		{0.1, 0b0110}, {0.25, 0b0111}, {0.3, 0b0100}, {0.5, 0b0101},
		{0.6, 0b0010}, {1, 0b0011}, {-1, 0b1011}, {-0.5, 0b1101},
		{0.29166667, 0b0111}, {above(0.29166667), 0b0100},
		{0.8333333, 0b0010}, {above(0.8333333), 0b0011},
	}
	for _, c := range cases {
		if got := quantizeFP4(c.x); got != c.want {
			t.Errorf("quantizeFP4(%v) = %04b, want %04b", c.x, got, c.want)
		}
	}
}

func TestNibbleOrder(t *testing.T) {
	// kQuantizeBlockwise: qvals[j] = q(vals[2j]) << 4 | q(vals[2j+1]).
	q, err := Quantize4([]float32{1, -1, 0, 1}, []int{4}, NF4, 64, false)
	if err != nil {
		t.Fatal(err)
	}
	if q.Packed[0] != 0xF0 || q.Packed[1] != 0x7F {
		t.Fatalf("packed = % x, want f0 7f", q.Packed)
	}
	if q.Code(0) != 15 || q.Code(1) != 0 || q.Code(2) != 7 || q.Code(3) != 15 {
		t.Fatalf("Code() disagrees with the packing")
	}
}

func TestQuantizeKnownAnswers(t *testing.T) {
	// quantize_4bit(A, blocksize=64, quant_type="nf4") on the GPU: the kernel
	// multiplies by 1/absmax (float32), it does not divide. With absmax 3 the
	// value 0x3f957efb (1.1679376) times 1/3 is 0.38931257, above the
	// 0.38931254 threshold, so it codes 12; dividing by 3 would give 11.
	x := math.Float32frombits(0x3f957efb)
	q, err := Quantize4([]float32{x, 3}, []int{2}, NF4, 64, false)
	if err != nil {
		t.Fatal(err)
	}
	if q.Absmax[0] != 3 || q.Packed[0] != 0xCF {
		t.Fatalf("absmax %v packed %02x, want 3 and cf", q.Absmax[0], q.Packed[0])
	}

	// A block of 64 values i/63 - 0.5 scaled so absmax = 0.5 (the first
	// element): each code is the NF4 decision for 2*(i/63-0.5).
	data := make([]float32, 64)
	for i := range data {
		data[i] = float32(i)/63 - 0.5
	}
	q, _ = Quantize4(data, []int{64}, NF4, 64, false)
	scale := 1 / q.Absmax[0]
	for i, v := range data {
		if got, want := q.Code(i), quantizeNF4(v*scale); got != want {
			t.Fatalf("element %d: code %d, want %d", i, got, want)
		}
	}
	if q.Code(0) != 0 || q.Code(63) != 15 {
		t.Fatalf("extremes coded %d and %d, want 0 and 15", q.Code(0), q.Code(63))
	}
}

func TestAllZeroBlock(t *testing.T) {
	// bitsandbytes: absmax 0, 1/0 = Inf, 0*Inf = NaN, which both trees send
	// to code 0; dequantized, code value * 0 = 0. No NaN may come out.
	for _, f := range []Format{NF4, FP4} {
		data := make([]float32, 130)
		data[129] = 5 // third block non-zero
		q, err := Quantize4(data, []int{130}, f, 64, false)
		if err != nil {
			t.Fatal(err)
		}
		if q.Absmax[0] != 0 || q.Absmax[2] != 5 {
			t.Fatalf("%v absmax = %v", f, q.Absmax)
		}
		for i := 0; i < 64; i++ {
			if q.Code(i) != 0 {
				t.Fatalf("%v zero block code %d = %d, want 0 as bitsandbytes", f, i, q.Code(i))
			}
		}
		out := make([]float32, 130)
		q.Dequantize(out)
		for i, v := range out[:128] {
			if v != 0 {
				t.Fatalf("%v element %d dequantized to %v, want 0", f, i, v)
			}
		}
		if out[129] != 5 {
			t.Fatalf("%v element 129 = %v, want 5", f, out[129])
		}
	}
}

func TestPartialBlockAndOddLength(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{1, 3, 63, 65, 100, 127, 129} {
		data := randNormal(rng, n)
		q, err := Quantize4(data, []int{n}, NF4, 64, false)
		if err != nil {
			t.Fatal(err)
		}
		if len(q.Packed) != (n+1)/2 || len(q.Absmax) != (n+63)/64 {
			t.Fatalf("n=%d: %d bytes %d blocks", n, len(q.Packed), len(q.Absmax))
		}
		last := len(q.Absmax) - 1
		if want := blockAbsmax(data[last*64:]); q.Absmax[last] != want {
			t.Fatalf("n=%d: last absmax %v, want %v (max over valid elements only)", n, q.Absmax[last], want)
		}
		// bitsandbytes codes the missing element as 0.0: NF4 code 7.
		if n%2 == 1 && q.Packed[n/2]&0x0F != 7 {
			t.Fatalf("n=%d: padding nibble %x, want 7 (NF4 code of 0.0)", n, q.Packed[n/2]&0x0F)
		}
		checkRoundTrip(t, q, data)
	}
}

func TestRoundTripBound(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, f := range []Format{NF4, FP4} {
		for _, bs := range []int{32, 64, 256, 4096} {
			data := randNormal(rng, 5000)
			q, err := Quantize4(data, []int{50, 100}, f, bs, false)
			if err != nil {
				t.Fatal(err)
			}
			checkRoundTrip(t, q, data)
		}
	}
}

// checkRoundTrip asserts |x - dequant(x)| <= half the largest gap between
// neighbouring code values, times the block's absmax.
func checkRoundTrip(t *testing.T, q *Tensor4, data []float32) {
	t.Helper()
	vals := CodeValues(q.Format)
	sorted := append([]float32(nil), vals[:]...)
	for i := range sorted {
		for j := i + 1; j < len(sorted); j++ {
			if sorted[j] < sorted[i] {
				sorted[i], sorted[j] = sorted[j], sorted[i]
			}
		}
	}
	var gap float64
	for i := 1; i < len(sorted); i++ {
		gap = max(gap, float64(sorted[i]-sorted[i-1]))
	}
	out := make([]float32, len(data))
	q.Dequantize(out)
	for i, v := range data {
		am := float64(q.AbsmaxAt(i / q.BlockSize))
		if err := math.Abs(float64(v - out[i])); err > gap/2*am*(1+1e-5)+1e-7 {
			t.Fatalf("%v block %d: element %d = %v came back %v (error %g > %g)", q.Format, q.BlockSize, i, v, out[i], err, gap/2*am)
		}
	}
}

func TestBitsPerParam(t *testing.T) {
	data := make([]float32, 64*256*4)
	for i := range data {
		data[i] = float32(i%97) - 48
	}
	q, _ := Quantize4(data, []int{256, 256}, NF4, 64, false)
	if got := q.BitsPerParam(); got != 4.5 {
		t.Errorf("bits/param without nesting = %v, want 4.5", got)
	}
	q, _ = Quantize4(data, []int{256, 256}, NF4, 64, true)
	// 4 + 8/64 + 32/(64*256) + 32/65536 = 4.1274...
	if got := q.BitsPerParam(); math.Abs(got-4.127) > 0.001 {
		t.Errorf("bits/param with nesting = %v, want about 4.127", got)
	}
	if q.StorageBytes()*8 != int64(q.BitsPerParam()*float64(q.Len())+0.5) {
		t.Errorf("StorageBytes %d disagrees with BitsPerParam", q.StorageBytes())
	}
}

func TestDoubleQuant(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	data := randNormal(rng, 64*600+17)
	plain, _ := Quantize4(data, []int{len(data)}, NF4, 64, false)
	q, err := Quantize4(data, []int{len(data)}, NF4, 64, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Validate(); err != nil {
		t.Fatal(err)
	}
	if q.Absmax != nil || len(q.Nested.Codes) != len(plain.Absmax) || len(q.Nested.Absmax) != 3 {
		t.Fatalf("nested layout: %d codes, %d nested absmax", len(q.Nested.Codes), len(q.Nested.Absmax))
	}
	// The 4-bit codes are computed with the exact absmax, as bitsandbytes
	// quantizes before compressing the statistics.
	if string(q.Packed) != string(plain.Packed) {
		t.Fatal("double quantization changed the 4-bit codes")
	}
	var mean float64
	for _, a := range plain.Absmax {
		mean += float64(a)
	}
	mean /= float64(len(plain.Absmax))
	if math.Abs(float64(q.Nested.Offset)-mean) > 1e-6 {
		t.Fatalf("offset %v, want mean %v", q.Nested.Offset, mean)
	}
	gap := maxGap(dynamicMap[:])
	for b, a := range plain.Absmax {
		got := q.AbsmaxAt(b)
		bound := gap/2*float64(q.Nested.Absmax[b/256])*(1+1e-5) + 1e-6
		if math.Abs(float64(got-a)) > bound {
			t.Fatalf("block %d absmax %v came back %v (bound %g)", b, a, got, bound)
		}
	}
	// A single block: absmax - mean is 0, the nested block is all zero, and
	// the absmax must come back as the offset, exactly.
	one, _ := Quantize4(data[:64], []int{64}, NF4, 64, true)
	if one.AbsmaxAt(0) != plain.Absmax[0] || one.Nested.Absmax[0] != 0 {
		t.Fatalf("single-block nested absmax %v, want %v", one.AbsmaxAt(0), plain.Absmax[0])
	}
}

func maxGap(m []float32) float64 {
	var g float64
	for i := 1; i < len(m); i++ {
		g = max(g, float64(m[i]-m[i-1]))
	}
	return g
}

func TestQuantizeErrors(t *testing.T) {
	cases := []struct {
		name  string
		data  []float32
		shape []int
		bs    int
		want  string
	}{
		{"nan", []float32{1, float32(math.NaN())}, []int{2}, 64, "element 1 is NaN"},
		{"inf", []float32{float32(math.Inf(1)), 1}, []int{2}, 64, "element 0 is +Inf"},
		{"shape", []float32{1, 2, 3}, []int{2, 2}, 64, "shape [2 2] holds 4 elements"},
		{"negative shape", []float32{}, []int{-1}, 64, "negative dimension"},
		{"block 48", []float32{1}, []int{1}, 48, "block size 48"},
		{"block 16", []float32{1}, []int{1}, 16, "block size 16"},
		{"block 8192", []float32{1}, []int{1}, 8192, "block size 8192"},
	}
	for _, c := range cases {
		_, err := Quantize4(c.data, c.shape, NF4, c.bs, false)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want it to mention %q", c.name, err, c.want)
		}
	}
}

func TestDequantizeRangeMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for _, f := range []Format{NF4, FP4} {
		for _, double := range []bool{false, true} {
			n := 64*40 + 37
			data := randNormal(rng, n)
			q, _ := Quantize4(data, []int{n}, f, 64, double)
			ref := make([]float32, n)
			q.DequantizeReference(ref)
			all := make([]float32, n)
			q.Dequantize(all)
			assertBits(t, "Dequantize", all, ref)
			for trial := 0; trial < 300; trial++ {
				off := rng.IntN(n)
				ln := rng.IntN(n - off + 1)
				dst := make([]float32, ln)
				q.DequantizeRange(dst, off)
				assertBits(t, "DequantizeRange", dst, ref[off:off+ln])
			}
		}
	}
}

func TestDequantizeParallelLarge(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	n := 1<<20 + 3
	data := randNormal(rng, n)
	q, _ := Quantize4(data, []int{n}, NF4, 64, true)
	ref := make([]float32, n)
	q.DequantizeReference(ref)
	got := make([]float32, n)
	q.Dequantize(got)
	assertBits(t, "parallel Dequantize", got, ref)
	// The parallel quantizer must agree with a serial, block-by-block one.
	serial := &Tensor4{Format: NF4, BlockSize: 64, Shape: []int{n}, Packed: make([]byte, (n+1)/2), Absmax: make([]float32, q.NumBlocks())}
	for b := range serial.Absmax {
		quantizeBlock4(serial, data, b)
	}
	if string(serial.Packed) != string(q.Packed) {
		t.Fatal("parallel quantization differs from serial")
	}
}

func TestDequantizeRangeAllocs(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	data := randNormal(rng, 4096)
	for _, double := range []bool{false, true} {
		q, _ := Quantize4(data, []int{64, 64}, NF4, 64, double)
		dst := make([]float32, 1000)
		if a := testing.AllocsPerRun(100, func() { q.DequantizeRange(dst, 1001) }); a != 0 {
			t.Errorf("DequantizeRange (double=%v) allocates %v times per call", double, a)
		}
	}
}

func TestDequantizeRangePanicsOutOfRange(t *testing.T) {
	q, _ := Quantize4(make([]float32, 10), []int{10}, NF4, 64, false)
	defer func() {
		if recover() == nil {
			t.Fatal("no panic for a range past the end")
		}
	}()
	q.DequantizeRange(make([]float32, 5), 6)
}

func TestValidateRejectsInconsistentTensors(t *testing.T) {
	good, _ := Quantize4(make([]float32, 100), []int{100}, NF4, 64, true)
	mut := []func(q *Tensor4){
		func(q *Tensor4) { q.Packed = q.Packed[:10] },
		func(q *Tensor4) { q.Nested.Codes = q.Nested.Codes[:1] },
		func(q *Tensor4) { q.Nested.Absmax = nil },
		func(q *Tensor4) { q.Nested.Offset = float32(math.Inf(1)) },
		func(q *Tensor4) { q.BlockSize = 100 },
		func(q *Tensor4) { q.Format = 7 },
		func(q *Tensor4) { q.Nested = nil; q.Absmax = []float32{1, float32(math.NaN())} },
	}
	for i, m := range mut {
		q := *good
		nd := *good.Nested
		q.Nested = &nd
		m(&q)
		if err := q.Validate(); err == nil {
			t.Errorf("mutation %d: Validate accepted a broken tensor", i)
		}
	}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestParseFormat(t *testing.T) {
	for _, f := range []Format{NF4, FP4} {
		got, err := ParseFormat(f.String())
		if err != nil || got != f {
			t.Errorf("ParseFormat(%q) = %v, %v", f, got, err)
		}
	}
	if _, err := ParseFormat("int4"); err == nil {
		t.Error("ParseFormat accepted int4")
	}
}

func assertBits(t *testing.T, what string, got, want []float32) {
	t.Helper()
	for i := range want {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			t.Fatalf("%s: element %d = %v, reference %v", what, i, got[i], want[i])
		}
	}
}

func randNormal(rng *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(rng.NormFloat64() * 0.02)
	}
	return v
}

func TestQuantizeNF4FastMatchesTree(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 14))
	xs := []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1)), 0, float32(math.Copysign(0, -1))}
	for _, th := range nf4Thresholds[:15] {
		xs = append(xs, th, above(th), below(th))
	}
	for i := 0; i < 200000; i++ {
		xs = append(xs, float32(rng.Float64()*2.2-1.1))
	}
	for _, x := range xs {
		if a, b := quantizeNF4Fast(x), quantizeNF4(x); a != b {
			t.Fatalf("x=%v: fast %d, tree %d", x, a, b)
		}
	}
}

// TestPaddingNibbleCodesZero: the nibble after an odd tail holds the code of
// 0.0 scaled by the block's reciprocal absmax, as bitsandbytes writes it.
func TestPaddingNibbleCodesZero(t *testing.T) {
	cases := []struct {
		name string
		f    Format
		data []float32
		want byte
	}{
		{"nf4", NF4, []float32{0.5, -1, 0.25}, 7},
		{"fp4", FP4, []float32{0.5, -1, 0.25}, 0},
		{"nf4 all-zero block (0*Inf is NaN: code 0)", NF4, []float32{0, 0, 0}, 0},
	}
	for _, tc := range cases {
		q, err := Quantize4(tc.data, []int{len(tc.data)}, tc.f, 64, false)
		if err != nil {
			t.Fatal(err)
		}
		if got := q.Packed[1] & 0x0F; got != tc.want {
			t.Errorf("%s: padding nibble %d, want %d", tc.name, got, tc.want)
		}
	}
}

// TestStorage4MatchesQuantize4: the planning formula counts what Quantize4
// really allocates.
func TestStorage4MatchesQuantize4(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	for _, n := range []int{1, 63, 64, 65, 4096, 64*256 + 1, 100003} {
		for _, double := range []bool{false, true} {
			q, err := Quantize4(randNormal(rng, n), []int{n}, NF4, 64, double)
			if err != nil {
				t.Fatal(err)
			}
			want := int64(len(q.Packed) + 4*len(q.Absmax))
			if nd := q.Nested; nd != nil {
				want = int64(len(q.Packed)+len(nd.Codes)+4*len(nd.Absmax)) + 4*int64(len(nd.Map)) + 4
			}
			if got := Storage4(n, 64, double); got != want {
				t.Errorf("n=%d double=%v: Storage4 = %d, Quantize4 holds %d", n, double, got, want)
			}
		}
	}
}

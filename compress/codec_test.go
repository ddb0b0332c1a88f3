package compress

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// randVec returns n normal values from a fixed seed.
func randVec(n int, seed uint64) []float32 {
	r := rand.New(rand.NewPCG(seed, 1))
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	return x
}

// topKRef is the plain reference: sort all indices by magnitude
// descending, ties by index ascending, keep k, sort by index.
func topKRef(x []float32, k int) []uint32 {
	idx := make([]uint32, len(x))
	for i := range idx {
		idx[i] = uint32(i)
	}
	slices.SortStableFunc(idx, func(a, b uint32) int {
		ma, mb := math.Abs(float64(x[a])), math.Abs(float64(x[b]))
		switch {
		case ma > mb:
			return -1
		case ma < mb:
			return 1
		}
		return int(a) - int(b)
	})
	out := slices.Clone(idx[:k])
	slices.Sort(out)
	return out
}

func TestTopKMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for trial := range 200 {
		n := 1 + r.IntN(300)
		x := make([]float32, n)
		for i := range x {
			switch trial % 3 {
			case 0: // continuous
				x[i] = float32(r.NormFloat64())
			case 1: // heavy ties, signed zeros
				x[i] = float32(r.IntN(5)-2) * 0.5
				if x[i] == 0 && r.IntN(2) == 0 {
					x[i] = float32(math.Copysign(0, -1))
				}
			case 2: // all equal
				x[i] = 1
			}
		}
		k := r.IntN(n + 1)
		got := topKIndices(x, k, nil, nil)
		want := topKRef(x, k)
		if !slices.Equal(got, want) {
			t.Fatalf("trial %d n=%d k=%d x=%v:\n got %v\nwant %v", trial, n, k, x, got, want)
		}
	}
}

func TestRandKIndices(t *testing.T) {
	// Distinct, sorted, exactly k, deterministic per seed.
	for _, tc := range []struct{ n, k int }{{10, 0}, {10, 1}, {10, 10}, {1000, 37}, {5, 4}} {
		a := randKIndices(tc.n, tc.k, 42, nil)
		b := randKIndices(tc.n, tc.k, 42, nil)
		if len(a) != tc.k || !slices.Equal(a, b) {
			t.Fatalf("n=%d k=%d: got %v and %v", tc.n, tc.k, a, b)
		}
		for j := 1; j < len(a); j++ {
			if a[j] <= a[j-1] {
				t.Fatalf("n=%d k=%d: not strictly increasing: %v", tc.n, tc.k, a)
			}
		}
		if len(a) > 0 && int(a[len(a)-1]) >= tc.n {
			t.Fatalf("index %d out of range %d", a[len(a)-1], tc.n)
		}
	}
	if slices.Equal(randKIndices(1000, 10, 1, nil), randKIndices(1000, 10, 2, nil)) {
		t.Error("different seeds gave the same indices")
	}
	// Uniform: each index is chosen with probability k/n. Over S seeds the
	// count per index is Binomial(S, k/n); allow 5 standard deviations.
	const n, k, S = 50, 10, 20000
	var count [n]int
	for s := range uint64(S) {
		for _, i := range randKIndices(n, k, s, nil) {
			count[i]++
		}
	}
	p := float64(k) / n
	mean, sd := S*p, math.Sqrt(S*p*(1-p))
	for i, c := range count {
		if math.Abs(float64(c)-mean) > 5*sd {
			t.Errorf("index %d chosen %d times, want %.0f ± %.0f", i, c, mean, 5*sd)
		}
	}
}

var allSpecs = []string{
	"dense", "int8:64", "int8:256", "q4:64", "q4:128",
	"topk:0.05", "topk:0.05+int8:128", "topk:0.05+q4:64",
	"randk:0.05", "randk:0.05+int8:64", "randk:0.05+q4:256", "randk:0.05:scaled+int8:64",
	"int16:64", "randk:0.05+int16:256",
}

func TestRoundTrip(t *testing.T) {
	for _, spec := range allSpecs {
		c := MustParse(spec)
		for _, n := range []int{0, 1, 2, 63, 64, 65, 1000, 4097} {
			x := randVec(n, uint64(n))
			p, err := c.Encode(x, nil, 7)
			if err != nil {
				t.Fatalf("%s n=%d: Encode: %v", spec, n, err)
			}
			y, err := c.Decode(p.Bytes, n)
			if err != nil {
				t.Fatalf("%s n=%d: Decode: %v", spec, n, err)
			}
			if len(y) != n {
				t.Fatalf("%s n=%d: decoded %d elements", spec, n, len(y))
			}
			s, err := c.DecodeSparse(p.Bytes, n)
			if err != nil {
				t.Fatal(err)
			}
			k := c.K(n)
			if len(s.Values) != k || p.K != k {
				t.Fatalf("%s n=%d: %d values travelled, payload says %d, want %d", spec, n, len(s.Values), p.K, k)
			}
			if c.Sparsifier == TopK && !slices.Equal(s.Index, topKRef(x, k)) {
				t.Fatalf("%s n=%d: indices are not the top k", spec, n)
			}
			for i := range y {
				travelled := s.Index == nil || slices.Contains(s.Index, uint32(i))
				want := float64(x[i])
				if !travelled {
					want = 0
				}
				if c.Scaled && travelled {
					want *= float64(n) / float64(k)
				}
				// Error bound: exact for fp32, one quantization step otherwise.
				tol := 0.0
				if c.Quantizer != FP32 {
					blockMax := 0.0
					for _, v := range x {
						blockMax = max(blockMax, math.Abs(float64(v)))
					}
					tol = blockMax/float64(levels(c.Quantizer))*1.0001 + 1e-7
					if c.Scaled {
						tol *= float64(n) / float64(k)
					}
				}
				if d := math.Abs(float64(y[i]) - want); d > tol {
					t.Fatalf("%s n=%d: y[%d] = %v, want %v ± %g", spec, n, i, y[i], want, tol)
				}
			}
		}
	}
}

// TestQuantizeErrorBound checks the per-block bound |q*s - x| < s exactly,
// block by block.
func TestQuantizeErrorBound(t *testing.T) {
	for _, q := range []Quantizer{Int8, Int16, Q4} {
		x := randVec(1000, 9)
		x[5] = 1000 // one outlier makes its block's step large, not others'
		const B = 64
		L := levels(q)
		scales := make([]float32, (len(x)+B-1)/B)
		codes := make([]int16, len(x))
		deq := make([]float32, len(x))
		r := newStream(1, streamRounding)
		if err := quantize(x, B, L, &r, scales, codes, deq); err != nil {
			t.Fatal(err)
		}
		for i, v := range x {
			s := scales[i/B]
			if d := math.Abs(float64(deq[i] - v)); d > float64(s)*1.0001 {
				t.Errorf("q%d: x[%d]=%v decoded %v, error %g > step %g", L, i, v, deq[i], d, s)
			}
			if c := int(codes[i]); c < -L || c > L {
				t.Errorf("q%d: code %d out of range", L, c)
			}
		}
		if scales[1] > scales[0]/100 {
			t.Errorf("q%d: block 1 scale %v is inflated by block 0's outlier", L, scales[1])
		}
	}
}

// TestQuantizeUnbiased averages the decoded vector over many seeds: the
// mean must approach the input (stochastic rounding is unbiased), with a
// tolerance of 5 standard errors of the per-entry rounding noise.
func TestQuantizeUnbiased(t *testing.T) {
	const S = 4000
	x := randVec(256, 11)
	for _, spec := range []string{"int8:64", "q4:64", "randk:0.25:scaled", "randk:0.25:scaled+q4:64"} {
		c := MustParse(spec)
		sum := make([]float64, len(x))
		sumsq := make([]float64, len(x))
		for s := range uint64(S) {
			y, err := c.Decode(mustEncode(t, c, x, nil, s).Bytes, len(x))
			if err != nil {
				t.Fatal(err)
			}
			for i, v := range y {
				sum[i] += float64(v)
				sumsq[i] += float64(v) * float64(v)
			}
		}
		worst := 0.0
		for i := range x {
			mean := sum[i] / S
			variance := max(sumsq[i]/S-mean*mean, 0)
			se := math.Sqrt(variance/S) + 1e-6
			z := math.Abs(mean-float64(x[i])) / se
			worst = max(worst, z)
			if z > 5.5 {
				t.Errorf("%s: entry %d: mean %v over %d seeds, want %v (%.1f standard errors off)", spec, i, mean, S, x[i], z)
			}
		}
		t.Logf("%s: worst deviation %.2f standard errors", spec, worst)
	}
	// Control: deterministic rounding to nearest is biased for a value
	// sitting at 0.3 of a step, and the test statistic above would see it.
	// Here the stochastic mean must be within 1% of the step fraction.
	x2 := []float32{1, 0.3 / 127} // block scale 1/127: the second value is 0.3 steps
	c := MustParse("int8:64")
	var mean float64
	for s := range uint64(S) {
		y, _ := c.Decode(mustEncode(t, c, x2, nil, s).Bytes, 2)
		mean += float64(y[1]) / S
	}
	if math.Abs(mean*127-0.3) > 0.03 {
		t.Errorf("value at 0.3 steps decodes to %.3f steps on average, want 0.3", mean*127)
	}
}

func mustEncode(t testing.TB, c Codec, x []float32, st *State, seed uint64) *Payload {
	t.Helper()
	p, err := c.Encode(x, st, seed)
	if err != nil {
		t.Fatalf("%s: Encode: %v", c, err)
	}
	return p
}

// TestErrorFeedbackConserves: with error feedback nothing is lost, only
// delayed: after R rounds, sum of decoded updates + residual == sum of
// deltas (up to float rounding), for every codec.
func TestErrorFeedbackConserves(t *testing.T) {
	const n, R = 500, 20
	for _, spec := range []string{"topk:0.02", "topk:0.05+int8:64", "topk:0.1+q4:64", "randk:0.05", "q4:64", "dense"} {
		c := MustParse(spec)
		st, err := NewState(n, 0)
		if err != nil {
			t.Fatal(err)
		}
		sent := make([]float64, n)
		want := make([]float64, n)
		for round := range uint64(R) {
			d := randVec(n, 100+round)
			for i, v := range d {
				want[i] += float64(v)
			}
			p := mustEncode(t, c, d, st, round)
			y, err := c.Decode(p.Bytes, n)
			if err != nil {
				t.Fatal(err)
			}
			for i, v := range y {
				sent[i] += float64(v)
			}
		}
		for i := range want {
			if d := math.Abs(sent[i] + float64(st.Residual[i]) - want[i]); d > 1e-4 {
				t.Fatalf("%s: entry %d: sent %v + residual %v != total %v", spec, i, sent[i], st.Residual[i], want[i])
			}
		}
		if spec == "dense" && slices.ContainsFunc(st.Residual, func(v float32) bool { return v != 0 }) {
			t.Errorf("dense fp32 left a non-zero residual")
		}
	}
}

// TestMomentumMatchesReference compares the DGC momentum path with a plain
// transcription of the algorithm.
func TestMomentumMatchesReference(t *testing.T) {
	const n, k, m = 200, 10, float32(0.9)
	c := MustParse("topk:0.05")
	st, _ := NewState(n, m)
	u := make([]float32, n)
	v := make([]float32, n)
	for round := range uint64(8) {
		d := randVec(n, round)
		for i := range d {
			u[i] = m*u[i] + d[i]
			v[i] += u[i]
		}
		want := make([]float32, n)
		for _, i := range topKRef(v, k) {
			want[i] = v[i]
			v[i], u[i] = 0, 0
		}
		got, err := c.Decode(mustEncode(t, c, d, st, round).Bytes, n)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("round %d: decoded %v, want %v", round, got, want)
		}
		if !slices.Equal(st.Residual, v) || !slices.Equal(st.Velocity, u) {
			t.Fatalf("round %d: state differs from the reference", round)
		}
	}
}

func TestEncodeErrors(t *testing.T) {
	c := MustParse("topk:0.1")
	st, _ := NewState(4, 0.5)
	st.Residual[0] = 3
	before, _ := st.MarshalBinary()
	for name, tc := range map[string]struct {
		c  Codec
		x  []float32
		st *State
	}{
		"nan":         {c, []float32{1, float32(math.NaN()), 0, 0}, st},
		"inf":         {c, []float32{float32(math.Inf(-1)), 0, 0, 0}, st},
		"overflow":    {c, []float32{math.MaxFloat32, 0, 0, 0}, &State{Residual: []float32{math.MaxFloat32, 0, 0, 0}}},
		"wrong size":  {c, []float32{1, 2, 3}, st},
		"scaled+ef":   {MustParse("randk:0.5:scaled"), []float32{1, 2, 3, 4}, st},
		"bad codec":   {Codec{Quantizer: Int8, Block: 3}, []float32{1}, nil},
		"no velocity": {c, []float32{1, 2, 3, 4}, &State{Momentum: 0.5, Residual: make([]float32, 4)}},
	} {
		if _, err := tc.c.Encode(tc.x, tc.st, 1); err == nil {
			t.Errorf("%s: Encode succeeded, want an error", name)
		}
	}
	if after, _ := st.MarshalBinary(); !slices.Equal(before, after) {
		t.Error("a failed Encode changed the state")
	}
}

func TestDecodeRejects(t *testing.T) {
	le32 := func(v float32) []byte { return binary.LittleEndian.AppendUint32(nil, math.Float32bits(v)) }
	cat := func(parts ...[]byte) []byte { return slices.Concat(parts...) }
	one := []byte{1}
	tests := []struct {
		name, spec string
		n          int
		b          []byte
	}{
		{"empty", "dense", 1, nil},
		{"overlong varint", "dense", 1, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}},
		{"k > n", "topk:0.5", 2, cat([]byte{3}, []byte{0, 0, 0}, le32(1), le32(1), le32(1))},
		{"dense k != n", "dense", 2, cat(one, le32(1))},
		{"truncated values", "dense", 2, cat([]byte{2}, le32(1), []byte{0, 0})},
		{"trailing byte", "dense", 1, cat(one, le32(1), []byte{0})},
		{"nan value", "dense", 1, cat(one, le32(float32(math.NaN())))},
		{"inf value", "dense", 1, cat(one, le32(float32(math.Inf(1))))},
		{"index past n", "topk:0.5", 2, cat(one, []byte{2}, le32(1))},
		{"gap past n", "topk:1", 2, cat([]byte{2}, []byte{0, 1}, le32(1), le32(1))},
		{"huge gap", "topk:1", 2, cat(one, []byte{0xff, 0xff, 0xff, 0xff, 0x0f}, le32(1))},
		{"huge k, few bytes", "topk:0.5", MaxN, cat([]byte{0xff, 0xff, 0xff, 0xff, 0x07}, []byte{0})},
		{"truncated seed", "randk:0.5", 2, cat(one, []byte{1, 2, 3})},
		{"negative scale", "int8:64", 1, cat(one, le32(-1), []byte{1})},
		{"nan scale", "int8:64", 1, cat(one, le32(float32(math.NaN())), []byte{1})},
		{"inf scale", "q4:64", 1, cat(one, le32(float32(math.Inf(1))), []byte{0x90})},
		{"int8 -128", "int8:64", 1, cat(one, le32(1), []byte{0x80})},
		{"int16 -32768", "int16:64", 1, cat(one, le32(1), []byte{0x00, 0x80})},
		{"int16 truncated", "int16:64", 1, cat(one, le32(1), []byte{0x01})},
		{"q4 nibble 0", "q4:64", 2, cat([]byte{2}, le32(1), []byte{0x09})},
		{"q4 padding", "q4:64", 1, cat(one, le32(1), []byte{0x91})},
		{"overflow after scale", "int8:64", 1, cat(one, le32(math.MaxFloat32), []byte{127})},
		{"scaled overflow", "randk:0.5:scaled", 2, cat(one, make([]byte, 8), le32(math.MaxFloat32))},
	}
	for _, tt := range tests {
		c := MustParse(tt.spec)
		if _, err := c.DecodeSparse(tt.b, tt.n); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: DecodeSparse = %v, want ErrCorrupt", tt.name, err)
		}
	}
	if _, err := MustParse("dense").Decode(nil, -1); err == nil {
		t.Error("n = -1 accepted")
	}
}

// TestGolden pins the byte format: the same input and seed must give the
// same bytes on every machine and in every later version of this code.
// Changing the format means changing the protocol version.
func TestGolden(t *testing.T) {
	x := randVec(1000, 5)
	want := map[string]string{}
	got := map[string]string{}
	for _, spec := range allSpecs {
		p := mustEncode(t, MustParse(spec), x, nil, 12345)
		h := sha256.Sum256(p.Bytes)
		got[spec] = hex.EncodeToString(h[:8])
	}
	for spec, h := range goldenHashes {
		want[spec] = h
	}
	for _, spec := range allSpecs {
		if want[spec] == "" {
			t.Errorf("no golden hash for %q; got %q", spec, got[spec])
		} else if got[spec] != want[spec] {
			t.Errorf("%s: payload hash %s, golden %s", spec, got[spec], want[spec])
		}
	}
}

var goldenHashes = map[string]string{
	"dense":                     "1c3eac9b6ca27b60",
	"int8:64":                   "aa6748aedf6d2f6d",
	"int8:256":                  "687c08630a697c3c",
	"q4:64":                     "eda1a3edd917ea7b",
	"q4:128":                    "55ba9ff9f6a749dd",
	"topk:0.05":                 "d68c2ff10b71786a",
	"topk:0.05+int8:128":        "b5c6f4a5b1630703",
	"topk:0.05+q4:64":           "78a41a57ab02d606",
	"randk:0.05":                "9a0b9390b5fd1069",
	"randk:0.05+int8:64":        "39a54ae552caf3ef",
	"randk:0.05+q4:256":         "6fdf322d35464285",
	"randk:0.05:scaled+int8:64": "39a54ae552caf3ef", // scaling happens on decode
	"int16:64":                  "52546d9a31e27c7b",
	"randk:0.05+int16:256":      "9720276341b7882d",
}

func TestRatio(t *testing.T) {
	const n = 1 << 20
	x := randVec(n, 1)
	for _, tt := range []struct {
		spec     string
		min, max float64
	}{
		{"dense", 0.999, 1},
		{"int8:256", 3.8, 4},
		{"q4:64", 7, 8},
		// topk 1% of 1M normals: ~10.5k indices, average gap ~100 -> 1-2
		// varint bytes; values 1 byte + scale/256.
		{"topk:0.01+int8:256", 100, 200},
		{"randk:0.01+q4:64", 600, 800},
		{"topk:0.01+q4:64", 190, 240},
		{"topk:0.001+int8:256", 1200, 1500},
		{"randk:0.01+int8:256", 370, 410},
		{"randk:0.02+q4:64", 330, 370},
		// 2 bytes a value plus a scale per 256: 4 / (2 + 4/256) = 1.98 per
		// travelling entry.
		{"int16:256", 1.97, 1.99},
		{"randk:0.01+int16:256", 190, 205},
	} {
		p := mustEncode(t, MustParse(tt.spec), x, nil, 1)
		if r := p.Ratio(); r < tt.min || r > tt.max {
			t.Errorf("%s: ratio %.2f, want [%g, %g]", tt.spec, r, tt.min, tt.max)
		} else {
			t.Logf("%s: %d bytes, ratio %.1f", tt.spec, len(p.Bytes), r)
		}
	}
}

// The int16 layout, written by hand: count, one fp32 scale, then
// little-endian codes; value = code * scale.
func TestInt16Layout(t *testing.T) {
	b := []byte{3}
	b = binary.LittleEndian.AppendUint32(b, math.Float32bits(0.5))
	b = append(b, 100, 0, 0xfd, 0xff, 0xff, 0x7f) // 100, -3, 32767
	got, err := MustParse("int16:64").Decode(b, 3)
	if err != nil {
		t.Fatal(err)
	}
	if want := []float32{50, -1.5, 16383.5}; got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Fatalf("decoded %v, want %v", got, want)
	}
	// Encoding keeps 15 bits of each value's magnitude relative to its
	// block's largest: far finer than int8's 7.
	x := randVec(4096, 3)
	for _, spec := range []string{"int8:256", "int16:256"} {
		p := mustEncode(t, MustParse(spec), x, nil, 1)
		y, _ := MustParse(spec).Decode(p.Bytes, len(x))
		var worst float64
		for i := range x {
			worst = max(worst, math.Abs(float64(y[i]-x[i])))
		}
		t.Logf("%s: %d bytes, largest error %.3g", spec, len(p.Bytes), worst)
		if spec == "int16:256" && worst > 1e-3 {
			t.Errorf("int16: largest error %g", worst)
		}
	}
}

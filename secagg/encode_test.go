package secagg

import (
	"errors"
	"math"
	"slices"
	"testing"
)

func TestBitsNeverWrapAtMaxCohort(t *testing.T) {
	for _, q := range []uint{4, 8, 12} {
		b, err := Bits(MaxCohort, q, 0)
		if err != nil {
			t.Fatal(err)
		}
		L := int64(1)<<(q-1) - 1
		// The extreme sums, +n·L and -n·L, computed in the ring, must decode
		// to themselves.
		p := &Params{Bits: b, QuantBits: q, Clip: float64(L)}
		for _, sign := range []int64{1, -1} {
			var acc uint32
			for range MaxCohort {
				acc = (acc + uint32(sign*L)) & ringMask(b)
			}
			got := p.Decode([]uint32{acc})[0]
			if want := float32(sign * L * MaxCohort); got != want {
				t.Fatalf("q=%d b=%d: sum %v decodes to %v", q, b, want, got)
			}
		}
		// One bit fewer would wrap.
		if float64(MaxCohort)*float64(L) < math.Ldexp(1, int(b)-2) {
			t.Fatalf("q=%d: %d bits is more than needed", q, b)
		}
	}
	if _, err := Bits(MaxCohort+1, 8, 0); !errors.Is(err, ErrParams) {
		t.Fatalf("cohort above the maximum: %v", err)
	}
}

func TestEncodeIsUnbiasedAndClipped(t *testing.T) {
	p, _ := cohort(t, 10, 200, 8, 0)
	x := make([]float32, p.Length)
	for i := range x {
		x[i] = float32(math.Sin(float64(i))) * 0.05 // norm ~0.5 < clip 1
	}
	const trials = 400
	mean := make([]float64, p.Length)
	for tr := range trials {
		y, norm, err := p.Encode(x, detReader(uint64(tr)))
		if err != nil {
			t.Fatal(err)
		}
		if norm > 1 {
			t.Fatalf("norm %v", norm)
		}
		for i, v := range p.Decode(y) {
			mean[i] += float64(v) / trials
		}
	}
	step := p.Clip / p.level()
	for i := range x {
		// Rounding error per draw is below one step; the mean of 400 has
		// standard deviation below step/40.
		if d := math.Abs(mean[i] - float64(x[i])); d > 5*step/40 {
			t.Fatalf("coordinate %d: mean %v, input %v (step %v)", i, mean[i], x[i], step)
		}
	}
	// A long vector is scaled to norm Clip before rounding.
	big := slices.Repeat([]float32{1}, p.Length)
	y, norm, err := p.Encode(big, detReader(1))
	if err != nil || math.Abs(norm-math.Sqrt(200)) > 1e-9 {
		t.Fatal(err, norm)
	}
	ss := 0.0
	for _, v := range p.Decode(y) {
		ss += float64(v) * float64(v)
	}
	if n := math.Sqrt(ss); n > p.Clip*p.Sensitivity()/p.level() {
		t.Fatalf("clipped norm %v exceeds the sensitivity bound", n)
	}
	if _, _, err := p.Encode([]float32{float32(math.NaN())}, detReader(1)); err == nil {
		t.Fatal("wrong length accepted")
	}
}

func TestSkellamNoiseMoments(t *testing.T) {
	for _, mu := range []float64{0.5, 4, 30, 2500} {
		r, _ := newRandom(detReader(uint64(mu * 10)))
		const n = 200000
		var s, ss float64
		for range n {
			v := float64(r.poisson(mu))
			s += v
			ss += v * v
		}
		m := s / n
		v := ss/n - m*m
		// Poisson: mean = variance = mu; 6 standard errors.
		if math.Abs(m-mu) > 6*math.Sqrt(mu/n) || math.Abs(v-mu) > 6*mu*math.Sqrt(2.0/n)+6*math.Sqrt(mu/n) {
			t.Fatalf("poisson(%v): mean %v variance %v", mu, m, v)
		}
	}
}

func TestPackRoundTrip(t *testing.T) {
	for _, bits := range []uint{8, 13, 17, 32} {
		v := make([]uint32, 1001)
		r := newSeededRand(uint64(bits), "pack")
		for i := range v {
			v[i] = uint32(r.uint64()) & ringMask(bits)
		}
		b := pack(nil, v, bits)
		if len(b) != packedSize(len(v), bits) {
			t.Fatalf("bits %d: %d bytes", bits, len(b))
		}
		got, err := unpack(b, len(v), bits)
		if err != nil || !slices.Equal(got, v) {
			t.Fatalf("bits %d: %v", bits, err)
		}
	}
}

func TestNeighbourGraph(t *testing.T) {
	for _, n := range []int{2, 10, 100, 1000} {
		k := DefaultDegree(n)
		g, err := Neighbours(99, n, k)
		if err != nil {
			t.Fatal(err)
		}
		for u, ns := range g {
			if len(ns) != k {
				t.Fatalf("n=%d: client %d has %d neighbours, want %d", n, u, len(ns), k)
			}
			for _, v := range ns {
				if v == u || !slices.Contains(g[v], u) {
					t.Fatalf("n=%d: edge %d-%d not symmetric", n, u, v)
				}
			}
		}
		g2, _ := Neighbours(99, n, k)
		g3, _ := Neighbours(100, n, k)
		if !slices.EqualFunc(g, g2, slices.Equal) {
			t.Fatal("same seed, different graph")
		}
		if n > 20 && slices.EqualFunc(g, g3, slices.Equal) {
			t.Fatal("different seed, same graph")
		}
	}
	for _, c := range []struct {
		n       int
		dropout float64
		k       int
	}{{10, 0.1, 9}, {100, 0.1, 20}, {1000, 0.1, 24}, {10000, 0.1, 30}, {100, 0.3, 99}, {1000, 0.3, 134}} {
		if got := DegreeFor(c.n, c.dropout); got != c.k {
			t.Errorf("DegreeFor(%d, %v) = %d, want %d (the docs quote it)", c.n, c.dropout, got, c.k)
		}
	}
	// The binomial tail against a direct count for a small case:
	// P[Bin(4, 1/2) < 3] = (1+4+6)/16.
	if got := belowThreshold(4, 3, 0.5); math.Abs(got-11.0/16) > 1e-12 {
		t.Errorf("belowThreshold(4, 3, 0.5) = %v", got)
	}
	if _, err := Neighbours(1, 10, 3); err == nil {
		t.Fatal("odd degree accepted")
	}
}

func TestPositionsUniform(t *testing.T) {
	const n, k = 50, 5
	counts := make([]int, n)
	for s := range uint64(2000) {
		ps := Positions(s, n, k)
		if len(ps) != k || !slices.IsSorted(ps) {
			t.Fatalf("seed %d: %v", s, ps)
		}
		for _, p := range ps {
			counts[p]++
		}
	}
	// Each position expected 200 times; sd ~ 13.4.
	for i, c := range counts {
		if c < 140 || c > 260 {
			t.Fatalf("position %d drawn %d times of 2000 rounds", i, c)
		}
	}
}

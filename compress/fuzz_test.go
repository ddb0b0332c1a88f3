package compress

import (
	"math"
	"testing"
)

// FuzzDecode feeds arbitrary bytes to every codec's decoder. It must never
// panic, and whatever it accepts must be a well-formed update: n entries,
// indices increasing and in range, every value finite.
func FuzzDecode(f *testing.F) {
	for i, spec := range allSpecs {
		c := MustParse(spec)
		for _, n := range []int{1, 7, 100} {
			p, err := c.Encode(randVec(n, uint64(i)), nil, uint64(n))
			if err != nil {
				f.Fatal(err)
			}
			f.Add(uint8(i), uint16(n), p.Bytes)
		}
	}
	f.Fuzz(func(t *testing.T, which uint8, n16 uint16, b []byte) {
		c := MustParse(allSpecs[int(which)%len(allSpecs)])
		n := int(n16)
		s, err := c.DecodeSparse(b, n)
		if err != nil {
			return
		}
		if s.N != n {
			t.Fatalf("N = %d, want %d", s.N, n)
		}
		if s.Index == nil && len(s.Values) != n {
			t.Fatalf("dense update with %d values for n = %d", len(s.Values), n)
		}
		if s.Index != nil && len(s.Index) != len(s.Values) {
			t.Fatalf("%d indices, %d values", len(s.Index), len(s.Values))
		}
		for j, i := range s.Index {
			if int(i) >= n || (j > 0 && i <= s.Index[j-1]) {
				t.Fatalf("index %d = %d out of order or range (n = %d)", j, i, n)
			}
		}
		for _, v := range s.Values {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				t.Fatalf("accepted non-finite value %v", v)
			}
		}
	})
}

// FuzzStateUnmarshal: state files from disk must never panic the worker.
func FuzzStateUnmarshal(f *testing.F) {
	for _, m := range []float32{0, 0.5} {
		st, _ := NewState(5, m)
		st.Residual[1] = 2
		b, _ := st.MarshalBinary()
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var s State
		if s.UnmarshalBinary(b) == nil {
			if _, err := s.MarshalBinary(); err != nil {
				t.Fatalf("accepted a state it cannot write back: %v", err)
			}
		}
	})
}

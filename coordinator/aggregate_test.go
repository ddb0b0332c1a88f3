package coordinator

import (
	"encoding/binary"
	"hash/crc32"
	"math"
	"testing"

	"github.com/opencluster/opencluster/compress"
)

func dense(v ...float32) *compress.Sparse { return &compress.Sparse{N: len(v), Values: v} }

func near(t *testing.T, name string, got, want []float32) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d elements, want %d", name, len(got), len(want))
	}
	for i := range got {
		if math.Abs(float64(got[i]-want[i])) > 1e-6 {
			t.Fatalf("%s: element %d = %v, want %v (got %v)", name, i, got[i], want[i], got)
		}
	}
}

func TestFedAvg(t *testing.T) {
	tests := []struct {
		name  string
		cs    []Contribution
		bound float64
		want  []float32
	}{
		{"equal weights", []Contribution{{dense(1, 2), 1}, {dense(3, 4), 1}}, 0, []float32{2, 3}},
		{"token weighted", []Contribution{{dense(1, 0), 3}, {dense(0, 1), 1}}, 0, []float32{0.75, 0.25}},
		// The second update has norm 5 and is clipped to 1: (0.6, 0.8).
		{"clipped", []Contribution{{dense(0, 0), 1}, {dense(3, 4), 1}}, 1, []float32{0.3, 0.4}},
		{"within bound", []Contribution{{dense(0.3, 0.4), 1}}, 1, []float32{0.3, 0.4}},
		{"sparse", []Contribution{{&compress.Sparse{N: 3, Index: []uint32{2}, Values: []float32{6}}, 2}, {dense(3, 3, 0), 1}}, 0, []float32{1, 1, 4}},
		{"zero weight ignored", []Contribution{{dense(5, 5), 0}, {dense(1, 1), 2}}, 0, []float32{1, 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := FedAvg(len(tc.want), tc.cs, tc.bound)
			if err != nil {
				t.Fatal(err)
			}
			near(t, tc.name, got, tc.want)
		})
	}
}

func TestFedAvgErrors(t *testing.T) {
	tests := []struct {
		name string
		n    int
		cs   []Contribution
	}{
		{"none", 2, nil},
		{"wrong length", 3, []Contribution{{dense(1, 2), 1}}},
		{"NaN weight", 2, []Contribution{{dense(1, 2), math.NaN()}}},
		{"negative weight", 2, []Contribution{{dense(1, 2), -1}}},
		{"zero total", 2, []Contribution{{dense(1, 2), 0}}},
		{"nil delta", 2, []Contribution{{nil, 1}}},
	}
	for _, tc := range tests {
		if _, err := FedAvg(tc.n, tc.cs, 0); err == nil {
			t.Errorf("%s: no error", tc.name)
		}
	}
}

func TestServerOptimizers(t *testing.T) {
	// Two steps with the same average (1, -2) from theta = (0, 0).
	avg := []float32{1, -2}
	tests := []struct {
		name string
		opt  ServerOptimizer
		want [2][]float32 // theta after step 1 and step 2
	}{
		{"fedavg lr 1", ServerOptimizer{Kind: OptFedAvg, LR: 1}, [2][]float32{{1, -2}, {2, -4}}},
		{"fedavg lr 0.5", ServerOptimizer{Kind: OptFedAvg, LR: 0.5}, [2][]float32{{0.5, -1}, {1, -2}}},
		// m1 = a, theta1 = a; m2 = 0.5a + a = 1.5a, theta2 = a + 1.5a = 2.5a.
		{"fedavgm", ServerOptimizer{Kind: OptFedAvgM, LR: 1, Momentum: 0.5}, [2][]float32{{1, -2}, {2.5, -5}}},
		// m1 = a, step1 = a + 0.5a = 1.5a; m2 = 1.5a, step2 = a + 0.75a = 1.75a; theta2 = 3.25a.
		{"nesterov", ServerOptimizer{Kind: OptNesterov, LR: 1, Momentum: 0.5}, [2][]float32{{1.5, -3}, {3.25, -6.5}}},
		// b1 = 0, b2 = 0: m = g, v = g^2, step = lr*g/(|g|+eps) = sign(g)*lr (eps tiny).
		{"fedadam sign", ServerOptimizer{Kind: OptFedAdam, LR: 0.1, Beta1: 0, Beta2: 0, Eps: 1e-12}, [2][]float32{{0.1, -0.1}, {0.2, -0.2}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			theta := []float32{0, 0}
			var st OptState
			for step := 0; step < 2; step++ {
				if err := tc.opt.Step(theta, avg, &st); err != nil {
					t.Fatal(err)
				}
				near(t, tc.name, theta, tc.want[step])
			}
			if st.Steps != 2 {
				t.Errorf("steps = %d, want 2", st.Steps)
			}
		})
	}
}

func TestFedAdamMoments(t *testing.T) {
	// beta1 0.9, beta2 0.99, g = 2: m = 0.2, v = 0.04, step = 0.1*0.2/(0.2+0.01).
	o := ServerOptimizer{Kind: OptFedAdam, LR: 0.1, Beta1: 0.9, Beta2: 0.99, Eps: 0.01}
	theta := []float32{0}
	var st OptState
	if err := o.Step(theta, []float32{2}, &st); err != nil {
		t.Fatal(err)
	}
	near(t, "theta", theta, []float32{float32(0.1 * 0.2 / 0.21)})
	near(t, "m", st.M, []float32{0.2})
	near(t, "v", st.V, []float32{0.04})
}

func TestServerOptimizerValidate(t *testing.T) {
	bad := []ServerOptimizer{
		{Kind: "sgd", LR: 1},
		{Kind: OptFedAvg, LR: 0},
		{Kind: OptFedAvg, LR: math.Inf(1)},
		{Kind: OptFedAvgM, LR: 1, Momentum: 1},
		{Kind: OptFedAdam, LR: 1, Beta1: 0.9, Beta2: 0.99, Eps: 0},
	}
	for _, o := range bad {
		if err := o.Validate(); err == nil {
			t.Errorf("%+v: no error", o)
		}
	}
	if err := (ServerOptimizer{Kind: OptFedAvg, LR: 1}).Step([]float32{1}, []float32{1, 2}, nil); err == nil {
		t.Error("length mismatch: no error")
	}
}

func TestOptStateRoundTrip(t *testing.T) {
	st := OptState{Steps: 7, M: []float32{1, -2, 3}, V: []float32{0.5, 0.25, 0}, NormRef: 2.5}
	b, err := st.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var got OptState
	if err := got.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if got.Steps != 7 || got.NormRef != 2.5 {
		t.Errorf("steps %d, norm reference %v", got.Steps, got.NormRef)
	}
	near(t, "M", got.M, st.M)
	near(t, "V", got.V, st.V)
	// Version 1 (before the norm reference) still reads, with none.
	v1 := binary.LittleEndian.AppendUint16([]byte("OCOS"), 1)
	v1 = binary.LittleEndian.AppendUint64(v1, 3)
	v1 = binary.LittleEndian.AppendUint64(v1, 2)
	v1 = append(v1, 1)
	v1 = binary.LittleEndian.AppendUint32(v1, math.Float32bits(0.5))
	v1 = binary.LittleEndian.AppendUint32(v1, math.Float32bits(-1))
	v1 = binary.LittleEndian.AppendUint32(v1, crc32.Checksum(v1, crc32.MakeTable(crc32.Castagnoli)))
	if err := got.UnmarshalBinary(v1); err != nil || got.Steps != 3 || got.NormRef != 0 || got.V != nil {
		t.Fatalf("version 1 state: %v, %+v", err, got)
	}
	near(t, "v1 M", got.M, []float32{0.5, -1})
	if _, err := (&OptState{NormRef: math.Inf(1)}).MarshalBinary(); err == nil {
		t.Error("an infinite norm reference: no error")
	}
	for _, cut := range []int{0, 5, len(b) - 1} {
		if err := got.UnmarshalBinary(b[:cut]); err == nil {
			t.Errorf("truncated to %d: no error", cut)
		}
	}
	b[len(b)/2] ^= 1
	if err := got.UnmarshalBinary(b); err == nil {
		t.Error("flipped bit: no error")
	}
}

func TestAdapterCodec(t *testing.T) {
	v := []float32{1.5, -2, 0}
	got, err := DecodeAdapter(EncodeAdapter(v), 3)
	if err != nil {
		t.Fatal(err)
	}
	near(t, "adapter", got, v)
	if _, err := DecodeAdapter(EncodeAdapter(v), 4); err == nil {
		t.Error("wrong length: no error")
	}
	if _, err := DecodeAdapter(EncodeAdapter([]float32{float32(math.NaN())}), 1); err == nil {
		t.Error("NaN: no error")
	}
}

func TestPickCohort(t *testing.T) {
	ids := []string{"a", "b", "c", "d", "e"}
	a, b := PickCohort(ids, 3, 42), PickCohort(ids, 3, 42)
	if len(a) != 3 || a[0] != b[0] || a[1] != b[1] || a[2] != b[2] {
		t.Fatalf("not reproducible: %v vs %v", a, b)
	}
	seen := map[string]bool{}
	for _, w := range a {
		if seen[w] {
			t.Fatalf("duplicate in %v", a)
		}
		seen[w] = true
	}
	if got := PickCohort(ids, 10, 1); len(got) != 5 {
		t.Errorf("cohort of %d from 5 available, want 5", len(got))
	}
	differs := false
	for s := uint64(0); s < 20 && !differs; s++ {
		c := PickCohort(ids, 3, s)
		differs = c[0] != a[0] || c[1] != a[1] || c[2] != a[2]
	}
	if !differs {
		t.Error("every seed picked the same cohort")
	}
}

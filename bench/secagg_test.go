package bench

import (
	"context"
	"fmt"
	"math"
	"testing"
)

// The secure-aggregation upload rows: every ring value packed to exactly
// b bits, b the smallest width in which the cohort's sum of q-bit values
// cannot wrap (computed here from the definition), and the ratio to the
// plain codec smaller with 16-bit values than with 8-bit ones. (Cohorts of
// 10 and 30 keep the test short; `opencluster bench --only secagg` has the
// rows at 100 and 1,000.)
func TestSecAggUploadRows(t *testing.T) {
	const length = SecAggLength
	var rows []Row
	if err := secAggUpload(context.Background(), []int{10, 30}, length, func(r Row) { rows = append(rows, r) }); err != nil {
		t.Fatal(err)
	}
	got := map[[2]int]Row{}
	for _, r := range rows {
		if r.Error != "" {
			t.Fatalf("%s %s: %s", r.Name, r.Size, r.Error)
		}
		got[[2]int{int(r.Extra["quant_bits"].(uint)), cohortOf(t, r.Size)}] = r
	}
	for _, q := range []int{8, 16} {
		for _, n := range []int{10, 30} {
			r, ok := got[[2]int{q, n}]
			if !ok {
				t.Fatalf("no row for %d-bit values at cohort %d", q, n)
			}
			// Smallest b with n*(2^(q-1)-1) < 2^(b-1).
			b := 1
			for float64(n)*(math.Ldexp(1, q-1)-1) >= math.Ldexp(1, b-1) {
				b++
			}
			b = max(b, 8)
			if rb := int(r.Extra["ring_bits"].(uint)); rb != b {
				t.Errorf("%d-bit, cohort %d: ring of %d bits, want %d", q, n, rb, b)
			}
			// header 50 + claims 24 + packed values + signature 64.
			want := 50 + 24 + (length*b+7)/8 + 64
			if m := r.Extra["masked_input_bytes"].(float64); m != float64(want) {
				t.Errorf("%d-bit, cohort %d: masked input of %v bytes, want %d (%d values of exactly %d bits)", q, n, m, want, length, b)
			}
			if meets := r.Ratio <= SecAggGoal; r.Extra["meets_goal"] != meets {
				t.Errorf("%d-bit, cohort %d: ratio %.3f but meets_goal %v", q, n, r.Ratio, r.Extra["meets_goal"])
			}
		}
		if got[[2]int{q, 30}].Ratio <= got[[2]int{q, 10}].Ratio {
			t.Errorf("%d-bit: the ratio does not grow with the cohort", q)
		}
	}
	for _, n := range []int{10, 30} {
		if r8, r16 := got[[2]int{8, n}], got[[2]int{16, n}]; !(r16.Ratio < r8.Ratio) {
			t.Errorf("cohort %d: 16-bit ratio %.3f is not below the 8-bit %.3f", n, r16.Ratio, r8.Ratio)
		}
	}
}

func cohortOf(t *testing.T, size string) int {
	var n int
	if _, err := fmt.Sscanf(size, "cohort %d,", &n); err != nil {
		t.Fatalf("size %q: %v", size, err)
	}
	return n
}

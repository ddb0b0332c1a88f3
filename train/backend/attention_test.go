package backend

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestAttentionByGroups: with enough (batch, kv head) groups the threads
// take whole groups; the results must match the reference to rounding and
// the one-thread backend (each product split by Sgemm) bit for bit.
func TestAttentionByGroups(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 7))
	const B, T, H, KVH, hd = 4, 37, 6, 2, 16 // 8 groups of 3 query heads
	N, C, KC := B*T, H*hd, KVH*hd
	q, k, v, dy := randF32(rng, N*C), randF32(rng, N*KC), randF32(rng, N*KC), randF32(rng, N*C)
	ao, att := make([]float32, N*C), make([]float32, B*H*T*T)
	AttentionForward(ao, att, q, k, v, B, T, H, KVH, hd, 0, B*H)
	dq, dk, dv := make([]float32, N*C), make([]float32, N*KC), make([]float32, N*KC)
	AttentionBackward(dq, dk, dv, make([]float32, T), dy, att, q, k, v, B, T, H, KVH, hd, 0, B*KVH)

	var first [4][]float32
	for _, threads := range []int{2, 1, 3} {
		be := NewCPU(threads)
		if threads == 2 && !be.(*cpu).byGroups(B*KVH) {
			t.Fatal("2 threads and 8 groups should take whole groups")
		}
		bo, batt := be.Alloc(N*C), be.Alloc(B*H*T*T)
		bq, bk, bv := up(be, q), up(be, k), up(be, v)
		be.AttentionForward(bo, batt, bq, bk, bv, B, T, H, KVH, hd)
		bdq, bdk, bdv := be.Alloc(N*C), be.Alloc(N*KC), be.Alloc(N*KC)
		be.AttentionBackward(bdq, bdk, bdv, up(be, dy), batt, bq, bk, bv, B, T, H, KVH, hd)
		got := [4][]float32{HostSlice(bo), HostSlice(bdq), HostSlice(bdk), HostSlice(bdv)}
		for i, want := range [4][]float32{ao, dq, dk, dv} {
			closeTo(t, [4]string{"out", "dq", "dk", "dv"}[i], got[i], want, 1e-5)
		}
		if first[0] == nil {
			first = got
			continue
		}
		for i := range got {
			for j := range got[i] {
				if math.Float32bits(got[i][j]) != math.Float32bits(first[i][j]) {
					t.Fatalf("%d threads: output %d element %d = %v, 2 threads gave %v", threads, i, j, got[i][j], first[i][j])
				}
			}
		}
	}
}

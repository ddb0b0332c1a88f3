package secagg

import (
	"fmt"
	"math"
	"slices"
)

// DefaultDegree is the number of neighbours each client shares with in a
// cohort of n: the smallest even k ≥ 2⌈log2 n⌉ + 2, capped at n-1 (where
// the graph becomes complete, as in the original SecAgg). Bell et al. show
// that O(log n) suffices for the graph to stay connected and for each
// neighbourhood to keep an honest majority, with parameters set by the
// tolerated dropout and corruption rates; this choice gives k = 10 at n = 10,
// 16 at 100 and 22 at 1,000.
func DefaultDegree(n int) int {
	if n <= 1 {
		return 0
	}
	k := 2*int(math.Ceil(math.Log2(float64(n)))) + 2
	if k%2 == 1 {
		k++
	}
	return min(k, n-1)
}

// DefaultThreshold is the number of shares needed to reconstruct a secret
// for degree k: a strict majority of the neighbours, ⌊k/2⌋+1. Honest clients
// reveal at most one kind of share per neighbour, so a server without
// colluders can never reach the threshold for both a client's self-mask
// seed and its mask key.
func DefaultThreshold(k int) int { return k/2 + 1 }

// Neighbours returns, for each of the n clients (by cohort index), the
// sorted indices of its neighbours: a Harary graph H(k, n) (each node on a
// ring joined to the k/2 nearest on either side) laid over a permutation
// of the cohort drawn from the round seed. Everyone computes the same graph
// from the same seed. k must be even and < n, or n-1 (complete graph).
func Neighbours(seed uint64, n, k int) ([][]int, error) {
	if n < 2 {
		return nil, fmt.Errorf("secagg: neighbour graph: cohort of %d: want at least 2", n)
	}
	if k < 1 || k > n-1 || (k%2 == 1 && k != n-1) {
		return nil, fmt.Errorf("secagg: neighbour graph: degree %d for a cohort of %d: want an even degree below %d, or %d", k, n, n, n-1)
	}
	out := make([][]int, n)
	if k == n-1 {
		for i := range n {
			for j := range n {
				if j != i {
					out[i] = append(out[i], j)
				}
			}
		}
		return out, nil
	}
	perm := make([]int, n) // position on the ring -> client
	for i := range perm {
		perm[i] = i
	}
	r := newSeededRand(seed, labelGraph)
	for i := n - 1; i > 0; i-- { // Fisher-Yates
		j := int(r.below(uint64(i + 1)))
		perm[i], perm[j] = perm[j], perm[i]
	}
	for p, c := range perm {
		for d := 1; d <= k/2; d++ {
			out[c] = append(out[c], perm[(p+d)%n], perm[(p-d+n)%n])
		}
	}
	for i := range out {
		slices.Sort(out[i])
	}
	return out, nil
}

// Positions returns the k of n update positions every client of the round
// keeps (the shared-seed random-k sparsifier under secure aggregation), in
// increasing order, drawn uniformly from the round seed by selection
// sampling (Knuth, TAOCP 3.4.2, Algorithm S).
func Positions(seed uint64, n, k int) []uint32 {
	out := make([]uint32, 0, k)
	r := newSeededRand(seed, labelPosition)
	need := uint64(k)
	for i := 0; i < n && need > 0; i++ {
		if r.below(uint64(n-i)) < need {
			out = append(out, uint32(i))
			need--
		}
	}
	return out
}

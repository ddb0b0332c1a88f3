package secagg

import (
	"fmt"
	"math"
	"slices"
)

// DefaultDropout is the dropout rate the default degree is sized for.
const DefaultDropout = 0.1

// FailureTarget is the chance, per round, that some client's neighbourhood
// loses so many members that its secret cannot be rebuilt and the round
// fails (to be retried: nothing is revealed). DegreeFor keeps it below this.
const FailureTarget = 1e-3

// DegreeFor is the number of neighbours each client of a cohort of n
// shares with when a fraction dropout of the cohort may vanish: the
// smallest even k for which n·P[fewer than the threshold of k neighbours
// remain] ≤ FailureTarget (the binomial tail, computed exactly), capped at
// n-1 where the graph is complete, as in the original SecAgg. For a fixed
// dropout rate k grows like log n (Bell et al. 2020): at 10% dropouts it is
// 20 for n = 100, 24 for 1,000 and 30 for 10,000; at 30% it is the complete
// graph at 100 and 134 at 1,000.
func DegreeFor(n int, dropout float64) int {
	if n <= 1 {
		return 0
	}
	dropout = min(max(dropout, 0), 0.49)
	for k := 2; k < n-1; k += 2 {
		if float64(n)*belowThreshold(k, DefaultThreshold(k), 1-dropout) <= FailureTarget {
			return k
		}
	}
	return n - 1
}

// belowThreshold is P[Binomial(k, p) < t].
func belowThreshold(k, t int, p float64) float64 {
	var s float64
	for j := 0; j < t; j++ {
		lc, _ := math.Lgamma(float64(k + 1))
		a, _ := math.Lgamma(float64(j + 1))
		b, _ := math.Lgamma(float64(k - j + 1))
		s += math.Exp(lc - a - b + float64(j)*math.Log(p) + float64(k-j)*math.Log1p(-p))
	}
	return s
}

// DefaultDegree is DegreeFor(n, DefaultDropout).
func DefaultDegree(n int) int { return DegreeFor(n, DefaultDropout) }

// DefaultThreshold is the number of shares needed to reconstruct a secret
// for degree k: ⌊k/2⌋+1. A client's shares are held by its k neighbours and
// itself; honest holders reveal at most one kind of share per client, so a
// server without colluders never reaches the threshold for both a client's
// self-mask seed and its mask key (2t > k+1).
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

package compress

import "math"

// topKIndices returns, in increasing order, the indices of the k entries of
// x with the largest magnitudes. Ties at the threshold go to the lower
// index, so the choice is deterministic. It runs in O(n) expected time: one
// pass to build magnitude keys, a quickselect for the k-th largest key, one
// pass to collect. keys is scratch space of len(x) (allocated when nil).
// x must hold no NaN (the caller checks).
func topKIndices(x []float32, k int, keys []uint32, dst []uint32) []uint32 {
	n := len(x)
	dst = dst[:0]
	if k <= 0 {
		return dst
	}
	if k >= n {
		for i := range n {
			dst = append(dst, uint32(i))
		}
		return dst
	}
	if cap(keys) < n {
		keys = make([]uint32, n)
	}
	keys = keys[:n]
	// For non-negative IEEE floats the bit patterns order like the values,
	// so |x| as uint32 bits is an exact, branch-free sort key.
	for i, v := range x {
		keys[i] = math.Float32bits(v) &^ (1 << 31)
	}
	t := nthElement(keys, n-k) // the k-th largest key
	above := 0
	for _, v := range x {
		if math.Float32bits(v)&^(1<<31) > t {
			above++
		}
	}
	ties := k - above // entries equal to t to take, lowest index first
	for i, v := range x {
		key := math.Float32bits(v) &^ (1 << 31)
		if key > t || (key == t && ties > 0) {
			if key == t {
				ties--
			}
			dst = append(dst, uint32(i))
		}
	}
	return dst
}

// nthElement returns the value that would sit at index nth if a were sorted
// ascending, reordering a in the process. It is quickselect with a
// three-way partition (so runs of equal keys, such as many zeros, cost one
// pass) and pivots drawn from a fixed-seed stream; the pivot choice changes
// only the running time, never the result.
func nthElement(a []uint32, nth int) uint32 {
	lo, hi := 0, len(a)-1
	r := newStream(0, streamPivot)
	for lo < hi {
		p := a[lo+int(r.below(uint64(hi-lo+1)))]
		lt, i, gt := lo, lo, hi
		for i <= gt {
			switch v := a[i]; {
			case v < p:
				a[lt], a[i] = v, a[lt]
				lt++
				i++
			case v > p:
				a[i], a[gt] = a[gt], v
				gt--
			default:
				i++
			}
		}
		// a[lo:lt] < p, a[lt:gt+1] == p, a[gt+1:hi+1] > p
		switch {
		case nth < lt:
			hi = lt - 1
		case nth > gt:
			lo = gt + 1
		default:
			return p
		}
	}
	return a[nth]
}

// randKIndices returns k distinct indices in [0, n), in increasing order,
// drawn uniformly from the seed. It is Knuth's selection sampling (TAOCP
// vol. 2, 3.4.2, Algorithm S): walk i = 0..n-1 and take i with probability
// (still needed)/(still left), the draw being below(n-i) < needed on the
// seed's index stream. Every k-subset is equally likely, the output comes
// out sorted, and encoder and decoder regenerate it bit for bit.
func randKIndices(n, k int, seed uint64, dst []uint32) []uint32 {
	dst = dst[:0]
	r := newStream(seed, streamIndices)
	need := uint64(k)
	for i := 0; i < n && need > 0; i++ {
		left := uint64(n - i)
		if left == need { // everything left is taken: no draws needed
			for j := i; j < n; j++ {
				dst = append(dst, uint32(j))
			}
			break
		}
		if r.below(left) < need {
			dst = append(dst, uint32(i))
			need--
		}
	}
	return dst
}

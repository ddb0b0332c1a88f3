package compress

import "math/bits"

// splitmix64 is the generator behind every random choice in this package
// (Steele, Lea and Flood, "Fast splittable pseudorandom number generators",
// 2014): the state advances by a fixed odd constant and each output is a
// bijective mix of the state. It is tiny, fast, passes BigCrush, and is easy
// to reimplement bit for bit in any language, which is what a shared-seed
// protocol needs.
type splitmix64 struct{ s uint64 }

// Stream tags: each use of a seed draws from its own stream so that, say,
// the random-k indices and the rounding noise are independent.
const (
	streamIndices  = 0x72616e646b696478 // "randkidx"
	streamRounding = 0x726f756e64696e67 // "rounding"
	streamPivot    = 0x7069766f74736565 // "pivotsee"
)

// newStream returns the generator for (seed, tag): its initial state is the
// first splitmix64 output of seed XOR tag.
func newStream(seed, tag uint64) splitmix64 {
	r := splitmix64{seed ^ tag}
	return splitmix64{r.next()}
}

func (r *splitmix64) next() uint64 {
	r.s += 0x9e3779b97f4a7c15
	z := r.s
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// below returns a uniform integer in [0, n) for n > 0, without modulo bias
// (Lemire, "Fast random integer generation in an interval", 2019).
func (r *splitmix64) below(n uint64) uint64 {
	hi, lo := bits.Mul64(r.next(), n)
	if lo < n {
		t := -n % n
		for lo < t {
			hi, lo = bits.Mul64(r.next(), n)
		}
	}
	return hi
}

// float64 returns a uniform float64 in [0, 1) with 53 random bits.
func (r *splitmix64) float64() float64 {
	return float64(r.next()>>11) * 0x1p-53
}

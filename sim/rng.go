package sim

import "math"

// Every random draw derives from the run's seed by hashing, so a node's
// attributes, its presence on a given day and its fate in a given round
// do not depend on the order anything else was drawn in: the same seed
// gives the same run, byte for byte, and a population read back from a
// trace draws the same days and failures.

// mix is SplitMix64's finaliser, a strong 64-bit mixing function.
func mix(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// hash combines values into one well-mixed 64-bit value.
func hash(vals ...uint64) uint64 {
	h := uint64(0x6f70656e636c7573) // "openclus"
	for _, v := range vals {
		h = mix(h + 0x9e3779b97f4a7c15 + v)
	}
	return h
}

// unit maps a hash to [0, 1).
func unit(h uint64) float64 { return float64(h>>11) / (1 << 53) }

// Draw-purpose tags, so two draws for one node never share a stream.
const (
	tagNode uint64 = iota + 1
	tagDay
	tagFail
	tagDelta
	tagOrganiser
)

// stream is a SplitMix64 sequence for drawing one node's attributes.
type stream struct{ s uint64 }

func newStream(vals ...uint64) stream { return stream{s: hash(vals...)} }

func (r *stream) next() uint64 {
	r.s += 0x9e3779b97f4a7c15
	return mix(r.s)
}

// float is uniform in [0, 1).
func (r *stream) float() float64 { return unit(r.next()) }

// norm is a standard normal draw (Box-Muller).
func (r *stream) norm() float64 {
	u1 := 1 - r.float() // (0, 1]
	return math.Sqrt(-2*math.Log(u1)) * math.Cos(2*math.Pi*r.float())
}

// pick returns an index drawn with probability proportional to weights
// (cumulative sums in cum, the last the total).
func (r *stream) pick(cum []float64) int {
	x := r.float() * cum[len(cum)-1]
	lo, hi := 0, len(cum)-1
	for lo < hi {
		m := (lo + hi) / 2
		if cum[m] > x {
			hi = m
		} else {
			lo = m + 1
		}
	}
	return lo
}

// cumulative returns the running sums of w.
func cumulative(w []float64) []float64 {
	out := make([]float64, len(w))
	s := 0.0
	for i, v := range w {
		s += v
		out[i] = s
	}
	return out
}

package coordinator

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"slices"

	"github.com/opencluster/opencluster/compress"
)

// Aggregation works on the flat fp32 adapter vector: every tensor of the
// adapter concatenated in RoundInfo.Shapes order. A worker's update is the
// displacement it trained, delta = local - global. The coordinator
//
//  1. bounds each delta's L2 norm by norm_bound, or by default by
//     norm_bound_factor times the median norm of the round's updates
//     (clipped to it, or left out under norm_policy reject),
//  2. combines the deltas: their mean weighted by tokens trained (FedAvg),
//     or a coordinate-wise trimmed mean or median (the aggregator key), and
//  3. hands the result to a server optimizer that moves the global adapter.
//
// A round whose updates give no finite adapter closes as failed, its
// adapter unchanged (ErrCannotAggregate), and the next round opens.
//
// With the plain "fedavg" optimizer and lr 1 the new global adapter is the
// token-weighted mean of the workers' local adapters. The other optimizers
// treat -average as a pseudo-gradient, as DiLoCo's outer loop does.

// Contribution is one accepted update as the aggregator sees it.
type Contribution struct {
	// Delta is the decoded update (protocol.Update.Delta).
	Delta *compress.Sparse
	// Weight is the update's share before normalisation: tokens trained,
	// times the late factor for a late update.
	Weight float64
}

// L2Norm is the Euclidean norm of the entries that travelled (the others
// are zero), accumulated in float64.
func L2Norm(s *compress.Sparse) float64 {
	var sum float64
	for _, v := range s.Values {
		sum += float64(v) * float64(v)
	}
	return math.Sqrt(sum)
}

// ClipFactor is the factor that brings a vector of L2 norm `norm` within
// `bound`: 1 when it already is, or when bound <= 0 (no bound).
func ClipFactor(norm, bound float64) float64 {
	if bound <= 0 || norm <= bound || norm == 0 {
		return 1
	}
	return bound / norm
}

// FedAvg returns the weighted mean of the contributions' deltas, each first
// clipped to L2 norm `bound` (bound <= 0: no clipping), as a dense vector
// of n elements. Weights must be finite and non-negative with a positive
// sum; every delta must have n elements.
func FedAvg(n int, cs []Contribution, bound float64) ([]float32, error) {
	if err := checkContributions(n, cs); err != nil {
		return nil, err
	}
	scale := make([]float64, len(cs))
	for i, c := range cs {
		scale[i] = ClipFactor(L2Norm(c.Delta), bound)
	}
	return weightedMean(n, cs, scale)
}

func checkContributions(n int, cs []Contribution) error {
	if len(cs) == 0 {
		return errors.New("coordinator: fedavg: no contributions")
	}
	for i, c := range cs {
		if c.Delta == nil {
			return fmt.Errorf("coordinator: fedavg: contribution %d has no delta", i)
		}
		if c.Delta.N != n {
			return fmt.Errorf("coordinator: fedavg: contribution %d has %d elements, want %d", i, c.Delta.N, n)
		}
		if math.IsNaN(c.Weight) || math.IsInf(c.Weight, 0) || c.Weight < 0 {
			return fmt.Errorf("coordinator: fedavg: contribution %d has weight %v, want finite and >= 0", i, c.Weight)
		}
	}
	return nil
}

// weightedMean is sum_i w_i*scale_i*delta_i / sum_i w_i, accumulated in
// float64 so thousands of updates do not lose precision.
func weightedMean(n int, cs []Contribution, scale []float64) ([]float32, error) {
	var total float64
	for _, c := range cs {
		total += c.Weight
	}
	if total <= 0 {
		return nil, errors.New("coordinator: fedavg: weights sum to 0")
	}
	acc := make([]float64, n)
	for k, c := range cs {
		w := c.Weight / total * scale[k]
		if c.Delta.Index == nil {
			for i, v := range c.Delta.Values {
				acc[i] += w * float64(v)
			}
			continue
		}
		for j, i := range c.Delta.Index {
			acc[i] += w * float64(c.Delta.Values[j])
		}
	}
	out := make([]float32, n)
	for i, v := range acc {
		out[i] = float32(v)
	}
	return out, nil
}

// Aggregators: how the bounded deltas of a round become one.
const (
	// AggFedAvg is the token-weighted mean (FedAvg).
	AggFedAvg = "fedavg"
	// AggTrimmedMean is, per coordinate, the token-weighted mean of the
	// values left after dropping the trim_fraction largest and smallest
	// (Yin et al. 2018): a few outliers per coordinate cannot move it.
	AggTrimmedMean = "trimmed_mean"
	// AggMedian is the per-coordinate median, unweighted: robust while
	// fewer than half the updates are hostile. With sparse codecs most
	// coordinates are zero in most updates, so the median is mostly zero:
	// it suits dense codecs or large cohorts.
	AggMedian = "median"
)

// ErrCannotAggregate wraps the reason a round's updates give no usable
// adapter: none is left after the norm bound, or the result is not
// finite. The round then closes as failed with its adapter unchanged.
var ErrCannotAggregate = errors.New("cannot aggregate")

// Ledger reasons of updates that were accepted on upload but are not in
// the aggregate. DroppedPrefix: the aggregation rule left it out (over the
// norm bound with norm_policy reject); it still counts towards the
// adaptive bound's median, so Recompute includes it in the candidates.
// UnreadablePrefix: its stored copy could not be read back at aggregation
// time; it is not a candidate.
const (
	DroppedPrefix    = "dropped:"
	UnreadablePrefix = "unreadable:"
)

// aggOutcome is what the aggregation rule did besides the average.
type aggOutcome struct {
	// Bound is the L2 norm bound applied to every delta.
	Bound float64
	// Reference is the running reference norm the adaptive bound counted
	// (OptState.NormRef before the round; 0: none yet).
	Reference float64
	// Median is the lower median of the kept deltas' norms after the
	// bound: the next round's reference.
	Median float64
	// Clipped counts the deltas scaled down to the bound.
	Clipped int
	// Dropped maps a contribution's index to why it was left out.
	Dropped map[int]string
}

// normBound is the bound for a round whose deltas have these L2 norms:
// norm_bound when set, else norm_bound_factor times their median (the
// lower median: with two updates, the smaller norm), so a bound follows
// the scale of honest updates without being configured and one hostile
// update cannot raise it. The median counts ref, the accepted median norm
// of the rounds before (0: none yet), as one more norm: a round's only
// update cannot set its own bound. norm_bound_max, when set, caps the
// adaptive bound, which covers the first round too.
func (c *Config) normBound(norms []float64, ref float64) float64 {
	if c.NormBound > 0 || len(norms) == 0 {
		return c.NormBound
	}
	s := slices.Clone(norms)
	if ref > 0 {
		s = append(s, ref)
	}
	slices.Sort(s)
	b := c.NormBoundFactor * s[(len(s)-1)/2]
	if c.NormBoundMax > 0 {
		b = min(b, c.NormBoundMax)
	}
	return b
}

// lowerMedian is the lower median of v (0 for none); v is sorted in place.
func lowerMedian(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	slices.Sort(v)
	return v[(len(v)-1)/2]
}

// combine is the aggregation rule: bound every delta's L2 norm (clip it
// to the bound, or drop it under norm_policy reject; ref is the running
// reference norm, see normBound), then combine what is left with the
// configured aggregator. Errors wrapping ErrCannotAggregate mean the
// round's updates give nothing usable.
func (c *Config) combine(n int, cs []Contribution, ref float64) ([]float32, aggOutcome, error) {
	out := aggOutcome{Dropped: map[int]string{}, Reference: ref}
	if err := checkContributions(n, cs); err != nil {
		return nil, out, fmt.Errorf("%w: %v", ErrCannotAggregate, err)
	}
	norms := make([]float64, len(cs))
	for i, ct := range cs {
		norms[i] = L2Norm(ct.Delta)
	}
	out.Bound = c.normBound(norms, ref)
	var kept []Contribution
	var scale, keptNorms []float64
	for i, ct := range cs {
		nm := norms[i]
		switch {
		case math.IsNaN(nm) || math.IsInf(nm, 0):
			out.Dropped[i] = fmt.Sprintf("%s L2 norm is %v", DroppedPrefix, nm)
			continue
		case nm <= out.Bound:
			scale = append(scale, 1)
		case c.NormPolicy == NormReject:
			out.Dropped[i] = fmt.Sprintf("%s L2 norm %.6g over the bound %.6g", DroppedPrefix, nm, out.Bound)
			continue
		default:
			scale = append(scale, out.Bound/nm)
			out.Clipped++
		}
		kept = append(kept, ct)
		keptNorms = append(keptNorms, nm*scale[len(scale)-1])
	}
	out.Median = lowerMedian(keptNorms)
	if len(kept) == 0 {
		return nil, out, fmt.Errorf("%w: all %d updates are over the norm bound %.6g", ErrCannotAggregate, len(cs), out.Bound)
	}
	var avg []float32
	var err error
	switch c.Aggregator {
	case AggTrimmedMean, AggMedian:
		avg = coordinateWise(n, kept, scale, c.Aggregator, c.TrimFraction)
	default:
		avg, err = weightedMean(n, kept, scale)
	}
	if err != nil {
		return nil, out, fmt.Errorf("%w: %v", ErrCannotAggregate, err)
	}
	for i, v := range avg {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return nil, out, fmt.Errorf("%w: the aggregate's element %d is %v", ErrCannotAggregate, i, v)
		}
	}
	return avg, out, nil
}

// coordinateWise computes the trimmed mean or the median of the scaled
// deltas coordinate by coordinate. It densifies a block of coordinates at
// a time, so memory stays O(len(cs) * block) whatever n is. Ties sort by
// contribution index, so the result never depends on sort stability.
func coordinateWise(n int, cs []Contribution, scale []float64, kind string, trim float64) []float32 {
	const block = 4096
	k := len(cs)
	out := make([]float32, n)
	buf := make([]float64, k*block)
	cursor := make([]int, k) // next position in each sparse Index
	type val struct {
		v, w float64
		i    int
	}
	col := make([]val, k)
	cut := int(trim * float64(k))
	if 2*cut >= k {
		cut = (k - 1) / 2
	}
	for lo := 0; lo < n; lo += block {
		hi := min(lo+block, n)
		clear(buf)
		for j, ct := range cs {
			row := buf[j*block : j*block+block]
			if ct.Delta.Index == nil {
				for i := lo; i < hi; i++ {
					row[i-lo] = scale[j] * float64(ct.Delta.Values[i])
				}
				continue
			}
			p := cursor[j]
			for p < len(ct.Delta.Index) && int(ct.Delta.Index[p]) < hi {
				row[int(ct.Delta.Index[p])-lo] = scale[j] * float64(ct.Delta.Values[p])
				p++
			}
			cursor[j] = p
		}
		for i := lo; i < hi; i++ {
			for j := range cs {
				col[j] = val{buf[j*block+i-lo], cs[j].Weight, j}
			}
			slices.SortFunc(col, func(a, b val) int {
				if a.v != b.v {
					return cmp.Compare(a.v, b.v)
				}
				return a.i - b.i
			})
			if kind == AggMedian {
				m := col[(k-1)/2].v
				if k%2 == 0 {
					m = (m + col[k/2].v) / 2
				}
				out[i] = float32(m)
				continue
			}
			var sum, wsum float64
			for _, x := range col[cut : k-cut] {
				sum += x.w * x.v
				wsum += x.w
			}
			if wsum > 0 {
				out[i] = float32(sum / wsum)
			}
		}
	}
	return out
}

// Server optimizer kinds.
const (
	OptFedAvg   = "fedavg"   // theta += lr * avg
	OptFedAvgM  = "fedavgm"  // m = beta*m + avg; theta += lr * m
	OptNesterov = "nesterov" // m = beta*m + avg; theta += lr * (avg + beta*m)
	OptFedAdam  = "fedadam"  // Adam moments of avg; theta += lr * m / (sqrt(v) + eps)
)

// ServerOptimizer moves the global adapter by the averaged delta.
//
// "fedavgm" is FedAvg with server momentum (Hsu et al. 2019); "nesterov" is
// DiLoCo's outer Nesterov momentum on the pseudo-gradient -avg (Douillard et
// al. 2023 use lr 0.7, momentum 0.9); "fedadam" is FedAdam (Reddi et al.
// 2021), without bias correction as in the paper, with eps (their tau)
// controlling adaptivity (1e-3 is a good start).
type ServerOptimizer struct {
	Kind     string  `mapstructure:"kind" json:"kind"`
	LR       float64 `mapstructure:"lr" json:"lr"`
	Momentum float64 `mapstructure:"momentum" json:"momentum"`
	Beta1    float64 `mapstructure:"beta1" json:"beta1"`
	Beta2    float64 `mapstructure:"beta2" json:"beta2"`
	Eps      float64 `mapstructure:"eps" json:"eps"`
}

// Validate names the first bad field.
func (o ServerOptimizer) Validate() error {
	bad := func(field string, v float64, want string) error {
		return fmt.Errorf("coordinator: server optimizer %s %v: want %s", field, v, want)
	}
	fin := func(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }
	if !fin(o.LR) || o.LR <= 0 {
		return bad("lr", o.LR, "> 0")
	}
	switch o.Kind {
	case OptFedAvg:
	case OptFedAvgM, OptNesterov:
		if !fin(o.Momentum) || o.Momentum < 0 || o.Momentum >= 1 {
			return bad("momentum", o.Momentum, "in [0, 1)")
		}
	case OptFedAdam:
		if !fin(o.Beta1) || o.Beta1 < 0 || o.Beta1 >= 1 {
			return bad("beta1", o.Beta1, "in [0, 1)")
		}
		if !fin(o.Beta2) || o.Beta2 < 0 || o.Beta2 >= 1 {
			return bad("beta2", o.Beta2, "in [0, 1)")
		}
		if !fin(o.Eps) || o.Eps <= 0 {
			return bad("eps", o.Eps, "> 0")
		}
	default:
		return fmt.Errorf("coordinator: server optimizer kind %q: want %s, %s, %s or %s", o.Kind, OptFedAvg, OptFedAvgM, OptNesterov, OptFedAdam)
	}
	return nil
}

// OptState is the server optimizer's memory, kept between rounds (and on
// disk, so a restarted coordinator continues the same trajectory), with
// the adaptive norm bound's running reference.
type OptState struct {
	Steps uint64
	M, V  []float32 // first and second moments; nil until used
	// NormRef is the lower median of the bounded update norms of the last
	// plain round that aggregated (0: none yet); the next round's adaptive
	// bound counts it as one more norm (Config.normBound).
	NormRef float64
}

// clone is a deep copy of s.
func (s *OptState) clone() OptState {
	return OptState{Steps: s.Steps, M: slices.Clone(s.M), V: slices.Clone(s.V), NormRef: s.NormRef}
}

// Step applies one server step: theta moves by the averaged delta avg.
// st may be nil for "fedavg"; it is grown on first use for the others.
func (o ServerOptimizer) Step(theta, avg []float32, st *OptState) error {
	if err := o.Validate(); err != nil {
		return err
	}
	if len(theta) != len(avg) {
		return fmt.Errorf("coordinator: server step: adapter has %d elements, average has %d", len(theta), len(avg))
	}
	lr := o.LR
	if o.Kind != OptFedAvg && st == nil {
		return fmt.Errorf("coordinator: server step: %s needs an optimizer state", o.Kind)
	}
	grow := func(v []float32) []float32 {
		if len(v) != len(theta) {
			return make([]float32, len(theta))
		}
		return v
	}
	switch o.Kind {
	case OptFedAvg:
		for i, a := range avg {
			theta[i] += float32(lr * float64(a))
		}
	case OptFedAvgM, OptNesterov:
		st.M = grow(st.M)
		b := o.Momentum
		for i, a := range avg {
			m := b*float64(st.M[i]) + float64(a)
			st.M[i] = float32(m)
			step := m
			if o.Kind == OptNesterov {
				step = float64(a) + b*m
			}
			theta[i] += float32(lr * step)
		}
	case OptFedAdam:
		st.M, st.V = grow(st.M), grow(st.V)
		b1, b2 := o.Beta1, o.Beta2
		for i, a := range avg {
			g := float64(a)
			m := b1*float64(st.M[i]) + (1-b1)*g
			v := b2*float64(st.V[i]) + (1-b2)*g*g
			st.M[i], st.V[i] = float32(m), float32(v)
			theta[i] += float32(lr * m / (math.Sqrt(v) + o.Eps))
		}
	}
	if st != nil {
		st.Steps++
	}
	for i, t := range theta {
		if math.IsNaN(float64(t)) || math.IsInf(float64(t), 0) {
			return fmt.Errorf("coordinator: server step: adapter element %d became %v", i, t)
		}
	}
	return nil
}

// Optimizer state file layout, little-endian: magic "OCOS", uint16 version
// (2; 1 is still read), uint64 steps, uint64 n, uint8 flags (bit 0: M
// present, bit 1: V present), in version 2 the float64 NormRef, then n
// float32 for each present moment, then CRC-32C of everything before it.
const optMagic = "OCOS"

// MarshalBinary encodes the state.
func (s *OptState) MarshalBinary() ([]byte, error) {
	n := len(s.M)
	if n == 0 {
		n = len(s.V)
	}
	if (s.M != nil && len(s.M) != n) || (s.V != nil && len(s.V) != n) {
		return nil, fmt.Errorf("coordinator: optimizer state: moments have %d and %d elements", len(s.M), len(s.V))
	}
	var flags byte
	if s.M != nil {
		flags |= 1
	}
	if s.V != nil {
		flags |= 2
	}
	if math.IsNaN(s.NormRef) || math.IsInf(s.NormRef, 0) || s.NormRef < 0 {
		return nil, fmt.Errorf("coordinator: optimizer state: norm reference %v", s.NormRef)
	}
	b := make([]byte, 0, 4+2+8+8+1+8+8*n+4)
	b = append(b, optMagic...)
	b = binary.LittleEndian.AppendUint16(b, 2)
	b = binary.LittleEndian.AppendUint64(b, s.Steps)
	b = binary.LittleEndian.AppendUint64(b, uint64(n))
	b = append(b, flags)
	b = binary.LittleEndian.AppendUint64(b, math.Float64bits(s.NormRef))
	for _, v := range [][]float32{s.M, s.V} {
		for _, x := range v {
			b = binary.LittleEndian.AppendUint32(b, math.Float32bits(x))
		}
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli)), nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// UnmarshalBinary decodes what MarshalBinary wrote, refusing truncation,
// a bad checksum or non-finite values.
func (s *OptState) UnmarshalBinary(b []byte) error {
	head := 4 + 2 + 8 + 8 + 1
	if len(b) < head+4 || string(b[:4]) != optMagic {
		return errors.New("coordinator: optimizer state: not an OCOS file or truncated")
	}
	body, sum := b[:len(b)-4], binary.LittleEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, castagnoli) != sum {
		return errors.New("coordinator: optimizer state: checksum mismatch")
	}
	v := binary.LittleEndian.Uint16(b[4:])
	if v != 1 && v != 2 {
		return fmt.Errorf("coordinator: optimizer state: version %d, want 1 or 2", v)
	}
	steps := binary.LittleEndian.Uint64(b[6:])
	n := binary.LittleEndian.Uint64(b[14:])
	flags := b[22]
	out := OptState{Steps: steps}
	if v == 2 {
		if len(body) < head+8 {
			return errors.New("coordinator: optimizer state: truncated")
		}
		out.NormRef = math.Float64frombits(binary.LittleEndian.Uint64(b[head:]))
		head += 8
		if math.IsNaN(out.NormRef) || math.IsInf(out.NormRef, 0) || out.NormRef < 0 {
			return fmt.Errorf("coordinator: optimizer state: norm reference %v", out.NormRef)
		}
	}
	count := uint64(flags&1) + uint64(flags>>1&1)
	if flags > 3 || n > compress.MaxN || uint64(len(body)-head) != 4*n*count {
		return fmt.Errorf("coordinator: optimizer state: %d bytes of moments for n=%d flags=%d", len(body)-head, n, flags)
	}
	p := body[head:]
	read := func() ([]float32, error) {
		v := make([]float32, n)
		for i := range v {
			v[i] = math.Float32frombits(binary.LittleEndian.Uint32(p[4*i:]))
			if math.IsNaN(float64(v[i])) || math.IsInf(float64(v[i]), 0) {
				return nil, fmt.Errorf("coordinator: optimizer state: element %d is %v", i, v[i])
			}
		}
		p = p[4*n:]
		return v, nil
	}
	var err error
	if flags&1 != 0 {
		if out.M, err = read(); err != nil {
			return err
		}
	}
	if flags&2 != 0 {
		if out.V, err = read(); err != nil {
			return err
		}
	}
	*s = out
	return nil
}

// EncodeAdapter is the adapter blob format: the flat vector as
// little-endian float32, nothing else (its SHA-256 names it).
func EncodeAdapter(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

// DecodeAdapter reads EncodeAdapter's format for an adapter of n elements,
// refusing a wrong length and non-finite values.
func DecodeAdapter(b []byte, n int) ([]float32, error) {
	if len(b) != 4*n {
		return nil, fmt.Errorf("coordinator: adapter blob has %d bytes, want %d (%d float32)", len(b), 4*n, n)
	}
	v := make([]float32, n)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		if math.IsNaN(float64(v[i])) || math.IsInf(float64(v[i]), 0) {
			return nil, fmt.Errorf("coordinator: adapter blob: element %d is %v", i, v[i])
		}
	}
	return v, nil
}

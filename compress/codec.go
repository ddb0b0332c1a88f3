package compress

import (
	"encoding/binary"
	"fmt"
	"math"
)

// Payload is one encoded update.
//
// Bytes is self-describing given the codec and n (both travel in the
// protocol header), laid out little-endian as:
//
//	uvarint  k                 entries that travel (k == n for dense)
//	[randk]  uint64 seed       the index stream's seed; indices are regenerated
//	[topk]   k × uvarint gap   sorted indices: first as is, then idx[j]-idx[j-1]-1
//	values:
//	  fp32   k × float32
//	  int8   ceil(k/B) × float32 scale, then k × int8 code in [-127, 127]
//	  int16  ceil(k/B) × float32 scale, then k × int16 code in [-32767, 32767]
//	  q4     ceil(k/B) × float32 scale, then ceil(k/2) bytes of nibbles q+8,
//	         first value in the high nibble, odd padding nibble 0
//
// Nothing may follow the values.
type Payload struct {
	Codec Codec
	N     int    // length of the dense vector
	K     int    // entries that travel
	Seed  uint64 // the seed Encode was given
	Bytes []byte
}

// Ratio is the size of the dense fp32 vector over the payload's size
// (e.g. 150 means the payload is 150 times smaller).
func (p *Payload) Ratio() float64 {
	if len(p.Bytes) == 0 {
		return 0
	}
	return float64(4*p.N) / float64(len(p.Bytes))
}

// Sparse is a decoded update: the entries that travelled.
type Sparse struct {
	N      int
	Index  []uint32  // increasing entry indices; nil when every entry travelled
	Values []float32 // one per index, or N values when Index is nil
}

// Dense scatters s into a new vector of length N.
func (s *Sparse) Dense() []float32 {
	out := make([]float32, s.N)
	s.AddTo(out, 1)
	return out
}

// AddTo adds w times the update to dst, which must have length N. This is
// the aggregator's inner loop: it touches only the entries that travelled.
func (s *Sparse) AddTo(dst []float32, w float32) error {
	if len(dst) != s.N {
		return fmt.Errorf("compress: AddTo: destination has %d elements, update has %d", len(dst), s.N)
	}
	if s.Index == nil {
		for i, v := range s.Values {
			dst[i] += w * v
		}
		return nil
	}
	for j, i := range s.Index {
		dst[i] += w * s.Values[j]
	}
	return nil
}

// valueBytes is the size of the value section for k values.
func (c Codec) valueBytes(k int) int {
	switch c.Quantizer {
	case Int8:
		return 4*((k+c.Block-1)/c.Block) + k
	case Int16:
		return 4*((k+c.Block-1)/c.Block) + 2*k
	case Q4:
		return 4*((k+c.Block-1)/c.Block) + (k+1)/2
	}
	return 4 * k
}

// Encode compresses delta with seed driving every random choice (random-k
// indices, stochastic rounding); use a fresh seed per round, such as the
// round's seed from the coordinator.
//
// With st non-nil, Encode applies error feedback with momentum correction
// (Lin et al., "Deep Gradient Compression", 2018): velocity u <- m*u + delta,
// residual r <- r + u, the codec selects and codes from r, then for every
// entry that travelled r keeps only what the receiver will not see (its
// quantization error; zero for fp32) and u is cleared. Entries that did not
// travel wait in r for a later round. Encode leaves st unchanged when it
// returns an error. st must have been made for len(delta) elements.
func (c Codec) Encode(delta []float32, st *State, seed uint64) (*Payload, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	n := len(delta)
	if n > MaxN {
		return nil, fmt.Errorf("compress: delta has %d elements, more than %d", n, MaxN)
	}
	for i, v := range delta {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return nil, fmt.Errorf("compress: delta[%d] is %v", i, v)
		}
	}
	acc := delta // what the codec sees
	var vel []float32
	if st != nil {
		if c.Scaled {
			return nil, fmt.Errorf("compress: codec %s: scaled random-k cannot be used with error feedback", c)
		}
		if err := st.check(n); err != nil {
			return nil, err
		}
		acc = make([]float32, n)
		if st.Momentum != 0 {
			vel = make([]float32, n)
			for i, d := range delta {
				vel[i] = st.Momentum*st.Velocity[i] + d
				acc[i] = st.Residual[i] + vel[i]
			}
		} else {
			for i, d := range delta {
				acc[i] = st.Residual[i] + d
			}
		}
		for i, v := range acc {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return nil, fmt.Errorf("compress: residual + delta overflows at entry %d", i)
			}
		}
	}

	k := c.K(n)
	var idx []uint32
	switch c.Sparsifier {
	case TopK:
		idx = topKIndices(acc, k, nil, make([]uint32, 0, k))
	case RandK:
		idx = randKIndices(n, k, seed, make([]uint32, 0, k))
	}
	vals := acc
	if idx != nil {
		vals = make([]float32, k)
		for j, i := range idx {
			vals[j] = acc[i]
		}
	}

	// Header and indices.
	out := make([]byte, 0, binary.MaxVarintLen64+8+5*len(idx)+c.valueBytes(k))
	out = binary.AppendUvarint(out, uint64(k))
	switch c.Sparsifier {
	case RandK:
		out = binary.LittleEndian.AppendUint64(out, seed)
	case TopK:
		prev := -1
		for _, i := range idx {
			out = binary.AppendUvarint(out, uint64(int(i)-prev-1))
			prev = int(i)
		}
	}

	// Values. deq is what the receiver will decode (before any n/k scaling).
	deq := vals
	switch c.Quantizer {
	case FP32:
		for _, v := range vals {
			out = binary.LittleEndian.AppendUint32(out, math.Float32bits(v))
		}
	case Int8, Int16, Q4:
		nb := (k + c.Block - 1) / c.Block
		scales := make([]float32, nb)
		codes := make([]int16, k)
		deq = make([]float32, k)
		r := newStream(seed, streamRounding)
		if err := quantize(vals, c.Block, levels(c.Quantizer), &r, scales, codes, deq); err != nil {
			return nil, err
		}
		for _, s := range scales {
			out = binary.LittleEndian.AppendUint32(out, math.Float32bits(s))
		}
		switch c.Quantizer {
		case Int8:
			for _, q := range codes {
				out = append(out, byte(q))
			}
		case Int16:
			for _, q := range codes {
				out = binary.LittleEndian.AppendUint16(out, uint16(q))
			}
		default:
			start := len(out)
			out = out[:start+(k+1)/2]
			packQ4(codes, out[start:])
		}
	}

	if st != nil {
		// acc becomes the new residual: what travelled leaves only its
		// quantization error behind; its velocity is cleared.
		if idx == nil {
			for i := range acc {
				acc[i] -= deq[i]
			}
		} else {
			for j, i := range idx {
				acc[i] -= deq[j]
			}
		}
		if vel != nil {
			if idx == nil {
				clear(vel)
			} else {
				for _, i := range idx {
					vel[i] = 0
				}
			}
			st.Velocity = vel
		}
		st.Residual = acc
	}
	return &Payload{Codec: c, N: n, K: k, Seed: seed, Bytes: out}, nil
}

// Decode expands b, an encoding of an n-element vector, into a dense vector.
func (c Codec) Decode(b []byte, n int) ([]float32, error) {
	s, err := c.DecodeSparse(b, n)
	if err != nil {
		return nil, err
	}
	if s.Index == nil {
		return s.Values, nil
	}
	return s.Dense(), nil
}

// DecodeSparse parses b, an encoding of an n-element vector, checking
// every length against the bytes actually present before allocating, every
// index against n, and every decoded value for NaN and Inf. Errors wrap
// ErrCorrupt (or ErrSpec for a bad codec). Memory use is bounded by n and
// len(b).
func (c Codec) DecodeSparse(b []byte, n int) (*Sparse, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if n < 0 || n > MaxN {
		return nil, fmt.Errorf("compress: decode: n = %d out of range [0, %d]", n, MaxN)
	}
	bad := func(format string, args ...any) (*Sparse, error) {
		return nil, fmt.Errorf("compress: %s payload (n=%d): %s: %w", c, n, fmt.Sprintf(format, args...), ErrCorrupt)
	}
	k64, w := binary.Uvarint(b)
	if w <= 0 {
		return bad("truncated or overlong entry count")
	}
	b = b[w:]
	if k64 > uint64(n) {
		return bad("entry count %d exceeds n", k64)
	}
	k := int(k64)
	if c.Sparsifier == Dense && k != n {
		return bad("dense entry count %d != n", k)
	}
	vb := c.valueBytes(k)
	s := &Sparse{N: n}
	switch c.Sparsifier {
	case RandK:
		if len(b) < 8 {
			return bad("truncated seed")
		}
		seed := binary.LittleEndian.Uint64(b)
		b = b[8:]
		if len(b) != vb {
			return bad("value section is %d bytes, want %d", len(b), vb)
		}
		s.Index = randKIndices(n, k, seed, make([]uint32, 0, k))
	case TopK:
		// Each index takes at least one byte: refuse before allocating.
		if len(b) < k+vb {
			return bad("%d bytes left for %d indices and %d value bytes", len(b), k, vb)
		}
		s.Index = make([]uint32, k)
		prev := -1
		for j := range k {
			gap, w := binary.Uvarint(b)
			if w <= 0 {
				return bad("index %d: truncated or overlong varint", j)
			}
			b = b[w:]
			if gap >= uint64(n-1-prev) {
				return bad("index %d: gap %d runs past n", j, gap)
			}
			prev += int(gap) + 1
			s.Index[j] = uint32(prev)
		}
		if len(b) != vb {
			return bad("value section is %d bytes, want %d", len(b), vb)
		}
	default:
		if len(b) != vb {
			return bad("value section is %d bytes, want %d", len(b), vb)
		}
	}

	vals := make([]float32, k)
	switch c.Quantizer {
	case FP32:
		for j := range vals {
			vals[j] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*j:]))
		}
	case Int8, Int16, Q4:
		nb := (k + c.Block - 1) / c.Block
		scales := make([]float32, nb)
		for j := range scales {
			v := math.Float32frombits(binary.LittleEndian.Uint32(b[4*j:]))
			if !(v >= 0) || math.IsInf(float64(v), 0) {
				return bad("block %d: scale %v is not a finite non-negative number", j, v)
			}
			scales[j] = v
		}
		b = b[4*nb:]
		codes := make([]int16, k)
		switch c.Quantizer {
		case Int8:
			for j := range codes {
				if b[j] == 0x80 {
					return bad("value %d: int8 code -128 is not valid", j)
				}
				codes[j] = int16(int8(b[j]))
			}
		case Int16:
			for j := range codes {
				v := binary.LittleEndian.Uint16(b[2*j:])
				if v == 0x8000 {
					return bad("value %d: int16 code -32768 is not valid", j)
				}
				codes[j] = int16(v)
			}
		default:
			if err := unpackQ4(b, codes); err != nil {
				return bad("%v", err)
			}
		}
		dequantize(codes, scales, c.Block, vals)
	}
	if c.Scaled && k > 0 {
		f := float32(float64(n) / float64(k))
		for j := range vals {
			vals[j] *= f
		}
	}
	for j, v := range vals {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			if s.Index != nil {
				return bad("value for entry %d is %v", s.Index[j], v)
			}
			return bad("value for entry %d is %v", j, v)
		}
	}
	s.Values = vals
	return s, nil
}

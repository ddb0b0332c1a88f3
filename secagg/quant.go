package secagg

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"fmt"
	"io"
	"math"
)

// Encode turns one client's update (its values on the round's Length
// shared positions) into a ring vector: clip to L2 norm Clip, scale so
// that Clip maps to L = 2^(QuantBits-1)-1, round each coordinate up or
// down at random with the probability that makes it unbiased, add Skellam
// noise (Pois(NoiseMu) - Pois(NoiseMu), independent per coordinate) when
// NoiseMu > 0, and reduce mod 2^Bits. The randomness comes from rnd
// (crypto/rand in production): the server must not be able to predict the
// noise. It returns the vector and the norm before clipping.
func (p *Params) Encode(x []float32, rnd io.Reader) ([]uint32, float64, error) {
	if len(x) != p.Length {
		return nil, 0, fmt.Errorf("secagg: encode: update has %d values, the round masks %d: %w", len(x), p.Length, ErrParams)
	}
	var ss float64
	for i, v := range x {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return nil, 0, fmt.Errorf("secagg: encode: value %d is %v", i, v)
		}
		ss += float64(v) * float64(v)
	}
	norm := math.Sqrt(ss)
	scale := p.level() / p.Clip
	if norm > p.Clip {
		scale *= p.Clip / norm
	}
	r, err := newRandom(rnd)
	if err != nil {
		return nil, 0, err
	}
	mask := ringMask(p.Bits)
	out := make([]uint32, len(x))
	for i, v := range x {
		f := float64(v) * scale
		q := math.Floor(f)
		if r.float64() < f-q {
			q++
		}
		if p.NoiseMu > 0 {
			q += float64(r.poisson(p.NoiseMu) - r.poisson(p.NoiseMu))
		}
		out[i] = uint32(int64(q)) & mask
	}
	return out, norm, nil
}

// Decode maps a ring sum of count clients' vectors back to the sum of
// their clipped updates: each element is read as a signed b-bit integer
// and divided by the scale. (Divide by count for the mean.)
func (p *Params) Decode(sum []uint32) []float32 {
	out := make([]float32, len(sum))
	inv := p.Clip / p.level()
	half := uint32(1) << (p.Bits - 1)
	mask := ringMask(p.Bits)
	for i, v := range sum {
		v &= mask
		s := int64(v)
		if v >= half {
			s -= int64(mask) + 1
		}
		out[i] = float32(float64(s) * inv)
	}
	return out
}

// random is a buffered AES-256-CTR generator keyed with 32 bytes of the
// caller's randomness: fast enough for one draw per coordinate, and as
// unpredictable as its key.
type random struct {
	s   cipher.Stream
	buf []byte
	off int
}

func newRandom(rnd io.Reader) (*random, error) {
	key := make([]byte, 32)
	if _, err := io.ReadFull(rnd, key); err != nil {
		return nil, fmt.Errorf("secagg: randomness: %w", err)
	}
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	r := &random{s: cipher.NewCTR(b, make([]byte, aes.BlockSize)), buf: make([]byte, 4096)}
	r.off = len(r.buf)
	return r, nil
}

func (r *random) uint64() uint64 {
	if r.off+8 > len(r.buf) {
		clear(r.buf)
		r.s.XORKeyStream(r.buf, r.buf)
		r.off = 0
	}
	v := binary.LittleEndian.Uint64(r.buf[r.off:])
	r.off += 8
	return v
}

// float64 is uniform in [0, 1) with 53 random bits.
func (r *random) float64() float64 { return float64(r.uint64()>>11) * 0x1p-53 }

// poisson draws from the Poisson distribution with mean mu. Below 10 it
// multiplies uniforms (Knuth); above, it is Hörmann's transformed
// rejection with squeeze, PTRS ("The transformed rejection method for
// generating Poisson random variables", Insurance: Mathematics and
// Economics 12, 1993), which is exact and takes O(1) expected draws.
func (r *random) poisson(mu float64) int64 {
	if mu < 10 {
		l := math.Exp(-mu)
		k := int64(0)
		for p := r.float64(); p > l; p *= r.float64() {
			k++
		}
		return k
	}
	slam := math.Sqrt(mu)
	loglam := math.Log(mu)
	b := 0.931 + 2.53*slam
	a := -0.059 + 0.02483*b
	invalpha := 1.1239 + 1.1328/(b-3.4)
	vr := 0.9277 - 3.6224/(b-2)
	for {
		u := r.float64() - 0.5
		v := r.float64()
		us := 0.5 - math.Abs(u)
		k := math.Floor((2*a/us+b)*u + mu + 0.43)
		if us >= 0.07 && v <= vr {
			return int64(k)
		}
		if k < 0 || (us < 0.013 && v > us) {
			continue
		}
		lg, _ := math.Lgamma(k + 1)
		if math.Log(v)+math.Log(invalpha)-math.Log(a/(us*us)+b) <= -mu+k*loglam-lg {
			return int64(k)
		}
	}
}

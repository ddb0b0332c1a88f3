package secagg

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// Limits. MaxCohort is the largest cohort a round may have; the ring width
// is checked against it (see Bits). MaxLength bounds the masked vector.
const (
	MaxCohort = 10000
	MaxLength = 1 << 26
	MinBits   = 8
	MaxBits   = 32
)

// Errors that callers branch on. Each is wrapped with the details.
var (
	// ErrParams: a round's parameters are inconsistent.
	ErrParams = errors.New("bad secure-aggregation parameters")
	// ErrMessage: a message is malformed, for another round or stage, from
	// an unknown sender, badly signed, or a repeat.
	ErrMessage = errors.New("refused secure-aggregation message")
	// ErrTooFewSurvivors: not enough clients (or shares) remain to remove
	// every mask; the round fails and no sum is revealed.
	ErrTooFewSurvivors = errors.New("too few survivors to unmask")
	// ErrStage: a call out of order (a stage repeated or skipped).
	ErrStage = errors.New("secure-aggregation call out of order")
)

// Params is everything a round's participants must agree on. The server
// fills it in and sends it with the round; its Hash binds every message of
// the round.
type Params struct {
	Round uint64 `json:"round"` // the coordinator's round id
	// Attempt counts the round's secure-aggregation attempts: a retry with
	// a new cohort is a new attempt, so no message of a failed attempt can
	// be replayed into the next.
	Attempt uint32 `json:"attempt"`
	Seed    uint64 `json:"seed,string"` // the round seed: neighbour graph and random-k positions
	// Keys are the cohort's long-term ed25519 public keys; a client is
	// known by its index here.
	Keys         []ed25519.PublicKey `json:"keys"`
	Degree       int                 `json:"degree"`        // neighbours per client (even, or len(Keys)-1)
	Threshold    int                 `json:"threshold"`     // shares needed to reconstruct a secret
	MinSurvivors int                 `json:"min_survivors"` // the server refuses to unmask fewer masked inputs
	Length       int                 `json:"length"`        // masked vector length: the round's random-k count
	Bits         uint                `json:"bits"`
	// Encoding (see Encode): updates are clipped to L2 norm Clip, scaled so
	// Clip maps to 2^(QuantBits-1)-1, stochastically rounded, and each
	// client adds Skellam noise with parameter NoiseMu per coordinate (0:
	// no noise).
	Clip      float64 `json:"clip"`
	QuantBits uint    `json:"quant_bits"`
	NoiseMu   float64 `json:"noise_mu"`
}

// NewParams fills in the defaults for a cohort: degree DefaultDegree,
// threshold DefaultThreshold, at least max(threshold, 2/3 of the cohort)
// survivors, and the ring width from Bits.
func NewParams(round, seed uint64, keys []ed25519.PublicKey, length int, clip float64, quantBits uint, noiseMu float64) (*Params, error) {
	n := len(keys)
	k := DefaultDegree(n)
	t := DefaultThreshold(k)
	p := &Params{
		Round: round, Seed: seed, Keys: keys,
		Degree: k, Threshold: t,
		MinSurvivors: max(t, (2*n+2)/3),
		Length:       length, Clip: clip, QuantBits: quantBits, NoiseMu: noiseMu,
	}
	b, err := Bits(n, quantBits, noiseMu)
	if err != nil {
		return nil, err
	}
	p.Bits = b
	return p, p.Validate()
}

// Bits is the ring width for a cohort of n: the smallest b such that the
// sum of n quantized values, each in [-L, L] with L = 2^(q-1)-1, plus the
// cohort's noise, lies in [-2^(b-1), 2^(b-1)) and so decodes without
// wrapping. Without noise this is exact: |sum| ≤ n·L always. With Skellam
// noise (variance V = 2·NoiseMu per client, summed) it adds a = 14√V + 70,
// which the noise exceeds with probability below 2·exp(-a²/(2(V+a/3))) <
// 2^-100 (Bernstein's inequality for sums of Poisson differences); that
// chance is stated, not zero.
func Bits(n int, quantBits uint, noiseMu float64) (uint, error) {
	if n < 2 || n > MaxCohort {
		return 0, fmt.Errorf("secagg: cohort of %d: want 2..%d: %w", n, MaxCohort, ErrParams)
	}
	if quantBits < 2 || quantBits > 24 {
		return 0, fmt.Errorf("secagg: %d quantization bits: want 2..24: %w", quantBits, ErrParams)
	}
	if math.IsNaN(noiseMu) || noiseMu < 0 || noiseMu > 1e12 {
		return 0, fmt.Errorf("secagg: noise parameter %v: want 0..1e12: %w", noiseMu, ErrParams)
	}
	level := float64(int64(1)<<(quantBits-1) - 1)
	bound := float64(n) * level
	if noiseMu > 0 {
		bound += math.Ceil(14*math.Sqrt(2*noiseMu*float64(n)) + 70)
	}
	b := uint(MinBits)
	for b <= MaxBits && bound >= math.Ldexp(1, int(b)-1) {
		b++
	}
	if b > MaxBits {
		return 0, fmt.Errorf("secagg: cohort %d with %d-bit values and noise %v needs more than %d ring bits: %w", n, quantBits, noiseMu, MaxBits, ErrParams)
	}
	return b, nil
}

// Tolerate resizes the neighbour graph for a dropout rate (DegreeFor) and
// sets the threshold and minimum survivors to match.
func (p *Params) Tolerate(dropout float64) error {
	n := len(p.Keys)
	p.Degree = DegreeFor(n, dropout)
	p.Threshold = DefaultThreshold(p.Degree)
	p.MinSurvivors = max(p.Threshold, (2*n+2)/3)
	return p.Validate()
}

// Validate checks that p is self-consistent.
func (p *Params) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("secagg: params: %s: %w", fmt.Sprintf(format, args...), ErrParams)
	}
	n := len(p.Keys)
	if n < 2 || n > MaxCohort {
		return bad("cohort of %d: want 2..%d", n, MaxCohort)
	}
	for i, k := range p.Keys {
		if len(k) != ed25519.PublicKeySize {
			return bad("key %d has %d bytes", i, len(k))
		}
	}
	if p.Degree < 1 || p.Degree > n-1 || (p.Degree%2 == 1 && p.Degree != n-1) {
		return bad("degree %d for a cohort of %d", p.Degree, n)
	}
	if p.Threshold <= p.Degree/2 || p.Threshold > p.Degree {
		return bad("threshold %d: want a majority of the %d neighbours (%d..%d)", p.Threshold, p.Degree, p.Degree/2+1, p.Degree)
	}
	if p.MinSurvivors < p.Threshold || p.MinSurvivors > n {
		return bad("minimum survivors %d: want %d..%d", p.MinSurvivors, p.Threshold, n)
	}
	if p.Length < 1 || p.Length > MaxLength {
		return bad("length %d: want 1..%d", p.Length, MaxLength)
	}
	need, err := Bits(n, p.QuantBits, p.NoiseMu)
	if err != nil {
		return err
	}
	if p.Bits < need || p.Bits > MaxBits {
		return bad("%d ring bits: a cohort of %d needs %d..%d", p.Bits, n, need, MaxBits)
	}
	if math.IsNaN(p.Clip) || math.IsInf(p.Clip, 0) || p.Clip <= 0 {
		return bad("clip %v: want a positive number", p.Clip)
	}
	return nil
}

// Hash is the SHA-256 of p's canonical encoding; every message carries it.
func (p *Params) Hash() [32]byte {
	h := sha256.New()
	var b [8]byte
	put := func(v uint64) { binary.LittleEndian.PutUint64(b[:], v); h.Write(b[:]) }
	h.Write([]byte("opencluster secagg v1 params"))
	put(p.Round)
	put(uint64(p.Attempt))
	put(p.Seed)
	put(uint64(len(p.Keys)))
	for _, k := range p.Keys {
		h.Write(k)
	}
	put(uint64(p.Degree))
	put(uint64(p.Threshold))
	put(uint64(p.MinSurvivors))
	put(uint64(p.Length))
	put(uint64(p.Bits))
	put(math.Float64bits(p.Clip))
	put(uint64(p.QuantBits))
	put(math.Float64bits(p.NoiseMu))
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// level is L = 2^(q-1)-1, the integer a coordinate of norm Clip maps to.
func (p *Params) level() float64 { return float64(int64(1)<<(p.QuantBits-1) - 1) }

// Sensitivity is the L2 norm bound of one client's quantized vector in ring
// units: Clip maps to L, and stochastic rounding moves each of the Length
// coordinates by less than 1, so ‖q‖ ≤ L + √Length.
func (p *Params) Sensitivity() float64 { return p.level() + math.Sqrt(float64(p.Length)) }

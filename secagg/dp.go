package secagg

import (
	"fmt"
	"math"
)

// Differential privacy accounting (client level: the unit protected is a
// volunteer's whole contribution to a round).
//
// Each round the coordinator draws a cohort of K of the N registered
// volunteers uniformly without replacement (from the round seed), clips
// each update to L2 norm C, sums, and releases the sum plus noise of
// standard deviation z·C (z, the noise multiplier). The accountant composes
// the rounds in Rényi DP (Mironov, "Rényi differential privacy", CSF 2017)
// and converts to (ε, δ) with Mironov's Proposition 3,
// ε = min over α of RDP(α) + log(1/δ)/(α-1).
//
// Sampling without replacement is not Poisson sampling, and the bound for
// one is not the bound for the other. What applies to our cohorts is Wang,
// Balle and Kasiviswanathan, "Subsampled Rényi differential privacy and
// analytical moments accountant" (AISTATS 2019), Theorem 9, under
// replace-one adjacency (one volunteer's data swapped for another's): the
// sum's sensitivity is then 2C, not C. The Poisson bound (Mironov, Talwar
// and Zhang, "Rényi differential privacy of the sampled Gaussian
// mechanism", 2019) is also computed, for comparison with published
// DP-SGD numbers and to show what Poisson cohorts would buy; it is not our
// guarantee.

// Orders are the integer Rényi orders the accountant optimizes over.
var Orders = func() []int {
	var out []int
	for a := 2; a <= 64; a++ {
		out = append(out, a)
	}
	for a := 72; a <= 256; a += 8 {
		out = append(out, a)
	}
	return append(out, 320, 384, 512, 768, 1024)
}()

// RDP is a mechanism's Rényi DP curve at integer orders.
type RDP func(alpha int) float64

// GaussianRDP is the Gaussian mechanism with L2 sensitivity delta2 and
// noise standard deviation sigma: α·Δ²/(2σ²) (Mironov 2017, Prop. 7).
func GaussianRDP(delta2, sigma float64) RDP {
	return func(alpha int) float64 { return float64(alpha) * delta2 * delta2 / (2 * sigma * sigma) }
}

// SkellamRDP is the multidimensional Skellam mechanism: noise X - Y per
// coordinate with X, Y ~ Poisson(mu) (variance 2·mu), for a query with L1
// sensitivity delta1 and L2 sensitivity delta2 (Agarwal, Kairouz and Liu,
// "The Skellam mechanism for differentially private federated learning",
// NeurIPS 2021, Theorem 3.5):
//
//	α·Δ2²/(4μ) + min( ((2α-1)·Δ2² + 6·Δ1)/(16μ²), 3·Δ1/(4μ) ).
//
// The first term is the Gaussian mechanism's with the same variance; the
// second is what being discrete costs, and vanishes as μ grows.
func SkellamRDP(delta1, delta2, mu float64) RDP {
	return func(alpha int) float64 {
		a := float64(alpha)
		extra := math.Min(((2*a-1)*delta2*delta2+6*delta1)/(16*mu*mu), 3*delta1/(4*mu))
		return a*delta2*delta2/(4*mu) + extra
	}
}

// logAddExp is log(e^a + e^b) without overflow.
func logAddExp(a, b float64) float64 {
	if math.IsInf(a, -1) {
		return b
	}
	if math.IsInf(b, -1) {
		return a
	}
	if a < b {
		a, b = b, a
	}
	return a + math.Log1p(math.Exp(b-a))
}

func logBinom(n, k int) float64 {
	a, _ := math.Lgamma(float64(n + 1))
	b, _ := math.Lgamma(float64(k + 1))
	c, _ := math.Lgamma(float64(n - k + 1))
	return a - b - c
}

// PoissonGaussianRDP is the sampled Gaussian mechanism with Poisson
// sampling rate q and noise multiplier z (sensitivity 1, add/remove
// adjacency), at integer order α, from Mironov, Talwar and Zhang 2019
// (Section 3.3):
//
//	A_α = Σ_{k=0..α} C(α,k) (1-q)^(α-k) q^k exp((k²-k)/(2z²)),  RDP(α) = log(A_α)/(α-1).
func PoissonGaussianRDP(q, z float64) RDP {
	return func(alpha int) float64 {
		if q == 0 {
			return 0
		}
		if q == 1 {
			return float64(alpha) / (2 * z * z)
		}
		logA := math.Inf(-1)
		for k := 0; k <= alpha; k++ {
			t := logBinom(alpha, k) + float64(alpha-k)*math.Log1p(-q) + float64(k)*math.Log(q) +
				float64(k*k-k)/(2*z*z)
			logA = logAddExp(logA, t)
		}
		return logA / float64(alpha-1)
	}
}

// WithoutReplacementRDP amplifies base (a mechanism's RDP under replace-one
// adjacency, with ε(∞) = ∞ as for Gaussian or Skellam noise) by sampling a
// fraction gamma = K/N without replacement, at integer order α ≥ 2 (Wang,
// Balle and Kasiviswanathan 2019, Theorem 9):
//
//	1/(α-1) · log(1 + γ² C(α,2) min(4(e^ε(2) - 1), 2e^ε(2))
//	                + Σ_{j=3..α} γ^j C(α,j) · 2e^((j-1)ε(j)))
//
// and never more than base(α) itself (sampling cannot hurt: with γ = 1
// the mechanism is unchanged).
func WithoutReplacementRDP(gamma float64, base RDP) RDP {
	return func(alpha int) float64 {
		if gamma >= 1 {
			return base(alpha)
		}
		e2 := base(2)
		// log of min(4(e^e2 - 1), 2e^e2)
		t2 := math.Min(math.Log(4)+e2+math.Log1p(-math.Exp(-e2)), math.Log(2)+e2)
		logSum := logAddExp(0, 2*math.Log(gamma)+logBinom(alpha, 2)+t2)
		for j := 3; j <= alpha; j++ {
			logSum = logAddExp(logSum, float64(j)*math.Log(gamma)+logBinom(alpha, j)+math.Log(2)+float64(j-1)*base(j))
		}
		return math.Min(logSum/float64(alpha-1), base(alpha))
	}
}

// Compose is the RDP of rounds independent runs of m.
func Compose(m RDP, rounds int) RDP {
	return func(alpha int) float64 { return float64(rounds) * m(alpha) }
}

// Epsilon converts an RDP curve to (ε, δ)-DP (Mironov 2017, Prop. 3),
// minimizing over Orders; it returns ε and the order that gave it.
func Epsilon(m RDP, delta float64) (float64, int) {
	best, order := math.Inf(1), 0
	for _, a := range Orders {
		e := m(a) + math.Log(1/delta)/float64(a-1)
		if e < best {
			best, order = e, a
		}
	}
	return best, order
}

// Plan describes a DP-FedAvg run for the accountant.
type Plan struct {
	Rounds     int     // rounds the run will take
	Cohort     int     // K, volunteers per round
	Population int     // N, volunteers the cohort is drawn from
	Noise      float64 // z: noise standard deviation over the clipping norm
	Delta      float64
	// Discrete, when set, is secure aggregation's distributed Skellam
	// noise instead of the coordinator's Gaussian noise (see SkellamFor).
	Discrete *Skellam
}

// Skellam is the summed per-coordinate noise under secure aggregation, in
// ring units: the survivors' Poisson parameters add up to Mu; L1 and L2
// are one quantized update's sensitivity bounds (Params.Sensitivity).
type Skellam struct{ L1, L2, Mu float64 }

// Validate names the first bad field.
func (p Plan) Validate() error {
	switch {
	case p.Rounds < 1:
		return fmt.Errorf("privacy plan: rounds %d: want at least 1", p.Rounds)
	case p.Cohort < 1:
		return fmt.Errorf("privacy plan: cohort %d: want at least 1", p.Cohort)
	case p.Population < p.Cohort:
		return fmt.Errorf("privacy plan: population %d smaller than the cohort %d", p.Population, p.Cohort)
	case math.IsNaN(p.Noise) || p.Noise <= 0:
		return fmt.Errorf("privacy plan: noise multiplier %v: want > 0", p.Noise)
	case math.IsNaN(p.Delta) || p.Delta <= 0 || p.Delta >= 1:
		return fmt.Errorf("privacy plan: delta %v: want in (0, 1)", p.Delta)
	}
	return nil
}

// PerRound is the RDP of one round as our cohorts are drawn: uniform
// without replacement, replace-one adjacency (sensitivity 2C).
func (p Plan) PerRound() RDP {
	base := GaussianRDP(2, p.Noise)
	if p.Discrete != nil {
		base = SkellamRDP(2*p.Discrete.L1, 2*p.Discrete.L2, p.Discrete.Mu)
	}
	return WithoutReplacementRDP(float64(p.Cohort)/float64(p.Population), base)
}

// Epsilon is the ε the whole plan spends, and the Rényi order that gave it.
func (p Plan) Epsilon() (float64, int) { return Epsilon(Compose(p.PerRound(), p.Rounds), p.Delta) }

// EpsilonAfter is the ε spent after r rounds.
func (p Plan) EpsilonAfter(r int) float64 {
	if r == 0 {
		return 0
	}
	e, _ := Epsilon(Compose(p.PerRound(), r), p.Delta)
	return e
}

// PoissonEpsilon is what the plan would spend if cohorts were Poisson
// samples with rate K/N under add/remove adjacency (MTZ 2019): shown for
// comparison only; OpenCluster does not sample this way.
func (p Plan) PoissonEpsilon() (float64, int) {
	return Epsilon(Compose(PoissonGaussianRDP(float64(p.Cohort)/float64(p.Population), p.Noise), p.Rounds), p.Delta)
}

// SkellamFor is the noise parameter each client adds under secure
// aggregation so that the sum carries noise multiplier z: the summed
// variance 2·Mu must equal (z·Δ2)² with Δ2 = params.Sensitivity(), and it
// is split over MinSurvivors (the fewest clients whose noise the server
// will ever unmask), so dropouts can only add noise, never remove it.
func SkellamFor(z float64, sensitivity float64, minSurvivors int) float64 {
	total := z * z * sensitivity * sensitivity / 2
	return total / float64(minSurvivors)
}

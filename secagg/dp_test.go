package secagg

import (
	"math"
	"testing"
)

// The TensorFlow Privacy MNIST tutorial's published table (tutorials/
// README.md there): 60,000 examples, batches of 256 (q = 256/60000),
// δ = 1e-5, steps = epochs·60000/256, Poisson-sampled Gaussian with the
// classic RDP conversion.
func TestPoissonAccountantMatchesPublishedTable(t *testing.T) {
	cases := []struct {
		z      float64
		epochs int
		eps    float64
	}{
		{1.12, 60, 2.92},
		{0.6, 30, 9.74},
		{1.2, 10, 1.20},
	}
	for _, c := range cases {
		steps := c.epochs * 60000 / 256
		eps, order := Epsilon(Compose(PoissonGaussianRDP(256.0/60000, c.z), steps), 1e-5)
		if math.Abs(eps-c.eps)/c.eps > 0.01 {
			t.Errorf("z=%v epochs=%d: ε = %.4f (order %d), published %.2f", c.z, c.epochs, eps, order, c.eps)
		}
	}
}

// An independent check of the binomial expansion: for α = 2 the sampled
// Gaussian's Rényi divergence E_mu0[(mu/mu0)^2] can be integrated
// numerically; the closed form must agree.
func TestPoissonRDPAgreesWithNumericalIntegral(t *testing.T) {
	for _, c := range []struct{ q, z float64 }{{0.01, 1}, {0.1, 0.8}, {0.5, 2}} {
		// D_2 = log ∫ mu(x)^2 / mu0(x) dx with mu = (1-q)N(0,z²) + qN(1,z²).
		var integral float64
		const h = 1e-3
		for x := -40.0; x <= 40; x += h {
			g0 := math.Exp(-x*x/(2*c.z*c.z)) / (c.z * math.Sqrt(2*math.Pi))
			g1 := math.Exp(-(x-1)*(x-1)/(2*c.z*c.z)) / (c.z * math.Sqrt(2*math.Pi))
			mu := (1-c.q)*g0 + c.q*g1
			if g0 > 0 {
				integral += mu * mu / g0 * h
			}
		}
		want := math.Log(integral)
		got := PoissonGaussianRDP(c.q, c.z)(2)
		if math.Abs(got-want) > 1e-6*math.Max(1, want) {
			t.Fatalf("q=%v z=%v: closed form %v, integral %v", c.q, c.z, got, want)
		}
	}
}

func TestWithoutReplacementBound(t *testing.T) {
	base := GaussianRDP(2, 1.0)
	// No sampling: unchanged.
	if got := WithoutReplacementRDP(1, base)(8); got != base(8) {
		t.Fatalf("γ=1: %v, want %v", got, base(8))
	}
	// Amplification: smaller γ, smaller RDP, and O(γ²) for small γ.
	prev := math.Inf(1)
	for _, g := range []float64{0.5, 0.1, 0.01, 0.001} {
		r := WithoutReplacementRDP(g, base)(4)
		if !(r < prev) || r > base(4) {
			t.Fatalf("γ=%v: %v not below %v", g, r, prev)
		}
		prev = r
	}
	r1 := WithoutReplacementRDP(0.001, base)(2)
	r2 := WithoutReplacementRDP(0.0005, base)(2)
	if ratio := r1 / r2; ratio < 3.9 || ratio > 4.1 {
		t.Fatalf("small-γ scaling %v, want ~4 (quadratic)", ratio)
	}
}

func TestSkellamApproachesGaussian(t *testing.T) {
	// With variance 2μ = σ², Skellam's RDP tends to the Gaussian's.
	sigma := 1000.0
	g := GaussianRDP(100, sigma)(10)
	s := SkellamRDP(100*30, 100, sigma*sigma/2)(10)
	if s < g || (s-g)/g > 0.01 {
		t.Fatalf("skellam %v, gaussian %v", s, g)
	}
}

// The Skellam bound must hold for the exact one-dimensional mechanism:
// D_α(Sk(μ) + 1 ‖ Sk(μ)) computed by summing the pmfs must not exceed it.
func TestSkellamBoundHoldsInOneDimension(t *testing.T) {
	for _, mu := range []float64{2, 10, 50} {
		pmf := skellamPMF(mu, 400)
		for _, alpha := range []int{2, 5, 20} {
			var s float64
			for k := -399; k <= 400; k++ {
				p, q := pmf[k+400-1], pmf[k+400] // P(X = k-1), P(X = k)
				if q > 0 && p > 0 {
					s += math.Exp(float64(alpha)*math.Log(p) + float64(1-alpha)*math.Log(q))
				}
			}
			exact := math.Log(s) / float64(alpha-1)
			bound := SkellamRDP(1, 1, mu)(alpha)
			if exact > bound {
				t.Fatalf("μ=%v α=%d: exact %v above the bound %v", mu, alpha, exact, bound)
			}
		}
	}
}

// skellamPMF returns P(X = k) for X = Pois(mu) - Pois(mu), k in -w..w
// (index k+w), by convolving truncated Poisson pmfs.
func skellamPMF(mu float64, w int) []float64 {
	pois := make([]float64, 2*w)
	for i := range pois {
		lg, _ := math.Lgamma(float64(i + 1))
		pois[i] = math.Exp(-mu + float64(i)*math.Log(mu) - lg)
	}
	out := make([]float64, 2*w+1)
	for k := -w; k <= w; k++ {
		var s float64
		for y := range pois {
			if x := k + y; x >= 0 && x < len(pois) {
				s += pois[x] * pois[y]
			}
		}
		out[k+w] = s
	}
	return out
}

func TestPlan(t *testing.T) {
	p := Plan{Rounds: 100, Cohort: 100, Population: 10000, Noise: 1.0, Delta: 1e-6}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	eps, _ := p.Epsilon()
	poisson, _ := p.PoissonEpsilon()
	if !(eps > poisson) {
		t.Fatalf("without replacement (replace-one) %v should cost more than Poisson (add/remove) %v", eps, poisson)
	}
	if a, b := p.EpsilonAfter(50), p.EpsilonAfter(100); !(a < b) || b != eps {
		t.Fatalf("ε after 50 = %v, after 100 = %v, plan %v", a, b, eps)
	}
	bad := p
	bad.Population = 10
	if bad.Validate() == nil {
		t.Fatal("population below cohort accepted")
	}
}

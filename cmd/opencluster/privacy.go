package main

import (
	"fmt"
	"math"

	"github.com/opencluster/opencluster/secagg"
	"github.com/spf13/cobra"
)

// newPrivacyCmd answers "what ε will this run spend?" before it starts.
// The accounting is secagg.Plan's; this only reads flags and prints.
func newPrivacyCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "privacy --rounds R --cohort K --population N --noise z --delta d",
		Short: "Print the (ε, δ) a DP-FedAvg run will spend, before it starts",
		Long: `Print the client-level (ε, δ) differential-privacy bound of a DP-FedAvg run:
R rounds, each drawing a cohort of K of N volunteers uniformly without
replacement (as the coordinator does), clipping each update to norm C and
adding noise of standard deviation z·C to the sum.

The bound that applies is Wang, Balle and Kasiviswanathan (2019) for
sampling without replacement, under replace-one adjacency, composed in
Rényi DP and converted with Mironov (2017). For comparison the command also
prints what Poisson-sampled cohorts (Mironov, Talwar and Zhang 2019,
add/remove adjacency) would spend; the coordinator does not sample that way.

With --secure-agg the noise is the clients' distributed Skellam noise in
the ring (--length masked values, --quant-bits per value, split over the
round's minimum survivors), accounted with the Skellam bound of Agarwal,
Kairouz and Liu (2021).`,
		Args: cobra.NoArgs,
		RunE: runPrivacy,
	}
	f := c.Flags()
	f.Int("rounds", 0, "rounds the run will take (required)")
	f.Int("cohort", 0, "volunteers per round, K (required)")
	f.Int("population", 0, "volunteers the cohort is drawn from, N (required)")
	f.Float64("noise", 0, "noise multiplier z: noise standard deviation over the clipping norm (required)")
	f.Float64("delta", 1e-6, "δ of the (ε, δ) guarantee; well below 1/N")
	f.Bool("secure-agg", false, "account the distributed Skellam noise of secure aggregation")
	f.Int("length", 0, "with --secure-agg: values masked per round (the random-k count)")
	f.Uint("quant-bits", 8, "with --secure-agg: bits per quantized value")
	return c
}

func init() { rootCmd.AddCommand(newPrivacyCmd()) }

func runPrivacy(cmd *cobra.Command, _ []string) error {
	fl := cmd.Flags()
	var p secagg.Plan
	p.Rounds, _ = fl.GetInt("rounds")
	p.Cohort, _ = fl.GetInt("cohort")
	p.Population, _ = fl.GetInt("population")
	p.Noise, _ = fl.GetFloat64("noise")
	p.Delta, _ = fl.GetFloat64("delta")
	if err := p.Validate(); err != nil {
		return fmt.Errorf("privacy: %w (see --help)", err)
	}
	secure, _ := fl.GetBool("secure-agg")
	mech := fmt.Sprintf("Gaussian noise z=%g added by the coordinator (no secure aggregation)", p.Noise)
	if secure {
		length, _ := fl.GetInt("length")
		qb, _ := fl.GetUint("quant-bits")
		if length < 1 {
			return fmt.Errorf("privacy: --secure-agg needs --length, the values masked per round")
		}
		if qb < 2 || qb > 24 {
			return fmt.Errorf("privacy: --quant-bits %d: want 2..24", qb)
		}
		// The same defaults the coordinator uses for a cohort of K.
		minSurv := max(secagg.DefaultThreshold(secagg.DefaultDegree(p.Cohort)), (2*p.Cohort+2)/3)
		l2 := float64(int64(1)<<(qb-1)-1) + math.Sqrt(float64(length))
		mu := secagg.SkellamFor(p.Noise, l2, minSurv)
		p.Discrete = &secagg.Skellam{L1: l2 * math.Sqrt(float64(length)), L2: l2, Mu: mu * float64(minSurv)}
		mech = fmt.Sprintf("distributed Skellam noise, μ=%.4g per client per value, z=%g once at least %d of %d survive", mu, p.Noise, minSurv, p.Cohort)
	}
	eps, order := p.Epsilon()
	pois, porder := p.PoissonEpsilon()
	out := cmd.OutOrStdout()
	fmt.Fprintf(out, "plan: %d rounds, cohort %d of %d (sampling rate %.4g), δ = %g\n", p.Rounds, p.Cohort, p.Population, float64(p.Cohort)/float64(p.Population), p.Delta)
	fmt.Fprintf(out, "mechanism: %s\n", mech)
	fmt.Fprintf(out, "ε = %.4g (Rényi order %d): uniform cohorts without replacement, replace-one adjacency (Wang, Balle, Kasiviswanathan 2019). This is the guarantee.\n", eps, order)
	fmt.Fprintf(out, "for comparison only: ε = %.4g (order %d) if cohorts were Poisson samples, add/remove adjacency (Mironov, Talwar, Zhang 2019); OpenCluster does not sample this way.\n", pois, porder)
	for _, r := range []int{1, p.Rounds / 4, p.Rounds / 2, 3 * p.Rounds / 4} {
		if r >= 1 && r < p.Rounds {
			fmt.Fprintf(out, "  after round %d: ε = %.4g\n", r, p.EpsilonAfter(r))
		}
	}
	fmt.Fprintf(out, "  after round %d: ε = %.4g\n", p.Rounds, eps)
	return nil
}

package coordinator

import (
	"fmt"
	"math"

	"github.com/opencluster/opencluster/compress"
	"github.com/opencluster/opencluster/coordinator/ledger"
)

// A ledger record describes the policy its round was aggregated under, so
// that recomputing it does not depend on the verifier's config: a
// coordinator restarted with another server learning rate, aggregator,
// norm bound or secure-aggregation setting still has every earlier round
// verify. Records written before this carry no "policy" option; they are
// recomputed under the verifier's config, as they always were
// (docs/protocol.md, "Recomputing a record").

// PolicyRecorded is the value of a record's "policy" option when its
// aggregation parameters hold every setting Recompute needs.
const PolicyRecorded = "recorded"

// recordedOptimizer and recordedPlain name the parameters a recorded
// record must carry (secure records: recordedOptimizer and "positions").
var (
	recordedOptimizer = []string{"elements", "lr", "momentum", "beta1", "beta2", "eps"}
	recordedPlain     = []string{"norm_bound", "norm_bound_factor", "trim_fraction", "late_weight", "max_tokens"}
)

// putPolicy adds to a the settings a record needs to be recomputed
// without the config: the marker, the optimizer kind and the adapter's
// element count (the other settings are already there).
func (c *Config) putPolicy(a ledger.Aggregation) ledger.Aggregation {
	a.Options["policy"] = PolicyRecorded
	a.Options["optimizer"] = c.Optimizer.Kind
	a.Params["elements"] = float64(c.N())
	return a
}

// roundPolicy is what recomputing one record needs: the round policy and
// the adapter's element count, plus for secure rounds the masked
// positions.
type roundPolicy struct {
	cfg       Config
	n         int
	positions int
}

// policyFor returns the policy rec's round ran under: the record's own
// settings when it says they are all there ("policy": "recorded"), else
// the verifier's cfg (a record from before records described their
// policy).
func (c Config) policyFor(rec ledger.Record) (roundPolicy, error) {
	a := rec.Aggregation
	secure := a.Options["secure_aggregation"] != ""
	pol := roundPolicy{cfg: c, n: c.N(), positions: c.secureLength()}
	switch a.Options["policy"] {
	case PolicyRecorded:
	case "":
		pol.cfg.NormBoundMax = 0 // older records had no cap
		return pol, nil
	default:
		return pol, fmt.Errorf("aggregation policy %q: this build knows %q (or none, for older records)", a.Options["policy"], PolicyRecorded)
	}
	p := &pol.cfg
	num := func(key string) float64 { return a.Params[key] }
	need := recordedOptimizer
	if secure {
		need = append(need, "positions")
	} else {
		need = append(need, recordedPlain...)
	}
	for _, k := range need {
		if _, ok := a.Params[k]; !ok {
			return pol, fmt.Errorf("the record says its policy is recorded, but its aggregation has no %q", k)
		}
	}
	for _, k := range []string{"optimizer", "aggregator", "norm_policy"} {
		if _, ok := a.Options[k]; !ok && (k == "optimizer" || !secure) {
			return pol, fmt.Errorf("the record says its policy is recorded, but its aggregation has no %q", k)
		}
	}
	whole := func(key string, lo, hi float64) (int64, error) {
		v := num(key)
		if v != math.Trunc(v) || v < lo || v > hi {
			return 0, fmt.Errorf("the record's %s = %v: want a whole number in [%v, %v]", key, v, lo, hi)
		}
		return int64(v), nil
	}
	n, err := whole("elements", 1, compress.MaxN)
	if err != nil {
		return pol, err
	}
	pol.n = int(n)
	p.Optimizer = ServerOptimizer{Kind: a.Options["optimizer"], LR: num("lr"), Momentum: num("momentum"),
		Beta1: num("beta1"), Beta2: num("beta2"), Eps: num("eps")}
	if err := p.Optimizer.Validate(); err != nil {
		return pol, fmt.Errorf("the record's optimizer: %w", err)
	}
	want := p.Optimizer.Kind
	if secure {
		pos, err := whole("positions", 1, float64(pol.n))
		if err != nil {
			return pol, err
		}
		pol.positions = int(pos)
		want = "secagg+" + want
	} else {
		p.Aggregator, p.NormPolicy = a.Options["aggregator"], a.Options["norm_policy"]
		p.NormBound, p.NormBoundFactor, p.TrimFraction, p.LateWeight = num("norm_bound"), num("norm_bound_factor"), num("trim_fraction"), num("late_weight")
		p.NormBoundMax = num("norm_bound_max") // absent (0) in records from before the cap existed
		mt, err := whole("max_tokens", 0, math.MaxInt64/2)
		if err != nil {
			return pol, err
		}
		p.Recipe.MaxTokens = mt
		if err := p.checkAggregation(); err != nil {
			return pol, fmt.Errorf("the record's policy: %w", err)
		}
		want = p.Aggregator + "+" + want
	}
	if a.Method != want {
		return pol, fmt.Errorf("the record's method %q does not match its stated policy (%s)", a.Method, want)
	}
	return pol, nil
}

// checkAggregation validates the settings of the aggregation rule: part
// of Validate, and what a policy read back from a record must satisfy.
func (c *Config) checkAggregation() error {
	bad := func(key string, v any, want string) error {
		return fmt.Errorf("%s = %v: want %s", key, v, want)
	}
	if math.IsNaN(c.LateWeight) || c.LateWeight <= 0 || c.LateWeight > 1 {
		return bad("late_weight", c.LateWeight, "in (0, 1]")
	}
	if math.IsNaN(c.NormBound) || math.IsInf(c.NormBound, 0) || c.NormBound < 0 {
		return bad("norm_bound", c.NormBound, "a finite bound > 0, or 0 for norm_bound_factor x the round's median norm")
	}
	if c.NormBound == 0 && (math.IsNaN(c.NormBoundFactor) || c.NormBoundFactor < 1 || c.NormBoundFactor > 1000) {
		return bad("norm_bound_factor", c.NormBoundFactor, "in [1, 1000] (with norm_bound 0 the bound is this times the round's median update norm)")
	}
	if math.IsNaN(c.NormBoundMax) || math.IsInf(c.NormBoundMax, 0) || c.NormBoundMax < 0 {
		return bad("norm_bound_max", c.NormBoundMax, "a finite cap > 0 on the adaptive bound, or 0 for none")
	}
	switch c.Aggregator {
	case AggFedAvg, AggTrimmedMean, AggMedian:
	default:
		return bad("aggregator", fmt.Sprintf("%q", c.Aggregator), fmt.Sprintf("%q, %q or %q", AggFedAvg, AggTrimmedMean, AggMedian))
	}
	if math.IsNaN(c.TrimFraction) || c.TrimFraction < 0 || c.TrimFraction >= 0.5 {
		return bad("trim_fraction", c.TrimFraction, "in [0, 0.5)")
	}
	if c.NormPolicy != NormClip && c.NormPolicy != NormReject {
		return bad("norm_policy", fmt.Sprintf("%q", c.NormPolicy), `"clip" or "reject"`)
	}
	return nil
}

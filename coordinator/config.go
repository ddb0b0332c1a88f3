package coordinator

import (
	"crypto/ed25519"
	"fmt"
	"math"
	"time"

	"github.com/opencluster/opencluster/compress"
	"github.com/opencluster/opencluster/protocol"
)

// Late-update policies.
const (
	LateReject     = "reject"     // an update after the deadline or for the last round is refused (409)
	LateDownweight = "downweight" // it is aggregated with its weight times LateWeight
)

// Norm-bound policies.
const (
	NormClip   = "clip"   // an update over the bound is scaled down to it
	NormReject = "reject" // it is refused (422)
)

// Short-round policies: what happens at a deadline with fewer than
// MinUpdates accepted updates.
const (
	ShortExtend  = "extend"  // push the deadline out (up to MaxExtensions times), then restart
	ShortRestart = "restart" // re-pick the cohort's missing members and reset the deadline
)

// Config is the round policy. The YAML keys (configs/coordinator.yaml)
// are the mapstructure tags.
type Config struct {
	// Model names the base model (a configs/ preset or a Hugging Face id).
	Model string `mapstructure:"model" json:"model"`
	// Shapes is the adapter's tensor table; their sizes sum to N.
	Shapes []protocol.Shape `mapstructure:"shapes" json:"shapes"`
	// Seed is the master seed; each round's seed derives from it and the
	// round id, so cohorts are reproducible.
	Seed uint64 `mapstructure:"seed" json:"seed"`
	// CohortSize is n: workers picked per round (fewer when fewer are available).
	CohortSize int `mapstructure:"cohort_size" json:"cohort_size"`
	// Quorum is k: the round closes as soon as k updates are accepted
	// (0: the whole cohort).
	Quorum int `mapstructure:"quorum" json:"quorum"`
	// MinWorkers is how many available workers a round waits for before
	// picking its cohort.
	MinWorkers int `mapstructure:"min_workers" json:"min_workers"`
	// MinUpdates is how many accepted updates a round needs at its deadline
	// to be aggregated.
	MinUpdates int `mapstructure:"min_updates" json:"min_updates"`
	// RoundTimeout is the time from picking the cohort to the deadline.
	RoundTimeout time.Duration `mapstructure:"round_timeout" json:"round_timeout"`
	// SeenWithin: a worker is available when it polled or registered this
	// recently.
	SeenWithin time.Duration `mapstructure:"seen_within" json:"seen_within"`
	// ShortRound is ShortExtend or ShortRestart; MaxExtensions bounds
	// extend, after which the round restarts (see Coordinator.restart).
	ShortRound    string `mapstructure:"short_round" json:"short_round"`
	MaxExtensions int    `mapstructure:"max_extensions" json:"max_extensions"`
	// MaxNewPerCohort caps the newcomers (workers without an accepted
	// update yet) in one cohort; the other seats go to workers that have
	// contributed, so a flood of fresh keys cannot take every seat
	// (0: no cap, one uniform pick). With a cap, a cohort may be smaller
	// than CohortSize; the cap must reach MinUpdates so a new run's first
	// round can close.
	MaxNewPerCohort int `mapstructure:"max_new_per_cohort" json:"max_new_per_cohort"`
	// Probation is how long after registering a key becomes eligible for
	// a cohort (0: at once).
	Probation time.Duration `mapstructure:"probation" json:"probation"`
	// ForgetAfter deletes workers not seen for this long that never sent
	// an update (0: never).
	ForgetAfter time.Duration `mapstructure:"forget_after" json:"forget_after"`
	// MaxRounds stops opening rounds after this round id (0: never stop).
	MaxRounds uint64 `mapstructure:"max_rounds" json:"max_rounds"`
	// Recipe is the local training every round asks for. It has no
	// mapstructure key because protocol.Recipe's fields lack the file's
	// snake_case names: config loaders decode Recipe (below) and convert.
	Recipe protocol.Recipe `mapstructure:"-" json:"recipe"`
	// Late is LateReject or LateDownweight. With LateDownweight a round
	// short of its quorum at the deadline stays open LateGrace longer and
	// updates in that window count with weight times LateWeight (0, 1].
	Late       string        `mapstructure:"late" json:"late"`
	LateWeight float64       `mapstructure:"late_weight" json:"late_weight"`
	LateGrace  time.Duration `mapstructure:"late_grace" json:"late_grace"`
	// NormBound is a fixed per-update L2 norm bound; 0 (the default) makes
	// the bound adaptive: NormBoundFactor times the median L2 norm of the
	// round's updates and the previous rounds' reference (normBound).
	// There is no unbounded setting. NormPolicy is NormClip or NormReject.
	NormBound       float64 `mapstructure:"norm_bound" json:"norm_bound"`
	NormBoundFactor float64 `mapstructure:"norm_bound_factor" json:"norm_bound_factor"`
	NormPolicy      string  `mapstructure:"norm_policy" json:"norm_policy"`
	// NormBoundMax caps the adaptive bound (0: no cap). The adaptive
	// bound counts the previous rounds' accepted median norm as one more
	// norm, so a round's only update cannot set its own bound; the cap
	// also covers the first round, which has no reference yet.
	NormBoundMax float64 `mapstructure:"norm_bound_max" json:"norm_bound_max"`
	// Aggregator combines the bounded deltas: AggFedAvg, AggTrimmedMean
	// (dropping TrimFraction of the values at each end, per coordinate)
	// or AggMedian.
	Aggregator   string  `mapstructure:"aggregator" json:"aggregator"`
	TrimFraction float64 `mapstructure:"trim_fraction" json:"trim_fraction"`
	// Optimizer is the server optimizer.
	Optimizer ServerOptimizer `mapstructure:"optimizer" json:"optimizer"`
	// MaxUpdateBytes is the largest update body accepted.
	MaxUpdateBytes int64 `mapstructure:"max_update_bytes" json:"max_update_bytes"`
	// SecureAgg switches rounds to secure aggregation and, optionally,
	// differential privacy (secure.go, docs/privacy.md).
	SecureAgg SecureAgg `mapstructure:"secure_agg" json:"secure_agg"`
}

// Recipe is protocol.Recipe with the config file's key names; the two
// convert to each other.
type Recipe struct {
	Steps       int     `mapstructure:"steps" json:"steps"`
	LR          float64 `mapstructure:"lr" json:"lr"`
	BatchTokens int     `mapstructure:"batch_tokens" json:"batch_tokens"`
	MaxTokens   int64   `mapstructure:"max_tokens" json:"max_tokens"`
	Codec       string  `mapstructure:"codec" json:"codec"`
	Momentum    float32 `mapstructure:"momentum" json:"momentum"`
}

// DefaultConfig is a small, quick policy: what configs/coordinator.yaml
// spells out.
func DefaultConfig() Config {
	return Config{
		Model:         "tiny",
		Seed:          1,
		CohortSize:    4,
		MinWorkers:    1,
		MinUpdates:    1,
		RoundTimeout:  5 * time.Minute,
		SeenWithin:    2 * time.Minute,
		ShortRound:    ShortExtend,
		MaxExtensions: 2,
		Recipe: protocol.Recipe{Steps: 20, LR: 1e-2, BatchTokens: 2048, MaxTokens: 1 << 20,
			Codec: "topk:0.01+int8:256", Momentum: 0.9},
		Late:       LateReject,
		LateWeight: 0.5,
		LateGrace:  time.Minute,
		NormPolicy: NormClip,
		// 3x the median: in `make demo` the largest honest update of a
		// round is under 1.5x the median; a hostile one is cut to 3x.
		NormBoundFactor: 3,
		Aggregator:      AggFedAvg,
		TrimFraction:    0.2,
		ForgetAfter:     7 * 24 * time.Hour,
		Optimizer:       ServerOptimizer{Kind: OptFedAvg, LR: 1, Momentum: 0.9, Beta1: 0.9, Beta2: 0.99, Eps: 1e-3},
		MaxUpdateBytes:  64 << 20,
		SecureAgg:       DefaultSecureAgg(),
	}
}

// N is the adapter's element count: the sum over Shapes of the products
// of their dims.
func (c *Config) N() int {
	n := 0
	for _, s := range c.Shapes {
		p := 1
		for _, d := range s.Dims {
			p *= d
		}
		n += p
	}
	return n
}

// Validate names the first bad key.
func (c *Config) Validate() error {
	bad := func(key string, v any, want string) error {
		return fmt.Errorf("coordinator config: %s = %v: want %s", key, v, want)
	}
	if c.Model == "" {
		return bad("model", `""`, "a model name")
	}
	if len(c.Shapes) == 0 || len(c.Shapes) > protocol.MaxShapes {
		return bad("shapes", len(c.Shapes), fmt.Sprintf("1..%d tensors", protocol.MaxShapes))
	}
	seen := map[string]bool{}
	total := 0
	for i, s := range c.Shapes {
		if s.Name == "" || len(s.Name) > protocol.MaxNameLen || seen[s.Name] {
			return bad(fmt.Sprintf("shapes[%d].name", i), fmt.Sprintf("%q", s.Name), "a unique name of 1..255 bytes")
		}
		seen[s.Name] = true
		if len(s.Dims) == 0 || len(s.Dims) > protocol.MaxDims {
			return bad(fmt.Sprintf("shapes[%d].dims", i), s.Dims, "1..8 dims")
		}
		p := 1
		for _, d := range s.Dims {
			if d < 1 || p > compress.MaxN/d {
				return bad(fmt.Sprintf("shapes[%d].dims", i), s.Dims, "dims >= 1 with a product that fits")
			}
			p *= d
		}
		if total > compress.MaxN-p {
			return bad("shapes", "", fmt.Sprintf("at most %d elements in all", compress.MaxN))
		}
		total += p
	}
	if c.CohortSize < 1 {
		return bad("cohort_size", c.CohortSize, ">= 1")
	}
	if c.Quorum < 0 || c.Quorum > c.CohortSize {
		return bad("quorum", c.Quorum, fmt.Sprintf("0..cohort_size (%d)", c.CohortSize))
	}
	if c.MinUpdates < 1 || c.MinUpdates > c.CohortSize {
		return bad("min_updates", c.MinUpdates, fmt.Sprintf("1..cohort_size (%d)", c.CohortSize))
	}
	if c.Quorum > 0 && c.Quorum < c.MinUpdates {
		return bad("quorum", c.Quorum, fmt.Sprintf(">= min_updates (%d) or 0", c.MinUpdates))
	}
	if c.MinWorkers < c.MinUpdates {
		return bad("min_workers", c.MinWorkers, fmt.Sprintf(">= min_updates (%d)", c.MinUpdates))
	}
	if c.RoundTimeout <= 0 {
		return bad("round_timeout", c.RoundTimeout, "> 0")
	}
	if c.SeenWithin <= 0 {
		return bad("seen_within", c.SeenWithin, "> 0")
	}
	if c.ShortRound != ShortExtend && c.ShortRound != ShortRestart {
		return bad("short_round", fmt.Sprintf("%q", c.ShortRound), `"extend" or "restart"`)
	}
	if c.MaxNewPerCohort < 0 || (c.MaxNewPerCohort > 0 && c.MaxNewPerCohort < c.MinUpdates) {
		return bad("max_new_per_cohort", c.MaxNewPerCohort, fmt.Sprintf("0 (no cap) or >= min_updates (%d), so a new run's first round can close", c.MinUpdates))
	}
	if c.Probation < 0 {
		return bad("probation", c.Probation, ">= 0")
	}
	if c.ForgetAfter != 0 && c.ForgetAfter <= max(c.SeenWithin, c.Probation) {
		return bad("forget_after", c.ForgetAfter, fmt.Sprintf("0 (never) or longer than seen_within (%v) and probation (%v)", c.SeenWithin, c.Probation))
	}
	if c.MaxExtensions < 0 {
		return bad("max_extensions", c.MaxExtensions, ">= 0")
	}
	r := c.Recipe
	if r.Steps < 1 {
		return bad("recipe.steps", r.Steps, ">= 1")
	}
	if math.IsNaN(r.LR) || math.IsInf(r.LR, 0) || r.LR <= 0 {
		return bad("recipe.lr", r.LR, "> 0")
	}
	if r.BatchTokens < 1 {
		return bad("recipe.batch_tokens", r.BatchTokens, ">= 1")
	}
	if r.MaxTokens < 0 {
		return bad("recipe.max_tokens", r.MaxTokens, ">= 0 (0: no budget)")
	}
	codec, err := compress.Parse(r.Codec)
	if err != nil {
		return fmt.Errorf("coordinator config: recipe.codec: %w", err)
	}
	c.Recipe.Codec = codec.String() // canonical, as updates carry it
	if math.IsNaN(float64(r.Momentum)) || r.Momentum < 0 || r.Momentum >= 1 {
		return bad("recipe.momentum", r.Momentum, "in [0, 1)")
	}
	if c.Late != LateReject && c.Late != LateDownweight {
		return bad("late", fmt.Sprintf("%q", c.Late), `"reject" or "downweight"`)
	}
	if c.LateGrace < 0 {
		return bad("late_grace", c.LateGrace, ">= 0")
	}
	if err := c.checkAggregation(); err != nil {
		return fmt.Errorf("coordinator config: %w", err)
	}
	if err := c.Optimizer.Validate(); err != nil {
		return fmt.Errorf("coordinator config: optimizer: %w", err)
	}
	if c.MaxUpdateBytes < 1024 {
		return bad("max_update_bytes", c.MaxUpdateBytes, ">= 1024")
	}
	return c.SecureAgg.validate(c)
}

func encodeKey(pub ed25519.PublicKey) string { return protocol.EncodePublicKey(pub) }

func parseKey(s string) (ed25519.PublicKey, error) { return protocol.ParsePublicKey(s) }

// Admission says who may register (the coordinator config's admission
// section). Every check applies to each registration, a returning key's
// too.
type Admission struct {
	// JoinTokens, when any are set, are the operator's join tokens: a
	// registration must carry one of them (RegisterRequest.JoinToken).
	JoinTokens []string `mapstructure:"join_tokens" json:"-"`
	// AllowKeys, when any are set, are the only worker keys
	// ("ed25519:<base64>") that may register.
	AllowKeys []string `mapstructure:"allow_keys" json:"allow_keys"`
	// PoWBits asks each registration for a proof of work with this many
	// leading zero bits (protocol.PoWZeroBits; 0: none, at most
	// protocol.MaxPoWBits). 20 bits cost a worker about a second.
	PoWBits int `mapstructure:"pow_bits" json:"pow_bits"`
}

// minTokenLen keeps join tokens out of guessing range.
const minTokenLen = 16

// Validate names the first bad key.
func (a Admission) Validate() error {
	for i, t := range a.JoinTokens {
		if len(t) < minTokenLen {
			return fmt.Errorf("coordinator config: admission.join_tokens[%d]: %d characters, want at least %d (make one with: openssl rand -hex 16)", i, len(t), minTokenLen)
		}
	}
	for i, k := range a.AllowKeys {
		if _, err := protocol.ParsePublicKey(k); err != nil {
			return fmt.Errorf("coordinator config: admission.allow_keys[%d]: %w", i, err)
		}
	}
	if a.PoWBits < 0 || a.PoWBits > protocol.MaxPoWBits {
		return fmt.Errorf("coordinator config: admission.pow_bits = %d: want 0..%d", a.PoWBits, protocol.MaxPoWBits)
	}
	return nil
}

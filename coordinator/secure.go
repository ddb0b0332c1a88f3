package coordinator

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/opencluster/opencluster/coordinator/ledger"
	"github.com/opencluster/opencluster/protocol"
	"github.com/opencluster/opencluster/secagg"
)

// Secure aggregation in the coordinator (docs/privacy.md). With
// secure_agg.enabled, a round's collecting phase is the four SecAgg+ stages
// of package secagg instead of plain uploads: the coordinator relays keys
// and encrypted shares it cannot read, stores the masked vectors, and learns
// only the sum of the survivors' clipped, quantized updates on the round's
// shared random-k positions. Norm bounds become the clipping bound the
// workers apply before masking (the coordinator cannot see a norm); the
// per-update robust aggregators do not apply, since there is no per-update
// value to trim.
//
// The stage state lives in memory. A round whose stages cannot finish (too
// few survivors, a stage timeout, a coordinator restart mid-stage) fails
// cleanly, reveals nothing, and is retried as a new attempt with a newly
// picked cohort. Once the survivors' masks are removed, the whole transcript
// (params and every accepted message) is stored as a blob before anything
// else, so a crash from then on re-derives the same sum from it.

// SecureAgg configures secure aggregation and differential privacy.
type SecureAgg struct {
	// Enabled switches every round to secure aggregation.
	Enabled bool `mapstructure:"enabled" json:"enabled"`
	// Fraction is the share of the adapter's entries masked and sent per
	// round: the shared-seed random-k positions, the same for the whole
	// cohort (indices that differ per worker would not mix with masking).
	Fraction float64 `mapstructure:"fraction" json:"fraction"`
	// Clip is the L2 norm each worker clips its update to before
	// quantizing (the sensitivity C of the DP analysis).
	Clip float64 `mapstructure:"clip" json:"clip"`
	// QuantBits is the bits per quantized value before the ring's headroom
	// for the cohort sum is added (secagg.Bits).
	QuantBits uint `mapstructure:"quant_bits" json:"quant_bits"`
	// Dropout is the fraction of a cohort that may vanish mid-round: the
	// neighbour graph's degree is sized so a round fails for lack of shares
	// less than once in a thousand at that rate (secagg.DegreeFor).
	Dropout float64 `mapstructure:"dropout" json:"dropout"`
	// StageTimeout bounds the short stages (advertise, share keys,
	// unmask); the masked input is due round_timeout after the keys.
	StageTimeout time.Duration `mapstructure:"stage_timeout" json:"stage_timeout"`
	// NoiseMultiplier z > 0 turns on client-level DP-FedAvg: every worker
	// adds Skellam noise so that the sum of the MinSurvivors fewest
	// survivors carries noise of standard deviation z times the clipping
	// bound. 0: no differential privacy.
	NoiseMultiplier float64 `mapstructure:"noise_multiplier" json:"noise_multiplier"`
	// Delta is the δ of the (ε, δ) guarantee.
	Delta float64 `mapstructure:"delta" json:"delta"`
	// EpsilonBudget: the coordinator refuses to open a round that would
	// take the ε spent past it (0: no budget, ε is still recorded).
	EpsilonBudget float64 `mapstructure:"epsilon_budget" json:"epsilon_budget"`
}

// DefaultSecureAgg is off, with the settings it would use when switched on.
func DefaultSecureAgg() SecureAgg {
	return SecureAgg{Fraction: 0.05, Clip: 1, QuantBits: 8, Dropout: secagg.DefaultDropout, StageTimeout: time.Minute, Delta: 1e-6}
}

func (s SecureAgg) validate(c *Config) error {
	bad := func(key string, v any, want string) error {
		return fmt.Errorf("coordinator config: secure_agg.%s = %v: want %s", key, v, want)
	}
	if math.IsNaN(s.Fraction) || s.Fraction <= 0 || s.Fraction > 1 {
		return bad("fraction", s.Fraction, "in (0, 1]")
	}
	if math.IsNaN(s.Clip) || math.IsInf(s.Clip, 0) || s.Clip <= 0 {
		return bad("clip", s.Clip, "> 0")
	}
	if s.QuantBits < 2 || s.QuantBits > 16 {
		return bad("quant_bits", s.QuantBits, "2..16")
	}
	if math.IsNaN(s.Dropout) || s.Dropout < 0 || s.Dropout > 0.4 {
		return bad("dropout", s.Dropout, "in [0, 0.4]")
	}
	if s.StageTimeout <= 0 {
		return bad("stage_timeout", s.StageTimeout, "> 0")
	}
	if math.IsNaN(s.NoiseMultiplier) || s.NoiseMultiplier < 0 || s.NoiseMultiplier > 1000 {
		return bad("noise_multiplier", s.NoiseMultiplier, "0 (no DP) or a noise multiplier up to 1000")
	}
	if math.IsNaN(s.Delta) || s.Delta <= 0 || s.Delta >= 1 {
		return bad("delta", s.Delta, "in (0, 1)")
	}
	if math.IsNaN(s.EpsilonBudget) || s.EpsilonBudget < 0 {
		return bad("epsilon_budget", s.EpsilonBudget, ">= 0 (0: no budget)")
	}
	if s.NoiseMultiplier > 0 && !s.Enabled {
		return bad("noise_multiplier", s.NoiseMultiplier, "0 unless secure_agg.enabled: the noise is the workers' distributed noise, which only secure aggregation keeps from the coordinator")
	}
	if s.Enabled {
		if c.CohortSize < 2 || c.CohortSize > secagg.MaxCohort {
			return bad("enabled", true, fmt.Sprintf("a cohort_size of 2..%d (it is %d)", secagg.MaxCohort, c.CohortSize))
		}
		if _, err := secagg.Bits(c.CohortSize, s.QuantBits, 0); err != nil {
			return fmt.Errorf("coordinator config: secure_agg: %w", err)
		}
	}
	return nil
}

// BlobSecAgg is a stored secure-aggregation transcript.
const BlobSecAgg = "secagg"

// secNote marks a secure round that unmasked: its transcript blob's hash
// follows, so aggregation after a crash re-derives the same sum.
const secNote = "secagg transcript "

// secRound is the in-memory state of a secure round's current attempt.
type secRound struct {
	params    *secagg.Params
	srv       *secagg.Server
	ids       []string // cohort in params order
	index     map[string]int
	deadline  time.Time // of the current stage
	available int       // workers the cohort was drawn from (DP accounting)
	changed   chan struct{}
}

func (s *secRound) notify() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// statusCodec is the update encoding /v1/status reports.
func (c *Config) statusCodec() string {
	if c.SecureAgg.Enabled {
		return "secagg: randk:" + strconv.FormatFloat(c.SecureAgg.Fraction, 'g', -1, 64) + ", " + strconv.Itoa(int(c.SecureAgg.QuantBits)) + "-bit values in a ring"
	}
	return c.Recipe.Codec
}

// secureLength is the number of positions masked per round.
func (c *Config) secureLength() int {
	return min(c.N(), max(1, int(math.Round(c.SecureAgg.Fraction*float64(c.N())))))
}

// openSecure starts the secure attempt for round r, whose cohort is set.
func (c *Coordinator) openSecure(ctx context.Context, r Round, available int) error {
	keys := make([]ed25519.PublicKey, len(r.Cohort))
	for i, id := range r.Cohort {
		w, err := c.store.Worker(ctx, id)
		if err != nil {
			return err
		}
		keys[i] = w.PublicKey
	}
	sa := c.cfg.SecureAgg
	p, err := secagg.NewParams(r.ID, r.Seed+uint64(r.Extensions), keys, c.cfg.secureLength(), sa.Clip, sa.QuantBits, 0)
	if err != nil {
		return err
	}
	p.Attempt = uint32(r.Extensions)
	if err := p.Tolerate(sa.Dropout); err != nil {
		return err
	}
	if sa.NoiseMultiplier > 0 {
		p.NoiseMu = secagg.SkellamFor(sa.NoiseMultiplier, p.Sensitivity(), p.MinSurvivors)
		if p.Bits, err = secagg.Bits(len(keys), p.QuantBits, p.NoiseMu); err != nil {
			return err
		}
	}
	srv, err := secagg.NewServer(p)
	if err != nil {
		return err
	}
	s := &secRound{params: p, srv: srv, ids: slices.Clone(r.Cohort), index: map[string]int{}, available: available,
		deadline: c.clock.Now().Add(sa.StageTimeout), changed: make(chan struct{})}
	for i, id := range s.ids {
		s.index[id] = i
	}
	c.sec = s
	c.log.Info("coordinator: secure aggregation attempt open", "round", r.ID, "attempt", p.Attempt, "cohort", len(keys),
		"degree", p.Degree, "threshold", p.Threshold, "min_survivors", p.MinSurvivors, "length", p.Length, "ring_bits", p.Bits)
	return nil
}

// failSecure ends the current attempt without revealing anything and
// sends the round back to cohort selection as a new attempt.
func (c *Coordinator) failSecure(ctx context.Context, why error) error {
	r := c.cur
	r.State, r.Cohort = StateOpen, nil
	r.Extensions++
	r.Note = ledgerReason(fmt.Sprintf("secure aggregation attempt %d failed: %v", r.Extensions-1, why))
	if err := c.store.UpdateRound(ctx, r); err != nil {
		return err
	}
	if c.sec != nil {
		c.sec.notify()
	}
	c.sec = nil
	c.cohort = map[string]bool{}
	c.cur = r
	c.notify()
	c.ev.roundChanged(r)
	c.M.roundsFailed.Add(1)
	c.log.Warn("coordinator: secure aggregation attempt failed; nothing was unmasked; retrying with a new cohort", "round", r.ID, "attempt", r.Extensions-1, "why", why)
	return nil
}

// stepSecure advances a collecting secure round: it closes a stage when
// everyone expected has answered or its deadline passed, and after the
// unmask stage removes the masks and aggregates.
func (c *Coordinator) stepSecure(ctx context.Context, now time.Time) (bool, error) {
	s := c.sec
	if s == nil || s.params.Round != c.cur.ID || s.params.Attempt != uint32(c.cur.Extensions) {
		// The coordinator restarted mid-stage: the keys and shares of the
		// attempt were in memory only. Nothing was unmasked; retry.
		return true, c.failSecure(ctx, errors.New("the coordinator restarted during the stages"))
	}
	st := s.srv.Stage()
	expected := len(s.ids)
	if st > secagg.StageAdvertise {
		expected = len(s.srv.Completed(st - 1))
	}
	if len(s.srv.Completed(st)) < expected && now.Before(s.deadline) {
		return false, nil
	}
	if err := s.srv.Close(); err != nil {
		return true, c.failSecure(ctx, err)
	}
	if st < secagg.StageUnmask {
		timeout := c.cfg.SecureAgg.StageTimeout
		if st+1 == secagg.StageMasked {
			timeout = c.cfg.RoundTimeout // the workers train now
		}
		s.deadline = now.Add(timeout)
		r := c.cur
		r.Deadline = s.deadline
		c.cur = r
		s.notify()
		c.log.Info("coordinator: secure stage closed", "round", r.ID, "stage", st, "completed", len(s.srv.Completed(st)), "of", expected)
		return true, nil
	}
	if c.beforeUnmask != nil {
		c.beforeUnmask(c.cur.ID)
	}
	if _, _, err := s.srv.Finish(); err != nil {
		return true, c.failSecure(ctx, err)
	}
	tb, err := s.srv.ServerTranscript().MarshalBinary()
	if err != nil {
		return false, err
	}
	hash, err := c.putBlob(ctx, BlobSecAgg, tb)
	if err != nil {
		return false, err
	}
	s.notify()
	return true, c.aggregateSecure(ctx, secNote+hash)
}

// aggregateSecure closes a secure round from its stored transcript: the
// sum it unmasks to, decoded and averaged over the survivors, placed on the
// round's positions, then the server optimizer step and the ledger record
// with the stage transcript hashes and the privacy spent.
func (c *Coordinator) aggregateSecure(ctx context.Context, note string) error {
	started := time.Now()
	if err := c.markAggregating(ctx, note); err != nil {
		return err
	}
	r := c.cur
	hash := strings.TrimPrefix(note, secNote)
	tb, err := c.blobs.get(hash)
	if err != nil {
		return fmt.Errorf("coordinator: round %d: secure aggregation transcript: %w", r.ID, err)
	}
	res, err := unmaskTranscript(tb, c.n, c.cfg.secureLength())
	if err != nil {
		return fmt.Errorf("coordinator: round %d: %w", r.ID, err)
	}
	theta := slices.Clone(c.adapter)
	opt := c.opt.clone()
	result, newHash, optHash := "ok", r.BaseAdapter, c.optHash
	if err := c.cfg.Optimizer.Step(theta, res.mean, &opt); err != nil {
		result = ledgerReason("failed: " + err.Error())
		theta, opt = c.adapter, c.opt
		c.M.roundsFailed.Add(1)
	} else if newHash, optHash, err = c.publish(ctx, theta, &opt); err != nil {
		return err
	}
	entries := c.secureEntries(res)
	agg := c.cfg.secureAggregation(c.optHash, optHash, hash, res, result)
	if c.cfg.SecureAgg.NoiseMultiplier > 0 {
		avail := 0
		if c.sec != nil && c.sec.params.Round == r.ID {
			avail = c.sec.available
		}
		if avail == 0 {
			avail = len(r.Cohort) // resumed after a crash: the rate can only be overstated
		}
		dp := c.roundDP(res.tr.Params, avail)
		eps := c.epsilonWith(&dp)
		dp.put(agg.Params)
		agg.Params["epsilon_spent"] = eps
		agg.Params["epsilon_budget"] = c.cfg.SecureAgg.EpsilonBudget
		agg.Params["dp_delta"] = c.cfg.SecureAgg.Delta
		agg.Params["dp_noise_multiplier"] = c.cfg.SecureAgg.NoiseMultiplier
	}
	// The survivors' masked inputs count as contributions (admission's
	// newcomer cap, the dashboard), as accepted updates do in plain rounds.
	var ups []UpdateRecord
	for _, e := range entries {
		if !e.Accepted {
			continue
		}
		u := UpdateRecord{Round: r.ID, Applied: r.ID, WorkerID: e.WorkerID, SHA256: e.UpdateHash, Nonce: e.UpdateHash, Bytes: e.Bytes,
			Tokens: e.Tokens, FLOPs: e.FLOPs, EnergyWh: e.EnergyWh, Weight: 1, Accepted: true, Received: c.clock.Now(), Signature: e.Signature}
		if err := c.store.AddUpdate(ctx, u); err != nil && !errors.Is(err, ErrDuplicate) && !errors.Is(err, ErrReplay) {
			return err
		}
		ups = append(ups, u)
	}
	c.sec = nil
	return c.closeRound(ctx, r, closing{why: "secure aggregation", result: result, newHash: newHash, optHash: optHash, theta: theta, opt: opt,
		agg: agg, entries: entries, ups: ups, started: started}, "survivors", res.count, "positions", res.tr.Params.Length)
}

// unmasked is a transcript replayed: the sum, and what goes on the ledger.
type unmasked struct {
	tr     *secagg.Transcript
	sum    []uint32
	count  int
	stages [secagg.NumStages][32]byte
	mean   []float32 // dense: the survivors' mean on the positions
	// claims are each survivor's claims from its signed masked input, by
	// cohort index.
	claims map[int]secagg.Claims
}

// unmaskTranscript replays a stored transcript (secagg.Recompute) and
// turns the sum into the mean update on the round's positions: length of
// an adapter of n elements.
func unmaskTranscript(b []byte, n, length int) (*unmasked, error) {
	var tr secagg.Transcript
	if err := tr.UnmarshalBinary(b); err != nil {
		return nil, err
	}
	if tr.Params.Length != length {
		return nil, fmt.Errorf("secure aggregation transcript masks %d positions, the round's policy (secure_agg.fraction) gives %d", tr.Params.Length, length)
	}
	srv, err := secagg.NewServer(tr.Params)
	if err != nil {
		return nil, err
	}
	for st, msgs := range tr.Stages {
		for i, m := range msgs {
			if err := srv.Receive(m); err != nil {
				return nil, fmt.Errorf("stored stage %d message %d: %w", st+1, i, err)
			}
		}
		if err := srv.Close(); err != nil {
			return nil, err
		}
	}
	sum, count, err := srv.Finish()
	if err != nil {
		return nil, err
	}
	u := &unmasked{tr: &tr, sum: sum, count: count, mean: make([]float32, n), claims: map[int]secagg.Claims{}}
	for _, i := range srv.Survivors() {
		u.claims[i], _ = srv.Claims(i)
	}
	for st := range u.stages {
		u.stages[st] = srv.Transcript(st + 1)
	}
	vals := tr.Params.Decode(sum)
	for i, pos := range secagg.Positions(tr.Params.Seed, n, tr.Params.Length) {
		u.mean[pos] = vals[i] / float32(count)
	}
	return u, nil
}

func sumHash(sum []uint32) string {
	b := make([]byte, 0, 4*len(sum))
	for _, v := range sum {
		b = binary.LittleEndian.AppendUint32(b, v)
	}
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// secureAggregation is the ledger's description of a secure round.
func (c *Config) secureAggregation(optBefore, optAfter, transcript string, u *unmasked, result string) ledger.Aggregation {
	o, p := c.Optimizer, u.tr.Params
	ph := p.Hash()
	a := c.putPolicy(ledger.Aggregation{Method: "secagg+" + o.Kind,
		Params: map[string]float64{"lr": o.LR, "momentum": o.Momentum, "beta1": o.Beta1, "beta2": o.Beta2, "eps": o.Eps,
			"clip": p.Clip, "quant_bits": float64(p.QuantBits), "ring_bits": float64(p.Bits), "positions": float64(p.Length),
			"degree": float64(p.Degree), "threshold": float64(p.Threshold), "min_survivors": float64(p.MinSurvivors),
			"survivors": float64(u.count), "attempt": float64(p.Attempt), "noise_mu": p.NoiseMu},
		Options: map[string]string{"secure_aggregation": "secagg+ v1", "weighting": "uniform", "codec": "randk:" + strconv.FormatFloat(c.SecureAgg.Fraction, 'g', -1, 64) + "+ring",
			"secagg_transcript": transcript, "secagg_params": hex.EncodeToString(ph[:]), "secagg_sum": sumHash(u.sum),
			"opt_state_before": optBefore, "opt_state_after": optAfter, "result": result}})
	for st, h := range u.stages {
		a.Options["secagg_stage"+strconv.Itoa(st+1)] = hex.EncodeToString(h[:])
	}
	return a
}

// secureEntries lists every cohort member on the record: the survivors'
// masked vectors as accepted entries (hash, size and signature of the
// signed stage-3 message: the worker's proof of what it sent, and the
// tokens, FLOPs and energy it claims in it), and those that dropped out
// with the last stage they completed.
func (c *Coordinator) secureEntries(u *unmasked) []ledger.UpdateEntry {
	var out []ledger.UpdateEntry
	for _, e := range transcriptEntries(u) {
		i := e.index
		id := ""
		if c.sec != nil && i < len(c.sec.ids) {
			id = c.sec.ids[i]
		} else if i < len(c.cur.Cohort) {
			id = c.cur.Cohort[i]
		}
		if id == "" {
			continue
		}
		e.WorkerID = id
		out = append(out, e.UpdateEntry)
	}
	return out
}

// indexedEntry is a ledger entry (without its worker id) for the cohort
// member at index.
type indexedEntry struct {
	ledger.UpdateEntry
	index int
}

// transcriptEntries derives, from a replayed transcript, the ledger entry
// of every cohort member that advertised, in cohort order: a survivor's
// is its masked-input message with its claims, accepted; a dropout's is
// its last message, with the stage it reached.
func transcriptEntries(u *unmasked) []indexedEntry {
	tr := u.tr
	last := map[int][]byte{}
	stage := map[int]int{}
	for st, msgs := range tr.Stages {
		for _, m := range msgs {
			_, i, _ := secagg.MessageInfo(m)
			last[i], stage[i] = m, st+1
		}
	}
	masked := map[int][]byte{}
	for _, m := range tr.Stages[secagg.StageMasked-1] {
		_, i, _ := secagg.MessageInfo(m)
		masked[i] = m
	}
	var out []indexedEntry
	for i, key := range tr.Params.Keys {
		m, ok := last[i]
		if !ok {
			continue // never advertised: not part of the attempt's record
		}
		e := ledger.UpdateEntry{WorkerKey: encodeKey(key)}
		if stage[i] >= secagg.StageMasked {
			m = masked[i]
			e.Accepted = true
			cl := u.claims[i]
			e.Tokens, e.FLOPs, e.EnergyWh = cl.Tokens, cl.FLOPs, cl.EnergyWh
		} else {
			e.Reason = fmt.Sprintf("dropped out after secure stage %d; its masks were removed", stage[i])
		}
		e.UpdateHash, e.Bytes = sha256Hex(m), int64(len(m))
		e.Signature = base64.StdEncoding.EncodeToString(m[len(m)-ed25519.SignatureSize:])
		out = append(out, indexedEntry{e, i})
	}
	return out
}

// checkSecureEntries compares a secure record's entries with the ones its
// transcript gives: the same members, messages, signatures, keys and
// claims, in the same order. Worker ids are the record's (the transcript
// knows keys only).
func checkSecureEntries(rec ledger.Record, u *unmasked) error {
	want := transcriptEntries(u)
	if len(want) != len(rec.Updates) {
		return fmt.Errorf("the record lists %d cohort members, the transcript %d", len(rec.Updates), len(want))
	}
	for k, w := range want {
		got := rec.Updates[k]
		w.WorkerID = got.WorkerID
		if got != w.UpdateEntry {
			return fmt.Errorf("entry %d (worker %q): the record says %+v, the signed transcript gives %+v", k, got.WorkerID, got, w.UpdateEntry)
		}
	}
	return nil
}

// roundDP is one round's differential-privacy mechanism, as recorded.
type roundDP struct {
	rate, mu, l1, l2 float64
}

func (c *Coordinator) roundDP(p *secagg.Params, available int) roundDP {
	l2 := p.Sensitivity()
	return roundDP{rate: float64(len(p.Keys)) / float64(max(available, len(p.Keys))),
		mu: p.NoiseMu * float64(p.MinSurvivors), l1: l2 * math.Sqrt(float64(p.Length)), l2: l2}
}

func (d roundDP) put(m map[string]float64) {
	m["dp_sampling_rate"], m["dp_skellam_mu"], m["dp_l1"], m["dp_l2"] = d.rate, d.mu, d.l1, d.l2
}

func (d roundDP) rdp() secagg.RDP {
	return secagg.WithoutReplacementRDP(d.rate, secagg.SkellamRDP(2*d.l1, 2*d.l2, d.mu))
}

// epsilonWith is the ε spent by every DP round on the ledger plus extra
// (nil: none), composed in Rényi DP.
func (c *Coordinator) epsilonWith(extra *roundDP) float64 {
	var curves []secagg.RDP
	if c.ledger != nil {
		for _, rec := range c.ledger.Records() {
			p := rec.Aggregation.Params
			if _, ok := p["dp_sampling_rate"]; !ok {
				continue
			}
			curves = append(curves, roundDP{rate: p["dp_sampling_rate"], mu: p["dp_skellam_mu"], l1: p["dp_l1"], l2: p["dp_l2"]}.rdp())
		}
	}
	if extra != nil {
		curves = append(curves, extra.rdp())
	}
	if len(curves) == 0 {
		return 0
	}
	eps, _ := secagg.Epsilon(func(a int) float64 {
		s := 0.0
		for _, f := range curves {
			s += f(a)
		}
		return s
	}, c.cfg.SecureAgg.Delta)
	return eps
}

// budgetAllows reports whether a round drawing cohort of available
// workers fits the ε budget; it is what keeps a round from opening.
func (c *Coordinator) budgetAllows(cohort, available int) (bool, float64) {
	sa := c.cfg.SecureAgg
	if !sa.Enabled || sa.NoiseMultiplier <= 0 || sa.EpsilonBudget <= 0 || cohort < 2 {
		return true, 0
	}
	keys := make([]ed25519.PublicKey, cohort)
	for i := range keys {
		keys[i] = make(ed25519.PublicKey, ed25519.PublicKeySize)
	}
	p, err := secagg.NewParams(c.cur.ID, 0, keys, c.cfg.secureLength(), sa.Clip, sa.QuantBits, 0)
	if err == nil {
		err = p.Tolerate(sa.Dropout)
	}
	if err != nil {
		return false, math.Inf(1)
	}
	p.NoiseMu = secagg.SkellamFor(sa.NoiseMultiplier, p.Sensitivity(), p.MinSurvivors)
	d := c.roundDP(p, available)
	eps := c.epsilonWith(&d)
	return eps <= sa.EpsilonBudget, eps
}

// SecAggInput is GET /v1/secagg/{stage}'s answer for a worker: the input
// of that stage (2: the neighbours' adverts, 3: its encrypted shares, 4:
// the survivors, 5: the survivors' signed confirmations of that list), or
// ok false while the stage has not started. A request
// for an attempt that is over is refused with 410, so the worker stops.
func (c *Coordinator) SecAggInput(workerID string, round uint64, attempt uint32, stage int) (b []byte, ok bool, changed <-chan struct{}, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.sec
	if s == nil || c.cur.State != StateCollecting || s.params.Round != round || s.params.Attempt != attempt {
		return nil, false, nil, reject(410, "attempt_over", "round %d attempt %d is not running (the round moved on or retries with a new cohort)", round, attempt)
	}
	i, in := s.index[workerID]
	if !in {
		return nil, false, nil, reject(403, "not_in_cohort", "worker %q is not in round %d attempt %d", workerID, round, attempt)
	}
	if stage < secagg.StageShareKeys || stage > secagg.StageUnmask {
		return nil, false, nil, reject(400, "malformed", "stage %d: inputs exist for stages 2..%d", stage, secagg.NumStages)
	}
	if s.srv.Stage() < stage {
		return nil, false, s.changed, nil
	}
	if s.srv.Stage() > stage {
		return nil, false, nil, reject(410, "stage_over", "stage %d of round %d is closed", stage, round)
	}
	switch stage {
	case secagg.StageShareKeys:
		return secagg.EncodeAdverts(s.srv.AdvertsFor(i)), true, nil, nil
	case secagg.StageMasked:
		return secagg.EncodeRouted(s.srv.SharesFor(i)), true, nil, nil
	case secagg.StageConfirm:
		return secagg.EncodeSurvivors(s.srv.Survivors()), true, nil, nil
	default:
		return secagg.EncodeMessages(s.srv.Confirmations()), true, nil, nil
	}
}

// SecAggSubmit takes one worker's stage message. The message names its
// round, attempt (in the params hash), stage and sender and is signed;
// secagg.Server refuses replays, strays and forgeries.
func (c *Coordinator) SecAggSubmit(ctx context.Context, body []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.sec
	if s == nil || c.cur.State != StateCollecting {
		return reject(410, "attempt_over", "no secure aggregation attempt is running")
	}
	if err := s.srv.Receive(body); err != nil {
		if errors.Is(err, secagg.ErrStage) {
			return reject(410, "stage_over", "%v", err)
		}
		return reject(400, "refused", "%v", err)
	}
	c.M.bytesReceived.Add(float64(len(body)))
	if st, i, ok := secagg.MessageInfo(body); ok && st == secagg.StageMasked && i < len(s.ids) {
		c.ev.accepted(c.cur, s.ids[i], int64(len(body)), false) // the dashboard's "update came back", masked
	}
	st := s.srv.Stage()
	expected := len(s.ids)
	if st > secagg.StageAdvertise {
		expected = len(s.srv.Completed(st - 1))
	}
	if len(s.srv.Completed(st)) >= expected {
		select { // the stage is complete: step now
		case c.kick <- struct{}{}:
		default:
		}
	}
	return nil
}

// secureInfo is the worker's part of a secure round's RoundInfo; mu held.
func (c *Coordinator) secureInfo(workerID string) (*protocol.SecAggRound, bool) {
	s := c.sec
	if s == nil {
		return nil, false
	}
	i, ok := s.index[workerID]
	if !ok || s.srv.Stage() != secagg.StageAdvertise || slices.Contains(s.srv.Completed(secagg.StageAdvertise), i) {
		return nil, false // only while it can still advertise
	}
	pj, err := json.Marshal(s.params)
	if err != nil {
		return nil, false
	}
	return &protocol.SecAggRound{Index: i, Params: pj, StageTimeout: c.cfg.SecureAgg.StageTimeout}, true
}

// recomputeSecure is Recompute for a secure round's record: it replays the
// stored transcript, checks the stage hashes and the sum on the record, and
// applies the server optimizer.
func (c Config) recomputeSecure(rec ledger.Record, pol roundPolicy, theta []float32, st *OptState, load func(string) ([]byte, error)) (string, error) {
	o := rec.Aggregation.Options
	tb, err := load(o["secagg_transcript"])
	if err != nil {
		return "", err
	}
	u, err := unmaskTranscript(tb, pol.n, pol.positions)
	if err != nil {
		return "", fmt.Errorf("secure aggregation transcript %s: %w", o["secagg_transcript"], err)
	}
	ph := u.tr.Params.Hash()
	if got := hex.EncodeToString(ph[:]); got != o["secagg_params"] {
		return "", fmt.Errorf("stored transcript's params hash %s differs from the record's %s", got, o["secagg_params"])
	}
	for s, h := range u.stages {
		if got, want := hex.EncodeToString(h[:]), o["secagg_stage"+strconv.Itoa(s+1)]; got != want {
			return "", fmt.Errorf("stage %d transcript hash %s differs from the record's %s", s+1, got, want)
		}
	}
	if got := sumHash(u.sum); got != o["secagg_sum"] {
		return "", fmt.Errorf("the unmasked sum hashes to %s, the record says %s", got, o["secagg_sum"])
	}
	if u.tr.Params.Round != rec.Round {
		return "", fmt.Errorf("stored transcript is for round %d", u.tr.Params.Round)
	}
	if err := checkSecureEntries(rec, u); err != nil {
		return "", err
	}
	if err := c.Optimizer.Step(theta, u.mean, st); err != nil {
		if strings.HasPrefix(o["result"], "failed") {
			return rec.AdapterBefore, nil
		}
		return "", err
	}
	return sha256Hex(EncodeAdapter(theta)), nil
}

// Package coordinator runs federated rounds: it picks a seeded cohort among
// the workers seen recently, hands out the round (the global adapter, the
// base model and the training recipe), takes the workers' compressed,
// signed updates, closes the round at a k-of-n quorum or its deadline,
// aggregates (FedAvg weighted by tokens, then a server optimizer), publishes
// the new adapter content-addressed, appends a signed ledger record, and
// opens the next round on its own.
//
// State lives in a Store (SQLite by default, or PostgreSQL) and in files
// under the coordinator's directory (see blobs.go), so a restarted
// coordinator resumes the round in flight. The simulator (sim/) runs the
// same round logic on a MemStore with Options.InMemory and hands decoded
// updates to Accept. Time comes from an injected
// Clock and the state machine advances only in Step, so tests drive rounds
// deterministically. The HTTP API is in server.go and docs/protocol.md.
package coordinator

import (
	"context"
	"crypto/ed25519"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/opencluster/opencluster/compress"
	"github.com/opencluster/opencluster/coordinator/ledger"
	"github.com/opencluster/opencluster/protocol"
)

// Clock is the coordinator's source of time (inject a fake in tests).
type Clock interface{ Now() time.Time }

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// SystemClock is the wall clock.
var SystemClock Clock = systemClock{}

// Options are what a Coordinator runs on besides its Config.
type Options struct {
	// Dir holds blobs/, updates/ and, by convention, the ledger and keys.
	Dir string
	// InMemory keeps blobs and update bytes in memory instead of under Dir
	// (which may then be empty): for the simulator, with a MemStore. A
	// restarted coordinator finds nothing; BaseModelPath must be empty.
	InMemory bool
	// Store is the state database (see OpenSQLite, OpenPostgres, NewMemStore).
	Store Store
	// Ledger is the round ledger (ledger.Open(Dir)); nil keeps none (the
	// simulator).
	Ledger *ledger.Log
	// Key signs ledger records and what the API publishes.
	Key ed25519.PrivateKey
	// Clock defaults to SystemClock.
	Clock Clock
	// InitialAdapter is round 1's adapter when the store is empty; nil
	// means InitAdapter(cfg.Shapes, cfg.Seed).
	InitialAdapter []float32
	// BaseModelPath is the base model: a safetensors file published as one
	// blob, or a Hugging Face folder whose config, weights and tokenizer
	// files are published with their manifest (RoundInfo.BaseFiles); optional,
	// RoundInfo.BaseSHA256 is empty without it.
	BaseModelPath string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Events receives the dashboard events (docs/events.md); nil for none.
	Events EventSink
	// GridGPerKWh is the carbon intensity the dashboard's CO2 figures use
	// (grams per kWh); 0 leaves CO2 out as unknown.
	GridGPerKWh float64
	// Admission says who may register; the zero value admits any key.
	Admission Admission
	// AfterClose, when set, is called with a round's id once the round is
	// stored as closed and before the next one is created: the window a
	// crash must not corrupt. Fault tests use it to stop the process there.
	AfterClose func(round uint64)
	// BeforeUnmask, when set, is called with a secure round's id once its
	// unmask stage has closed and before the masks are removed. Fault tests
	// use it to stop the process mid-unmask.
	BeforeUnmask func(round uint64)
}

// Coordinator is one coordinator's rounds. Its methods are safe for
// concurrent use.
type Coordinator struct {
	cfg Config
	n   int
	// shapesDigest is protocol.ShapesDigest(cfg.Shapes): an update's
	// digest must equal it, since updates no longer carry the shapes.
	shapesDigest [32]byte
	dir          string
	blobs        content // adapters, base model, optimizer states
	updates      content // the exact bytes of accepted updates
	store        Store
	ledger       *ledger.Log
	key          ed25519.PrivateKey
	clock        Clock
	log          *slog.Logger
	base         string              // base model hash: of its file, or of its folder's manifest
	baseFiles    []protocol.BaseFile // the base folder's files (nil for one file)
	baseBytes    int64               // the base's size (a folder's: every file's)
	tokenizer    string              // hash of the base folder's tokenizer.json ("" : byte-level)
	M            *Metrics
	ev           *events // dashboard events
	afterClose   func(round uint64)
	admission    Admission
	beforeUnmask func(round uint64)

	mu        sync.Mutex
	cur       Round
	cohort    map[string]bool
	accepted  map[string]bool // workers with an accepted update for cur.ID
	nAccepted int             // accepted updates applied to cur (late ones included)
	rejected  map[string]int  // stored rejections per worker this round
	adapter   []float32       // cur.BaseAdapter's vector
	opt       OptState        // server optimizer state before cur
	optHash   string
	// deltas holds the decoded deltas of updates taken by Accept for the
	// round in flight, by record hash: they have no bytes to store.
	deltas  map[string]*compress.Sparse
	changed chan struct{} // closed and replaced at every transition
	kick    chan struct{} // asks Run to Step now (quorum reached)
	done    bool          // MaxRounds reached
	sec     *secRound     // the secure-aggregation attempt in progress (secure.go)
}

// New opens the coordinator on opts.Dir: it resumes the round in flight
// from the store, or starts round 1 from the initial adapter.
func New(ctx context.Context, cfg Config, opts Options) (*Coordinator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := opts.Admission.Validate(); err != nil {
		return nil, err
	}
	if opts.Store == nil || len(opts.Key) != ed25519.PrivateKeySize || (opts.Dir == "" && !opts.InMemory) || (opts.Ledger == nil && !opts.InMemory) {
		return nil, errors.New("coordinator: New needs Dir, Store, Ledger and an ed25519 Key (only Store and Key when InMemory)")
	}
	if opts.InMemory && opts.BaseModelPath != "" {
		return nil, errors.New("coordinator: an in-memory coordinator publishes no base model file (BaseModelPath must be empty)")
	}
	c := &Coordinator{cfg: cfg, n: cfg.N(), shapesDigest: protocol.ShapesDigest(cfg.Shapes), dir: opts.Dir, store: opts.Store, ledger: opts.Ledger, key: opts.Key,
		clock: opts.Clock, log: opts.Logger, M: newMetrics(), changed: make(chan struct{}), kick: make(chan struct{}, 1), afterClose: opts.AfterClose, admission: opts.Admission, beforeUnmask: opts.BeforeUnmask}
	if c.clock == nil {
		c.clock = SystemClock
	}
	if c.log == nil {
		c.log = slog.Default()
	}
	c.ev = newEvents(opts.Events, c.clock, opts.GridGPerKWh)
	if opts.InMemory {
		c.blobs, c.updates = newMemContent(), newMemContent()
	} else {
		for _, d := range []string{blobsDir, updatesDir} {
			if err := os.MkdirAll(filepath.Join(c.dir, d), 0o755); err != nil {
				return nil, fmt.Errorf("coordinator: %w", err)
			}
		}
		c.blobs, c.updates = dirContent(c.blobDir()), dirContent(c.updateDir())
	}
	if opts.BaseModelPath != "" {
		if err := c.publishBase(ctx, opts.BaseModelPath); err != nil {
			return nil, err
		}
	}
	if n, err := c.store.CountWorkers(ctx); err == nil {
		c.M.workers.Store(int64(n))
	}
	saved, err := c.store.Counters(ctx)
	if err != nil {
		return nil, err
	}
	c.M.restore(saved)
	cur, err := c.store.LatestRound(ctx)
	fresh := errors.Is(err, ErrNotFound)
	if err == nil || fresh {
		err = c.checkLedger(cur, fresh)
	}
	switch {
	case err != nil:
	case fresh:
		err = c.startFresh(ctx, opts.InitialAdapter)
	default:
		err = c.resume(ctx, cur)
	}
	if err != nil {
		return nil, err
	}
	c.ev.replay(ctx, c)
	return c, nil
}

func (c *Coordinator) blobDir() string   { return filepath.Join(c.dir, blobsDir) }
func (c *Coordinator) updateDir() string { return filepath.Join(c.dir, updatesDir) }

// PublicKey is the coordinator's signing key.
func (c *Coordinator) PublicKey() ed25519.PublicKey { return c.key.Public().(ed25519.PublicKey) }

// Config returns the validated configuration (canonical codec spec).
func (c *Coordinator) Config() Config { return c.cfg }

// InitAdapter is a fresh LoRA adapter: tensors whose name contains
// "lora_A" draw from U(-1/sqrt(in), 1/sqrt(in)) with in the last dim (as
// PEFT's Kaiming-uniform init, a=sqrt(5)), seeded; all others (lora_B) are
// zero, so the adapted model starts equal to the base.
func InitAdapter(shapes []protocol.Shape, seed uint64) []float32 {
	var out []float32
	r := rand.New(rand.NewPCG(seed, 0x6c6f7261))
	for _, s := range shapes {
		n := 1
		for _, d := range s.Dims {
			n *= d
		}
		start := len(out)
		out = append(out, make([]float32, n)...)
		if strings.Contains(s.Name, "lora_A") {
			in := s.Dims[len(s.Dims)-1]
			b := float32(1 / math.Sqrt(float64(in)))
			for i := start; i < len(out); i++ {
				out[i] = (2*r.Float32() - 1) * b
			}
		}
	}
	return out
}

func (c *Coordinator) startFresh(ctx context.Context, init []float32) error {
	if init == nil {
		init = InitAdapter(c.cfg.Shapes, c.cfg.Seed)
	}
	if len(init) != c.n {
		return fmt.Errorf("coordinator: initial adapter has %d elements, shapes need %d", len(init), c.n)
	}
	hash, err := c.putBlob(ctx, BlobAdapter, EncodeAdapter(init))
	if err != nil {
		return err
	}
	r := Round{ID: 1, State: StateOpen, Seed: c.roundSeed(1), Opened: c.clock.Now(), BaseAdapter: hash, BaseModel: c.base}
	if err := c.store.CreateRound(ctx, r); err != nil {
		return err
	}
	c.adapter = init
	c.setRound(r)
	c.log.Info("coordinator: started round 1", "adapter", hash[:12], "elements", c.n)
	return nil
}

// checkLedger refuses to start on a ledger this coordinator did not sign,
// or one that does not match the store: the store's newest closed round
// must be the ledger's last record, publishing the same adapter (cur is
// the store's newest round; fresh: the store has none). Starting anyway
// would sign records onto a chain they do not follow, or wedge.
func (c *Coordinator) checkLedger(cur Round, fresh bool) error {
	if c.ledger == nil {
		return nil
	}
	refuse := func(format string, args ...any) error {
		return fmt.Errorf("coordinator: refusing to start: "+format, args...)
	}
	last, ok := c.ledger.Last()
	if ok && last.CoordinatorKey != encodeKey(c.PublicKey()) {
		return refuse("%s is signed by coordinator key %s, but this coordinator's key is %s: the ledger belongs to another coordinator (wrong --dir, or the key file was replaced)",
			c.ledger.Path(), last.CoordinatorKey, encodeKey(c.PublicKey()))
	}
	if fresh {
		if ok {
			return refuse("the store has no rounds but %s has %d records: the database is new or was reset; restore it, or move the ledger away to start a new run", c.ledger.Path(), c.ledger.Len())
		}
		return nil
	}
	closed := cur.ID - 1 // the newest round the store has closed
	if cur.State == StateClosed {
		closed = cur.ID
	}
	var got uint64
	if ok {
		got = last.Round
	}
	switch {
	case got > cur.ID || (got == cur.ID && cur.State != StateClosed && cur.State != StateAggregating):
		return refuse("%s's last record is round %d, but the store's newest round is %d (%s): the database is older than the ledger; restore a matching pair", c.ledger.Path(), got, cur.ID, cur.State)
	case got < closed:
		return refuse("the store has closed round %d, but %s ends at round %d: ledger records are missing; restore the ledger", closed, c.ledger.Path(), got)
	case closed >= 1 && got == closed && closed == cur.ID && cur.NewAdapter != last.AdapterAfter:
		return refuse("the store says round %d published adapter %s, the ledger's record says %s", cur.ID, cur.NewAdapter, last.AdapterAfter)
	case closed >= 1 && got == closed && closed < cur.ID && cur.BaseAdapter != last.AdapterAfter:
		return refuse("round %d starts from adapter %s in the store, but the ledger's record of round %d published %s", cur.ID, cur.BaseAdapter, got, last.AdapterAfter)
	}
	return nil
}

// resume rebuilds the in-memory state from the store after a restart. A
// round still in flight continues from its starting adapter and the
// optimizer state the previous round left; a closed round (the last one
// of a finished run, or a crash between closing a round and opening the
// next) continues from its result and the optimizer state after it, so
// the next round aggregates onto what the ledger says it starts from.
func (c *Coordinator) resume(ctx context.Context, cur Round) error {
	if cur.State == StateAggregating {
		if rec, ok := c.ledgerLast(); ok && rec.Round == cur.ID {
			// Crashed after appending the record, before storing the
			// round as closed: the signed record says how it ended.
			cur.State, cur.Closed, cur.NewAdapter, cur.OptState = StateClosed, rec.Time, rec.AdapterAfter, rec.Aggregation.Options["opt_state_after"]
			if err := c.store.UpdateRound(ctx, cur); err != nil {
				return fmt.Errorf("coordinator: resume round %d: %w", cur.ID, err)
			}
			c.log.Info("coordinator: closed round from its ledger record", "round", cur.ID, "adapter", shortHash(cur.NewAdapter))
		}
	}
	adapterHash, optHash := cur.BaseAdapter, ""
	switch {
	case cur.State == StateClosed:
		adapterHash, optHash = cur.NewAdapter, cur.OptState
	case cur.ID > 1:
		prev, err := c.store.Round(ctx, cur.ID-1)
		if err != nil {
			return fmt.Errorf("coordinator: resume round %d: %w", cur.ID, err)
		}
		optHash = prev.OptState
	}
	b, err := c.blobs.get(adapterHash)
	if err != nil {
		return fmt.Errorf("coordinator: refusing to start: round %d's adapter: %w (the store names a blob that is missing or damaged)", cur.ID, err)
	}
	if c.adapter, err = DecodeAdapter(b, c.n); err != nil {
		return fmt.Errorf("coordinator: resume round %d: adapter %s: %w (did the shapes change?)", cur.ID, adapterHash, err)
	}
	if err := c.loadOpt(optHash); err != nil {
		return fmt.Errorf("coordinator: refusing to start: round %d's optimizer state: %w (the store names a blob that is missing or damaged)", cur.ID, err)
	}
	c.setRound(cur)
	ups, err := c.store.Updates(ctx, cur.ID)
	if err != nil {
		return err
	}
	for _, u := range ups {
		if u.Accepted {
			c.nAccepted++
			c.accepted[u.WorkerID] = true
		} else {
			c.rejected[u.WorkerID]++
		}
	}
	c.log.Info("coordinator: resumed", "round", cur.ID, "state", cur.State, "accepted", c.nAccepted, "adapter", shortHash(adapterHash))
	if cur.State == StateClosed {
		return c.openNext(ctx, cur)
	}
	return nil
}

// acceptedDelta is the decoded delta of an accepted update: held in
// memory (Accept) or read back from its stored bytes.
func (c *Coordinator) acceptedDelta(hash string) (*compress.Sparse, error) {
	if d, ok := c.deltas[hash]; ok {
		return d, nil
	}
	b, err := c.updates.get(hash)
	if err != nil {
		return nil, err
	}
	up, err := protocol.UnmarshalUpdate(b, c.n)
	if err != nil {
		return nil, err
	}
	return up.Delta, nil
}

// shortHash is a hash's first 12 digits, for logs.
func shortHash(h string) string { return h[:min(12, len(h))] }

func (c *Coordinator) loadOpt(hash string) error {
	c.opt, c.optHash = OptState{}, hash
	if hash == "" {
		return nil
	}
	b, err := c.blobs.get(hash)
	if err != nil {
		return err
	}
	return c.opt.UnmarshalBinary(b)
}

// setRound makes r current; callers hold mu or run before sharing c.
func (c *Coordinator) setRound(r Round) {
	c.cur = r
	c.cohort = map[string]bool{}
	for _, w := range r.Cohort {
		c.cohort[w] = true
	}
	c.accepted, c.rejected, c.nAccepted = map[string]bool{}, map[string]int{}, 0
	c.deltas = map[string]*compress.Sparse{}
	c.notify()
	c.ev.roundChanged(r)
}

// notify wakes every long-poll waiting on Changed.
func (c *Coordinator) notify() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// Changed returns a channel closed at the next round transition.
func (c *Coordinator) Changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

// roundSeed derives round id's seed from the master seed (SplitMix64).
func (c *Coordinator) roundSeed(id uint64) uint64 {
	z := c.cfg.Seed + id*0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// PickCohort returns min(size, len(ids)) of ids, chosen by a shuffle seeded
// with seed, in the shuffled order. ids must be sorted so the choice is
// reproducible from the seed alone.
func PickCohort(ids []string, size int, seed uint64) []string {
	return pickInPlace(slices.Clone(ids), size, seed)
}

// pickInPlace is PickCohort shuffling ids itself; the result is a copy of
// the chosen few, so the (possibly huge) candidate list is not kept alive
// by the round.
func pickInPlace(ids []string, size int, seed uint64) []string {
	r := rand.New(rand.NewPCG(seed, 0x636f686f7274))
	r.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
	return slices.Clone(ids[:min(size, len(ids))])
}

func (c *Coordinator) putBlob(ctx context.Context, kind string, data []byte) (string, error) {
	hash, err := c.blobs.put(data)
	if err != nil {
		return "", err
	}
	if err := c.store.PutBlob(ctx, Blob{SHA256: hash, Kind: kind, Size: int64(len(data)), Created: c.clock.Now()}); err != nil {
		return "", err
	}
	return hash, nil
}

// Step advances the state machine as far as the clock and the updates
// allow: picks the cohort of an open round, closes a collecting round at
// quorum or deadline (or extends/restarts it), aggregates and publishes,
// and opens the next round. Run calls it on a ticker; tests call it
// after moving a fake clock.
func (c *Coordinator) Step(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.clock.Now()
	c.ev.sweep(now, c.cfg.SeenWithin/4, func() ([]Worker, error) { return c.store.Workers(ctx, now.Add(-c.cfg.SeenWithin)) })
	for i := 0; i < 8; i++ { // a few transitions per call at most
		moved, err := c.stepLocked(ctx)
		if err != nil || !moved {
			return err
		}
	}
	return nil
}

func (c *Coordinator) quorum() int {
	k := c.cfg.Quorum
	if k == 0 || k > len(c.cur.Cohort) {
		k = len(c.cur.Cohort)
	}
	return k
}

func (c *Coordinator) stepLocked(ctx context.Context) (bool, error) {
	now := c.clock.Now()
	r := c.cur
	switch r.State {
	case StateOpen:
		if c.done {
			return false, nil
		}
		ws, err := c.eligible(ctx, now)
		if err != nil {
			return false, err
		}
		if len(ws) < c.cfg.MinWorkers {
			return false, nil
		}
		secure := c.cfg.SecureAgg.Enabled
		if secure {
			if len(ws) < 2 {
				return false, nil
			}
			if ok, eps := c.budgetAllows(min(c.cfg.CohortSize, len(ws)), len(ws)); !ok {
				c.done = true
				c.notify()
				c.log.Warn("coordinator: privacy budget reached; no more rounds", "round", r.ID, "epsilon_after_this_round", eps,
					"epsilon_budget", c.cfg.SecureAgg.EpsilonBudget, "spent", c.epsilonWith(nil))
				return false, nil
			}
		}
		// A retried secure attempt draws a fresh cohort.
		r.Cohort = c.pickCohort(ws, c.cfg.CohortSize, r.Seed+uint64(r.Extensions))
		r.State, r.Started, r.Deadline = StateCollecting, now, now.Add(c.cfg.RoundTimeout)
		if err := c.store.UpdateRound(ctx, r); err != nil {
			return false, err
		}
		if secure {
			if err := c.openSecure(ctx, r, len(ws)); err != nil {
				return false, err
			}
			r.Deadline = c.sec.deadline
		}
		c.setRound(r)
		c.log.Info("coordinator: round collecting", "round", r.ID, "cohort", len(r.Cohort), "available", len(ws), "deadline", r.Deadline)
		return true, nil
	case StateCollecting:
		if c.cfg.SecureAgg.Enabled {
			return c.stepSecure(ctx, now)
		}
		if c.nAccepted >= c.quorum() && c.nAccepted >= c.cfg.MinUpdates {
			return true, c.aggregate(ctx, "quorum")
		}
		if now.Before(r.Deadline) {
			return false, nil
		}
		if c.cfg.Late == LateDownweight && now.Before(r.Deadline.Add(c.cfg.LateGrace)) {
			return false, nil // late updates still count, down-weighted
		}
		if c.nAccepted >= c.cfg.MinUpdates {
			return true, c.aggregate(ctx, "deadline")
		}
		if c.cfg.ShortRound == ShortExtend && r.Extensions < c.cfg.MaxExtensions {
			r.Extensions++
			r.Deadline = now.Add(c.cfg.RoundTimeout)
			if err := c.store.UpdateRound(ctx, r); err != nil {
				return false, err
			}
			c.cur = r
			c.ev.roundChanged(r)
			c.log.Warn("coordinator: too few updates at the deadline; extended", "round", r.ID, "accepted", c.nAccepted, "min_updates", c.cfg.MinUpdates, "extension", r.Extensions)
			return false, nil
		}
		return false, c.restart(ctx, now)
	case StateAggregating:
		if strings.HasPrefix(r.Note, secNote) {
			return true, c.aggregateSecure(ctx, r.Note)
		}
		return true, c.aggregate(ctx, r.Note)
	case StateClosed:
		return true, c.openNext(ctx, r)
	}
	return false, fmt.Errorf("coordinator: round %d in unknown state %q", r.ID, r.State)
}

// eligible lists the workers a cohort may be picked from at now: seen
// within seen_within and past their probation, sorted by id. It first
// forgets the stale workers that never contributed (forget_after).
func (c *Coordinator) eligible(ctx context.Context, now time.Time) ([]Worker, error) {
	if c.cfg.ForgetAfter > 0 {
		n, err := c.store.PruneWorkers(ctx, now.Add(-c.cfg.ForgetAfter))
		if err != nil {
			return nil, err
		}
		if n > 0 {
			c.log.Info("coordinator: forgot stale workers that never sent an update", "workers", n, "not_seen_for", c.cfg.ForgetAfter)
			if total, err := c.store.CountWorkers(ctx); err == nil {
				c.M.workers.Store(int64(total))
			}
		}
	}
	if c.cfg.MaxNewPerCohort == 0 && c.cfg.Probation == 0 {
		// The ids alone are enough (and cheap for a million simulated workers).
		ids, err := c.store.WorkerIDs(ctx, now.Add(-c.cfg.SeenWithin))
		ws := make([]Worker, len(ids))
		for i, id := range ids {
			ws[i].ID = id
		}
		return ws, err
	}
	ws, err := c.store.Workers(ctx, now.Add(-c.cfg.SeenWithin))
	if err != nil {
		return nil, err
	}
	out := ws[:0]
	for _, w := range ws {
		if now.Sub(w.Registered) >= c.cfg.Probation {
			out = append(out, w)
		}
	}
	return out, nil
}

// pickCohort picks up to size of ws (sorted by id) with the seeded
// shuffle. Under max_new_per_cohort, at most that many newcomers (no
// accepted update yet) are taken and the other seats go to workers that
// have contributed; seats neither fills stay empty.
func (c *Coordinator) pickCohort(ws []Worker, size int, seed uint64) []string {
	if c.cfg.MaxNewPerCohort == 0 {
		ids := make([]string, len(ws))
		for i := range ws {
			ids[i] = ws[i].ID
		}
		return pickInPlace(ids, size, seed)
	}
	var vets, news []string
	for _, w := range ws {
		if w.Contributed > 0 {
			vets = append(vets, w.ID)
		} else {
			news = append(news, w.ID)
		}
	}
	picked := PickCohort(news, min(size, c.cfg.MaxNewPerCohort), seed)
	return append(PickCohort(vets, size-len(picked), seed^0x7665746572616e73), picked...)
}

// restart gives a round that is short of updates at its deadline a new
// cohort and deadline, keeping its id, seed and adapter, so every update
// already accepted stays valid: the workers that delivered stay in the
// cohort and the rest of it is re-picked among the workers available now
// (the dropouts are replaced unless they are still polling).
func (c *Coordinator) restart(ctx context.Context, now time.Time) error {
	r := c.cur
	ws, err := c.eligible(ctx, now)
	if err != nil {
		return err
	}
	var keep []string
	var others []Worker
	for _, w := range r.Cohort {
		if c.accepted[w] {
			keep = append(keep, w)
		}
	}
	for _, w := range ws {
		if !c.accepted[w.ID] {
			others = append(others, w)
		}
	}
	r.Extensions++
	r.Cohort = append(keep, c.pickCohort(others, c.cfg.CohortSize-len(keep), r.Seed+uint64(r.Extensions))...)
	r.Deadline = now.Add(c.cfg.RoundTimeout)
	r.Note = fmt.Sprintf("restarted %d time(s)", r.Extensions)
	if err := c.store.UpdateRound(ctx, r); err != nil {
		return err
	}
	c.cur = r
	c.cohort = map[string]bool{}
	for _, w := range r.Cohort {
		c.cohort[w] = true
	}
	c.notify()
	c.ev.roundChanged(r)
	c.log.Warn("coordinator: round restarted with a new cohort", "round", r.ID, "accepted", c.nAccepted, "min_updates", c.cfg.MinUpdates, "cohort", len(r.Cohort))
	return nil
}

// publish stores a round's new adapter and server optimizer state as blobs
// and returns their hashes ("" for no optimizer state: plain FedAvg).
func (c *Coordinator) publish(ctx context.Context, theta []float32, opt *OptState) (adapter, optState string, err error) {
	if adapter, err = c.putBlob(ctx, BlobAdapter, EncodeAdapter(theta)); err != nil {
		return "", "", err
	}
	if c.cfg.Optimizer.Kind == OptFedAvg && opt.NormRef == 0 {
		return adapter, "", nil // nothing to remember
	}
	ob, err := opt.MarshalBinary()
	if err != nil {
		return "", "", err
	}
	optState, err = c.putBlob(ctx, BlobOptState, ob)
	return adapter, optState, err
}

// markAggregating stores the current round as aggregating, with why as
// its note (a crash after this resumes the aggregation).
func (c *Coordinator) markAggregating(ctx context.Context, why string) error {
	r := c.cur
	if r.State == StateAggregating {
		return nil
	}
	r.State, r.Note = StateAggregating, why
	if err := c.store.UpdateRound(ctx, r); err != nil {
		return err
	}
	c.cur = r
	c.notify()
	c.ev.roundChanged(r)
	return nil
}

// aggregate closes the current round: FedAvg of its accepted updates, a
// server optimizer step, the new adapter and optimizer state published as
// blobs, the ledger record, then the round marked closed and the next one
// opened. Every step is idempotent, so a crash anywhere is repaired by
// running it again after a restart.
func (c *Coordinator) aggregate(ctx context.Context, why string) error {
	started := time.Now()
	if err := c.markAggregating(ctx, why); err != nil {
		return err
	}
	r := c.cur
	ups, err := c.store.Updates(ctx, r.ID)
	if err != nil {
		return err
	}
	var cs []Contribution
	var at []int // the entry of each contribution
	var entries []ledger.UpdateEntry
	var bytesIn int64
	for _, u := range ups {
		key := "" // only the ledger needs it (the simulator keeps none)
		if c.ledger != nil {
			w, err := c.store.Worker(ctx, u.WorkerID)
			if err != nil {
				return err
			}
			key = encodeKey(w.PublicKey)
		}
		entries = append(entries, ledger.UpdateEntry{WorkerID: u.WorkerID, WorkerKey: key, UpdateHash: u.SHA256,
			Bytes: u.Bytes, Tokens: u.Tokens, FLOPs: u.FLOPs, EnergyWh: u.EnergyWh, Signature: u.Signature, Accepted: u.Accepted, Reason: u.Reason})
		if !u.Accepted {
			continue
		}
		delta, err := c.acceptedDelta(u.SHA256)
		if err != nil {
			// Retrying cannot bring the bytes back: leave the update out
			// and say so in the record, rather than stall the run.
			e := &entries[len(entries)-1]
			e.Accepted, e.Reason = false, ledgerReason(UnreadablePrefix+" stored copy: "+err.Error())
			c.log.Error("coordinator: an accepted update's stored copy is unreadable; left out of the aggregate", "round", r.ID, "update", u.SHA256, "err", err)
			continue
		}
		cs = append(cs, Contribution{Delta: delta, Weight: u.Weight})
		at = append(at, len(entries)-1)
		bytesIn += u.Bytes
	}
	theta := slices.Clone(c.adapter)
	opt := c.opt.clone()
	out, aerr := c.cfg.applyRound(theta, cs, &opt)
	for i, why := range out.Dropped {
		entries[at[i]].Accepted, entries[at[i]].Reason = false, ledgerReason(why)
	}
	result, newHash, optHash := "ok", r.BaseAdapter, c.optHash
	switch {
	case errors.Is(aerr, ErrCannotAggregate):
		// The round closes as failed: the adapter and the optimizer state
		// stay as they were, and the next round opens on them.
		result = "failed: " + aerr.Error()
		if len(result) > ledger.MaxParamLen {
			result = result[:ledger.MaxParamLen]
		}
		theta, opt = c.adapter, c.opt
		c.M.roundsFailed.Add(1)
		c.log.Error("coordinator: round failed; its adapter stays and the next round opens", "round", r.ID, "why", aerr)
	case aerr != nil:
		return fmt.Errorf("coordinator: aggregate round %d: %w", r.ID, aerr)
	default:
		if newHash, optHash, err = c.publish(ctx, theta, &opt); err != nil {
			return err
		}
	}
	return c.closeRound(ctx, r, closing{why: why, result: result, newHash: newHash, optHash: optHash, theta: theta, opt: opt,
		agg: c.cfg.aggregation(c.optHash, optHash, out, opt.NormRef, result), entries: entries, ups: ups, started: started},
		"updates", len(cs), "clipped", out.Clipped, "dropped", len(out.Dropped), "norm_bound", out.Bound, "bytes", bytesIn)
}

// closing is what closeRound publishes for a round.
type closing struct {
	why, result string
	newHash     string // adapter after (the one before for a failed round)
	optHash     string
	theta       []float32
	opt         OptState
	agg         ledger.Aggregation
	entries     []ledger.UpdateEntry
	ups         []UpdateRecord // for the dashboard's closed event
	// started is the wall time closing began, for the aggregation-time
	// metric only (the round logic runs on the injected clock).
	started time.Time
}

// closeRound appends round r's ledger record (unless a crash already did),
// stores the round as closed, adopts the new adapter and optimizer state,
// and opens the next round. Plain and secure rounds end here alike.
func (c *Coordinator) closeRound(ctx context.Context, r Round, cl closing, logAttrs ...any) error {
	now := c.clock.Now()
	if last, ok := c.ledgerLast(); c.ledger != nil && (!ok || last.Round < r.ID) {
		rec := &ledger.Record{Round: r.ID, Time: now, AdapterBefore: r.BaseAdapter, AdapterAfter: cl.newHash, Cohort: r.Cohort,
			Seed: r.Seed, Aggregation: cl.agg, Updates: cl.entries}
		if rec.Cohort == nil {
			rec.Cohort = []string{}
		}
		if rec.Updates == nil {
			rec.Updates = []ledger.UpdateEntry{}
		}
		if err := c.ledger.Append(rec, c.key); err != nil {
			return fmt.Errorf("coordinator: aggregate round %d: %w", r.ID, err)
		}
	}
	r.State, r.Closed, r.NewAdapter, r.OptState = StateClosed, now, cl.newHash, cl.optHash
	if cl.result != "ok" {
		r.Note = cl.result
	}
	if err := c.store.UpdateRound(ctx, r); err != nil {
		return err
	}
	c.M.roundClosed(now.Sub(r.Started))
	if !cl.started.IsZero() {
		c.M.aggregation.Observe(time.Since(cl.started).Seconds())
	}
	if err := c.SaveMetrics(ctx); err != nil {
		c.log.Warn("coordinator: saving the metrics' counters", "err", err)
	}
	if last, ok := c.ledgerLast(); ok && last.Round == r.ID {
		c.ev.closed(r, &last, cl.ups, c.n)
	} else {
		c.ev.closed(r, nil, cl.ups, c.n)
	}
	c.log.Info("coordinator: round closed", append([]any{"round", r.ID, "why", cl.why, "result", cl.result, "adapter", shortHash(cl.newHash)}, logAttrs...)...)
	c.adapter, c.opt, c.optHash = cl.theta, cl.opt, cl.optHash
	c.cur = r
	if c.afterClose != nil {
		c.afterClose(r.ID)
	}
	return c.openNext(ctx, r)
}

// openNext opens the round after closed round r (unless MaxRounds is reached).
func (c *Coordinator) openNext(ctx context.Context, r Round) error {
	if c.cfg.MaxRounds > 0 && r.ID >= c.cfg.MaxRounds {
		c.done = true
		c.cur = r
		c.notify()
		return nil
	}
	next, err := c.store.Round(ctx, r.ID+1)
	if errors.Is(err, ErrNotFound) {
		next = Round{ID: r.ID + 1, State: StateOpen, Seed: c.roundSeed(r.ID + 1), Opened: c.clock.Now(), BaseAdapter: r.NewAdapter, BaseModel: c.base}
		err = c.store.CreateRound(ctx, next)
	}
	if err != nil {
		return err
	}
	c.setRound(next)
	return nil
}

// CurrentRound returns a copy of the round in flight, its cohort included.
func (c *Coordinator) CurrentRound() Round {
	c.mu.Lock()
	defer c.mu.Unlock()
	return cloneRound(c.cur)
}

func (c *Coordinator) ledgerLen() int {
	if c.ledger == nil {
		return 0
	}
	return c.ledger.Len()
}

func (c *Coordinator) ledgerHead() string {
	if c.ledger == nil {
		return ""
	}
	return c.ledger.Head()
}

func (c *Coordinator) ledgerLast() (ledger.Record, bool) {
	if c.ledger == nil {
		return ledger.Record{}, false
	}
	return c.ledger.Last()
}

// Done reports whether the coordinator has closed its last round (MaxRounds).
func (c *Coordinator) Done() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.done
}

// Run calls Step every tick (and at once when a quorum is reached) until
// ctx ends. Errors are logged and retried on the next tick.
func (c *Coordinator) Run(ctx context.Context, tick time.Duration) {
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		if err := c.Step(ctx); err != nil && ctx.Err() == nil {
			c.log.Error("coordinator: step", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-c.kick:
		}
	}
}

// Register records a worker. body is the raw RegisterRequest JSON and sig
// the worker's ed25519 signature over RegisterPrefix+body, which proves it
// holds the key. The worker id derives from the key, so registering again
// returns the same id.
func (c *Coordinator) Register(ctx context.Context, req protocol.RegisterRequest, body, sig []byte) (protocol.RegisterResponse, error) {
	resp, isNew, err := c.register(ctx, req, body, sig)
	switch {
	case err != nil:
		c.M.registration("refused")
	case isNew:
		c.M.registration("new")
	default:
		c.M.registration("known")
	}
	return resp, err
}

// admit applies the admission policy to a registration whose signature
// checked out.
func (c *Coordinator) admit(pub ed25519.PublicKey, req protocol.RegisterRequest) error {
	a := c.admission
	if len(a.AllowKeys) > 0 && !slices.ContainsFunc(a.AllowKeys, func(k string) bool {
		ak, err := protocol.ParsePublicKey(k)
		return err == nil && ak.Equal(pub)
	}) {
		return reject(403, "not_admitted", "key %s is not on this coordinator's allow-list; ask its operator to add it", req.PublicKey)
	}
	if len(a.JoinTokens) > 0 {
		if req.JoinToken == "" {
			return reject(403, "not_admitted", "this coordinator admits workers with a join token only; ask its operator for one (worker --join-token)")
		}
		ok := false
		for _, t := range a.JoinTokens {
			ok = subtle.ConstantTimeCompare([]byte(t), []byte(req.JoinToken)) == 1 || ok
		}
		if !ok {
			return reject(403, "not_admitted", "the join token was not accepted")
		}
	}
	if a.PoWBits > 0 {
		got := 0
		if len(req.PoWNonce) <= protocol.MaxPoWNonceLen {
			got = protocol.PoWZeroBits(req.PublicKey, req.PoWNonce)
		}
		if got < a.PoWBits {
			return reject(403, PoWRequired, "registration needs a proof of work of %d bits (header %s); pow_nonce %q gives %d", a.PoWBits, PoWBitsHeader, req.PoWNonce, got)
		}
	}
	return nil
}

// PoWRequired is the error code of a registration without enough proof
// of work; the answer's PoWBitsHeader says how many bits are asked.
const PoWRequired = "pow_required"

func (c *Coordinator) register(ctx context.Context, req protocol.RegisterRequest, body, sig []byte) (protocol.RegisterResponse, bool, error) {
	pub, err := protocol.ParsePublicKey(req.PublicKey)
	if err != nil {
		return protocol.RegisterResponse{}, false, reject(400, "bad_key", "public_key: %v", err)
	}
	if !ed25519.Verify(pub, append([]byte(RegisterPrefix), body...), sig) {
		return protocol.RegisterResponse{}, false, reject(401, "bad_signature", "register: the %s header does not verify with public_key %s", SignatureHeader, req.PublicKey)
	}
	if len(req.Name) > 128 || len(req.Device) > 256 || len(req.ClientVersion) > 64 {
		return protocol.RegisterResponse{}, false, reject(400, "malformed", "register: name (<=128), device (<=256) or client_version (<=64) too long")
	}
	if err := c.admit(pub, req); err != nil {
		return protocol.RegisterResponse{}, false, err
	}
	region, placed, err := protocol.LookupRegion(req.Region)
	if err != nil {
		return protocol.RegisterResponse{}, false, reject(400, "bad_region", "register: %v", err)
	}
	now := c.clock.Now()
	id := "w-" + protocol.KeyID(pub)
	_, err = c.store.Worker(ctx, id)
	isNew := errors.Is(err, ErrNotFound)
	w, err := c.store.RegisterWorker(ctx, Worker{ID: id, PublicKey: pub, Name: req.Name, Device: req.Device, Registered: now, LastSeen: now})
	if err != nil {
		return protocol.RegisterResponse{}, false, err
	}
	if !w.PublicKey.Equal(pub) {
		return protocol.RegisterResponse{}, false, reject(409, "key_conflict", "worker id %s is bound to another key", id)
	}
	if err := c.store.TouchWorker(ctx, id, now); err != nil {
		return protocol.RegisterResponse{}, false, err
	}
	if n, err := c.store.CountWorkers(ctx); err == nil {
		c.M.workers.Store(int64(n))
	}
	c.ev.registered(id, region, placed, req.Device)
	select { // an open round may now have enough workers
	case c.kick <- struct{}{}:
	default:
	}
	return protocol.RegisterResponse{WorkerID: id, KeyID: protocol.KeyID(pub), CoordinatorKey: encodeKey(c.PublicKey())}, isNew, nil
}

// Work returns the round the worker should train now, or nil when it has
// nothing to do (not in the cohort, already submitted, or no round is
// collecting). It marks the worker as seen.
func (c *Coordinator) Work(ctx context.Context, workerID string) (*protocol.RoundInfo, error) {
	if _, err := c.store.Worker(ctx, workerID); err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil, reject(403, "unknown_worker", "worker %q is not registered", workerID)
		}
		return nil, err
	}
	if err := c.store.TouchWorker(ctx, workerID, c.clock.Now()); err != nil {
		return nil, err
	}
	c.ev.seen(workerID)
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.cur
	if r.State != StateCollecting || !c.cohort[workerID] || c.accepted[workerID] {
		return nil, nil
	}
	info := c.roundInfo()
	if c.cfg.SecureAgg.Enabled {
		var ok bool
		if info.SecAgg, ok = c.secureInfo(workerID); !ok {
			return nil, nil
		}
	}
	c.ev.took(r, workerID, blobSize(c.blobDir(), r.BaseAdapter))
	return info, nil
}

func (c *Coordinator) roundInfo() *protocol.RoundInfo {
	r := c.cur
	info := &protocol.RoundInfo{Round: r.ID, Seed: r.Seed, Recipe: c.cfg.Recipe, Model: c.cfg.Model, BaseSHA256: r.BaseModel,
		AdapterSHA256: r.BaseAdapter, AdapterURL: "/v1/blobs/" + r.BaseAdapter, Shapes: c.cfg.Shapes, Deadline: r.Deadline.UTC(),
		MaxUpdateBytes: c.cfg.MaxUpdateBytes, AdapterBytes: int64(4 * c.n)}
	if r.BaseModel != "" && r.BaseModel == c.base {
		// The worker downloads no more than the sizes declared here.
		info.BaseBytes, info.BaseFiles, info.TokenizerSHA256 = c.baseBytes, c.baseFiles, c.tokenizer
	} else if r.BaseModel != "" {
		if b, err := c.store.Blob(context.Background(), r.BaseModel); err == nil {
			info.BaseBytes = b.Size
		}
	}
	return info
}

// RejectError is a refused request: Status is the HTTP status, Code a
// short stable label (also the metrics reason), Msg names the problem.
type RejectError struct {
	Status int
	Code   string
	Msg    string
}

func (e *RejectError) Error() string { return e.Code + ": " + e.Msg }

func reject(status int, code, format string, args ...any) *RejectError {
	return &RejectError{Status: status, Code: code, Msg: fmt.Sprintf(format, args...)}
}

// maxStoredRejections bounds the rejected updates a worker can get recorded
// (and so listed in the ledger) per round.
const maxStoredRejections = 4

// Submit validates and records one signed update (the raw body). It
// returns a *RejectError for anything refused, leaving the round as it was.
func (c *Coordinator) Submit(ctx context.Context, body []byte) (protocol.UploadResponse, error) {
	resp, err := c.submit(ctx, body)
	var re *RejectError
	if errors.As(err, &re) {
		c.M.rejected(re.Code)
	} else if err == nil {
		c.M.updatesAccepted.Add(1)
		c.M.bytesReceived.Add(float64(len(body)))
	}
	return resp, err
}

func (c *Coordinator) submit(ctx context.Context, body []byte) (protocol.UploadResponse, error) {
	if int64(len(body)) > c.cfg.MaxUpdateBytes {
		return protocol.UploadResponse{}, reject(413, "too_large", "update of %d bytes exceeds max_update_bytes %d", len(body), c.cfg.MaxUpdateBytes)
	}
	if c.cfg.SecureAgg.Enabled {
		return protocol.UploadResponse{}, reject(409, "secure_round", "this coordinator runs secure aggregation: updates go masked through /v1/secagg/{stage}, never in the clear")
	}
	u, err := protocol.UnmarshalUpdate(body, c.n)
	if err != nil {
		if errors.Is(err, protocol.ErrUnsupportedVersion) {
			return protocol.UploadResponse{}, reject(400, "unsupported_version", "%v (this coordinator reads version %d)", err, protocol.Version2)
		}
		return protocol.UploadResponse{}, reject(400, "malformed", "%v", err)
	}
	w, err := c.store.Worker(ctx, u.WorkerID)
	if errors.Is(err, ErrNotFound) {
		return protocol.UploadResponse{}, reject(403, "unknown_worker", "worker %q is not registered", u.WorkerID)
	}
	if err != nil {
		return protocol.UploadResponse{}, err
	}
	if err := protocol.Verify(u, w.PublicKey); err != nil {
		return protocol.UploadResponse{}, reject(401, "bad_signature", "%v", err)
	}
	return c.record(ctx, u, body, int64(len(body)), sha256Hex(body))
}

// Accept takes an update that arrives already decoded from a trusted
// process of its own (the simulator's nodes) on an InMemory coordinator:
// the round policy is Submit's (round, cohort, duplicates, base adapter,
// codec, shapes, tokens, norm bound, late weighting) without the wire
// format, the signature or the stored bytes; the decoded delta u.Delta is
// kept in memory until the round aggregates. size is the bytes the update
// would have taken on the wire (for the records); the record's hash names
// the update (SHA-256 of its nonce and worker), not bytes.
func (c *Coordinator) Accept(ctx context.Context, u *protocol.Update, size int64) (protocol.UploadResponse, error) {
	if _, ok := c.updates.(*memContent); !ok {
		return protocol.UploadResponse{}, errors.New("coordinator: Accept needs an InMemory coordinator")
	}
	if u.Delta == nil || u.Delta.N != c.n {
		return protocol.UploadResponse{}, reject(400, "malformed", "update without a decoded delta of %d elements", c.n)
	}
	if _, err := c.store.Worker(ctx, u.WorkerID); err != nil {
		if errors.Is(err, ErrNotFound) {
			return protocol.UploadResponse{}, reject(403, "unknown_worker", "worker %q is not registered", u.WorkerID)
		}
		return protocol.UploadResponse{}, err
	}
	resp, err := c.record(ctx, u, nil, size, sha256Hex(append(u.Nonce[:], u.WorkerID...)))
	var re *RejectError
	if errors.As(err, &re) {
		c.M.rejected(re.Code)
	} else if err == nil {
		c.M.updatesAccepted.Add(1)
		c.M.bytesReceived.Add(float64(size))
	}
	return resp, err
}

// record applies the round policy to a decoded, authenticated update and
// stores it: body (its exact bytes) when it came over the wire, or its
// decoded delta in memory when body is nil (Accept).
func (c *Coordinator) record(ctx context.Context, u *protocol.Update, body []byte, size int64, hash string) (protocol.UploadResponse, error) {
	now := c.clock.Now()
	if err := c.store.TouchWorker(ctx, u.WorkerID, now); err != nil {
		return protocol.UploadResponse{}, err
	}
	norm := L2Norm(u.Delta)
	rec := UpdateRecord{Round: u.Round, WorkerID: u.WorkerID, SHA256: hash, Nonce: hex.EncodeToString(u.Nonce[:]),
		Bytes: size, Tokens: u.Tokens, FLOPs: u.FLOPs, EnergyWh: u.EnergyWh, Norm: norm, Received: now}
	if body != nil {
		rec.Signature = base64.StdEncoding.EncodeToString(u.Signature[:])
	}

	if seen, err := c.store.NonceSeen(ctx, rec.Nonce); err != nil {
		return protocol.UploadResponse{}, err
	} else if seen {
		return protocol.UploadResponse{}, reject(409, "replay", "nonce %s was already used", rec.Nonce)
	}
	// First pass under the lock: the cheap checks, so a doomed update is
	// never written to disk.
	c.mu.Lock()
	_, rerr := c.check(u, &rec, now)
	cur := c.cur.ID
	c.mu.Unlock()
	if rerr != nil {
		return protocol.UploadResponse{}, c.recordRejection(ctx, rec, rerr)
	}
	// Keep the exact bytes for aggregation and ledger re-verification;
	// written outside the lock (fsync), content-addressed so a retry is harmless.
	if body != nil {
		if _, err := c.updates.put(body); err != nil {
			return protocol.UploadResponse{}, err
		}
	}
	c.mu.Lock()
	late, rerr := c.check(u, &rec, now)
	if rerr == nil && c.cur.ID != cur {
		rerr = reject(409, "closed_round", "round %d closed while the update was stored", cur)
	}
	if rerr != nil {
		c.mu.Unlock()
		return protocol.UploadResponse{}, c.recordRejection(ctx, rec, rerr)
	}
	defer c.mu.Unlock()
	rec.Accepted, rec.Applied, rec.Late = true, c.cur.ID, late
	if err := c.store.AddUpdate(ctx, rec); err != nil {
		switch {
		case errors.Is(err, ErrReplay):
			return protocol.UploadResponse{}, reject(409, "replay", "nonce %s was already used", rec.Nonce)
		case errors.Is(err, ErrDuplicate):
			return protocol.UploadResponse{}, reject(409, "duplicate", "worker %q already has an accepted update for round %d", u.WorkerID, u.Round)
		}
		return protocol.UploadResponse{}, err
	}
	c.nAccepted++
	c.accepted[u.WorkerID] = true
	if body == nil {
		c.deltas[hash] = u.Delta
	}
	c.ev.accepted(c.cur, u.WorkerID, size, late)
	if c.nAccepted >= c.quorum() {
		select {
		case c.kick <- struct{}{}:
		default:
		}
	}
	return protocol.UploadResponse{Accepted: true, Round: u.Round, Reason: rec.Reason, LedgerIndex: uint64(c.ledgerLen())}, nil
}

// recordRejection stores a verified but refused update (accepted=false)
// so the round's ledger record lists it, at most maxStoredRejections per
// worker per round; replays are never stored (their nonce is taken).
func (c *Coordinator) recordRejection(ctx context.Context, rec UpdateRecord, rerr *RejectError) error {
	if rerr.Code == "replay" || rerr.Code == "duplicate" {
		return rerr
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.rejected[rec.WorkerID] >= maxStoredRejections || c.cur.State != StateCollecting {
		return rerr
	}
	rec.Accepted, rec.Applied, rec.Reason, rec.Weight = false, c.cur.ID, rerr.Error(), 0
	if len(rec.Reason) > ledger.MaxReasonLen {
		rec.Reason = rec.Reason[:ledger.MaxReasonLen]
	}
	if err := c.store.AddUpdate(ctx, rec); err == nil {
		c.rejected[rec.WorkerID]++
	}
	return rerr
}

// check applies the round policy to a parsed, verified update; mu is held.
// It fills rec.Weight and rec.Reason and reports whether the update is late.
func (c *Coordinator) check(u *protocol.Update, rec *UpdateRecord, now time.Time) (late bool, _ *RejectError) {
	r := c.cur
	switch {
	case u.Round == r.ID && r.State == StateCollecting:
		if !now.Before(r.Deadline) {
			if c.cfg.Late == LateReject || !now.Before(r.Deadline.Add(c.cfg.LateGrace)) {
				return false, reject(409, "late", "round %d's deadline %s has passed", r.ID, r.Deadline.UTC().Format(time.RFC3339))
			}
			late = true
		}
	case u.Round == r.ID:
		return false, reject(409, "closed_round", "round %d is %s, not collecting", r.ID, r.State)
	case u.Round > r.ID || u.Round == 0:
		return false, reject(409, "wrong_round", "round %d does not exist; the current round is %d", u.Round, r.ID)
	default:
		return false, reject(409, "closed_round", "round %d is closed; the current round is %d", u.Round, r.ID)
	}
	cohort, accepted, base := c.cohort, c.accepted, r.BaseAdapter
	if !cohort[u.WorkerID] {
		return false, reject(403, "not_in_cohort", "worker %q is not in round %d's cohort", u.WorkerID, u.Round)
	}
	if accepted[u.WorkerID] {
		return false, reject(409, "duplicate", "worker %q already has an accepted update for round %d", u.WorkerID, u.Round)
	}
	if got := hex.EncodeToString(u.BaseSHA256[:]); got != base {
		return false, reject(409, "base_mismatch", "update trained from adapter %s, round %d's adapter is %s", got, u.Round, base)
	}
	if u.Codec != c.cfg.Recipe.Codec {
		return false, reject(400, "codec_mismatch", "codec %q, round %d asks for %q", u.Codec, u.Round, c.cfg.Recipe.Codec)
	}
	if u.ShapesDigest != c.shapesDigest {
		return false, reject(400, "shape_mismatch", "wrong shapes: update's shapes digest %x differs from round %d's shapes (digest %x, %d tensors); fetch the round info and train on its shapes",
			u.ShapesDigest[:8], u.Round, c.shapesDigest[:8], len(c.cfg.Shapes))
	}
	if u.N != c.n {
		return false, reject(400, "shape_mismatch", "wrong shapes: update has %d elements, round %d's shapes have %d", u.N, u.Round, c.n)
	}
	if u.Tokens == 0 {
		return false, reject(400, "zero_tokens", "update claims 0 tokens trained")
	}
	if c.cfg.NormBound > 0 && rec.Norm > c.cfg.NormBound && c.cfg.NormPolicy == NormReject {
		return false, reject(422, "over_norm", "update L2 norm %.6g exceeds norm_bound %g", rec.Norm, c.cfg.NormBound)
	}
	rec.Weight = c.cfg.weight(u.Tokens, late)
	rec.Reason = ""
	if late {
		rec.Reason = fmt.Sprintf("%s after the deadline, weight x%g", LatePrefix, c.cfg.LateWeight)
	}
	return late, nil
}

// LatePrefix starts the ledger reason of a down-weighted late update;
// Recompute applies late_weight to exactly those entries.
const LatePrefix = "late:"

// ledgerReason cuts a reason to what a ledger entry holds.
func ledgerReason(s string) string {
	if len(s) > ledger.MaxReasonLen {
		s = s[:ledger.MaxReasonLen]
	}
	return s
}

// weight is an update's aggregation weight: tokens capped at the data
// budget (a worker cannot outweigh others by claiming more than it was
// asked to read), times late_weight when late.
func (c *Config) weight(tokens uint64, late bool) float64 {
	w := float64(tokens)
	if c.Recipe.MaxTokens > 0 && w > float64(c.Recipe.MaxTokens) {
		w = float64(c.Recipe.MaxTokens)
	}
	if late {
		w *= c.LateWeight
	}
	return w
}

// applyRound is the whole aggregation step, shared by the coordinator and
// Recompute: the aggregation rule (bound, then combine) and the server
// optimizer, in place on theta and st, whose norm reference moves to the
// round's accepted median. Errors wrapping ErrCannotAggregate mean the
// round fails; theta and st are then garbage.
func (c *Config) applyRound(theta []float32, cs []Contribution, st *OptState) (aggOutcome, error) {
	avg, out, err := c.combine(len(theta), cs, st.NormRef)
	if err != nil {
		return out, err
	}
	if err := c.Optimizer.Step(theta, avg, st); err != nil {
		return out, fmt.Errorf("%w: %v", ErrCannotAggregate, err)
	}
	st.NormRef = out.Median
	return out, nil
}

// aggregation is the ledger's description of applyRound's settings and
// of what it did: the bound it applied, the norm reference before and
// after (refAfter) and the result ("ok", or "failed: why" for a round
// that closed with its adapter unchanged).
func (c *Config) aggregation(optBefore, optAfter string, out aggOutcome, refAfter float64, result string) ledger.Aggregation {
	o := c.Optimizer
	return c.putPolicy(ledger.Aggregation{Method: c.Aggregator + "+" + o.Kind,
		Params: map[string]float64{"lr": o.LR, "momentum": o.Momentum, "beta1": o.Beta1, "beta2": o.Beta2, "eps": o.Eps,
			"norm_bound": c.NormBound, "norm_bound_factor": c.NormBoundFactor, "norm_bound_applied": out.Bound, "trim_fraction": c.TrimFraction,
			"norm_bound_max": c.NormBoundMax, "norm_reference": out.Reference, "norm_reference_after": refAfter,
			"late_weight": c.LateWeight, "max_tokens": float64(c.Recipe.MaxTokens)},
		Options: map[string]string{"weighting": "tokens", "norm_policy": c.NormPolicy, "codec": c.Recipe.Codec, "aggregator": c.Aggregator,
			"opt_state_before": optBefore, "opt_state_after": optAfter, "result": result}})
}

// Status is what GET /v1/status reports.
type Status struct {
	Round          uint64     `json:"round"`
	State          RoundState `json:"state"`
	Cohort         int        `json:"cohort"`
	Accepted       int        `json:"accepted"`
	Quorum         int        `json:"quorum"`
	Deadline       time.Time  `json:"deadline"`
	AdapterSHA256  string     `json:"adapter_sha256"`
	BaseSHA256     string     `json:"base_sha256"`
	Workers        int64      `json:"workers_registered"`
	LedgerRecords  int        `json:"ledger_records"`
	LedgerHead     string     `json:"ledger_head"`
	CoordinatorKey string     `json:"coordinator_key"`
	Done           bool       `json:"done"`
	Codec          string     `json:"codec"`
}

// Status reports the current round.
func (c *Coordinator) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.cur
	adapter := r.BaseAdapter
	if r.State == StateClosed {
		adapter = r.NewAdapter
	}
	return Status{Round: r.ID, State: r.State, Cohort: len(r.Cohort), Accepted: c.nAccepted, Quorum: c.quorum(), Deadline: r.Deadline,
		AdapterSHA256: adapter, BaseSHA256: c.base, Workers: c.M.workers.Load(), LedgerRecords: c.ledgerLen(), LedgerHead: c.ledgerHead(),
		CoordinatorKey: encodeKey(c.PublicKey()), Done: c.done, Codec: c.cfg.statusCodec()}
}

// Adapter returns a copy of the current global adapter vector and its hash.
func (c *Coordinator) Adapter() ([]float32, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	h := c.cur.BaseAdapter
	if c.cur.State == StateClosed {
		h = c.cur.NewAdapter
	}
	return slices.Clone(c.adapter), h
}

// Recompute returns the ledger.VerifyOptions.Recompute function for a
// coordinator directory and config: it re-aggregates a record's accepted
// updates (from DIR/updates) onto its AdapterBefore (from DIR/blobs) with
// the optimizer state named in the record, and returns the new adapter's
// hash. Each round is recomputed under the policy its record states
// (policyFor); cfg is the policy of records from before records stated
// theirs. Missing files give an error wrapping ledger.ErrNotStored.
func Recompute(dir string, cfg Config) func(ledger.Record) (string, error) {
	return func(rec ledger.Record) (string, error) {
		if err := cfg.Validate(); err != nil {
			return "", err
		}
		pol, err := cfg.policyFor(rec)
		if err != nil {
			return "", err
		}
		pc, n := pol.cfg, pol.n
		load := func(sub, hash string) ([]byte, error) {
			b, err := readContent(filepath.Join(dir, sub), hash)
			if notExist(err) {
				return nil, fmt.Errorf("%w: %v", ledger.ErrNotStored, err)
			}
			return b, err
		}
		b, err := load(blobsDir, rec.AdapterBefore)
		if err != nil {
			return "", err
		}
		theta, err := DecodeAdapter(b, n)
		if err != nil {
			return "", err
		}
		var st OptState
		if h := rec.Aggregation.Options["opt_state_before"]; h != "" {
			ob, err := load(blobsDir, h)
			if err != nil {
				return "", err
			}
			if err := st.UnmarshalBinary(ob); err != nil {
				return "", err
			}
		}
		if rec.Aggregation.Options["secure_aggregation"] != "" {
			return pc.recomputeSecure(rec, pol, theta, &st, func(h string) ([]byte, error) { return load(blobsDir, h) })
		}
		// The candidates are the updates the coordinator aggregated and
		// those its rule dropped; the rule must drop exactly the same.
		var cs []Contribution
		var entry []*ledger.UpdateEntry
		for i := range rec.Updates {
			e := &rec.Updates[i]
			if !e.Accepted && !strings.HasPrefix(e.Reason, DroppedPrefix) {
				continue
			}
			ub, err := load(updatesDir, e.UpdateHash)
			if err != nil {
				return "", err
			}
			u, err := protocol.UnmarshalUpdate(ub, n)
			if err != nil {
				return "", fmt.Errorf("update %s: %w", e.UpdateHash, err)
			}
			cs = append(cs, Contribution{Delta: u.Delta, Weight: pc.weight(u.Tokens, strings.HasPrefix(e.Reason, LatePrefix))})
			entry = append(entry, e)
		}
		if ref, ok := rec.Aggregation.Params["norm_reference"]; ok && ref != st.NormRef {
			return "", fmt.Errorf("the record's norm_reference %v is not the one in its optimizer state before the round (%v)", ref, st.NormRef)
		}
		out, err := pc.applyRound(theta, cs, &st)
		if ref, ok := rec.Aggregation.Params["norm_reference_after"]; ok && err == nil && ref != st.NormRef {
			return "", fmt.Errorf("the record's norm_reference_after %v is not the recomputed %v", ref, st.NormRef)
		}
		for i, e := range entry {
			if _, dropped := out.Dropped[i]; dropped == e.Accepted {
				return "", fmt.Errorf("update %s (worker %q): the record has accepted=%v, recomputing the norm bound %.6g gives the opposite", e.UpdateHash, e.WorkerID, e.Accepted, out.Bound)
			}
		}
		failed := strings.HasPrefix(rec.Aggregation.Options["result"], "failed")
		switch {
		case errors.Is(err, ErrCannotAggregate) && failed:
			return rec.AdapterBefore, nil // failed rounds keep their adapter
		case err != nil:
			return "", err
		case failed:
			return "", fmt.Errorf("the record says the round failed (%s), but recomputing it succeeds", rec.Aggregation.Options["result"])
		}
		return sha256Hex(EncodeAdapter(theta)), nil
	}
}

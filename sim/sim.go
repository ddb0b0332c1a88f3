package sim

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"slices"
	"time"

	"github.com/opencluster/opencluster/compress"
	"github.com/opencluster/opencluster/coordinator"
	"github.com/opencluster/opencluster/protocol"
)

// Organisers.
const (
	OrganiserCentral = "central" // a coordinator in a data center
	OrganiserRandom  = "random"  // a reachable volunteer, drawn each round
)

// Config is one simulation.
type Config struct {
	// Nodes is the registered population; Rounds the rounds to run;
	// Cohort the updates a round waits for (the coordinator's quorum).
	Nodes, Rounds, Cohort int
	// OverCommit: the coordinator picks ceil(Cohort x OverCommit) nodes so
	// that stragglers and dropouts do not hold a round up (Bonawitz et al.
	// 2019 select 130% of the target).
	OverCommit float64
	// MinUpdates is the share of Cohort a round needs at its deadline.
	MinUpdates float64
	Seed       uint64
	Organiser  string
	Job        Job
	Tables     *Tables
	Population PopulationConfig
	// Trace, when set, is a population trace (see ReadPopulation) used
	// instead of drawing; Windows an availability-window trace (see
	// WindowReader) that replaces the diurnal model.
	Trace   *Population
	Windows *WindowReader
	// GPUUtil and CPUUtil are the shares of peak FLOPS training sustains.
	GPUUtil, CPUUtil float64
	// CoordinatorMbps is the central coordinator's link, each direction.
	CoordinatorMbps float64
	// RTT is the seconds a request costs before its bytes flow.
	RTT float64
	// FailRate is the chance that a node crashes or loses its connection
	// during a round, at a uniformly drawn point of its work.
	FailRate float64
	// PSUEfficiency turns the machines' DC power into power at the wall.
	PSUEfficiency float64
	// Round policy handed to the coordinator (coordinator.Config's keys).
	Deadline, LateGrace, SeenWithin time.Duration
	Late                            string
	LateWeight                      float64
	NormBound, NormBoundFactor      float64
	NormPolicy, Aggregator          string
	Optimizer                       coordinator.ServerOptimizer
	// ProxyDim is the length of the vector the coordinator aggregates in
	// place of the real adapter (see docs/simulation.md).
	ProxyDim int
	// Start is the virtual time the run starts at.
	Start      time.Time
	DataCenter DataCenter
	// TreeFanout is the fan-out of the tree-aggregation estimate.
	TreeFanout int
	// MaxVirtual stops a run whose virtual time passes it (a round that
	// cannot close, e.g. a home uplink sending the model to 10,000 nodes).
	MaxVirtual time.Duration
	// Sink receives dashboard events (web.Hub is one); nil: none.
	Sink coordinator.EventSink
	// SnapshotNodes bounds the nodes a snapshot lists (a million nodes
	// would be a 100 MB event).
	SnapshotNodes int
	// OnRound is called with each round's figures, in round order.
	OnRound func(protocol.RoundSummary)
}

// DefaultConfig is a run of the defaults docs/simulation.md describes;
// the caller sets Job and Tables.
func DefaultConfig() Config {
	cc := coordinator.DefaultConfig()
	return Config{Nodes: 10000, Rounds: 10, Cohort: 1000, OverCommit: 1.3, MinUpdates: 0.5, Seed: 1, Organiser: OrganiserCentral,
		Population: DefaultPopulation(), GPUUtil: 0.25, CPUUtil: 0.37, CoordinatorMbps: 10000, RTT: 0.1, FailRate: 0.02,
		PSUEfficiency: 0.9, Deadline: 30 * time.Minute, LateGrace: cc.LateGrace, SeenWithin: cc.SeenWithin, Late: cc.Late,
		LateWeight: cc.LateWeight, NormBound: cc.NormBound, NormBoundFactor: cc.NormBoundFactor, NormPolicy: cc.NormPolicy,
		Aggregator: cc.Aggregator, Optimizer: cc.Optimizer, ProxyDim: 16,
		Start: time.Date(2025, 1, 6, 0, 0, 0, 0, time.UTC), DataCenter: DefaultDataCenter(), TreeFanout: 32, SnapshotNodes: 20000,
		MaxVirtual: 30 * 24 * time.Hour}
}

// Validate names the first setting that is out of range, by its flag.
func (c *Config) Validate() error {
	n := c.Nodes
	if c.Trace != nil {
		n = len(c.Trace.Nodes)
	}
	switch {
	case n < 1:
		return fmt.Errorf("--nodes %d: want at least 1", c.Nodes)
	case c.Rounds < 1:
		return fmt.Errorf("--rounds %d: want at least 1", c.Rounds)
	case c.Cohort < 1:
		return fmt.Errorf("--cohort %d: want at least 1", c.Cohort)
	case c.Cohort > n:
		return fmt.Errorf("--cohort %d is larger than the population (%d nodes)", c.Cohort, n)
	case !(c.OverCommit >= 1 && c.OverCommit <= 10):
		return fmt.Errorf("--over-commit %v: want 1..10", c.OverCommit)
	case !(c.MinUpdates > 0 && c.MinUpdates <= 1):
		return fmt.Errorf("--min-updates %v: want a share of the cohort in (0, 1]", c.MinUpdates)
	case c.Organiser != OrganiserCentral && c.Organiser != OrganiserRandom:
		return fmt.Errorf("--organiser %q: want central or random", c.Organiser)
	case !(c.GPUUtil > 0 && c.GPUUtil <= 1):
		return fmt.Errorf("--gpu-util %v: want a share of peak in (0, 1]", c.GPUUtil)
	case !(c.CPUUtil > 0 && c.CPUUtil <= 1):
		return fmt.Errorf("--cpu-util %v: want a share of peak in (0, 1]", c.CPUUtil)
	case !(c.CoordinatorMbps > 0) || math.IsInf(c.CoordinatorMbps, 0):
		return fmt.Errorf("--coordinator-mbps %v: want > 0", c.CoordinatorMbps)
	case !(c.RTT >= 0 && c.RTT < 60):
		return fmt.Errorf("--rtt %v: want seconds in [0, 60)", c.RTT)
	case !(c.FailRate >= 0 && c.FailRate <= 1):
		return fmt.Errorf("--fail-rate %v: want a probability in [0, 1]", c.FailRate)
	case !(c.PSUEfficiency > 0 && c.PSUEfficiency <= 1):
		return fmt.Errorf("--psu-efficiency %v: want (0, 1]", c.PSUEfficiency)
	case c.Deadline <= 0:
		return fmt.Errorf("--deadline %v: want > 0", c.Deadline)
	case c.ProxyDim < 1 || c.ProxyDim > 1<<16:
		return fmt.Errorf("proxy dimension %d: want 1..65536", c.ProxyDim)
	case c.MaxVirtual <= 0:
		return fmt.Errorf("--max-days %v: want > 0", c.MaxVirtual.Hours()/24)
	case c.TreeFanout < 2:
		return fmt.Errorf("--tree-fanout %d: want at least 2", c.TreeFanout)
	case c.Tables == nil:
		return errors.New("sim: no tables")
	case c.Job.AdapterElems == 0:
		return errors.New("sim: no job")
	}
	return c.Population.Validate()
}

// Result is a run's totals.
type Result struct {
	Summary protocol.RunSummary `json:"summary"`
	// Eligible is how many nodes can take the job at all; OnGPU of them on
	// their GPU (the rest on their CPU).
	Eligible int `json:"eligible"`
	OnGPU    int `json:"on_gpu"`
	// Rounds that closed without a new model, and updates refused by
	// reason (late and closed_round are stragglers).
	FailedRounds int            `json:"failed_rounds"`
	Refused      map[string]int `json:"refused"`
	Selected     int            `json:"selected"`
	Completed    int            `json:"completed"`
	Dropped      int            `json:"dropped"`
	Late         int            `json:"late"`
	BytesUp      int64          `json:"bytes_up"`
	BytesDown    int64          `json:"bytes_down"`
	// MeanRoundS is the mean round duration.
	MeanRoundS float64 `json:"mean_round_s"`
	// Tree is what tree-shaped aggregation would do to a round's transfers.
	Tree TreeEstimate `json:"tree"`
	// Events is how many events the run processed.
	Events uint64 `json:"events"`
	// Stopped says why the run ended before its last round ("" if it did not).
	Stopped string `json:"stopped,omitempty"`
}

// Sim is one simulation in progress.
type Sim struct {
	cfg   Config
	pop   *Population
	ids   []string
	clock *virtualClock
	coord *coordinator.Coordinator
	store *popStore
	q     queue
	ctx   context.Context

	eligible []bool
	fits     map[fitKey]fitPlan // train.PlanMemory's answer per memory size
	// cache of the availability model: a node is online before onUntil
	// and offline before offUntil (a lower bound on its next window).
	onUntil, offUntil []float64
	lastSeen          []float64
	traceUntil        []float64 // with a windows trace

	parts   []*part  // the active participation of each node, or nil
	nParts  int      // how many are active
	partSeq []uint32 // per node, numbers its participations
	member  []uint64 // per node, the last round that selected it
	pending map[int32]uint64
	avail   []string // reused by available
	// width is the digits of generated ids (n000042); 0 for trace ids.
	width int

	rounds map[uint64]*roundStats
	order  []uint64 // rounds in the order they opened
	curID  uint64
	tick   float64 // the pending tick's time (0: none)
	digest [32]byte
	res    Result
	seen   roundView // the coordinator's round as step last followed it
	// lastClose is when the last round closed (the run's start at first):
	// the next round opens then.
	lastClose float64
}

// roundView is what step compares to see that the coordinator moved.
type roundView struct {
	id       uint64
	state    coordinator.RoundState
	deadline time.Time
	cohort   int
}

// part is one node's work for one round.
type part struct {
	node   int32
	seq    uint32
	round  *roundStats
	start  float64
	dropAt float64
	// compute phase, once known
	cStart, cEnd float64
	rate         float64 // FLOPs/s
	computeW     float64 // wall power while training
	idleW        float64 // wall power otherwise
	downOwn      float64 // when the node's link finished the download
	upOwn        float64
}

type roundStats struct {
	sum       protocol.RoundSummary
	opened    float64
	closed    float64 // 0 while open
	active    int     // participations not yet over
	organiser int32   // -1: central
	upMbps    float64 // organiser uplink (model out)
	downMbps  float64 // organiser downlink (updates in)
	upFree    float64 // when the organiser's uplink finishes what is queued
	downFree  float64
	base      [32]byte
	grid      float64 // sum of grid g/kWh over participations, for the mean
	gridN     int
	energyJ   float64
	co2g      float64
	done      bool
}

// Run simulates cfg and returns its totals.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	s, err := New(cfg)
	if err != nil {
		return nil, err
	}
	return s.Run(ctx)
}

// New draws (or takes) the population and opens the coordinator.
func New(cfg Config) (*Sim, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	pop := cfg.Trace
	if pop == nil {
		var err error
		if pop, err = Draw(cfg.Tables, cfg.Population, cfg.Nodes, cfg.Seed); err != nil {
			return nil, err
		}
	}
	n := len(pop.Nodes)
	s := &Sim{cfg: cfg, pop: pop, clock: &virtualClock{t: fromTime(cfg.Start)}, lastClose: fromTime(cfg.Start), ctx: context.Background(),
		eligible: make([]bool, n), onUntil: make([]float64, n), offUntil: make([]float64, n), lastSeen: make([]float64, n),
		fits: map[fitKey]fitPlan{}, parts: make([]*part, n), partSeq: make([]uint32, n), member: make([]uint64, n), pending: map[int32]uint64{}, rounds: map[uint64]*roundStats{},
		res: Result{Refused: map[string]int{}}}
	s.ids = pop.WorkerIDs()
	if pop.IDs == nil {
		s.width = len(s.ids[0]) - 1
	}
	for i := range pop.Nodes {
		rate, _, _, gpu := s.capability(i)
		s.eligible[i] = rate > 0
		if rate > 0 {
			s.res.Eligible++
			if gpu {
				s.res.OnGPU++
			}
		}
	}
	if s.res.Eligible < cfg.Cohort {
		_, _, gpu := cfg.Job.Fit(0, true)
		_, _, cpu := cfg.Job.Fit(0, false)
		return nil, fmt.Errorf("--cohort %d: only %d of the %d nodes can hold the %s job (at least %.1f GB on a GPU or %.1f GB of RAM)",
			cfg.Cohort, s.res.Eligible, n, cfg.Job.Model, float64(gpu)/1e9, float64(cpu)/1e9)
	}
	if cfg.Windows != nil {
		s.traceUntil = make([]float64, n)
		if err := s.nextWindow(); err != nil {
			return nil, err
		}
	}
	s.store = &popStore{MemStore: coordinator.NewMemStore(), s: s}
	s.store.Keep = 2
	cc := coordinator.DefaultConfig()
	cc.Model = cfg.Job.Model
	cc.Shapes = []protocol.Shape{{Name: "sim.proxy", Dims: []int{cfg.ProxyDim}}}
	cc.Seed = cfg.Seed
	cc.CohortSize = min(int(math.Ceil(float64(cfg.Cohort)*cfg.OverCommit)), s.res.Eligible)
	cc.Quorum = cfg.Cohort
	cc.MinUpdates = max(1, int(math.Ceil(float64(cfg.Cohort)*cfg.MinUpdates)))
	cc.MinWorkers = cfg.Cohort
	cc.RoundTimeout, cc.SeenWithin, cc.LateGrace = cfg.Deadline, cfg.SeenWithin, cfg.LateGrace
	cc.MaxRounds = uint64(cfg.Rounds)
	cc.Recipe = protocol.Recipe{Steps: cfg.Job.Steps, LR: 1e-2, BatchTokens: cfg.Job.TokensPerStep, Codec: cfg.Job.Codec}
	cc.Late, cc.LateWeight = cfg.Late, cfg.LateWeight
	cc.NormBound, cc.NormBoundFactor, cc.NormPolicy = cfg.NormBound, cfg.NormBoundFactor, cfg.NormPolicy
	cc.Aggregator, cc.Optimizer = cfg.Aggregator, cfg.Optimizer
	s.digest = protocol.ShapesDigest(cc.Shapes)
	key := ed25519.NewKeyFromSeed(hashSeed(cfg.Seed))
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	c, err := coordinator.New(s.ctx, cc, coordinator.Options{InMemory: true, Store: s.store, Key: key, Clock: s.clock, Logger: quiet})
	if err != nil {
		return nil, fmt.Errorf("sim: %w", err)
	}
	s.coord = c
	return s, nil
}

func hashSeed(seed uint64) []byte {
	b := make([]byte, ed25519.SeedSize)
	for i := 0; i < len(b); i += 8 {
		h := hash(seed, uint64(i))
		for j := 0; j < 8; j++ {
			b[i+j] = byte(h >> (8 * j))
		}
	}
	return b
}

// Population is the population the run uses.
func (s *Sim) Population() *Population { return s.pop }

// capability is what node i brings to the job: FLOPs/s, wall power while
// training and otherwise, and whether it trains on its GPU; rate 0 means
// the job fits neither its GPU nor its RAM.
func (s *Sim) capability(i int) (rate, computeW, idleW float64, onGPU bool) {
	nd := &s.pop.Nodes[i]
	h := s.pop.T.Hosts[nd.Host]
	eff := s.cfg.PSUEfficiency
	if nd.GPU >= 0 {
		g := s.pop.T.GPUs[nd.GPU]
		if p := s.fit(int64(g.VRAMGB*1e9), true); g.Usable() && p.fits {
			// Under a power cap the clock drops; dynamic power goes as
			// f·V² with V about proportional to f, so f ~ cap^(1/3).
			capW := g.TDPW * float64(nd.PowerCap)
			rate = g.PeakFLOPS() * s.cfg.GPUUtil * math.Cbrt(float64(nd.PowerCap)) / p.recompute
			return rate, (capW + h.IdleW) / eff, (h.IdleW + gpuIdleW) / eff, true
		}
	}
	if p := s.fit(int64(h.RAMGB*1e9*ramUsable), false); p.fits {
		idle := h.IdleW
		if nd.GPU >= 0 && s.pop.T.GPUs[nd.GPU].TDPW > 0 {
			idle += gpuIdleW
		}
		return h.PeakFLOPS() * s.cfg.CPUUtil / p.recompute, (h.LoadW + idle - h.IdleW) / eff, idle / eff, false
	}
	return 0, 0, 0, false
}

type fitKey struct {
	budget int64
	cuda   bool
}

// fitPlan is whether the job fits a memory size, and the slowdown of its
// plan: activation checkpointing runs each forward twice, and the forward
// is about half of a QLoRA step's FLOPs (2N of 4N), so a step costs 1.5x.
type fitPlan struct {
	fits      bool
	recompute float64
}

// fit asks train's memory model once per distinct memory size.
func (s *Sim) fit(budget int64, cuda bool) fitPlan {
	k := fitKey{budget, cuda}
	if p, ok := s.fits[k]; ok {
		return p
	}
	fits, ckpt, _ := s.cfg.Job.Fit(budget, cuda)
	p := fitPlan{fits: fits, recompute: 1}
	if ckpt {
		p.recompute = 1.5
	}
	s.fits[k] = p
	return p
}

// gpuIdleW is a graphics card's idle board power; ramUsable the share of
// RAM a job may take on a machine its owner also uses. Assumptions.
const (
	gpuIdleW  = 15
	ramUsable = 0.75
)

// online reports whether node i is available at t, through the cache.
func (s *Sim) online(i int, t float64) bool {
	if s.traceUntil != nil {
		return t < s.traceUntil[i]
	}
	if t < s.onUntil[i] {
		return true
	}
	if t < s.offUntil[i] {
		return false
	}
	until := s.pop.OnlineUntil(i, t)
	if until > t {
		s.onUntil[i] = until
		return true
	}
	// Offline: not before the next start of its idle or budget window.
	nd := &s.pop.Nodes[i]
	local := t + s.pop.T.Regions[nd.Region].UTCOffsetH*3600
	h := math.Mod(math.Mod(local, day)+day, day) / 3600
	next := 24 - hoursSince(h, float64(nd.IdleStart))
	if nd.BudgetStart != nd.BudgetEnd {
		next = math.Min(next, 24-hoursSince(h, float64(nd.BudgetStart)))
	}
	s.offUntil[i] = t + math.Max(next*3600, 1)
	return false
}

// onlineUntil is when node i, online at t, goes offline.
func (s *Sim) onlineUntil(i int, t float64) float64 {
	if s.traceUntil != nil {
		return s.traceUntil[i]
	}
	if !s.online(i, t) {
		return t
	}
	return s.onUntil[i]
}

// available lists the nodes the coordinator has seen since `since`: those
// polling now (online, not busy training), and those whose last contact
// (a poll before going offline, a finished upload) is that recent. It is
// the population's answer to Store.WorkerIDs, in id order.
func (s *Sim) available(since float64) []string {
	now := s.clock.t
	out := s.avail[:0]
	defer func() { s.avail = out }()
	for i := range s.ids {
		if !s.eligible[i] {
			continue
		}
		if s.parts[i] == nil && s.online(i, now) {
			out = append(out, s.ids[i])
			continue
		}
		last := s.lastSeen[i]
		if s.traceUntil == nil && s.onUntil[i] <= now {
			last = math.Max(last, s.onUntil[i]) // it polled until it went offline
		} else if s.traceUntil != nil && s.traceUntil[i] <= now {
			last = math.Max(last, s.traceUntil[i])
		}
		if last >= since && last > 0 {
			out = append(out, s.ids[i])
		}
	}
	return out // the coordinator copies what it keeps (PickCohort clones)
}

// index finds a node by id: generated ids are parsed, trace ids (which
// increase) searched.
func (s *Sim) index(id string) (int, bool) {
	if s.width > 0 {
		if len(id) != s.width+1 || id[0] != 'n' {
			return 0, false
		}
		i := 0
		for _, c := range id[1:] {
			if c < '0' || c > '9' {
				return 0, false
			}
			i = 10*i + int(c-'0')
		}
		return i, i < len(s.ids)
	}
	return slices.BinarySearch(s.ids, id)
}

// Run runs the simulation to its last round and returns the totals.
func (s *Sim) Run(ctx context.Context) (*Result, error) {
	s.ctx = ctx
	s.emitSnapshot()
	if err := s.step(); err != nil {
		return nil, err
	}
	for s.q.len() > 0 {
		if s.res.Events%4096 == 0 && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		e := s.q.pop()
		if e.t-fromTime(s.cfg.Start) > s.cfg.MaxVirtual.Seconds() {
			st := s.coord.Status()
			s.res.Stopped = fmt.Sprintf("round %d had not closed after %s of virtual time (--max-days): %d of the %d updates it waits for had arrived after its deadline passed %d time(s)",
				st.Round, Seconds(s.cfg.MaxVirtual.Seconds()), st.Accepted, st.Quorum, s.coord.CurrentRound().Extensions)
			s.flushRounds()
			return s.finish(), nil
		}
		s.res.Events++
		s.clock.t = math.Max(s.clock.t, e.t)
		if err := s.handle(e); err != nil {
			return nil, err
		}
		if s.coord.Done() && s.nParts == 0 {
			break
		}
	}
	if !s.coord.Done() {
		return nil, fmt.Errorf("sim: the run stopped at round %d of %d with no event left (not enough available nodes?)", s.curID, s.cfg.Rounds)
	}
	s.flushRounds()
	return s.finish(), nil
}

func (s *Sim) schedule(t float64, kind uint8, node int32, seq uint32) {
	s.q.push(event{t: t, kind: kind, node: node, part: seq})
}

func (s *Sim) handle(e event) error {
	switch e.kind {
	case evTick:
		if e.t != s.tick {
			return nil // superseded
		}
		s.tick = 0
		return s.step()
	case evWindow:
		return s.nextWindow()
	}
	p := s.parts[e.node]
	if p == nil || p.seq != e.part {
		return nil // from a participation that is over
	}
	t := s.clock.t
	switch e.kind {
	case evDrop:
		s.end(p, t, false)
		s.setNode(p, protocol.NodeDropped)
		if !p.round.done && p.round.closed == 0 {
			p.round.sum.Dropped++
		}
		s.lastSeen[p.node] = t
		s.afterPart(p.node)
	case evDownOwn:
		p.downOwn = t
		r := p.round
		done := linkQueue(&r.upFree, t, s.cfg.Job.DownBytes, r.upMbps)
		if done > t {
			s.schedule(done, evDownDone, p.node, p.seq)
			return nil
		}
		fallthrough
	case evDownDone:
		p.round.sum.BytesDown += s.cfg.Job.DownBytes
		if !s.pop.Nodes[p.node].BaseCached {
			p.round.sum.BytesDown += s.cfg.Job.BaseBytes
			s.pop.Nodes[p.node].BaseCached = true
		}
		s.transfer(p, "down", s.cfg.Job.DownBytes, t-p.start)
		p.cStart = t
		p.cEnd = t + s.cfg.Job.FLOPs()/p.rate
		s.setNode(p, protocol.NodeComputing)
		s.schedule(p.cEnd, evComputeDone, p.node, p.seq)
	case evComputeDone:
		s.setNode(p, protocol.NodeSending)
		own := s.cfg.RTT + float64(s.cfg.Job.UpBytes)*8/(float64(s.pop.Nodes[p.node].UpMbps)*1e6)
		s.schedule(t+own, evUpOwn, p.node, p.seq)
	case evUpOwn:
		p.upOwn = t
		r := p.round
		done := linkQueue(&r.downFree, t, s.cfg.Job.UpBytes, r.downMbps)
		if done > t {
			s.schedule(done, evArrive, p.node, p.seq)
			return nil
		}
		fallthrough
	case evArrive:
		return s.arrive(p, t)
	}
	return nil
}

// begin starts node i's work for round r at t.
func (s *Sim) begin(i int32, r *roundStats, t float64) {
	r.sum.Selected++
	s.member[i] = r.sum.Round
	s.partSeq[i]++
	p := &part{node: i, seq: s.partSeq[i], round: r, start: t}
	s.parts[i] = p
	s.nParts++
	r.active++
	if !s.online(int(i), t) {
		// Seen within seen_within but gone since: it never takes the round.
		p.dropAt = t
		s.schedule(t, evDrop, i, p.seq)
		return
	}
	p.rate, p.computeW, p.idleW, _ = s.capability(int(i))
	nd := &s.pop.Nodes[i]
	j := s.cfg.Job
	down := float64(j.DownBytes)
	if !nd.BaseCached {
		down += float64(j.BaseBytes)
	}
	own := s.cfg.RTT + down*8/(float64(nd.DownMbps)*1e6)
	work := own + j.FLOPs()/p.rate + s.cfg.RTT + float64(j.UpBytes)*8/(float64(nd.UpMbps)*1e6)
	p.dropAt = s.onlineUntil(int(i), t)
	if u := unit(hash(s.cfg.Seed, tagFail, uint64(i), uint64(r.sum.Round), uint64(p.seq))); u < s.cfg.FailRate {
		p.dropAt = math.Min(p.dropAt, t+work*u/s.cfg.FailRate)
	}
	s.setNode(p, protocol.NodeReceiving)
	if p.dropAt < math.Inf(1) {
		s.schedule(p.dropAt, evDrop, i, p.seq)
	}
	s.schedule(t+own, evDownOwn, i, p.seq)
}

// end closes participation p at t, charging its energy to its round.
func (s *Sim) end(p *part, t float64, arrived bool) {
	s.parts[p.node] = nil
	s.nParts--
	r := p.round
	r.active--
	compute := 0.0
	if p.cEnd > p.cStart {
		compute = math.Max(0, math.Min(t, p.cEnd)-p.cStart)
	}
	j := p.computeW*compute + p.idleW*math.Max(0, t-p.start-compute)
	g := s.pop.T.Regions[s.pop.Nodes[p.node].Region].GridG
	r.energyJ += j
	r.co2g += j / 3.6e6 * g
	r.grid += g
	r.gridN++
	if arrived {
		r.sum.BytesUp += s.cfg.Job.UpBytes
	}
	if r.closed != 0 && r.active == 0 {
		s.flushRounds()
	}
}

// afterPart lets a node picked while it was busy start the round it was
// picked for, as a real worker polls again right after its upload.
func (s *Sim) afterPart(i int32) {
	id, ok := s.pending[i]
	if !ok {
		return
	}
	delete(s.pending, i)
	if r := s.rounds[id]; r != nil && r.closed == 0 && id == s.curID {
		s.begin(i, r, s.clock.t)
	}
}

func (s *Sim) arrive(p *part, t float64) error {
	s.end(p, t, true)
	s.transfer(p, "up", s.cfg.Job.UpBytes, t-p.cEnd)
	s.lastSeen[p.node] = t
	u := s.update(p)
	resp, err := s.coord.Accept(s.ctx, u, s.cfg.Job.UpBytes)
	var re *coordinator.RejectError
	switch {
	case err == nil && resp.Accepted:
		p.round.sum.Completed++
		p.round.sum.FLOPs += s.cfg.Job.FLOPs()
		s.setNode(p, protocol.NodeDone)
	case errors.As(err, &re):
		s.res.Refused[re.Code]++
		if re.Code == "late" || re.Code == "closed_round" {
			s.setNode(p, protocol.NodeLate)
		} else {
			s.setNode(p, protocol.NodeDropped)
		}
	case err != nil:
		return err
	}
	s.afterPart(p.node)
	return s.step()
}

// update is node p's update as the coordinator's Accept takes it: the
// round's header fields and a proxy delta whose norm is drawn from
// lognormal(1, 0.5) around a direction shared by the round, so that the
// norm bound and the aggregator see a realistic spread.
func (s *Sim) update(p *part) *protocol.Update {
	r := p.round
	d := s.cfg.ProxyDim
	st := newStream(s.cfg.Seed, tagDelta, uint64(p.node), uint64(r.sum.Round), uint64(p.seq))
	v := make([]float32, d)
	var norm float64
	for k := range v {
		x := 1 + 0.5*st.norm()
		v[k] = float32(x)
		norm += x * x
	}
	scale := math.Exp(0.5*st.norm()) / math.Sqrt(norm) * 1e-2
	for k := range v {
		v[k] *= float32(scale)
	}
	u := &protocol.Update{Round: r.sum.Round, WorkerID: s.ids[p.node], BaseSHA256: r.base, N: d, ShapesDigest: s.digest,
		Codec: s.cfg.Job.Codec, Seed: r.sum.Round, Tokens: uint64(s.cfg.Job.TokensPerStep * s.cfg.Job.Steps),
		FLOPs: s.cfg.Job.FLOPs(), Delta: &compress.Sparse{N: d, Values: v}}
	h := hash(s.cfg.Seed, uint64(p.node), r.sum.Round, uint64(p.seq))
	for k := 0; k < 8; k++ {
		u.Nonce[k] = byte(h >> (8 * k))
		u.Nonce[8+k] = byte(uint64(p.node) >> (8 * k))
	}
	return u
}

// step runs the coordinator's state machine at the current time and
// follows what it did: a closed round, a new cohort, a new deadline.
func (s *Sim) step() error {
	if err := s.coord.Step(s.ctx); err != nil {
		return err
	}
	now := s.clock.t
	st := s.coord.Status()
	if cur := s.rounds[s.curID]; cur != nil && cur.closed == 0 && (st.Round > s.curID || st.Done) {
		s.closeRound(cur, now)
	}
	if st.Done {
		return nil
	}
	// Copying the cohort costs O(cohort): only when the round, its state,
	// its deadline or its cohort changed.
	seen := roundView{st.Round, st.State, st.Deadline, st.Cohort}
	if seen == s.seen {
		return nil
	}
	s.seen = seen
	r := s.coord.CurrentRound()
	switch r.State {
	case coordinator.StateCollecting:
		rs := s.rounds[r.ID]
		if rs == nil {
			rs = s.openRound(r, now)
		}
		for _, id := range r.Cohort {
			i, ok := s.index(id)
			if !ok {
				return fmt.Errorf("sim: the coordinator picked %q, not a node of this population", id)
			}
			if s.member[i] == r.ID {
				continue
			}
			if s.parts[i] != nil {
				s.member[i] = r.ID
				rs.sum.Selected++
				s.pending[int32(i)] = r.ID
				continue
			}
			s.begin(int32(i), rs, now)
		}
		dl := fromTime(r.Deadline)
		if s.cfg.Late == coordinator.LateDownweight {
			s.setTick(dl)
			if now >= dl {
				s.setTick(dl + s.cfg.LateGrace.Seconds())
			}
		} else {
			s.setTick(dl)
		}
	case coordinator.StateOpen:
		s.setTick(now + 60) // waiting for enough available workers
	}
	return nil
}

// setTick schedules the coordinator's next Step at t unless one is due
// sooner.
func (s *Sim) setTick(t float64) {
	if t <= s.clock.t {
		t = s.clock.t + 1
	}
	if s.tick != 0 && s.tick <= t && s.tick > s.clock.t {
		return
	}
	s.tick = t
	s.q.push(event{t: t, kind: evTick})
}

func (s *Sim) openRound(r coordinator.Round, now float64) *roundStats {
	rs := &roundStats{opened: now, organiser: -1, upMbps: s.cfg.CoordinatorMbps, downMbps: s.cfg.CoordinatorMbps}
	rs.opened = s.lastClose
	rs.sum = protocol.RoundSummary{Round: r.ID, Organiser: "coordinator", EnergySource: "simulated"}
	if b, err := hex.DecodeString(r.BaseAdapter); err == nil {
		copy(rs.base[:], b)
	}
	rs.upFree, rs.downFree = now, now
	if s.cfg.Organiser == OrganiserRandom {
		// As a ledger head would: the seed comes from the round's base
		// adapter, which the previous round published.
		var pool []int32
		for i := range s.ids {
			if s.eligible[i] && s.pop.Nodes[i].Reachable && s.online(i, now) {
				pool = append(pool, int32(i))
			}
		}
		if len(pool) > 0 {
			h := hash(s.cfg.Seed, tagOrganiser, uint64(rs.base[0])|uint64(rs.base[1])<<8|uint64(rs.base[2])<<16|uint64(rs.base[3])<<24, r.ID)
			o := pool[h%uint64(len(pool))]
			nd := &s.pop.Nodes[o]
			rs.organiser, rs.upMbps, rs.downMbps = o, float64(nd.UpMbps), float64(nd.DownMbps)
			rs.sum.Organiser = s.ids[o]
		}
	}
	s.rounds[r.ID] = rs
	s.order = append(s.order, r.ID)
	s.curID = r.ID
	s.emitPhase(rs, protocol.PhasePropagate, fromTime(r.Deadline))
	return rs
}

func (s *Sim) closeRound(rs *roundStats, now float64) {
	rs.closed = now
	s.lastClose = now
	rs.sum.Late = rs.active
	for i := range s.pending {
		if s.pending[i] == rs.sum.Round {
			delete(s.pending, i)
			rs.sum.Late++
		}
	}
	rs.sum.DurationS = now - rs.opened
	if rec, err := s.store.Round(s.ctx, rs.sum.Round); err == nil && rec.Note != "" && rec.NewAdapter == rec.BaseAdapter {
		rs.sum.Failed, rs.sum.Reason = true, rec.Note
	}
	if rs.organiser >= 0 {
		// The organiser's machine is on and moving data for the whole round.
		_, _, idle, _ := s.capability(int(rs.organiser))
		if idle == 0 {
			idle = s.pop.T.Hosts[s.pop.Nodes[rs.organiser].Host].IdleW / s.cfg.PSUEfficiency
		}
		j := idle * rs.sum.DurationS
		rs.energyJ += j
		rs.co2g += j / 3.6e6 * s.pop.T.Regions[s.pop.Nodes[rs.organiser].Region].GridG
	}
	s.emitPhase(rs, protocol.PhaseClosed, 0)
	if rs.active == 0 {
		s.flushRounds()
	}
}

// flushRounds reports the closed rounds whose every participation is over,
// in round order.
func (s *Sim) flushRounds() {
	for len(s.order) > 0 {
		rs := s.rounds[s.order[0]]
		if rs.closed == 0 || rs.active > 0 {
			return
		}
		s.order = s.order[1:]
		rs.done = true
		sum := &rs.sum
		sum.EnergyKWh = rs.energyJ / 3.6e6
		co2 := rs.co2g / 1000
		sum.CO2Kg = &co2
		if rs.gridN > 0 {
			mean := rs.grid / float64(rs.gridN)
			sum.GridGPerKWh = &mean
		}
		if sum.DurationS > 0 {
			sum.DeliveredFLOPS = sum.FLOPs / sum.DurationS
		}
		if sum.BytesUp > 0 && sum.Completed > 0 {
			sum.CompressionRatio = float64(s.cfg.Job.DenseBytes) / float64(s.cfg.Job.UpBytes)
		}
		s.account(*sum)
		if s.cfg.OnRound != nil {
			s.cfg.OnRound(*sum)
		}
		if s.cfg.Sink != nil {
			s.emit(protocol.Event{Type: protocol.EventRound, Round: sum})
		}
		delete(s.rounds, sum.Round)
	}
}

func (s *Sim) account(r protocol.RoundSummary) {
	t := &s.res
	t.Summary.Rounds++
	if r.Failed {
		t.FailedRounds++
	}
	t.Summary.FLOPs += r.FLOPs
	t.Summary.WallS += r.DurationS
	t.Summary.EnergyKWh += r.EnergyKWh
	if r.CO2Kg != nil {
		t.Summary.CO2Kg += *r.CO2Kg
	}
	t.Selected += r.Selected
	t.Completed += r.Completed
	t.Dropped += r.Dropped
	t.Late += r.Late
	t.BytesUp += r.BytesUp
	t.BytesDown += r.BytesDown
}

func (s *Sim) finish() *Result {
	t := &s.res
	t.Summary.Nodes = len(s.ids)
	if t.Summary.WallS > 0 {
		t.Summary.DeliveredFLOPS = t.Summary.FLOPs / t.Summary.WallS
		t.MeanRoundS = t.Summary.WallS / float64(t.Summary.Rounds)
	}
	t.Summary.DataCenter = s.cfg.DataCenter.Compare(t.Summary.FLOPs, t.Summary.EnergyKWh, t.Summary.CO2Kg)
	t.Tree = EstimateTree(s.cfg.TreeFanout, s.cfg.Cohort, s.cfg.Job, s.cfg.Population.UpMbps.Median(), s.cfg.Population.DownMbps.Median())
	if s.cfg.Sink != nil {
		sum := t.Summary
		s.emit(protocol.Event{Type: protocol.EventSummary, Summary: &sum})
	}
	return t
}

// popStore is the coordinator's Store for a simulation: rounds, blobs and
// updates in a MemStore, and the worker registry answered from the
// population, so a million nodes cost no per-node records.
type popStore struct {
	*coordinator.MemStore
	s *Sim
}

var simKey = ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize)).Public().(ed25519.PublicKey)

func (p *popStore) RegisterWorker(_ context.Context, w coordinator.Worker) (coordinator.Worker, error) {
	return coordinator.Worker{}, errors.New("sim: the population is fixed; nodes do not register")
}

func (p *popStore) Worker(_ context.Context, id string) (coordinator.Worker, error) {
	i, ok := p.s.index(id)
	if !ok {
		return coordinator.Worker{}, fmt.Errorf("sim: worker %q: %w", id, coordinator.ErrNotFound)
	}
	return coordinator.Worker{ID: id, PublicKey: simKey, LastSeen: toTime(p.s.lastSeen[i])}, nil
}

func (p *popStore) TouchWorker(_ context.Context, id string, t time.Time) error {
	if i, ok := p.s.index(id); ok {
		p.s.lastSeen[i] = math.Max(p.s.lastSeen[i], fromTime(t))
	}
	return nil
}

func (p *popStore) WorkerIDs(_ context.Context, since time.Time) ([]string, error) {
	return p.s.available(fromTime(since)), nil
}

func (p *popStore) Workers(ctx context.Context, since time.Time) ([]coordinator.Worker, error) {
	ids, _ := p.WorkerIDs(ctx, since)
	out := make([]coordinator.Worker, 0, len(ids))
	for _, id := range ids {
		w, _ := p.Worker(ctx, id)
		out = append(out, w)
	}
	return out, nil
}

func (p *popStore) CountWorkers(context.Context) (int, error) { return len(p.s.ids), nil }

// nextWindow applies the availability windows that have started by now and
// schedules the next one.
func (s *Sim) nextWindow() error {
	for {
		w, ok, err := s.cfg.Windows.Peek()
		if err != nil {
			return err
		}
		if !ok {
			return nil
		}
		start := fromTime(s.cfg.Start) + w.Start
		if start > s.clock.t {
			s.q.push(event{t: start, kind: evWindow})
			return nil
		}
		s.cfg.Windows.Next()
		i, ok := s.index(w.ID)
		if !ok {
			return fmt.Errorf("%s line %d, field id: node %q is not in the population (%s .. %s)", s.cfg.Windows.name, w.Line, w.ID, s.ids[0], s.ids[len(s.ids)-1])
		}
		s.traceUntil[i] = math.Max(s.traceUntil[i], fromTime(s.cfg.Start)+w.End)
	}
}

// linkQueue books bytes on the organiser's link, busy until *free, for a
// transfer the node's own link finished at t (FIFO): it returns when the
// organiser's side is done too and moves *free there.
func linkQueue(free *float64, t float64, bytes int64, mbps float64) float64 {
	*free = math.Max(t, *free+float64(bytes)*8/(mbps*1e6))
	return *free
}

package sim

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/opencluster/opencluster/coordinator"
	"github.com/opencluster/opencluster/protocol"
	"github.com/opencluster/opencluster/train"
)

// Same seed, same output, byte for byte; another seed, another run.
func TestDeterministic(t *testing.T) {
	cfg := testConfig(t, 3000, 3, 150)
	a, _ := runText(t, cfg)
	b, _ := runText(t, cfg)
	if a != b {
		t.Fatalf("two runs with seed %d differ:\n%s\n---\n%s", cfg.Seed, a, b)
	}
	cfg.Seed = 2
	c, _ := runText(t, cfg)
	if c == a {
		t.Error("seeds 1 and 2 gave the same run")
	}
	t.Log("\n" + a)
}

// A run's figures add up: every selected node completed, dropped out or
// was late; a round closes at its quorum; delivered FLOPS is the useful
// FLOPs over the round's duration; bytes are the job's per-node sizes.
func TestRoundFiguresAddUp(t *testing.T) {
	cfg := testConfig(t, 3000, 4, 150)
	var rounds []protocol.RoundSummary
	cfg.OnRound = func(r protocol.RoundSummary) { rounds = append(rounds, r) }
	res, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(rounds) != 4 {
		t.Fatalf("%d rounds reported, want 4", len(rounds))
	}
	for _, r := range rounds {
		if r.Completed != cfg.Cohort {
			t.Errorf("round %d closed with %d updates, want the quorum %d", r.Round, r.Completed, cfg.Cohort)
		}
		if r.Selected != r.Completed+r.Dropped+r.Late {
			t.Errorf("round %d: selected %d != completed %d + dropped %d + late %d", r.Round, r.Selected, r.Completed, r.Dropped, r.Late)
		}
		if want := int(math.Ceil(float64(cfg.Cohort) * cfg.OverCommit)); r.Selected < want {
			t.Errorf("round %d selected %d, want at least %d (over-commit)", r.Round, r.Selected, want)
		}
		if got, want := r.FLOPs, float64(r.Completed)*cfg.Job.FLOPs(); math.Abs(got-want) > 1e-6*want {
			t.Errorf("round %d FLOPs %g, want %d x %g", r.Round, got, r.Completed, cfg.Job.FLOPs())
		}
		if math.Abs(r.DeliveredFLOPS-r.FLOPs/r.DurationS) > 1e-9*r.DeliveredFLOPS {
			t.Errorf("round %d delivered %g FLOPS, want FLOPs/duration %g", r.Round, r.DeliveredFLOPS, r.FLOPs/r.DurationS)
		}
		if r.BytesUp%cfg.Job.UpBytes != 0 || r.BytesUp < int64(r.Completed)*cfg.Job.UpBytes {
			t.Errorf("round %d sent %d bytes up: want a multiple of %d, at least one per completed update", r.Round, r.BytesUp, cfg.Job.UpBytes)
		}
		if r.EnergyKWh <= 0 || r.CO2Kg == nil || *r.CO2Kg <= 0 || r.GridGPerKWh == nil {
			t.Errorf("round %d: energy %g kWh, CO2 %v", r.Round, r.EnergyKWh, r.CO2Kg)
		}
	}
	var sum float64
	for _, r := range rounds {
		sum += r.DurationS
	}
	if math.Abs(sum-res.Summary.WallS) > 1e-6 {
		t.Errorf("summary wall %g s, rounds add up to %g", res.Summary.WallS, sum)
	}
	if res.Refused["closed_round"] == 0 {
		t.Error("no straggler's update was refused for a closed round: over-commit should leave some")
	}
}

// A home connection organising the round is the bottleneck: every update
// and every model copy passes through its links.
func TestRandomOrganiserIsSlower(t *testing.T) {
	cfg := testConfig(t, 3000, 2, 150)
	_, central := runText(t, cfg)
	cfg.Organiser = OrganiserRandom
	text, random := runText(t, cfg)
	if !strings.Contains(text, "organiser n") {
		t.Errorf("random organiser: the rounds do not name a node as organiser:\n%s", text)
	}
	if random.MeanRoundS < 2*central.MeanRoundS {
		t.Errorf("mean round with a random volunteer organising %.0f s, with a data-center coordinator %.0f s: want the volunteer's links to slow it down", random.MeanRoundS, central.MeanRoundS)
	}
}

// With late updates down-weighted the coordinator takes updates after the
// deadline (within the grace), and an impossible deadline still ends in
// rounds through extension and restart, as the coordinator's policy says.
func TestShortDeadline(t *testing.T) {
	cfg := testConfig(t, 2000, 2, 100)
	cfg.Deadline = 5 * time.Minute
	cfg.Late = coordinator.LateDownweight
	cfg.LateGrace = 10 * time.Minute
	var rounds []protocol.RoundSummary
	cfg.OnRound = func(r protocol.RoundSummary) { rounds = append(rounds, r) }
	if _, err := Run(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	for _, r := range rounds {
		if r.Completed < int(math.Ceil(cfg.MinUpdates*float64(cfg.Cohort))) {
			t.Errorf("round %d closed with %d updates, fewer than min updates", r.Round, r.Completed)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"cohort over population", func(c *Config) { c.Cohort = c.Nodes + 1 }, "--cohort 101 is larger than the population (100 nodes)"},
		{"zero rounds", func(c *Config) { c.Rounds = 0 }, "--rounds 0"},
		{"organiser", func(c *Config) { c.Organiser = "boss" }, `--organiser "boss"`},
		{"over-commit", func(c *Config) { c.OverCommit = 0.5 }, "--over-commit 0.5"},
		{"gpu util", func(c *Config) { c.GPUUtil = 1.5 }, "--gpu-util 1.5"},
		{"fail rate", func(c *Config) { c.FailRate = -0.1 }, "--fail-rate -0.1"},
		{"laptops", func(c *Config) { c.Population.Laptops = 2 }, "laptops = 2"},
	} {
		cfg := testConfig(t, 100, 1, 10)
		tc.edit(&cfg)
		_, err := New(cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}

func TestParseDist(t *testing.T) {
	for _, tc := range []struct{ spec, want string }{
		{"lognormal:-5,1", "median -5 must be > 0"},
		{"uniform:3,1", "LO <= HI"},
		{"const:-1", "out of range"},
		{"normal:1,2", "want const:V"},
		{"uniform:1", "takes 2 number(s), got 1"},
		{"lognormal:10,x", `"x" is not a finite number`},
	} {
		_, err := ParseDist("--down-mbps", tc.spec, 0.001, 1e5)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "--down-mbps") {
			t.Errorf("%s: %v, want an error naming --down-mbps and containing %q", tc.spec, err, tc.want)
		}
	}
	d, err := ParseDist("x", "lognormal:90,0.9", 0.001, 1e5)
	if err != nil {
		t.Fatal(err)
	}
	// The median of many draws is the distribution's median.
	r := newStream(7)
	var xs []float64
	for i := 0; i < 20001; i++ {
		xs = append(xs, d.Draw(&r))
	}
	below := 0
	for _, x := range xs {
		if x < 90 {
			below++
		}
	}
	if frac := float64(below) / float64(len(xs)); math.Abs(frac-0.5) > 0.02 {
		t.Errorf("%.3f of lognormal:90,0.9 draws are below 90, want about half", frac)
	}
}

// The data-center comparison, computed here from its definition.
func TestDataCenterCompare(t *testing.T) {
	dc := DefaultDataCenter()
	flops := 3.6e21
	c := dc.Compare(flops, 5000, 2000)
	hours := flops / (989e12 * 0.4) / 3600
	kwh := hours * 1275 * 1.1 / 1000
	if math.Abs(c.Hours-hours) > 1e-9*hours || math.Abs(c.EnergyKWh-kwh) > 1e-9*kwh || math.Abs(c.CO2Kg-kwh*0.38355) > 1e-6 {
		t.Errorf("comparison %+v; want %g h, %g kWh", c, hours, kwh)
	}
	if !strings.Contains(c.Verdict, "used 1.4x the energy") {
		t.Errorf("verdict %q: want it to say the volunteers used 1.4x the energy", c.Verdict)
	}
	less := dc.Compare(flops, 1000, 100)
	if !strings.Contains(less.Verdict, "used 0.28x the energy") {
		t.Errorf("verdict %q", less.Verdict)
	}
}

func TestJobSizes(t *testing.T) {
	dense := testJob(t, "tiny", "dense", 10)
	n := int64(dense.AdapterElems)
	if dense.UpBytes < 4*n || dense.UpBytes > 4*n+1024 {
		t.Errorf("a dense update of %d elements is %d bytes on the wire: want 4n plus a header under 1 kB", n, dense.UpBytes)
	}
	top := testJob(t, "tiny", "topk:0.05+q4:64", 10)
	if r := float64(dense.UpBytes) / float64(top.UpBytes); r < 10 || r > 60 {
		t.Errorf("topk:0.05+q4:64 is %.1fx smaller than dense on the wire; docs/compression.md says about 43x on this model", r)
	}
	// Where a job fits is train's memory model's answer (PlanMemory): a
	// 4 GB card cannot hold a 7B job (its packed base alone is 3.9 GB), a
	// 24 GB one can; the 1B job fits where the 7B one does.
	big, small := testJob(t, "llama-7b", "topk:0.01+int8:256", 20), testJob(t, "llama-1b", "topk:0.01+int8:256", 20)
	for _, tc := range []struct {
		j      Job
		gb     float64
		cuda   bool
		fits   bool
		reason string
	}{
		{big, 4, true, false, "7B on a 4 GB card"}, {big, 24, true, true, "7B on a 24 GB card"},
		{small, 4, true, true, "1B on a 4 GB card"}, {big, 4, false, false, "7B in 4 GB of RAM"},
	} {
		fits, ckpt, need := tc.j.Fit(int64(tc.gb*1e9), tc.cuda)
		t.Logf("%s: fits %v, checkpointing %v, plan needs %.2f GB", tc.reason, fits, ckpt, float64(need)/1e9)
		if fits != tc.fits {
			t.Errorf("%s: fits %v (needs %.1f GB), want %v", tc.reason, fits, float64(need)/1e9, tc.fits)
		}
		m := tc.j.Memory
		m.CUDA = tc.cuda
		_, err := train.PlanMemory(m, int64(tc.gb*1e9), false)
		if (err == nil) != fits {
			t.Errorf("%s: Fit says %v, train.PlanMemory says %v", tc.reason, fits, err)
		}
	}
	if big.BaseBytes < 3.5e9 || big.BaseBytes > 4.2e9 {
		t.Errorf("llama-7b in NF4 is %.2f GB; 6.7e9 weights at about 4.1 bits plus bf16 embeddings is about 3.9 GB", float64(big.BaseBytes)/1e9)
	}
}

func TestCapability(t *testing.T) {
	cfg := testConfig(t, 10, 1, 1)
	cfg.Job = testJob(t, "llama-7b", "topk:0.01+int8:256", 20)
	s, err := New(Config{}) // a zero config is refused
	if err == nil || s != nil {
		t.Fatal("New(Config{}) did not fail")
	}
	tb := cfg.Tables
	tb.Hosts = append(tb.Hosts, Host{Name: "netbook", Kind: "laptop", Cores: 2, GHz: 1.1, FlopsPerCycle: 16, RAMGB: 4, LoadW: 10, IdleW: 3})
	pop := &Population{T: tb, Nodes: []Node{
		{GPU: int16(tb.GPUIndex("RTX 4070")), Host: uint8(tb.HostIndex("desktop 8-core")), PowerCap: 1, DownMbps: 100, UpMbps: 20},
		{GPU: int16(tb.GPUIndex("GTX 1650")), Host: uint8(tb.HostIndex("desktop 8-core")), PowerCap: 1, DownMbps: 100, UpMbps: 20},
		{GPU: int16(tb.GPUIndex("GTX 1060")), Host: uint8(tb.HostIndex("desktop 8-core")), PowerCap: 1, DownMbps: 100, UpMbps: 20},
		{GPU: -1, Host: uint8(tb.HostIndex("netbook")), PowerCap: 1, DownMbps: 100, UpMbps: 20},
		{GPU: int16(tb.GPUIndex("RTX 4070")), Host: uint8(tb.HostIndex("desktop 8-core")), PowerCap: 0.5, DownMbps: 100, UpMbps: 20},
	}}
	cfg.Trace, cfg.Cohort = pop, 1
	s, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	g := tb.GPUs[tb.GPUIndex("RTX 4070")]
	rate, w, _, onGPU := s.capability(0)
	if !onGPU || math.Abs(rate-g.TensorFLOPS*1e12*cfg.GPUUtil) > 1 || math.Abs(w-(g.TDPW+50)/cfg.PSUEfficiency) > 1e-9 {
		t.Errorf("RTX 4070 (12 GB): rate %g, %g W, on GPU %v", rate, w, onGPU)
	}
	if rate, _, _, onGPU := s.capability(1); onGPU || rate == 0 {
		t.Errorf("a 4 GB GTX 1650 on a 32 GB desktop: rate %g, on GPU %v; want its CPU", rate, onGPU)
	}
	if rate, _, _, onGPU := s.capability(2); onGPU || rate == 0 {
		t.Errorf("a GTX 1060 (sm_61, no PTX for it) on a 32 GB desktop: rate %g, on GPU %v; want its CPU", rate, onGPU)
	}
	if rate, _, _, _ := s.capability(3); rate != 0 {
		t.Errorf("a 4 GB netbook can take the 7B job on its CPU (rate %g)", rate)
	}
	capped, w, _, _ := s.capability(4)
	if math.Abs(capped/(g.TensorFLOPS*1e12*cfg.GPUUtil)-math.Cbrt(0.5)) > 1e-9 || math.Abs(w-(g.TDPW*0.5+50)/cfg.PSUEfficiency) > 1e-9 {
		t.Errorf("a 4070 capped at 50%%: rate %g, %g W", capped, w)
	}
}

// Node 0 in a fixed region is online in its idle window on a present day
// and within its owner's budget window, and the window ending is when it
// goes offline.
func TestAvailability(t *testing.T) {
	tb, _ := DefaultTables()
	de := tb.lookupRegion("DE") // UTC+1
	pop := &Population{T: tb, Seed: 1, Nodes: []Node{
		{Region: uint16(de), IdleStart: 22, IdleHours: 8, Present: 1},
		{Region: uint16(de), IdleStart: 22, IdleHours: 8, Present: 1, BudgetStart: 0, BudgetEnd: 5},
		{Region: uint16(de), IdleStart: 22, IdleHours: 8, Present: 0},
	}}
	day0 := float64(time.Date(2025, 1, 6, 0, 0, 0, 0, time.UTC).Unix())
	at := func(h float64) float64 { return day0 + (h-1)*3600 } // local hour h in Germany
	for _, tc := range []struct {
		node  int
		local float64
		want  bool
		until float64
	}{
		{0, 21.5, false, 0}, {0, 23, true, 30}, {0, 29.5, true, 30}, {0, 30.5, false, 0},
		{1, 23, false, 0}, {1, 26, true, 29}, {2, 23, false, 0},
	} {
		got := pop.Online(tc.node, at(tc.local))
		if got != tc.want {
			t.Errorf("node %d at local %g h: online %v, want %v", tc.node, tc.local, got, tc.want)
			continue
		}
		if got {
			if u := pop.OnlineUntil(tc.node, at(tc.local)); math.Abs(u-at(tc.until)) > 1e-6 {
				t.Errorf("node %d at local %g h: online until local %g h, want %g", tc.node, tc.local, (u-day0)/3600+1, tc.until)
			}
		}
	}
}

func TestQueueOrder(t *testing.T) {
	var q queue
	r := newStream(3)
	for i := 0; i < 2000; i++ {
		q.push(event{t: math.Floor(r.float() * 50), node: int32(i)})
	}
	last := event{t: -1}
	for q.len() > 0 {
		e := q.pop()
		if e.t < last.t || (e.t == last.t && e.seq < last.seq) {
			t.Fatalf("popped (%g, %d) after (%g, %d)", e.t, e.seq, last.t, last.seq)
		}
		last = e
	}
}

// Events go to the sink in the docs/events.md shapes, numbered by T in
// virtual milliseconds.
func TestEvents(t *testing.T) {
	cfg := testConfig(t, 500, 2, 20)
	var got []protocol.Event
	cfg.Sink = sinkFunc(func(e protocol.Event) { got = append(got, e) })
	if _, err := Run(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	var lastT int64
	for _, e := range got {
		counts[e.Type]++
		if e.T < lastT {
			t.Fatalf("event %s at %d ms after one at %d ms", e.Type, e.T, lastT)
		}
		lastT = e.T
	}
	if got[0].Type != protocol.EventSnapshot || got[0].Snapshot.Source != protocol.SourceSim {
		t.Errorf("first event %+v, want a sim snapshot", got[0])
	}
	if counts[protocol.EventRound] != 2 || counts[protocol.EventSummary] != 1 || counts[protocol.EventTransfer] == 0 || counts[protocol.EventPhase] == 0 {
		t.Errorf("event counts %v", counts)
	}
	b, _ := json.Marshal(got[len(got)-1])
	if !bytes.Contains(b, []byte(`"data_center"`)) {
		t.Errorf("the summary event has no data-center comparison: %s", b)
	}
}

type sinkFunc func(protocol.Event)

func (f sinkFunc) Emit(e protocol.Event) { f(e) }

// A round that cannot close (a home uplink sending a 7B adapter to every
// node, under a short deadline) ends the run at --max-days, saying so.
func TestStopsAtMaxVirtual(t *testing.T) {
	cfg := testConfig(t, 5000, 3, 1000)
	cfg.Organiser, cfg.MaxVirtual = OrganiserRandom, 12*time.Hour
	res, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(res.Stopped, "had not closed after 12 h") || res.Summary.Rounds >= 3 {
		t.Errorf("stopped %q after %d rounds", res.Stopped, res.Summary.Rounds)
	}
}

// The demo's own evaluation of each round runs on the workers' cores: with
// it, each worker's share of the machine shrinks by the evaluation's part
// of the round's FLOPs (a forward pass: half a training step per token),
// and the predicted round grows.
func TestDemoEvaluationTakesItsShare(t *testing.T) {
	job := testJob(t, "tiny", "topk:0.05+q4:64", 10)
	m := Machine{CPU: "test", Cores: 2, PeakFLOPS: 100e9, Utilisation: 0.25}
	plain, err := DemoConfig(m, job, DemoOptions{Workers: 4, Rounds: 3})
	if err != nil {
		t.Fatal(err)
	}
	eval := 8 * job.TokensPerStep
	withEval, err := DemoConfig(m, job, DemoOptions{Workers: 4, Rounds: 3, EvalTokens: eval})
	if err != nil {
		t.Fatal(err)
	}
	train := float64(4 * job.Steps * job.TokensPerStep)
	want := train / (train + float64(eval)/2)
	if got := withEval.Tables.Hosts[0].GHz / plain.Tables.Hosts[0].GHz; math.Abs(got-want) > 1e-12 {
		t.Fatalf("with the evaluation a worker gets %.4f of its share, want %.4f", got, want)
	}
	predict := func(cfg Config) float64 {
		var rounds []protocol.RoundSummary
		cfg.OnRound = func(r protocol.RoundSummary) { rounds = append(rounds, r) }
		if _, err := Run(context.Background(), cfg); err != nil {
			t.Fatal(err)
		}
		return MeanSteadyRound(rounds)
	}
	if pa, pb := predict(plain), predict(withEval); !(pb > pa) {
		t.Fatalf("the predicted round is %.3f s with the evaluation and %.3f s without: it should grow", pb, pa)
	}
}

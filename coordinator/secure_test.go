package coordinator

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opencluster/opencluster/coordinator/ledger"
	"github.com/opencluster/opencluster/protocol"
	"github.com/opencluster/opencluster/secagg"
)

func secureConfig(noise, budget float64) Config {
	cfg := testConfig()
	cfg.CohortSize, cfg.MinWorkers, cfg.MinUpdates, cfg.Quorum = 4, 4, 1, 0
	cfg.SecureAgg.Enabled = true
	cfg.SecureAgg.Fraction = 0.5
	cfg.SecureAgg.Clip = 1
	cfg.SecureAgg.NoiseMultiplier = noise
	cfg.SecureAgg.EpsilonBudget = budget
	cfg.SecureAgg.StageTimeout = 10 * time.Second
	return cfg
}

// secureInput GETs a stage's input over HTTP, as the worker does.
func (e *env) secureInput(w *worker, p *secagg.Params, stage int) ([]byte, int) {
	e.t.Helper()
	req, _ := http.NewRequest("GET", e.srv.URL+"/v1/secagg/"+strconv.Itoa(stage)+"?round="+strconv.FormatUint(p.Round, 10)+
		"&attempt="+strconv.Itoa(int(p.Attempt)), nil)
	protocol.SignPoll(req.Header, w.id, w.priv, e.clock.Now().Unix(), "GET", req.URL.Path)
	resp, b := e.do(req)
	return b, resp.StatusCode
}

func (e *env) securePost(stage int, msg []byte) (int, string) {
	e.t.Helper()
	req, _ := http.NewRequest("POST", e.srv.URL+"/v1/secagg/"+strconv.Itoa(stage), bytes.NewReader(msg))
	resp, b := e.do(req)
	return resp.StatusCode, string(b)
}

// secureRound runs the four stages for the workers, over HTTP, with
// worker i's update inputs[i] on the round's positions. Workers in
// drop[s] stop before sending their stage-s message. It returns the
// params and each survivor's encoded ring vector.
func (e *env) secureRound(ws []*worker, inputs [][]float32, drop map[int][]int) (*secagg.Params, map[int][]uint32) {
	e.t.Helper()
	type member struct {
		w *worker
		c *secagg.Client
		i int
	}
	var ms []member
	var p secagg.Params
	for _, w := range ws {
		info, status := e.poll(w, "0s")
		if status != 200 || info.SecAgg == nil {
			e.t.Fatalf("poll by %s: %d, secagg %v", w.id, status, info)
		}
		if err := json.Unmarshal(info.SecAgg.Params, &p); err != nil {
			e.t.Fatal(err)
		}
		c, err := secagg.NewClient(&p, info.SecAgg.Index, w.priv, rand.Reader)
		if err != nil {
			e.t.Fatal(err)
		}
		ms = append(ms, member{w, c, info.SecAgg.Index})
	}
	gone := map[int]bool{}
	enc := map[int][]uint32{}
	for stage := 1; stage <= secagg.NumStages; stage++ {
		for _, i := range drop[stage] {
			gone[i] = true
		}
		for k, m := range ms {
			if gone[k] {
				continue
			}
			var msg []byte
			var err error
			var in []byte
			if stage > 1 {
				var st int
				if in, st = e.secureInput(m.w, &p, stage); st != 200 {
					e.t.Fatalf("stage %d input for %s: %d %s", stage, m.w.id, st, in)
				}
			}
			switch stage {
			case 1:
				msg, err = m.c.Advertise()
			case 2:
				adv, derr := secagg.DecodeAdverts(in, len(p.Keys))
				if derr != nil {
					e.t.Fatal(derr)
				}
				msg, err = m.c.ShareKeys(adv)
			case 3:
				routed, derr := secagg.DecodeRouted(in, len(p.Keys))
				if derr != nil {
					e.t.Fatal(derr)
				}
				x := make([]float32, p.Length)
				copy(x, inputs[k])
				v, _, eerr := p.Encode(x, rand.Reader)
				if eerr != nil {
					e.t.Fatal(eerr)
				}
				enc[k] = v
				msg, err = m.c.MaskedInput(routed, v, secagg.Claims{Tokens: uint64(100 * (k + 1)), FLOPs: 1e9 * float64(k+1), EnergyWh: 0.5 * float64(k+1)})
			case 4:
				surv, derr := secagg.DecodeSurvivors(in, len(p.Keys))
				if derr != nil {
					e.t.Fatal(derr)
				}
				msg, err = m.c.Confirm(surv)
			case 5:
				confirms, derr := secagg.DecodeMessages(in, len(p.Keys))
				if derr != nil {
					e.t.Fatal(derr)
				}
				msg, err = m.c.Unmask(confirms)
			}
			if err != nil {
				e.t.Fatalf("stage %d, %s: %v", stage, m.w.id, err)
			}
			if st, b := e.securePost(stage, msg); st != 200 {
				e.t.Fatalf("stage %d post by %s: %d %s", stage, m.w.id, st, b)
			}
		}
		if len(drop[stage]) > 0 { // the stage waits for the dropouts until its deadline
			e.clock.Add(e.cfg.RoundTimeout + e.cfg.SecureAgg.StageTimeout)
		}
		e.step()
		if r := e.c.CurrentRound(); r.State != StateCollecting || r.Extensions != int(p.Attempt) {
			break // the attempt ended (closed, or failed)
		}
	}
	for k := range enc {
		if gone[k] {
			delete(enc, k)
		}
	}
	return &p, enc
}

func TestSecureRoundAggregatesOnlyTheSum(t *testing.T) {
	dir := t.TempDir()
	clock := &fakeClock{t: time.Unix(1_750_000_000, 0)}
	e := newEnv(t, dir, secureConfig(0, 0), clock, nil)
	ws := make([]*worker, 4)
	for i := range ws {
		ws[i] = e.register("s" + strconv.Itoa(i))
	}
	e.step()
	before, _ := e.c.Adapter()
	inputs := make([][]float32, 4)
	for i := range inputs {
		inputs[i] = seqDelta(8, 0.1*float32(i+1))
	}
	p, enc := e.secureRound(ws, inputs, map[int][]int{3: {3}}) // worker 3 drops after sharing keys
	after, _ := e.c.Adapter()
	if st := e.c.Status(); st.Round != 2 || e.led.Len() != 1 {
		t.Fatalf("round did not close: %+v", st)
	}
	// The reference: the survivors' own encoded vectors, each decoded on
	// its own, averaged, and placed on the positions.
	want := make([]float64, len(before))
	pos := secagg.Positions(p.Seed, len(before), p.Length)
	for _, v := range enc {
		for i, x := range p.Decode(v) {
			want[pos[i]] += float64(x) / float64(len(enc))
		}
	}
	for i := range before {
		if d := float64(after[i]-before[i]) - want[i]; math.Abs(d) > 1e-6 {
			t.Fatalf("adapter[%d] moved by %v, the survivors' mean is %v", i, after[i]-before[i], want[i])
		}
	}
	rec, _ := e.led.Last()
	o := rec.Aggregation.Options
	if o["secure_aggregation"] == "" || rec.Aggregation.Params["survivors"] != 3 {
		t.Fatalf("record: %+v", rec.Aggregation)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, updatesDir)); len(ents) != 0 {
		t.Fatalf("%d updates stored in the clear", len(ents))
	}
	// Plain uploads are refused on a secure coordinator.
	if st, b := e.upload([]byte("OCU1 anything")); st != 409 || !strings.Contains(b, "secure_round") {
		t.Fatalf("plain upload: %d %s", st, b)
	}
	// ledger verify's recomputation agrees, and catches a tampered transcript.
	re := Recompute(dir, e.cfg)
	if got, err := re(rec); err != nil || got != rec.AdapterAfter {
		t.Fatalf("recompute: %v %s, want %s", err, got, rec.AdapterAfter)
	}
	tp := filepath.Join(dir, blobsDir, o["secagg_transcript"])
	b, _ := os.ReadFile(tp)
	b[len(b)-100] ^= 1
	os.WriteFile(tp, b, 0o644)
	if _, err := re(rec); err == nil {
		t.Fatal("recompute accepted a tampered transcript")
	}
	// A changed stage hash on the record is caught too.
	b[len(b)-100] ^= 1
	os.WriteFile(tp, b, 0o644)
	bad := rec
	bad.Aggregation.Options = map[string]string{}
	for k, v := range o {
		bad.Aggregation.Options[k] = v
	}
	bad.Aggregation.Options["secagg_stage3"] = strings.Repeat("0", 64)
	if _, err := re(bad); err == nil || !strings.Contains(err.Error(), "stage 3") {
		t.Fatalf("recompute with a wrong stage-3 hash: %v", err)
	}
}

func TestSecureTooFewSurvivorsRetriesWithANewCohort(t *testing.T) {
	dir := t.TempDir()
	clock := &fakeClock{t: time.Unix(1_750_000_000, 0)}
	e := newEnv(t, dir, secureConfig(0, 0), clock, nil)
	ws := make([]*worker, 4)
	for i := range ws {
		ws[i] = e.register("s" + strconv.Itoa(i))
	}
	e.step()
	inputs := make([][]float32, 4)
	// Two of four stop before their masked input: below the 3 survivors a
	// cohort of 4 requires. At the deadline the attempt fails, nothing is
	// unmasked, and the round goes back to picking a cohort.
	p, _ := e.secureRound(ws, inputs, map[int][]int{3: {2, 3}})
	st := e.c.CurrentRound()
	if st.ID != 1 || st.Extensions != 1 || e.led.Len() != 0 {
		t.Fatalf("after too few survivors: round %d extensions %d ledger %d", st.ID, st.Extensions, e.led.Len())
	}
	if _, code := e.secureInput(ws[0], p, secagg.StageConfirm); code != 410 {
		t.Fatalf("the failed attempt's unmask input: %d, want 410", code)
	}
	// The retry is a new attempt; a message from the old one is refused.
	e.step()
	if _, code := e.poll(ws[0], "0s"); code != 200 {
		t.Fatalf("retry not offered: %d", code)
	}
	p2, _ := e.secureRound(ws, [][]float32{{0.1}, {0.2}, {0.3}, {0.4}}, nil)
	if p2.Attempt != 1 || e.led.Len() != 1 {
		t.Fatalf("retry: attempt %d, ledger %d", p2.Attempt, e.led.Len())
	}
	rec, _ := e.led.Last()
	if rec.Aggregation.Params["attempt"] != 1 || rec.Aggregation.Params["survivors"] != 4 {
		t.Fatalf("record %+v", rec.Aggregation.Params)
	}
}

func TestSecureEpsilonBudget(t *testing.T) {
	dir := t.TempDir()
	clock := &fakeClock{t: time.Unix(1_750_000_000, 0)}
	// Enough budget for one round at this noise, not for two.
	cfg := secureConfig(2, 1e9)
	probe := newEnv(t, t.TempDir(), cfg, clock, nil)
	_, eps1 := probe.c.budgetAllows(4, 4)
	probe.close()
	cfg.SecureAgg.EpsilonBudget = eps1 * 1.2
	e := newEnv(t, dir, cfg, clock, nil)
	ws := make([]*worker, 4)
	for i := range ws {
		ws[i] = e.register("s" + strconv.Itoa(i))
	}
	e.step()
	e.secureRound(ws, make([][]float32, 4), nil)
	rec, _ := e.led.Last()
	if got := rec.Aggregation.Params["epsilon_spent"]; math.Abs(got-eps1) > 1e-9*eps1 || got <= 0 {
		t.Fatalf("epsilon_spent %v, want %v", got, eps1)
	}
	// Round 2 would pass the budget: the coordinator does not open it.
	e.step()
	if st := e.c.Status(); !st.Done || st.Round != 2 || st.State != StateOpen {
		t.Fatalf("after the budget: %+v", st)
	}
	if _, code := e.poll(ws[0], "0s"); code == 200 {
		t.Fatal("a round was offered past the privacy budget")
	}
	if err := e.c.Step(context.Background()); err != nil {
		t.Fatal(err)
	}
	if e.led.Len() != 1 {
		t.Fatalf("%d records", e.led.Len())
	}
}

func TestSecureConfigValidation(t *testing.T) {
	cfg := testConfig()
	cfg.SecureAgg.NoiseMultiplier = 1
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "secure_agg.noise_multiplier") {
		t.Fatalf("noise without secure aggregation: %v", err)
	}
	cfg = secureConfig(0, 0)
	cfg.SecureAgg.Fraction = 0
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "secure_agg.fraction") {
		t.Fatalf("fraction 0: %v", err)
	}
}

func ed25519Sign(w *worker, msg []byte) []byte { return ed25519.Sign(w.priv, msg) }

// A secure round's survivors report what their round cost as plain ones
// do: the tokens, FLOPs and energy each claims in its signed masked-input
// message are on its ledger entry and summed in the dashboard's round
// event, and `ledger verify --coordinator-dir` checks them against the
// signed transcript. (Before, secure entries carried zeros.)
func TestSecureRoundCarriesClaims(t *testing.T) {
	dir := t.TempDir()
	rec := &recorder{}
	e := newEnv(t, dir, secureConfig(0, 0), &fakeClock{t: time.Unix(1_750_000_000, 0)}, nil, func(o *Options) { o.Events = rec })
	ws := make([]*worker, 4)
	index := map[string]int{}
	for i := range ws {
		ws[i] = e.register("s" + strconv.Itoa(i))
		index[ws[i].id] = i
	}
	e.step()
	inputs := [][]float32{seqDelta(8, 0.1), seqDelta(8, -0.2), seqDelta(8, 0.3), seqDelta(8, 0.05)}
	e.secureRound(ws, inputs, map[int][]int{3: {3}}) // worker 3 drops before its masked input
	r, _ := e.led.Last()
	var flops, energyWh float64
	for _, u := range r.Updates {
		k := index[u.WorkerID]
		want := [3]float64{float64(100 * (k + 1)), 1e9 * float64(k+1), 0.5 * float64(k+1)}
		got := [3]float64{float64(u.Tokens), u.FLOPs, u.EnergyWh}
		if !u.Accepted {
			want = [3]float64{}
		}
		if got != want {
			t.Errorf("worker %d's entry (accepted %v) claims %v, want %v", k, u.Accepted, got, want)
		}
		flops += got[1]
		energyWh += got[2]
	}
	if flops != 6e9 || energyWh != 3 {
		t.Fatalf("the survivors claim %g FLOPs and %g Wh, want 6e9 and 3", flops, energyWh)
	}
	var summary *protocol.RoundSummary
	for _, ev := range rec.take() {
		if ev.Type == protocol.EventRound {
			summary = ev.Round
		}
	}
	if summary == nil || summary.FLOPs != flops || math.Abs(summary.EnergyKWh-energyWh/1000) > 1e-12 || summary.Completed != 3 {
		t.Fatalf("round event %+v, want %g FLOPs, %g kWh from 3 survivors", summary, flops, energyWh/1000)
	}
	re := Recompute(dir, e.cfg)
	if _, err := re(r); err != nil {
		t.Fatalf("recompute: %v", err)
	}
	// A claim on the record that the signed message does not make fails.
	bad := r
	bad.Updates = append([]ledger.UpdateEntry(nil), r.Updates...)
	// The first survivor's: the cohort's order is random, and a dropout's
	// zero claim would stay zero.
	for i := range bad.Updates {
		if bad.Updates[i].Accepted {
			bad.Updates[i].EnergyWh *= 10
			break
		}
	}
	if _, err := re(bad); err == nil || !strings.Contains(err.Error(), "signed transcript") {
		t.Fatalf("recompute with an inflated energy claim: %v", err)
	}
}

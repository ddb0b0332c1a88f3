package coordinator

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"maps"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/opencluster/opencluster/compress"
	"github.com/opencluster/opencluster/coordinator/ledger"
	"github.com/opencluster/opencluster/protocol"
)

// verifyLedger checks dir's ledger with the stored updates and every
// aggregate recomputed, pinning the coordinator key.
func (e *env) verifyLedger() []ledger.Record {
	e.t.Helper()
	recs, err := ledger.VerifyFile(filepath.Join(e.dir, ledger.FileName), ledger.VerifyOptions{
		CoordinatorKey: protocol.EncodePublicKey(e.c.PublicKey()),
		UpdateStore:    ledger.DirStore(filepath.Join(e.dir, "updates")),
		Recompute:      Recompute(e.dir, e.cfg)})
	if err != nil {
		e.t.Fatalf("ledger verify with recomputation: %v", err)
	}
	return recs
}

func constDelta(n int, v float32) []float32 {
	d := make([]float32, n)
	for i := range d {
		d[i] = v
	}
	return d
}

func finite(v []float32) bool {
	for _, x := range v {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return false
		}
	}
	return true
}

func l2(v []float32) float64 {
	var s float64
	for _, x := range v {
		s += float64(x) * float64(x)
	}
	return math.Sqrt(s)
}

// A worker that sends entries near the float32 maximum, and claims the
// whole data budget so its weight dominates, must neither take over the
// adapter nor wedge the run with the shipped default policy: round after
// round, its delta is bounded, the adapter stays finite and close to the
// honest workers' mean, and the next round opens. (Before the default
// bound, round 1 made the adapter ~3e38 and round 2 overflowed it: Step
// failed on every tick, forever.)
func TestPoisonedUpdateIsBoundedAndRunGoesOn(t *testing.T) {
	cfg := testConfig() // the shipped defaults' norm policy
	e := newEnv(t, t.TempDir(), cfg, &fakeClock{t: time.Unix(1_750_000_000, 0)}, nil)
	ws, info := e.startRound(3)
	n := e.cfg.N()
	for round := 1; round <= 3; round++ {
		before, _ := e.c.Adapter()
		honest := [][]float32{seqDelta(n, 0.01), seqDelta(n, 0.02)}
		for i, w := range ws {
			delta, tokens := constDelta(n, 3e38), uint64(cfg.Recipe.MaxTokens)
			if i < 2 {
				delta, tokens = honest[i], 10
			}
			body, _ := makeUpdate(t, w, info, delta, tokens)
			if status, msg := e.upload(body); status != 200 {
				t.Fatalf("round %d upload %d: %d %s", round, i, status, msg)
			}
		}
		if err := e.c.Step(context.Background()); err != nil {
			t.Fatalf("round %d: Step: %v (a poisoned update must not stop the run)", round, err)
		}
		st := e.c.Status()
		if st.Round != uint64(round+1) || st.State != StateCollecting {
			t.Fatalf("after round %d: status %+v, want round %d collecting", round, st, round+1)
		}
		after, _ := e.c.Adapter()
		if !finite(after) {
			t.Fatalf("round %d: the adapter is not finite", round)
		}
		// The bound is a few times the honest norms: the adapter moves by
		// no more than that, however large the poisoned entries were.
		move := make([]float32, n)
		for i := range move {
			move[i] = after[i] - before[i]
		}
		if got, limit := l2(move), 3*l2(honest[1])*1.0001; got > limit {
			t.Fatalf("round %d: the adapter moved by L2 %.4g, more than the bound %.4g", round, got, limit)
		}
		var ok int
		info, ok = e.poll(ws[0], "0s")
		if ok != 200 {
			t.Fatalf("round %d: poll for the next round: %d", round+1, ok)
		}
	}
	recs := e.verifyLedger()
	if len(recs) != 3 {
		t.Fatalf("ledger has %d records, want 3", len(recs))
	}
}

// A round whose updates cannot give a finite adapter (here: a fixed,
// huge bound and Nesterov momentum push the aggregate past the float32
// range) closes as failed, keeps its adapter, is recorded as failed in
// the ledger, and the next round opens: Step never loops on it.
func TestRoundThatCannotAggregateClosesAsFailed(t *testing.T) {
	cfg := testConfig()
	cfg.NormBound, cfg.NormPolicy = 1e40, NormClip
	cfg.Optimizer = ServerOptimizer{Kind: OptNesterov, LR: 1, Momentum: 0.9}
	e := newEnv(t, t.TempDir(), cfg, &fakeClock{t: time.Unix(1_750_000_000, 0)}, nil)
	ws, info := e.startRound(3)
	n := e.cfg.N()
	if info.AdapterBytes != int64(4*n) {
		t.Errorf("round info declares adapter_bytes %d, want %d", info.AdapterBytes, 4*n)
	}
	before, beforeHash := e.c.Adapter()
	for _, w := range ws {
		body, _ := makeUpdate(t, w, info, constDelta(n, 3e38), 10)
		if status, msg := e.upload(body); status != 200 {
			t.Fatalf("upload: %d %s", status, msg)
		}
	}
	for tick := 0; tick < 3; tick++ {
		if err := e.c.Step(context.Background()); err != nil {
			t.Fatalf("tick %d: Step: %v (a round that cannot aggregate must close as failed)", tick, err)
		}
	}
	st := e.c.Status()
	if st.Round != 2 || st.State != StateCollecting || st.AdapterSHA256 != beforeHash {
		t.Fatalf("after the failed round: %+v, want round 2 collecting on the unchanged adapter %s", st, beforeHash)
	}
	after, _ := e.c.Adapter()
	for i := range after {
		if after[i] != before[i] {
			t.Fatalf("adapter[%d] changed from %v to %v in a failed round", i, before[i], after[i])
		}
	}
	recs := e.verifyLedger()
	if len(recs) != 1 || recs[0].AdapterAfter != recs[0].AdapterBefore || !strings.HasPrefix(recs[0].Aggregation.Options["result"], "failed") {
		t.Fatalf("ledger after a failed round: %+v", recs)
	}
	// Round 2 works normally from the same adapter.
	info2, _ := e.poll(ws[0], "0s")
	for i, w := range ws {
		body, _ := makeUpdate(t, w, info2, seqDelta(n, float32(i+1)), 10)
		if status, msg := e.upload(body); status != 200 {
			t.Fatalf("round 2 upload: %d %s", status, msg)
		}
	}
	e.step()
	if recs := e.verifyLedger(); len(recs) != 2 || recs[1].AdapterAfter == recs[1].AdapterBefore {
		t.Fatalf("round 2 after a failed round: %+v", recs)
	}
}

// A finished run restarted with max_rounds raised must aggregate round
// N+1 onto round N's result (and its optimizer state), so the record it
// signs recomputes. (It used to aggregate onto round N's starting adapter
// and sign a record that fails recomputation.)
func TestRestartAfterTheLastRoundContinuesFromItsResult(t *testing.T) {
	for _, kind := range []string{OptFedAvg, OptFedAvgM} {
		t.Run(kind, func(t *testing.T) {
			cfg := testConfig()
			cfg.MaxRounds = 1
			cfg.Optimizer = ServerOptimizer{Kind: kind, LR: 1, Momentum: 0.9}
			dir := t.TempDir()
			clock := &fakeClock{t: time.Unix(1_750_000_000, 0)}
			e := newEnv(t, dir, cfg, clock, nil)
			ws, info := e.startRound(3)
			n := e.cfg.N()
			for i, w := range ws {
				body, _ := makeUpdate(t, w, info, seqDelta(n, float32(i+1)), 10)
				if status, msg := e.upload(body); status != 200 {
					t.Fatal(status, msg)
				}
			}
			e.step()
			_, result := e.c.Adapter()
			if !e.c.Done() || e.led.Len() != 1 {
				t.Fatalf("after the last round: done %v, %d records", e.c.Done(), e.led.Len())
			}
			e.close()

			cfg.MaxRounds = 2
			e2 := newEnv(t, dir, cfg, clock, nil)
			if _, h := e2.c.Adapter(); h != result {
				t.Fatalf("resumed adapter %s, want round 1's result %s", h, result)
			}
			for _, w := range ws {
				e2.poll(w, "0s") // seen again
			}
			e2.step()
			info2, status := e2.poll(ws[0], "0s")
			if status != 200 || info2.Round != 2 || info2.AdapterSHA256 != result {
				t.Fatalf("round 2 info: %d %+v, want round 2 on %s", status, info2, result)
			}
			for i, w := range ws {
				body, _ := makeUpdate(t, w, info2, seqDelta(n, float32(i+2)), 10)
				if status, msg := e2.upload(body); status != 200 {
					t.Fatal(status, msg)
				}
			}
			e2.step()
			if recs := e2.verifyLedger(); len(recs) != 2 {
				t.Fatalf("%d records, want 2", len(recs))
			}
		})
	}
}

// A coordinator that stops between storing a round as closed and
// creating the next one (here: its goroutine ends inside the AfterClose
// hook, as a crash would) resumes on the closed round's result and
// optimizer state, and round 2's record recomputes.
func TestCrashBetweenCloseAndOpen(t *testing.T) {
	cfg := testConfig()
	cfg.Optimizer = ServerOptimizer{Kind: OptFedAvgM, LR: 1, Momentum: 0.9}
	dir := t.TempDir()
	clock := &fakeClock{t: time.Unix(1_750_000_000, 0)}
	e := newEnv(t, dir, cfg, clock, nil)
	crashed := make(chan uint64, 1)
	e.c.afterClose = func(round uint64) {
		crashed <- round
		runtime.Goexit() // deferred unlocks run; nothing after the hook does
	}
	ws, info := e.startRound(3)
	n := e.cfg.N()
	for i, w := range ws {
		body, _ := makeUpdate(t, w, info, seqDelta(n, float32(i+1)), 10)
		if status, msg := e.upload(body); status != 200 {
			t.Fatal(status, msg)
		}
	}
	done := make(chan struct{})
	go func() { defer close(done); e.c.Step(context.Background()) }()
	<-done
	if r := <-crashed; r != 1 {
		t.Fatalf("hook ran for round %d", r)
	}
	if r, err := e.store.LatestRound(context.Background()); err != nil || r.ID != 1 || r.State != StateClosed {
		t.Fatalf("the store after the crash: %+v %v, want round 1 closed and no round 2", r, err)
	}
	_, result := e.c.Adapter()
	e.close()

	e2 := newEnv(t, dir, cfg, clock, nil)
	if _, h := e2.c.Adapter(); h != result {
		t.Fatalf("resumed on adapter %s, want round 1's result %s", h, result)
	}
	e2.step()
	info2, status := e2.poll(ws[0], "0s")
	if status != 200 || info2.Round != 2 || info2.AdapterSHA256 != result {
		t.Fatalf("round 2: %d %+v", status, info2)
	}
	for i, w := range ws {
		body, _ := makeUpdate(t, w, info2, seqDelta(n, float32(3-i)), 10)
		if status, msg := e2.upload(body); status != 200 {
			t.Fatal(status, msg)
		}
	}
	e2.step()
	recs := e2.verifyLedger()
	if len(recs) != 2 || recs[1].Aggregation.Options["opt_state_before"] != recs[0].Aggregation.Options["opt_state_after"] {
		t.Fatalf("records: %+v", recs)
	}
}

// refCoordinateWise is the textbook definition, written independently of
// coordinateWise: for every coordinate, list the scaled values, sort them,
// and take the median, or drop floor(trim*k) from each end and take the
// weighted mean of the rest.
func refCoordinateWise(dense [][]float64, weights []float64, kind string, trim float64) []float64 {
	k, n := len(dense), len(dense[0])
	out := make([]float64, n)
	for i := 0; i < n; i++ {
		type vw struct{ v, w float64 }
		col := make([]vw, k)
		for j := range dense {
			col[j] = vw{dense[j][i], weights[j]}
		}
		sort.SliceStable(col, func(a, b int) bool { return col[a].v < col[b].v })
		if kind == AggMedian {
			if k%2 == 1 {
				out[i] = col[k/2].v
			} else {
				out[i] = (col[k/2-1].v + col[k/2].v) / 2
			}
			continue
		}
		cut := int(math.Floor(trim * float64(k)))
		var s, ws float64
		for _, x := range col[cut : k-cut] {
			s += x.v * x.w
			ws += x.w
		}
		out[i] = s / ws
	}
	return out
}

func TestCoordinateWiseAggregatorsMatchTheDefinition(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	n := 10000 // more than one block
	for _, k := range []int{1, 2, 5, 8} {
		var cs []Contribution
		var dense [][]float64
		var weights, scale []float64
		for j := 0; j < k; j++ {
			d := make([]float32, n)
			sp := &compress.Sparse{N: n}
			for i := range d {
				if j%2 == 0 || r.IntN(10) == 0 { // every other delta sparse
					d[i] = float32(r.NormFloat64())
					if j%2 == 1 {
						sp.Index = append(sp.Index, uint32(i))
						sp.Values = append(sp.Values, d[i])
					}
				}
			}
			if j%2 == 0 {
				sp.Values = d
			} else if sp.Index == nil {
				sp.Index = []uint32{}
			}
			s := 0.5 + r.Float64()
			w := float64(1 + r.IntN(100))
			cs = append(cs, Contribution{Delta: sp, Weight: w})
			row := make([]float64, n)
			for i := range d {
				row[i] = s * float64(d[i])
			}
			dense, weights, scale = append(dense, row), append(weights, w), append(scale, s)
		}
		for _, kind := range []string{AggMedian, AggTrimmedMean} {
			got := coordinateWise(n, cs, scale, kind, 0.25)
			want := refCoordinateWise(dense, weights, kind, 0.25)
			for i := range got {
				if math.Abs(float64(got[i])-want[i]) > 1e-6*(1+math.Abs(want[i])) {
					t.Fatalf("k=%d %s: element %d = %v, want %v", k, kind, i, got[i], want[i])
				}
			}
		}
	}
}

// With the robust aggregators and the adaptive bound under norm_policy
// reject, a hostile update is left out (listed in the ledger as dropped),
// the adapter follows the honest majority, and every record recomputes;
// a record that drops an update the rule keeps does not.
func TestRobustAggregationRecomputes(t *testing.T) {
	for _, agg := range []string{AggMedian, AggTrimmedMean} {
		t.Run(agg, func(t *testing.T) {
			cfg := testConfig()
			cfg.Aggregator, cfg.TrimFraction, cfg.NormPolicy = agg, 0.34, NormReject
			dir := t.TempDir()
			e := newEnv(t, dir, cfg, &fakeClock{t: time.Unix(1_750_000_000, 0)}, nil)
			ws, info := e.startRound(3)
			n := e.cfg.N()
			before, _ := e.c.Adapter()
			deltas := [][]float32{seqDelta(n, 0.1), seqDelta(n, 0.12), constDelta(n, 1e30)}
			for i, w := range ws {
				body, _ := makeUpdate(t, w, info, deltas[i], 10)
				if status, msg := e.upload(body); status != 200 {
					t.Fatal(status, msg)
				}
			}
			e.step()
			after, _ := e.c.Adapter()
			for i := range after {
				lo, hi := min(deltas[0][i], deltas[1][i]), max(deltas[0][i], deltas[1][i])
				if d := after[i] - before[i]; d < lo-1e-6 || d > hi+1e-6 {
					t.Fatalf("element %d moved by %v, outside the honest range [%v, %v]", i, d, lo, hi)
				}
			}
			recs := e.verifyLedger()
			var dropped []ledger.UpdateEntry
			for _, u := range recs[0].Updates {
				if !u.Accepted {
					dropped = append(dropped, u)
				}
			}
			if len(dropped) != 1 || !strings.HasPrefix(dropped[0].Reason, DroppedPrefix) || dropped[0].WorkerID != ws[2].id {
				t.Fatalf("dropped entries %+v, want worker %s's", dropped, ws[2].id)
			}
			// A lying record: an honest update marked dropped.
			rec := recs[0]
			for i := range rec.Updates {
				if rec.Updates[i].WorkerID == ws[0].id {
					rec.Updates[i].Accepted, rec.Updates[i].Reason = false, DroppedPrefix+" made up"
				}
			}
			if _, err := Recompute(dir, e.cfg)(rec); err == nil || !strings.Contains(err.Error(), "accepted=false") {
				t.Fatalf("recompute of a record that drops an honest update: %v", err)
			}
		})
	}
}

// registerDirect registers a fresh key through Coordinator.Register, as a
// client on any address would (the HTTP rate limit is per address).
func registerDirect(t *testing.T, c *Coordinator, req protocol.RegisterRequest) (*worker, error) {
	t.Helper()
	pub, priv, _ := ed25519.GenerateKey(nil)
	req.PublicKey = protocol.EncodePublicKey(pub)
	body, _ := json.Marshal(req)
	resp, err := c.Register(context.Background(), req, body, ed25519.Sign(priv, append([]byte(RegisterPrefix), body...)))
	return &worker{id: resp.WorkerID, pub: pub, priv: priv}, err
}

// 2,000 fresh keys (as from 50 addresses, under any per-address rate
// limit) must not take every seat from a worker that has been
// contributing: with max_new_per_cohort the contributor is in every
// cohort and the newcomers hold at most the capped seats; the stale ones
// are forgotten after forget_after. (The uniform pick over all 2,001 keys,
// what the coordinator did before, left the contributor out of the first
// cohort picked after the flood.)
func TestSybilFloodCannotTakeEveryCohort(t *testing.T) {
	cfg := testConfig()
	cfg.CohortSize, cfg.MinWorkers, cfg.MinUpdates, cfg.Quorum = 4, 1, 1, 0
	cfg.MaxNewPerCohort = 1
	cfg.ForgetAfter = time.Hour
	clock := &fakeClock{t: time.Unix(1_750_000_000, 0)}
	e := newEnv(t, t.TempDir(), cfg, clock, nil)
	honest := e.register("honest")
	e.step()
	info, status := e.poll(honest, "0s")
	if status != 200 {
		t.Fatalf("round 1: the only worker is not in the cohort (%d)", status)
	}
	n := e.cfg.N()
	body, _ := makeUpdate(t, honest, info, seqDelta(n, 0.1), 10)
	if status, msg := e.upload(body); status != 200 {
		t.Fatal(status, msg)
	}
	e.step() // round 1 closes (its whole cohort delivered); round 2 opens
	for i := 0; i < 2000; i++ {
		if _, err := registerDirect(t, e.c, protocol.RegisterRequest{ClientVersion: "sybil"}); err != nil {
			t.Fatal(err)
		}
	}
	for round := 2; round <= 4; round++ {
		e.poll(honest, "0s")
		e.step()
		st := e.c.Status()
		cohort := e.c.cur.Cohort
		if st.Round != uint64(round) || !slices.Contains(cohort, honest.id) || len(cohort) > 2 {
			t.Fatalf("round %d: cohort %v (status %+v), want the contributor and at most 1 newcomer", round, cohort, st)
		}
		info, _ := e.poll(honest, "0s")
		body, _ := makeUpdate(t, honest, info, seqDelta(n, 0.1), 10)
		if status, msg := e.upload(body); status != 200 {
			t.Fatal(status, msg)
		}
		clock.Add(cfg.RoundTimeout + time.Second) // the newcomer never delivers
		e.step()
	}
	_, mb := e.get("/metrics")
	if !strings.Contains(string(mb), `opencluster_registrations_total{result="new"} 2001`) {
		t.Errorf("metrics lack 2001 new registrations:\n%s", mb)
	}
	// The keys that never sent an update are forgotten at the first cohort
	// pick after forget_after.
	info, _ = e.poll(honest, "0s")
	body, _ = makeUpdate(t, honest, info, seqDelta(n, 0.1), 10)
	if status, msg := e.upload(body); status != 200 {
		t.Fatal(status, msg)
	}
	clock.Add(time.Hour)
	e.poll(honest, "0s")
	e.step()
	if got, _ := e.store.CountWorkers(context.Background()); got != 1 {
		t.Fatalf("%d workers left after forget_after, want the contributor alone", got)
	}
}

func TestAdmission(t *testing.T) {
	token := "0123456789abcdef0123"
	allowedPub, allowedPriv, _ := ed25519.GenerateKey(nil)
	adm := Admission{JoinTokens: []string{token}, AllowKeys: []string{protocol.EncodePublicKey(allowedPub)}, PoWBits: 8}
	e := newEnv(t, t.TempDir(), testConfig(), &fakeClock{t: time.Unix(1_750_000_000, 0)}, nil, func(o *Options) { o.Admission = adm })
	send := func(priv ed25519.PrivateKey, req protocol.RegisterRequest) (*http.Response, string) {
		req.PublicKey = protocol.EncodePublicKey(priv.Public().(ed25519.PublicKey))
		body, _ := json.Marshal(req)
		hr, _ := http.NewRequest("POST", e.srv.URL+"/v1/register", bytes.NewReader(body))
		hr.Header.Set(SignatureHeader, base64.StdEncoding.EncodeToString(ed25519.Sign(priv, append([]byte(RegisterPrefix), body...))))
		resp, b := e.do(hr)
		return resp, string(b)
	}
	pow, err := protocol.SolvePoW(context.Background(), protocol.EncodePublicKey(allowedPub), 8)
	if err != nil || protocol.PoWZeroBits(protocol.EncodePublicKey(allowedPub), pow) < 8 {
		t.Fatalf("SolvePoW: %q %v", pow, err)
	}
	_, otherPriv, _ := ed25519.GenerateKey(nil)
	tests := []struct {
		name   string
		priv   ed25519.PrivateKey
		req    protocol.RegisterRequest
		status int
		code   string
	}{
		{"not on the allow-list", otherPriv, protocol.RegisterRequest{JoinToken: token, PoWNonce: pow}, 403, "allow-list"},
		{"no token", allowedPriv, protocol.RegisterRequest{PoWNonce: pow}, 403, "join token only"},
		{"wrong token", allowedPriv, protocol.RegisterRequest{JoinToken: token + "x", PoWNonce: pow}, 403, "not accepted"},
		{"no proof of work", allowedPriv, protocol.RegisterRequest{JoinToken: token}, 403, PoWRequired},
		{"admitted", allowedPriv, protocol.RegisterRequest{JoinToken: token, PoWNonce: pow}, 200, "worker_id"},
	}
	for _, tc := range tests {
		resp, msg := send(tc.priv, tc.req)
		if resp.StatusCode != tc.status || !strings.Contains(msg, tc.code) {
			t.Errorf("%s: %d %s, want %d %s", tc.name, resp.StatusCode, msg, tc.status, tc.code)
		}
		if tc.code == PoWRequired && resp.Header.Get(PoWBitsHeader) != "8" {
			t.Errorf("%s: %s header %q, want 8", tc.name, PoWBitsHeader, resp.Header.Get(PoWBitsHeader))
		}
	}
	_, mb := e.get("/metrics")
	if !strings.Contains(string(mb), `opencluster_registrations_total{result="refused"} 4`) {
		t.Errorf("metrics lack 4 refused registrations:\n%s", mb)
	}
	for _, bad := range []Admission{{JoinTokens: []string{"short"}}, {AllowKeys: []string{"ed25519:nope"}}, {PoWBits: 40}} {
		if err := bad.Validate(); err == nil {
			t.Errorf("%+v: no error", bad)
		}
	}
}

// A key registered less than probation ago is not picked.
func TestProbation(t *testing.T) {
	cfg := testConfig()
	cfg.CohortSize, cfg.MinWorkers, cfg.MinUpdates, cfg.Quorum = 2, 1, 1, 0
	cfg.Probation = 10 * time.Minute
	cfg.SeenWithin = time.Hour
	clock := &fakeClock{t: time.Unix(1_750_000_000, 0)}
	e := newEnv(t, t.TempDir(), cfg, clock, nil)
	old := e.register("old")
	clock.Add(9 * time.Minute)
	e.step()
	if st := e.c.Status(); st.State != StateOpen {
		t.Fatalf("a round started with no worker past probation: %+v", st)
	}
	clock.Add(time.Minute)
	fresh := e.register("fresh")
	e.step()
	if c := e.c.cur.Cohort; len(c) != 1 || c[0] != old.id {
		t.Fatalf("cohort %v, want only %s (%s is on probation)", c, old.id, fresh.id)
	}
}

// openAgain opens a coordinator on dir as a restart would and returns
// New's error (nil after closing what it opened).
func openAgain(t *testing.T, dir string, cfg Config) error {
	t.Helper()
	st, err := OpenSQLite(context.Background(), filepath.Join(dir, "coordinator.db"))
	if err != nil {
		return err
	}
	defer st.Close()
	led, err := ledger.Open(dir)
	if err != nil {
		return err
	}
	defer led.Close()
	key, _, err := protocol.LoadOrCreateKey(filepath.Join(dir, "coordinator.key"))
	if err != nil {
		return err
	}
	_, err = New(context.Background(), cfg, Options{Dir: dir, Store: st, Ledger: led, Key: key, Clock: &fakeClock{t: time.Unix(1_750_000_000, 0)}, Logger: quiet})
	return err
}

// finishedRun runs one round to the end (max_rounds 1) in a new directory
// and returns the directory, the config and the published adapter's hash.
func finishedRun(t *testing.T) (string, Config, string) {
	t.Helper()
	cfg := testConfig()
	cfg.MaxRounds = 1
	dir := t.TempDir()
	e := newEnv(t, dir, cfg, &fakeClock{t: time.Unix(1_750_000_000, 0)}, nil)
	ws, info := e.startRound(3)
	for i, w := range ws {
		body, _ := makeUpdate(t, w, info, seqDelta(e.cfg.N(), float32(i+1)), 10)
		if status, msg := e.upload(body); status != 200 {
			t.Fatal(status, msg)
		}
	}
	e.step()
	_, h := e.c.Adapter()
	e.close()
	return dir, cfg, h
}

// Start-up refuses, naming what is wrong, a directory whose ledger,
// database or blobs it cannot trust. (Before, the coordinator started on a
// ledger signed by a foreign key and then wedged on every append, served
// a damaged SQLite database and a damaged current adapter silently.)
func TestStartupRefusesWhatItCannotTrust(t *testing.T) {
	damage := []struct {
		name string
		do   func(t *testing.T, dir, published string)
		want string
	}{
		{"a ledger signed by another key", func(t *testing.T, dir, _ string) {
			os.Remove(filepath.Join(dir, "coordinator.key"))
		}, "belongs to another coordinator"},
		{"ledger records missing", func(t *testing.T, dir, _ string) {
			os.Truncate(filepath.Join(dir, ledger.FileName), 0)
		}, "ledger records are missing"},
		{"a reset database", func(t *testing.T, dir, _ string) {
			os.Remove(filepath.Join(dir, "coordinator.db"))
		}, "the database is new or was reset"},
		{"the current adapter damaged", func(t *testing.T, dir, published string) {
			p := filepath.Join(dir, "blobs", published)
			b, _ := os.ReadFile(p)
			b[0] ^= 1
			os.WriteFile(p, b, 0o644)
		}, "round 1's adapter"},
		{"a damaged database page", func(t *testing.T, dir, _ string) {
			p := filepath.Join(dir, "coordinator.db")
			db, err := sql.Open("sqlite", "file:"+p)
			if err != nil {
				t.Fatal(err)
			}
			var root, size int
			db.QueryRow(`SELECT rootpage FROM sqlite_master WHERE name = 'workers'`).Scan(&root)
			db.QueryRow(`PRAGMA page_size`).Scan(&size)
			db.Close()
			f, err := os.OpenFile(p, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			// The page's first-freeblock field: queries still read its rows.
			b := make([]byte, 1)
			at := int64((root-1)*size + 5)
			f.ReadAt(b, at)
			f.WriteAt([]byte{b[0] ^ 0x5a}, at)
		}, "quick_check"},
	}
	for _, tc := range damage {
		t.Run(tc.name, func(t *testing.T) {
			dir, cfg, published := finishedRun(t)
			if err := openAgain(t, dir, cfg); err != nil {
				t.Fatalf("undamaged directory: %v", err)
			}
			tc.do(t, dir, published)
			err := openAgain(t, dir, cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("start on %s: %v, want an error naming %q", tc.name, err, tc.want)
			}
			t.Logf("%v", err)
		})
	}
}

// /metrics is Prometheus' client library with the process and Go
// collectors and histograms of upload and aggregation time; its counters
// survive a restart. (The hand-written /metrics reset to 0 on restart and
// had neither collectors nor histograms.)
func TestMetricsSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig()
	clock := &fakeClock{t: time.Unix(1_750_000_000, 0)}
	e := newEnv(t, dir, cfg, clock, nil)
	ws, info := e.startRound(3)
	for i, w := range ws {
		body, _ := makeUpdate(t, w, info, seqDelta(e.cfg.N(), float32(i+1)), 10)
		if status, msg := e.upload(body); status != 200 {
			t.Fatal(status, msg)
		}
	}
	e.step()
	e.upload([]byte("not an update")) // one rejection after the round closed
	if err := e.c.SaveMetrics(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, before := e.get("/metrics")
	for _, want := range []string{"opencluster_rounds_total 1", "opencluster_updates_accepted_total 3", `opencluster_updates_rejected_total{reason="malformed"} 1`,
		`opencluster_registrations_total{result="new"} 3`, "opencluster_upload_seconds_count 4", "opencluster_aggregation_seconds_count 1",
		"opencluster_round_duration_seconds_bucket", "process_resident_memory_bytes", "go_goroutines"} {
		if !strings.Contains(string(before), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	e.close()
	e2 := newEnv(t, dir, cfg, clock, nil)
	_, after := e2.get("/metrics")
	for _, want := range []string{"opencluster_rounds_total 1", "opencluster_updates_accepted_total 3", `opencluster_updates_rejected_total{reason="malformed"} 1`,
		`opencluster_registrations_total{result="new"} 3`, "opencluster_workers_registered 3"} {
		if !strings.Contains(string(after), want) {
			t.Errorf("after a restart the metrics lack %q", want)
		}
	}
}

// A round whose only update is poisoned (values of 1e30 in a cohort of
// one) is bounded by the running reference, the accepted median norm of
// the rounds before, which survives a restart of the coordinator. (Before,
// the adaptive bound was three times that update's own norm: the adapter
// moved by ~1e31.)
func TestOnlyUpdateOfARoundIsBoundedByTheReference(t *testing.T) {
	dir := t.TempDir()
	clock := &fakeClock{t: time.Unix(1_750_000_000, 0)}
	cfg := testConfig()
	cfg.CohortSize, cfg.MinWorkers, cfg.MinUpdates, cfg.Quorum = 1, 1, 1, 1
	e := newEnv(t, dir, cfg, clock, nil)
	ws, info := e.startRound(1)
	n := cfg.N()
	honest := seqDelta(n, 0.02)
	for round := 1; round <= 2; round++ {
		body, _ := makeUpdate(t, ws[0], info, honest, 10)
		if status, msg := e.upload(body); status != 200 {
			t.Fatalf("round %d: %d %s", round, status, msg)
		}
		e.step()
		var status int
		if info, status = e.poll(ws[0], "0s"); status != 200 {
			t.Fatalf("poll after round %d: %d", round, status)
		}
	}
	e.close() // the reference is kept in the optimizer state across a restart
	e = newEnv(t, dir, cfg, clock, nil)
	info, _ = e.poll(ws[0], "0s")
	before, _ := e.c.Adapter()
	body, _ := makeUpdate(t, ws[0], info, constDelta(n, 1e30), 10)
	if status, msg := e.upload(body); status != 200 {
		t.Fatalf("poisoned upload: %d %s", status, msg)
	}
	e.step()
	after, _ := e.c.Adapter()
	move := make([]float32, n)
	for i := range move {
		move[i] = after[i] - before[i]
	}
	ref := l2(honest)
	if got, limit := l2(move), 3*ref*1.0001; !finite(after) || got > limit {
		t.Fatalf("the round's only update, poisoned, moved the adapter by L2 %.4g; the reference %.4g allows %.4g", got, ref, limit)
	}
	recs := e.verifyLedger()
	p := recs[2].Aggregation.Params
	if math.Abs(p["norm_reference"]-ref) > 1e-6*ref || math.Abs(p["norm_bound_applied"]-3*ref) > 1e-5*ref || math.Abs(p["norm_reference_after"]-3*ref) > 1e-5*ref {
		t.Errorf("round 3's record: norm_reference %v, norm_bound_applied %v, norm_reference_after %v; want %v, %v, %v",
			p["norm_reference"], p["norm_bound_applied"], p["norm_reference_after"], ref, 3*ref, 3*ref)
	}
	// A record whose norm reference does not match the optimizer state it
	// names is refused by recomputation.
	bad := recs[2]
	bad.Aggregation.Params = maps.Clone(p)
	bad.Aggregation.Params["norm_reference"] = 1e30
	if _, err := Recompute(dir, cfg)(bad); err == nil || !strings.Contains(err.Error(), "norm_reference") {
		t.Errorf("recompute with a wrong norm_reference: %v", err)
	}
}

// norm_bound_max caps the adaptive bound, so even the first round, which
// has no reference yet, cannot be taken over by its only update.
func TestNormBoundMaxCapsTheFirstRound(t *testing.T) {
	cfg := testConfig()
	cfg.CohortSize, cfg.MinWorkers, cfg.MinUpdates, cfg.Quorum = 1, 1, 1, 1
	cfg.NormBoundMax = 0.5
	e := newEnv(t, t.TempDir(), cfg, &fakeClock{t: time.Unix(1_750_000_000, 0)}, nil)
	ws, info := e.startRound(1)
	before, _ := e.c.Adapter()
	body, _ := makeUpdate(t, ws[0], info, constDelta(cfg.N(), 1e30), 10)
	if status, msg := e.upload(body); status != 200 {
		t.Fatalf("upload: %d %s", status, msg)
	}
	e.step()
	after, _ := e.c.Adapter()
	var ss float64
	for i := range after {
		d := float64(after[i] - before[i])
		ss += d * d
	}
	if got := math.Sqrt(ss); got > 0.5*1.0001 {
		t.Fatalf("the first round's only update moved the adapter by L2 %.4g, over norm_bound_max 0.5", got)
	}
	recs := e.verifyLedger()
	if p := recs[0].Aggregation.Params; p["norm_bound_max"] != 0.5 || p["norm_bound_applied"] != 0.5 {
		t.Errorf("record: norm_bound_max %v, norm_bound_applied %v", p["norm_bound_max"], p["norm_bound_applied"])
	}
}

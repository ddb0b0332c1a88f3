package faults

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencluster/opencluster/coordinator/ledger"
	"github.com/opencluster/opencluster/secagg"
)

// secureRounds is the round policy of the secure-aggregation fault tests:
// secure aggregation with DP noise, short stage timeouts so a dropout costs
// seconds, and a budget large enough not to stop the run.
func secureRounds(roundTimeout string) map[string]any {
	return map[string]any{
		"round_timeout": roundTimeout,
		"secure_agg": map[string]any{"enabled": true, "fraction": 0.2, "clip": 1.0, "quant_bits": 8, "stage_timeout": "4s",
			"noise_multiplier": 0.5, "delta": 1e-5, "epsilon_budget": 1000},
	}
}

// finishSecure waits for nRounds records, stops everything and checks what
// a secure run must leave behind: every record verifies and recomputes
// from the stored transcripts (`ledger verify --coordinator-dir`), each
// round's accepted count is as given, no update was ever stored in the
// clear, every transcript on the ledger is stored and replays, and ε grows
// round by round.
func (c *cluster) finishSecure(accepted map[uint64]int) []ledger.Record {
	c.t.Helper()
	c.waitFor("the last secure round to close", func() bool {
		s, ok := c.status()
		return ok && s.Done && s.LedgerRecords == nRounds
	})
	for _, w := range c.workers {
		w.stop()
	}
	c.coordP.stop()
	recs, err := ledger.VerifyFile(filepath.Join(c.coord, "ledger.jsonl"), ledger.VerifyOptions{})
	if err != nil {
		c.t.Fatalf("ledger: %v", err)
	}
	if len(recs) != nRounds {
		c.t.Fatalf("ledger has %d records, want %d", len(recs), nRounds)
	}
	if got := c.storedUpdates(); len(got) != 0 {
		c.t.Errorf("a secure run stored %d updates in the clear: %v", len(got), got)
	}
	prevEps := 0.0
	for _, r := range recs {
		o, p := r.Aggregation.Options, r.Aggregation.Params
		if o["secure_aggregation"] == "" || o["secagg_transcript"] == "" || o["secagg_stage4"] == "" {
			c.t.Fatalf("round %d: not a secure-aggregation record: %+v", r.Round, r.Aggregation)
		}
		n := 0
		for _, u := range r.Updates {
			if u.Accepted {
				n++
				// The worker's claims travel in its signed masked input.
				if u.Tokens == 0 || u.FLOPs <= 0 || u.EnergyWh <= 0 {
					c.t.Errorf("round %d: survivor %s claims %d tokens, %g FLOPs, %g Wh; want all > 0", r.Round, u.WorkerID, u.Tokens, u.FLOPs, u.EnergyWh)
				}
			}
		}
		if want, ok := accepted[r.Round]; ok && n != want {
			c.t.Errorf("round %d: %d masked inputs aggregated, want %d: %+v", r.Round, n, want, r.Updates)
		}
		if float64(n) != p["survivors"] {
			c.t.Errorf("round %d: %d accepted entries but survivors = %v", r.Round, n, p["survivors"])
		}
		if eps := p["epsilon_spent"]; !(eps > prevEps) {
			c.t.Errorf("round %d: epsilon_spent %v does not grow from %v", r.Round, eps, prevEps)
		} else {
			prevEps = eps
		}
		b, err := os.ReadFile(filepath.Join(c.coord, "blobs", o["secagg_transcript"]))
		if err != nil {
			c.t.Fatalf("round %d: transcript: %v", r.Round, err)
		}
		var tr secagg.Transcript
		if err := tr.UnmarshalBinary(b); err != nil {
			c.t.Fatalf("round %d: stored transcript: %v", r.Round, err)
		}
		if _, got, err := secagg.Recompute(tr.Params, tr.Stages); err != nil || got != n {
			c.t.Fatalf("round %d: transcript replays to %d survivors (%v), want %d", r.Round, got, err, n)
		}
	}
	out, err := exec.CommandContext(c.ctx, bin, "ledger", "verify", "--coordinator-dir", c.coord, "--log-level", "warn").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "2 of 2 aggregates recomputed") {
		c.t.Fatalf("ledger verify --coordinator-dir: %v\n%s", err, out)
	}
	c.t.Logf("%s", bytes.TrimSpace(out))
	return recs
}

// storedTranscripts counts the transcript blobs in the coordinator's
// directory: one per round that unmasked, none for an attempt that did not.
func (c *cluster) storedTranscripts() int {
	ents, _ := os.ReadDir(filepath.Join(c.coord, "blobs"))
	n := 0
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(c.coord, "blobs", e.Name()))
		var tr secagg.Transcript
		if err == nil && tr.UnmarshalBinary(b) == nil {
			n++
		}
	}
	return n
}

// TestSecureRounds: a whole run under secure aggregation with DP. The
// coordinator never holds an update in the clear, and the ledger verifies
// with every aggregate recomputed from the stored masked vectors and
// unmask transcript.
func TestSecureRounds(t *testing.T) {
	c := newCluster(t, secureRounds("60s"))
	for i := range nWorkers {
		c.startWorker(i)
	}
	c.finishSecure(map[uint64]int{1: nWorkers, 2: nWorkers})
	if n := c.storedTranscripts(); n != nRounds {
		t.Errorf("%d transcripts stored, want one per round (%d)", n, nRounds)
	}
}

// TestFaultSecureWorkerKilledBetweenStages: a worker shares its keys and
// is killed (SIGKILL) before it sends its masked input. The others' shares
// remove its masks: round 1 closes with the two survivors' sum, the
// record lists the third as dropped out, and the ledger verifies. The
// worker comes back for round 2.
func TestFaultSecureWorkerKilledBetweenStages(t *testing.T) {
	c := newCluster(t, secureRounds("8s"))
	c.startWorker(0)
	c.startWorker(1)
	victim := c.startWorker(2, "OPENCLUSTER_TEST_HALT_SECURE_STAGE=3")
	c.waitFor("worker 2 to stop before its masked input", func() bool {
		return strings.Contains(victim.out.String(), "halted before secure stage 3")
	})
	victim.kill9(t)
	c.waitFor("round 1 to close without worker 2", func() bool {
		s, ok := c.status()
		return ok && s.LedgerRecords >= 1
	})
	c.startWorker(2)
	recs := c.finishSecure(map[uint64]int{1: nWorkers - 1, 2: nWorkers})
	dropped := false
	for _, u := range recs[0].Updates {
		dropped = dropped || (!u.Accepted && strings.Contains(u.Reason, "dropped out after secure stage 2"))
	}
	if !dropped {
		t.Errorf("round 1's record does not list the killed worker as dropped out: %+v", recs[0].Updates)
	}
}

// TestFaultSecureCoordinatorKilledMidUnmask: the coordinator is killed
// (SIGKILL) after the unmask stage closed and before it removed the masks.
// Restarted, it cannot finish that attempt (its keys and shares were in
// memory) and it has revealed nothing: no transcript was stored. It retries
// round 1 as a new attempt; the workers join it and the run completes.
func TestFaultSecureCoordinatorKilledMidUnmask(t *testing.T) {
	c := newCluster(t, secureRounds("60s"), "OPENCLUSTER_TEST_PAUSE_BEFORE_UNMASK=1")
	for i := range nWorkers {
		c.startWorker(i)
	}
	c.waitFor("the coordinator to stop before unmasking round 1", func() bool {
		return strings.Contains(c.coordP.out.String(), "paused before unmasking round 1")
	})
	c.coordP.kill9(t)
	if n := c.storedTranscripts(); n != 0 {
		t.Fatalf("%d transcripts stored before the unmask finished; want none", n)
	}
	c.startCoordinator()
	recs := c.finishSecure(map[uint64]int{1: nWorkers, 2: nWorkers})
	if a := recs[0].Aggregation.Params["attempt"]; a < 1 {
		t.Errorf("round 1 closed on attempt %v; the killed attempt should have been retried as attempt 1 or later", a)
	}
}

// TestSecureDemoReportsClaims: `opencluster demo` with secure aggregation
// (its default) reports each round's FLOPs and energy from the workers'
// claims, which travel in their signed masked inputs (before, secure
// rounds showed 0 J and no FLOPs). One small round: two workers, two
// local steps, a corpus of this repository's Go files.
func TestSecureDemoReportsClaims(t *testing.T) {
	data := t.TempDir()
	for _, pkg := range []string{"coordinator", "secagg"} {
		dst := filepath.Join(data, pkg)
		os.MkdirAll(dst, 0o755)
		files, _ := filepath.Glob(filepath.Join("..", pkg, "*.go"))
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(filepath.Join(dst, filepath.Base(f)), b, 0o644)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "demo", "--rounds", "1", "--workers", "2", "--steps", "2", "--data", data,
		"--dir", t.TempDir(), "--device", "cpu", "--json", "--log-level", "warn").Output()
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	var r struct {
		Event        string  `json:"event"`
		Participants int     `json:"participants"`
		EnergyJ      float64 `json:"energy_j"`
		FLOPs        float64 `json:"flops"`
		SecureAgg    bool    `json:"secure_agg"`
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if json.Unmarshal([]byte(line), &r) == nil && r.Event == "round" {
			break
		}
	}
	if r.Event != "round" || !r.SecureAgg || r.Participants != 2 || r.EnergyJ <= 0 || r.FLOPs <= 0 {
		t.Fatalf("secure demo round: %+v, want a secure round of 2 participants with energy and FLOPs > 0\n%s", r, out)
	}
	t.Logf("secure demo round 1: %d participants, %.3g FLOPs, %.3g J", r.Participants, r.FLOPs, r.EnergyJ)
}

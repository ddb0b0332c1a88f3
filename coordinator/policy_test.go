package coordinator

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opencluster/opencluster/coordinator/ledger"
	"github.com/opencluster/opencluster/protocol"
)

// plainRounds runs rounds plain rounds in which every worker of ws sends
// an update, starting from the round in info, and returns the next
// round's info.
func (e *env) plainRounds(ws []*worker, info *protocol.RoundInfo, rounds int) *protocol.RoundInfo {
	e.t.Helper()
	n := e.cfg.N()
	for range rounds {
		for i, w := range ws {
			d := seqDelta(n, 0.01*float32(i+1)*float32(info.Round))
			if i == 1 {
				d = seqDelta(n, -0.03)
			}
			body, _ := makeUpdate(e.t, w, info, d, uint64(10*(i+1)))
			if status, msg := e.upload(body); status != 200 {
				e.t.Fatalf("round %d upload %d: %d %s", info.Round, i, status, msg)
			}
		}
		e.step()
		if st := e.c.Status(); st.Round != info.Round+1 {
			e.t.Fatalf("round %d did not close: %+v", info.Round, st)
		}
		var status int
		if info, status = e.poll(ws[0], "0s"); status != 200 {
			e.t.Fatalf("poll for round %d: %d", info.Round+1, status)
		}
	}
	return info
}

// verifyWith verifies the ledger file at path against dir's stored
// updates and blobs, recomputing every round with cfg as the verifier's
// config.
func verifyWith(dir, path string, cfg Config) error {
	_, err := ledger.VerifyFile(path, ledger.VerifyOptions{
		UpdateStore: ledger.DirStore(filepath.Join(dir, updatesDir)), Recompute: Recompute(dir, cfg)})
	return err
}

// rewriteLedger writes recs to a new ledger file, re-signing the records
// from index from on with dir's coordinator key (from < 0: none, so an
// edited record keeps its old hash and signature).
func rewriteLedger(t *testing.T, dir string, recs []ledger.Record, from int) string {
	t.Helper()
	key, _, err := protocol.LoadOrCreateKey(filepath.Join(dir, "coordinator.key"))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	for i := range recs {
		if from >= 0 && i >= from {
			var prev *ledger.Record
			if i > 0 {
				prev = &recs[i-1]
			}
			if err := ledger.Seal(&recs[i], prev, key); err != nil {
				t.Fatal(err)
			}
		}
		line, err := recs[i].MarshalLine()
		if err != nil {
			t.Fatal(err)
		}
		out.Write(append(line, '\n'))
	}
	path := filepath.Join(t.TempDir(), ledger.FileName)
	if err := os.WriteFile(path, out.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func readLedger(t *testing.T, dir string) []ledger.Record {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, ledger.FileName))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := ledger.Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// A coordinator restarted with another server optimizer, learning rate,
// aggregator and norm bound factor must leave its earlier rounds
// verifiable: each record states the policy it was aggregated under and
// is recomputed under it, whatever config the verifier holds. (Before,
// Recompute took the policy from the verifier's config, and the rounds
// before the restart failed.)
func TestRecordsAreRecomputedUnderTheirOwnPolicy(t *testing.T) {
	dir := t.TempDir()
	clock := &fakeClock{t: time.Unix(1_750_000_000, 0)}
	cfg1 := testConfig() // fedavg, server lr 1, factor 3
	e := newEnv(t, dir, cfg1, clock, nil)
	ws, info := e.startRound(3)
	e.plainRounds(ws, info, 2)
	e.close()

	cfg2 := testConfig()
	cfg2.Optimizer = ServerOptimizer{Kind: OptFedAvgM, LR: 0.5, Momentum: 0.8}
	cfg2.Aggregator, cfg2.TrimFraction = AggTrimmedMean, 0.34
	cfg2.NormBoundFactor = 2
	e2 := newEnv(t, dir, cfg2, clock, nil)
	info, status := e2.poll(ws[0], "0s")
	if status != 200 || info.Round != 3 {
		t.Fatalf("poll after the restart: %d %+v", status, info)
	}
	e2.plainRounds(ws, info, 2)
	e2.close()

	path := filepath.Join(dir, ledger.FileName)
	for name, cfg := range map[string]Config{"the config after the restart": cfg2, "the config before it": cfg1} {
		if err := verifyWith(dir, path, cfg); err != nil {
			t.Errorf("ledger verify with %s: %v", name, err)
		}
	}
	recs := readLedger(t, dir)
	if len(recs) != 4 {
		t.Fatalf("%d records, want 4", len(recs))
	}
	for i, r := range recs {
		a := r.Aggregation
		wantLR, wantOpt := 1.0, OptFedAvg
		if i >= 2 {
			wantLR, wantOpt = 0.5, OptFedAvgM
		}
		if a.Options["policy"] != PolicyRecorded || a.Options["optimizer"] != wantOpt || a.Params["lr"] != wantLR || a.Params["elements"] != float64(cfg1.N()) {
			t.Errorf("record %d states %+v", i, a)
		}
	}

	// A stated policy edited after signing: the record's hash no longer
	// matches, so its signature fails.
	edited := readLedger(t, dir)
	edited[2].Aggregation.Params["lr"] = 0.25
	var ve *ledger.VerifyError
	err := verifyWith(dir, rewriteLedger(t, dir, edited, -1), cfg2)
	if !errors.As(err, &ve) || ve.Index != 2 || !strings.Contains(err.Error(), "hash mismatch") {
		t.Errorf("ledger with record 2's lr edited: %v, want a hash mismatch at record 2", err)
	}
	// Re-signed (as a dishonest coordinator could), the record's stated
	// policy does not give its adapter: recomputation fails.
	err = verifyWith(dir, rewriteLedger(t, dir, edited, 2), cfg2)
	if !errors.As(err, &ve) || ve.Index != 2 || !strings.Contains(err.Error(), "adapter_after mismatch") {
		t.Errorf("ledger with record 2's lr edited and re-signed: %v, want an adapter_after mismatch at record 2", err)
	}
	// A record that says its policy is recorded must carry all of it.
	partial := readLedger(t, dir)
	delete(partial[3].Aggregation.Params, "momentum")
	if err := verifyWith(dir, rewriteLedger(t, dir, partial, 3), cfg2); err == nil || !strings.Contains(err.Error(), `no "momentum"`) {
		t.Errorf("recorded policy without momentum: %v", err)
	}
	// Records from before records stated their policy are recomputed under
	// the verifier's config, as before: with the config they ran under
	// they verify, with another they do not.
	legacy := readLedger(t, dir)
	for _, r := range legacy[:2] {
		delete(r.Aggregation.Options, "policy")
		delete(r.Aggregation.Options, "optimizer")
		delete(r.Aggregation.Params, "elements")
	}
	lp := rewriteLedger(t, dir, legacy, 0)
	if err := verifyWith(dir, lp, cfg1); err != nil {
		t.Errorf("legacy rounds 1-2 verified with their own config: %v", err)
	}
	if err := verifyWith(dir, lp, cfg2); !errors.As(err, &ve) || ve.Index != 0 {
		t.Errorf("legacy rounds verified with another config: %v, want a failure at record 0", err)
	}
}

// The same for secure rounds: a restart with another masked fraction and
// server learning rate leaves the earlier secure round verifiable.
func TestSecureRecordsAreRecomputedUnderTheirOwnPolicy(t *testing.T) {
	dir := t.TempDir()
	clock := &fakeClock{t: time.Unix(1_750_000_000, 0)}
	cfg1 := secureConfig(0, 0)
	e := newEnv(t, dir, cfg1, clock, nil)
	ws := make([]*worker, 4)
	for i := range ws {
		ws[i] = e.register("s" + strconv.Itoa(i))
	}
	e.step()
	inputs := [][]float32{seqDelta(8, 0.1), seqDelta(8, -0.2), seqDelta(8, 0.3), seqDelta(8, 0.05)}
	e.secureRound(ws, inputs, nil)
	e.close()

	cfg2 := secureConfig(0, 0)
	cfg2.SecureAgg.Fraction = 0.25
	cfg2.Optimizer.LR = 0.5
	e2 := newEnv(t, dir, cfg2, clock, nil)
	e2.step() // the attempt in flight was in the old process's memory: retried
	e2.secureRound(ws, inputs, nil)
	if st := e2.c.Status(); st.Round != 3 || e2.led.Len() != 2 {
		t.Fatalf("after the second secure round: %+v", st)
	}
	e2.close()
	recs := readLedger(t, dir)
	if recs[0].Aggregation.Params["positions"] != 8 || recs[1].Aggregation.Params["positions"] != 4 {
		t.Fatalf("positions per round: %v, %v", recs[0].Aggregation.Params["positions"], recs[1].Aggregation.Params["positions"])
	}
	for name, cfg := range map[string]Config{"the config after the restart": cfg2, "the config before it": cfg1} {
		if err := verifyWith(dir, filepath.Join(dir, ledger.FileName), cfg); err != nil {
			t.Errorf("ledger verify with %s: %v", name, err)
		}
	}
	edited := readLedger(t, dir)
	edited[0].Aggregation.Params["lr"] = 0.5
	var ve *ledger.VerifyError
	if err := verifyWith(dir, rewriteLedger(t, dir, edited, 0), cfg1); !errors.As(err, &ve) || ve.Index != 0 || !strings.Contains(err.Error(), "adapter_after mismatch") {
		t.Errorf("secure record with its lr edited and re-signed: %v", err)
	}
}

package coordinator

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/opencluster/opencluster/compress"
	"github.com/opencluster/opencluster/protocol"
)

// memUpdate is a decoded update as the simulator hands it to Accept.
func memUpdate(c *Coordinator, worker string, nonce byte, tokens uint64, delta []float32) *protocol.Update {
	r := c.CurrentRound()
	u := &protocol.Update{Round: r.ID, WorkerID: worker, N: len(delta), ShapesDigest: c.shapesDigest, Codec: c.cfg.Recipe.Codec,
		Tokens: tokens, Delta: &compress.Sparse{N: len(delta), Values: delta}}
	u.Nonce[0], u.Nonce[1] = nonce, byte(r.ID)
	b, _ := hex.DecodeString(r.BaseAdapter)
	copy(u.BaseSHA256[:], b)
	return u
}

// An InMemory coordinator on a MemStore runs the same round policy through
// Accept: cohort, quorum close, the norm clip, the server optimizer, and
// refusals for a worker outside the cohort, a duplicate and a closed round.
func TestInMemoryCoordinatorAccept(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig()
	cfg.CohortSize, cfg.MinWorkers, cfg.MinUpdates, cfg.Quorum = 3, 3, 2, 2
	cfg.NormBound, cfg.NormPolicy = 1, NormClip
	cfg.Optimizer = ServerOptimizer{Kind: OptFedAvg, LR: 0.5}
	clock := &fakeClock{t: time.Unix(1_800_000_000, 0).UTC()}
	store := NewMemStore()
	key := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	if _, err := New(ctx, cfg, Options{Store: store, Key: key}); err == nil {
		t.Fatal("New without Dir or InMemory: no error")
	}
	c, err := New(ctx, cfg, Options{InMemory: true, Store: store, Key: key, Clock: clock, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4; i++ {
		pub := ed25519.NewKeyFromSeed(append(make([]byte, 31), byte(i+1))).Public().(ed25519.PublicKey)
		if _, err := store.RegisterWorker(ctx, Worker{ID: fmt.Sprint("n", i), PublicKey: pub, Registered: clock.t, LastSeen: clock.t}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Step(ctx); err != nil {
		t.Fatal(err)
	}
	r := c.CurrentRound()
	if r.State != StateCollecting || len(r.Cohort) != 3 {
		t.Fatalf("round 1 is %s with cohort %v, want collecting with 3", r.State, r.Cohort)
	}
	outsider := ""
	for i := 0; i < 4; i++ {
		if id := fmt.Sprint("n", i); !slices.Contains(r.Cohort, id) {
			outsider = id
		}
	}
	before, _ := c.Adapter()
	n := c.n
	delta := func(v float32) []float32 {
		d := make([]float32, n)
		for i := range d {
			d[i] = v
		}
		return d
	}
	var re *RejectError
	if _, err := c.Accept(ctx, memUpdate(c, outsider, 1, 10, delta(0.01)), 100); !errors.As(err, &re) || re.Code != "not_in_cohort" {
		t.Fatalf("update from %s outside the cohort: %v, want not_in_cohort", outsider, err)
	}
	// a: norm 0.01*sqrt(n) < 1, kept; b: norm 10*sqrt(n) > 1, clipped to 1.
	a, b := memUpdate(c, r.Cohort[0], 2, 30, delta(0.01)), memUpdate(c, r.Cohort[1], 3, 10, delta(10))
	if resp, err := c.Accept(ctx, a, 100); err != nil || !resp.Accepted {
		t.Fatalf("first update: %+v, %v", resp, err)
	}
	dup := memUpdate(c, r.Cohort[0], 4, 30, delta(0.01))
	if _, err := c.Accept(ctx, dup, 100); !errors.As(err, &re) || re.Code != "duplicate" {
		t.Fatalf("second update from one worker: %v, want duplicate", err)
	}
	if _, err := c.Accept(ctx, b, 100); err != nil {
		t.Fatal(err)
	}
	if err := c.Step(ctx); err != nil { // quorum 2: aggregate, open round 2
		t.Fatal(err)
	}
	if got := c.CurrentRound(); got.ID != 2 {
		t.Fatalf("after quorum the round is %d (%s), want 2", got.ID, got.State)
	}
	late := memUpdate(c, r.Cohort[2], 5, 10, delta(0.01))
	late.Round = 1
	if _, err := c.Accept(ctx, late, 100); !errors.As(err, &re) || re.Code != "closed_round" {
		t.Fatalf("update for the closed round: %v, want closed_round", err)
	}
	// The expected adapter, computed here from the definitions: weights 30
	// and 10, b clipped by 1/||b||, fedavg with lr 0.5.
	after, _ := c.Adapter()
	normB := 10 * math.Sqrt(float64(n))
	for i := range after {
		avg := (30*0.01 + 10*10/normB) / 40
		want := float64(before[i]) + 0.5*avg
		if math.Abs(float64(after[i])-want) > 1e-6 {
			t.Fatalf("adapter[%d] = %g, want %g", i, after[i], want)
		}
	}
	ups, _ := store.Updates(ctx, 1)
	accepted := 0
	for _, u := range ups {
		if u.Accepted {
			accepted++
			if u.Bytes != 100 {
				t.Errorf("update record bytes %d, want the 100 given", u.Bytes)
			}
		}
	}
	if accepted != 2 {
		t.Errorf("round 1 has %d accepted update records, want 2", accepted)
	}
	if st := c.Status(); st.LedgerRecords != 0 || st.LedgerHead != "" {
		t.Errorf("status of a coordinator without a ledger: %+v", st)
	}
}

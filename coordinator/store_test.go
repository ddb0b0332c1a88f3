package coordinator

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencluster/opencluster/coordinator/internal/pgtest"
)

// testStore runs the same suite against every Store implementation.
func testStore(t *testing.T, open func(t *testing.T) Store) {
	ctx := context.Background()
	s := open(t)
	t0 := time.Unix(1_700_000_000, 123).UTC()

	if v, err := s.SchemaVersion(ctx); err != nil || v != len(migrations) {
		t.Fatalf("schema version %d, %v; want %d", v, err, len(migrations))
	}
	pub, _, _ := ed25519.GenerateKey(nil)
	w := Worker{ID: "w-1", PublicKey: pub, Name: "alice", Device: "cpu", Registered: t0, LastSeen: t0}
	if _, err := s.RegisterWorker(ctx, w); err != nil {
		t.Fatal(err)
	}
	// Idempotent: the stored worker comes back, not the new fields.
	again, err := s.RegisterWorker(ctx, Worker{ID: "w-1", PublicKey: pub, Name: "changed", Registered: t0.Add(time.Hour), LastSeen: t0.Add(time.Hour)})
	if err != nil || again.Name != "alice" || !again.Registered.Equal(t0) {
		t.Fatalf("re-register: %+v, %v", again, err)
	}
	if _, err := s.Worker(ctx, "nobody"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown worker: %v, want ErrNotFound", err)
	}
	if err := s.TouchWorker(ctx, "w-1", t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	got, err := s.Worker(ctx, "w-1")
	if err != nil || !got.LastSeen.Equal(t0.Add(time.Minute)) || !got.PublicKey.Equal(pub) {
		t.Fatalf("worker after touch: %+v, %v", got, err)
	}
	if ws, _ := s.Workers(ctx, t0.Add(2*time.Minute)); len(ws) != 0 {
		t.Errorf("workers seen after t0+2m: %d, want 0", len(ws))
	}
	if ws, _ := s.Workers(ctx, t0); len(ws) != 1 {
		t.Errorf("workers seen after t0: %d, want 1", len(ws))
	}
	if n, _ := s.CountWorkers(ctx); n != 1 {
		t.Errorf("count %d", n)
	}
	pub0, _, _ := ed25519.GenerateKey(nil)
	if _, err := s.RegisterWorker(ctx, Worker{ID: "w-0", PublicKey: pub0, Registered: t0, LastSeen: t0.Add(3 * time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if ids, err := s.WorkerIDs(ctx, t0); err != nil || len(ids) != 2 || ids[0] != "w-0" || ids[1] != "w-1" {
		t.Errorf("worker ids seen since t0: %v, %v; want [w-0 w-1] in id order", ids, err)
	}
	if ids, err := s.WorkerIDs(ctx, t0.Add(2*time.Minute)); err != nil || len(ids) != 1 || ids[0] != "w-0" {
		t.Errorf("worker ids seen since t0+2m: %v, %v; want [w-0]", ids, err)
	}
	if _, err := s.RegisterWorker(ctx, Worker{ID: "w-other", PublicKey: pub0, Registered: t0, LastSeen: t0}); err == nil {
		t.Error("a second worker id with an already registered public key: no error")
	}

	if _, err := s.LatestRound(ctx); !errors.Is(err, ErrNotFound) {
		t.Fatalf("latest round of empty store: %v", err)
	}
	r := Round{ID: 1, State: StateOpen, Seed: 1<<63 + 5, Opened: t0, BaseAdapter: "aa", BaseModel: "bb"}
	if err := s.CreateRound(ctx, r); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateRound(ctx, r); err == nil {
		t.Error("duplicate round id: no error")
	}
	r.State, r.Cohort, r.Deadline, r.Extensions, r.Note = StateCollecting, []string{"w-1"}, t0.Add(time.Hour), 1, "x"
	if err := s.UpdateRound(ctx, r); err != nil {
		t.Fatal(err)
	}
	if err := s.UpdateRound(ctx, Round{ID: 99}); !errors.Is(err, ErrNotFound) {
		t.Errorf("update missing round: %v", err)
	}
	if err := s.CreateRound(ctx, Round{ID: 2, State: StateOpen}); err != nil {
		t.Fatal(err)
	}
	lr, err := s.LatestRound(ctx)
	if err != nil || lr.ID != 2 {
		t.Fatalf("latest: %+v %v", lr, err)
	}
	r1, err := s.Round(ctx, 1)
	if err != nil || r1.Seed != r.Seed || r1.State != StateCollecting || len(r1.Cohort) != 1 || !r1.Deadline.Equal(r.Deadline) || r1.Extensions != 1 {
		t.Fatalf("round 1: %+v %v", r1, err)
	}

	if err := s.PutBlob(ctx, Blob{SHA256: "cc", Kind: BlobAdapter, Size: 12, Created: t0}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutBlob(ctx, Blob{SHA256: "cc", Kind: BlobAdapter, Size: 12, Created: t0}); err != nil {
		t.Fatalf("put blob twice: %v", err)
	}
	if b, err := s.Blob(ctx, "cc"); err != nil || b.Size != 12 || b.Kind != BlobAdapter {
		t.Fatalf("blob: %+v %v", b, err)
	}
	if _, err := s.Blob(ctx, "dd"); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing blob: %v", err)
	}

	u := UpdateRecord{Round: 1, Applied: 1, WorkerID: "w-1", SHA256: "u1", Nonce: "n1", Bytes: 10, Tokens: 5, Weight: 5, Accepted: true, Received: t0}
	if err := s.AddUpdate(ctx, u); err != nil {
		t.Fatal(err)
	}
	u2 := u
	u2.SHA256 = "u2"
	if err := s.AddUpdate(ctx, u2); !errors.Is(err, ErrReplay) {
		t.Errorf("same nonce: %v, want ErrReplay", err)
	}
	u2.Nonce = "n2"
	if err := s.AddUpdate(ctx, u2); !errors.Is(err, ErrDuplicate) {
		t.Errorf("second accepted update: %v, want ErrDuplicate", err)
	}
	u2.Accepted, u2.Reason = false, "over_norm"
	if err := s.AddUpdate(ctx, u2); err != nil {
		t.Errorf("rejected update: %v", err)
	}
	if seen, _ := s.NonceSeen(ctx, "n2"); !seen {
		t.Error("nonce n2 not seen")
	}
	if seen, _ := s.NonceSeen(ctx, "n3"); seen {
		t.Error("nonce n3 seen")
	}
	ups, err := s.Updates(ctx, 1)
	if err != nil || len(ups) != 2 || ups[0].SHA256 != "u1" || !ups[0].Accepted || ups[1].Accepted || ups[1].Reason != "over_norm" {
		t.Fatalf("updates: %+v %v", ups, err)
	}
	if ups, _ := s.Updates(ctx, 2); len(ups) != 0 {
		t.Fatalf("round 2 updates: %+v", ups)
	}
	if w, _ := s.Worker(ctx, "w-1"); w.Contributed != 1 {
		t.Errorf("w-1 contributed %d, want 1 (one accepted update)", w.Contributed)
	}
	// Pruning forgets stale workers that never sent an update, nobody else.
	for i, seen := range []time.Time{t0, t0.Add(time.Hour)} {
		p, _, _ := ed25519.GenerateKey(nil)
		if _, err := s.RegisterWorker(ctx, Worker{ID: fmt.Sprintf("w-new%d", i), PublicKey: p, Registered: seen, LastSeen: seen}); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := s.PruneWorkers(ctx, t0.Add(30*time.Minute)); err != nil || n != 2 {
		t.Fatalf("prune: %d, %v; want 2 (w-0 and w-new0)", n, err)
	}
	for id, want := range map[string]bool{"w-1": true, "w-0": false, "w-new0": false, "w-new1": true} {
		if _, err := s.Worker(ctx, id); (err == nil) != want {
			t.Errorf("worker %s after pruning: %v, want kept=%v", id, err, want)
		}
	}
	// Counters: saved, overwritten, read back.
	if got, err := s.Counters(ctx); err != nil || len(got) != 0 {
		t.Fatalf("counters of a new store: %v %v", got, err)
	}
	s.SaveCounters(ctx, map[string]float64{"a": 1, `b{reason=x}`: 2})
	s.SaveCounters(ctx, map[string]float64{"a": 5})
	if got, err := s.Counters(ctx); err != nil || got["a"] != 5 || got[`b{reason=x}`] != 2 || len(got) != 2 {
		t.Fatalf("counters: %v %v", got, err)
	}
}

func TestMemStore(t *testing.T) {
	testStore(t, func(t *testing.T) Store { return NewMemStore() })
}

// With Keep, old rounds' update records go but their nonces stay seen.
func TestMemStoreKeepsRecentRounds(t *testing.T) {
	ctx := context.Background()
	s := NewMemStore()
	s.Keep = 1
	for id := uint64(1); id <= 4; id++ {
		if err := s.CreateRound(ctx, Round{ID: id, State: StateOpen}); err != nil {
			t.Fatal(err)
		}
		u := UpdateRecord{Round: id, Applied: id, WorkerID: "w", Nonce: fmt.Sprint("n", id), Accepted: true}
		if err := s.AddUpdate(ctx, u); err != nil {
			t.Fatal(err)
		}
	}
	for id, want := range map[uint64]int{1: 0, 2: 0, 3: 1, 4: 1} {
		if ups, _ := s.Updates(ctx, id); len(ups) != want {
			t.Errorf("round %d: %d update records kept, want %d", id, len(ups), want)
		}
	}
	if seen, _ := s.NonceSeen(ctx, "n1"); !seen {
		t.Error("the nonce of a forgotten round's update is no longer seen")
	}
	r, _ := s.Round(ctx, 1)
	r.Cohort = append(r.Cohort, "x")
	if again, _ := s.Round(ctx, 1); len(again.Cohort) != 0 {
		t.Error("a caller's change to a returned round reached the store")
	}
}

func TestSQLiteStore(t *testing.T) {
	testStore(t, func(t *testing.T) Store {
		s, err := OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "c.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestSQLiteReopenKeepsSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.db")
	for i := 0; i < 2; i++ {
		s, err := OpenSQLite(context.Background(), path)
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		if v, _ := s.SchemaVersion(context.Background()); v != len(migrations) {
			t.Errorf("open %d: version %d", i, v)
		}
		s.Close()
	}
}

// postgresStore starts a throwaway server for the test (pgtest skips the
// test when PostgreSQL is not installed, unless it is required).
func postgresStore(t *testing.T) Store {
	srv := pgtest.Start(t)
	s, err := OpenPostgres(context.Background(), srv.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestPostgresStore(t *testing.T) {
	testStore(t, postgresStore)
}

// A database made before migration 2 gets the contributed counts from the
// updates it holds.
func TestMigrationCountsPastContributions(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "c.db")
	s, err := OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	db := s.(*sqlStore).db
	pub, _, _ := ed25519.GenerateKey(nil)
	stmts := []string{
		`DELETE FROM schema_migrations WHERE version = 2`,
		`DROP INDEX updates_worker`,
		`ALTER TABLE workers DROP COLUMN contributed`,
		`INSERT INTO workers (id, public_key, name, device, registered, last_seen) VALUES ('w-a', '` + encodeKey(pub) + `', '', '', 1, 1)`,
		`INSERT INTO updates (seq, round, applied, worker_id, sha256, nonce, bytes, tokens, flops, energy_wh, weight, norm, late, accepted, reason, received, signature)
		 VALUES (1, 1, 1, 'w-a', 'h1', 'n1', 1, 1, 0, 0, 1, 0, 0, 1, '', 1, ''), (2, 2, 2, 'w-a', 'h2', 'n2', 1, 1, 0, 0, 1, 0, 0, 1, '', 1, ''),
		        (3, 3, 3, 'w-a', 'h3', 'n3', 1, 1, 0, 0, 0, 0, 0, 0, 'refused', 1, '')`,
	}
	for _, q := range stmts {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	s.Close()
	s, err = OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if w, err := s.Worker(ctx, "w-a"); err != nil || w.Contributed != 2 {
		t.Fatalf("after migration 2: %+v %v, want 2 contributions", w, err)
	}
}

package netclient

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"github.com/opencluster/opencluster/internal/atomicfile"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/opencluster/opencluster/compress"
	"github.com/opencluster/opencluster/protocol"
	"github.com/opencluster/opencluster/train"
	"github.com/opencluster/opencluster/train/backend"
)

func readFile(p string) ([]byte, error) { return os.ReadFile(p) }

func writeFileAtomicMkdir(p string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return atomicfile.WriteFile(p, b, 0o644)
}

func TestBackoffDelay(t *testing.T) {
	b := Backoff{Base: time.Second, Max: 10 * time.Second}
	for _, tc := range []struct {
		attempt int
		r       float64
		want    time.Duration
	}{
		{0, 0, 500 * time.Millisecond},
		{0, 0.999999, time.Second},
		{1, 0, time.Second},
		{2, 0.5, 3 * time.Second},
		{3, 0, 4 * time.Second}, // 8 s schedule
		{4, 0, 5 * time.Second}, // capped at 10 s
		{60, 1 - 1e-9, 10 * time.Second},
	} {
		r := tc.r
		b.Rand = func() float64 { return r }
		got := b.Delay(tc.attempt)
		if d := got - tc.want; d > time.Millisecond || d < -time.Millisecond {
			t.Errorf("Delay(%d) with rand %v = %v, want %v", tc.attempt, tc.r, got, tc.want)
		}
	}
}

func TestAdapterShapesMatchModel(t *testing.T) {
	cfg := testConfig()
	m, err := train.NewModel(cfg.Model, backend.NewCPU(1), 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, targets := range [][]string{train.LinearNames, {"k_proj"}, {"gate_proj", "o_proj"}} {
		cfg.LoRA.Targets = targets
		if err := m.EnableLoRA(cfg.LoRA, 1); err != nil {
			t.Fatal(err)
		}
		if got, want := ShapesLen(AdapterShapes(cfg.Model, cfg.LoRA)), m.NumTrainable(); got != want {
			t.Errorf("targets %v: shapes hold %d values, model trains %d", targets, got, want)
		}
	}
}

func TestDecodeAdapterRefusesBadBlobs(t *testing.T) {
	good := EncodeAdapter([]float32{1, -2, 3})
	if v, err := DecodeAdapter(good, 3); err != nil || v[1] != -2 {
		t.Fatalf("DecodeAdapter(good) = %v, %v", v, err)
	}
	nan := EncodeAdapter([]float32{1, float32(0), 3})
	nan[4], nan[5], nan[6], nan[7] = 0, 0, 0xc0, 0x7f // NaN at index 1
	for name, tc := range map[string]struct {
		b []byte
		n int
	}{"short": {good[:11], 3}, "long": {good, 2}, "nan": {nan, 3}} {
		if _, err := DecodeAdapter(tc.b, tc.n); err == nil {
			t.Errorf("%s: DecodeAdapter accepted a bad blob", name)
		}
	}
}

func TestCacheResumesPartialDownload(t *testing.T) {
	blob := bytes.Repeat([]byte("0123456789abcdef"), 4096)
	h := sha256.Sum256(blob)
	sha := hex.EncodeToString(h[:])
	var ranges []string
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		ranges = append(ranges, r.Header.Get("Range"))
		mu.Unlock()
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(blob))
	}))
	defer srv.Close()
	dir := t.TempDir()
	c := &Cache{Dir: dir}
	// A download killed half-way left a .part file.
	if err := os.WriteFile(filepath.Join(dir, sha+".part"), blob[:10000], 0o644); err != nil {
		t.Fatal(err)
	}
	p, n, err := c.Fetch(context.Background(), srv.Client(), srv.URL, sha, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(len(blob)-10000) {
		t.Errorf("transferred %d bytes, want only the missing %d", n, len(blob)-10000)
	}
	if len(ranges) != 1 || ranges[0] != "bytes=10000-" {
		t.Errorf("Range headers %q, want one bytes=10000-", ranges)
	}
	got, _ := os.ReadFile(p)
	if !bytes.Equal(got, blob) {
		t.Fatal("cached file differs from the blob")
	}
	if _, err := os.Stat(filepath.Join(dir, sha+".part")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf(".part file left behind: %v", err)
	}
	// A second fetch is served from the cache.
	if _, n, err := c.Fetch(context.Background(), srv.Client(), srv.URL, sha, 1<<30); err != nil || n != 0 {
		t.Errorf("second fetch transferred %d bytes (err %v), want 0", n, err)
	}
}

func TestCacheRejectsWrongHash(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("not what you asked for"))
	}))
	defer srv.Close()
	dir := t.TempDir()
	c := &Cache{Dir: dir}
	sha := hex.EncodeToString(make([]byte, 32))
	if _, _, err := c.Fetch(context.Background(), srv.Client(), srv.URL, sha, 1<<30); err == nil {
		t.Fatal("Fetch accepted a body with the wrong hash")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("bad download left files: %v", ents)
	}
	if _, _, err := c.Fetch(context.Background(), srv.Client(), srv.URL, "../../etc/passwd", 1<<30); err == nil {
		t.Error("Fetch accepted a hash that is a path")
	}
}

// TestWorkerRounds runs two rounds against the fake coordinator and checks
// what arrives: signed updates of the round's codec, from the global
// adapter, that decode to a delta that moved the adapter; and what stays:
// the key, the EF state, the last round done.
func TestWorkerRounds(t *testing.T) {
	dir := t.TempDir()
	_, base := writeBase(t, dir)
	cfg := testConfig()
	cfg.Model.MaxSeqLen = 32
	shapes := AdapterShapes(cfg.Model, cfg.LoRA)
	fake := newFake(t, base, shapes, "topk:0.1+int8:64")
	fake.maxRounds = 2
	srv := httptest.NewServer(fake)
	defer srv.Close()
	var events []Event
	var mu sync.Mutex
	rep := ReporterFunc(func(e Event) { mu.Lock(); events = append(events, e); mu.Unlock() })
	w := startWorker(t, srv, filepath.Join(dir, "state"), writeData(t, dir), &fakeClock{now: time.Unix(0, 0)}, rep)
	w.o.MaxRounds = 2
	if err := w.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(fake.updates) != 2 {
		t.Fatalf("coordinator got %d updates, want 2", len(fake.updates))
	}
	pub := w.o.State.Public()
	for i, body := range fake.updates {
		u, err := protocol.UnmarshalUpdate(body, fake.n)
		if err != nil {
			t.Fatal(err)
		}
		if err := protocol.Verify(u, pub); err != nil {
			t.Errorf("update %d: %v", i, err)
		}
		if u.ShapesDigest != protocol.ShapesDigest(shapes) {
			t.Errorf("update %d: shapes digest %x, want the digest of the round's shapes", i, u.ShapesDigest)
		}
		if u.Round != uint64(i+1) || u.Tokens != 3*32 || u.Codec != "topk:0.1+int8:64" {
			t.Errorf("update %d: round %d tokens %d codec %q", i, u.Round, u.Tokens, u.Codec)
		}
		if want := compress.MustParse(u.Codec).K(fake.n); len(u.Delta.Values) != want {
			t.Errorf("update %d carries %d values, want %d", i, len(u.Delta.Values), want)
		}
	}
	if w.o.State.Progress.LastRoundDone != 2 {
		t.Errorf("last round done %d, want 2", w.o.State.Progress.LastRoundDone)
	}
	ef, err := compress.LoadState(filepath.Join(dir, "state", efFile))
	if err != nil {
		t.Fatalf("error-feedback state not saved: %v", err)
	}
	var resid float64
	for _, v := range ef.Residual {
		resid += float64(v * v)
	}
	if resid == 0 {
		t.Error("error-feedback residual is all zero after top-10% rounds")
	}
	var done int
	for _, e := range events {
		if e.Phase == PhaseDone {
			done++
			if e.Accepted == nil || !*e.Accepted || e.CompressionRatio < 2 || e.RoundBytesUp == 0 || e.Loss <= 0 {
				t.Errorf("done event %+v", e)
			}
		}
	}
	if done != 2 {
		t.Errorf("%d done events, want 2", done)
	}
	// The base was downloaded once and the state remembers the id.
	st, err := OpenState(filepath.Join(dir, "state"))
	if err != nil || st.KeyCreated || st.Progress.WorkerID == "" {
		t.Errorf("reopened state: created=%v id=%q err=%v", st.KeyCreated, st.Progress.WorkerID, err)
	}
}

// TestWorkerRetriesUploadWithBackoff: two 503s, then success; the sleeps
// follow the backoff schedule.
func TestWorkerRetriesUploadWithBackoff(t *testing.T) {
	dir := t.TempDir()
	_, base := writeBase(t, dir)
	fake := newFake(t, base, AdapterShapes(testConfig().Model, testConfig().LoRA), "topk:0.1")
	fake.maxRounds, fake.failNext = 1, 2
	srv := httptest.NewServer(fake)
	defer srv.Close()
	clk := &fakeClock{now: time.Unix(0, 0)}
	w := startWorker(t, srv, filepath.Join(dir, "state"), writeData(t, dir), clk, ReporterFunc(func(Event) {}))
	w.o.MaxRounds = 1
	if err := w.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if fake.uploads != 3 || len(fake.updates) != 1 {
		t.Fatalf("uploads %d accepted %d, want 3 attempts and 1 accepted", fake.uploads, len(fake.updates))
	}
	// Rand 0.5 gives 3/4 of the schedule: 0.75 s, then 1.5 s.
	want := []time.Duration{750 * time.Millisecond, 1500 * time.Millisecond}
	if len(clk.sleeps) < 2 || clk.sleeps[0] != want[0] || clk.sleeps[1] != want[1] {
		t.Errorf("sleeps %v, want %v first", clk.sleeps, want)
	}
}

// TestWorkerResendsPendingAfterRestart: the upload never gets through
// before the worker dies; the restarted worker sends the very same bytes
// (same nonce and signature) instead of training again.
func TestWorkerResendsPendingAfterRestart(t *testing.T) {
	dir := t.TempDir()
	_, base := writeBase(t, dir)
	fake := newFake(t, base, AdapterShapes(testConfig().Model, testConfig().LoRA), "topk:0.2+q4:64")
	fake.maxRounds, fake.failNext = 1, 1000
	srv := httptest.NewServer(fake)
	defer srv.Close()
	state, data := filepath.Join(dir, "state"), writeData(t, dir)
	ctx, cancel := context.WithCancel(context.Background())
	clk := &cancelClock{fakeClock: fakeClock{now: time.Unix(0, 0)}, after: 3, cancel: cancel}
	w := startWorker(t, srv, state, data, clk, ReporterFunc(func(Event) {}))
	if err := w.Register(ctx); err != nil {
		t.Fatal(err)
	}
	info, ok, err := w.client.Round(ctx, w.o.State.Progress.WorkerID, w.o.State.Key, time.Now(), time.Second)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	if err := w.DoRound(ctx, info); err == nil {
		t.Fatal("DoRound succeeded though every upload failed")
	}
	_, pending, ok := w.o.State.Pending()
	if !ok {
		t.Fatal("no pending update kept after the failed upload")
	}
	w.Close()

	fake.mu.Lock()
	fake.failNext = 0
	fake.mu.Unlock()
	w2 := startWorker(t, srv, state, data, &fakeClock{now: time.Unix(0, 0)}, ReporterFunc(func(Event) {}))
	w2.o.MaxRounds = 1
	if err := w2.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(fake.updates) != 1 || !bytes.Equal(fake.updates[0], pending) {
		t.Fatal("the restarted worker did not resend the stored update byte for byte")
	}
	if _, _, ok := w2.o.State.Pending(); ok {
		t.Error("pending update still there after it was accepted")
	}
	if _, err := os.Stat(filepath.Join(state, efFile)); err != nil {
		t.Errorf("EF state not committed after the accepted resend: %v", err)
	}
}

// cancelClock cancels the context after a number of sleeps (the worker
// "dies" mid-upload).
type cancelClock struct {
	fakeClock
	after  int
	cancel context.CancelFunc
}

func (c *cancelClock) Sleep(ctx context.Context, d time.Duration) error {
	c.fakeClock.Sleep(ctx, d)
	c.after--
	if c.after <= 0 {
		c.cancel()
	}
	return ctx.Err()
}

package ledger

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencluster/opencluster/compress"
	"github.com/opencluster/opencluster/protocol"
)

// key returns a fixed ed25519 key made from seed byte b.
func key(b byte) ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{b}, ed25519.SeedSize))
}

var coordKey = key(1)

func pubText(priv ed25519.PrivateKey) string {
	return protocol.EncodePublicKey(priv.Public().(ed25519.PublicKey))
}

func hashOf(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// adapter returns the fake adapter hash after round r.
func adapter(r uint64) string { return hashOf(fmt.Sprint("adapter ", r)) }

// signedUpdate makes a real signed update from worker id with key priv for
// round, trained from the adapter with hex hash base.
func signedUpdate(t testing.TB, id string, priv ed25519.PrivateKey, round uint64, base string) []byte {
	t.Helper()
	c, err := compress.Parse("topk:0.25+int8:16")
	if err != nil {
		t.Fatal(err)
	}
	x := make([]float32, 32)
	for i := range x {
		x[i] = float32(i%7) * 1e-3 * float32(round+1)
	}
	p, err := c.Encode(x, nil, round)
	if err != nil {
		t.Fatal(err)
	}
	u := &protocol.Update{
		Round: round, Nonce: [protocol.NonceSize]byte{byte(round), 1}, WorkerID: id, N: 32,
		Shapes: []protocol.Shape{{Name: "lora_A", Dims: []int{4, 8}}}, Codec: c.String(),
		Seed: round, Tokens: 1000 * (round + 1), FLOPs: 6e9, EnergyWh: 0.25, Payload: p.Bytes,
	}
	b, _ := hex.DecodeString(base)
	copy(u.BaseSHA256[:], b)
	out, err := protocol.MarshalUpdate(u, priv)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// entryFor describes update bytes b as an accepted entry.
func entryFor(t testing.TB, b []byte, workerKey ed25519.PrivateKey) UpdateEntry {
	t.Helper()
	u, err := protocol.UnmarshalUpdate(b, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	return NewEntry(b, u, pubText(workerKey), true, "")
}

// testRound builds the unsealed record for round r with two workers, one
// accepted and one rejected, and returns it with the stored update bytes.
func testRound(t testing.TB, r uint64) (Record, map[string][]byte) {
	t.Helper()
	store := map[string][]byte{}
	ka, kb := key(10), key(11)
	a := signedUpdate(t, "w-a", ka, r, adapter(r-1))
	b := signedUpdate(t, "w-b", kb, r, adapter(r-1))
	ea, eb := entryFor(t, a, ka), entryFor(t, b, kb)
	eb.Accepted, eb.Reason = false, "late: arrived after the deadline"
	store[ea.UpdateHash], store[eb.UpdateHash] = a, b
	return Record{
		Round:         r,
		Time:          time.Date(2025, 6, 1, 12, int(r), 0, 0, time.UTC),
		AdapterBefore: adapter(r - 1),
		AdapterAfter:  adapter(r),
		Cohort:        []string{"w-a", "w-b"},
		Seed:          math.MaxUint64 - r,
		Aggregation: Aggregation{
			Method:  "fedavgm",
			Params:  map[string]float64{"server_lr": 1, "momentum": 0.9, "norm_bound": 0.5},
			Options: map[string]string{"norm_mode": "clip"},
		},
		Updates: []UpdateEntry{ea, eb},
	}, store
}

// writeLedger appends rounds 1..n to a new Log in a temp dir.
func writeLedger(t testing.TB, n int) (*Log, map[string][]byte) {
	t.Helper()
	l, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	store := map[string][]byte{}
	for r := 1; r <= n; r++ {
		rec, s := testRound(t, uint64(r))
		if err := l.Append(&rec, coordKey); err != nil {
			t.Fatalf("append round %d: %v", r, err)
		}
		for k, v := range s {
			store[k] = v
		}
	}
	return l, store
}

func mapStore(m map[string][]byte) func(string) ([]byte, error) {
	return func(h string) ([]byte, error) {
		if b, ok := m[h]; ok {
			return b, nil
		}
		return nil, fmt.Errorf("update %s: %w", h, ErrNotStored)
	}
}

func TestAppendVerifyReopen(t *testing.T) {
	l, store := writeLedger(t, 4)
	recs := l.Records()
	if len(recs) != 4 || l.Len() != 4 {
		t.Fatalf("got %d records, want 4", len(recs))
	}
	for i, r := range recs {
		if r.Index != uint64(i) {
			t.Errorf("record %d has index %d", i, r.Index)
		}
	}
	if recs[0].PrevHash != GenesisHash {
		t.Errorf("first prev_hash %q, want GenesisHash", recs[0].PrevHash)
	}
	if recs[2].PrevHash != recs[1].Hash {
		t.Errorf("record 2 prev_hash %s, want %s", recs[2].PrevHash, recs[1].Hash)
	}
	last, ok := l.Last()
	if !ok || last.Hash != l.Head() || last.Round != 4 {
		t.Fatalf("Last() = round %d hash %s, ok %v; Head() = %s", last.Round, last.Hash, ok, l.Head())
	}
	opts := VerifyOptions{CoordinatorKey: pubText(coordKey), Head: l.Head(), UpdateStore: mapStore(store)}
	if err := Verify(recs, opts); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	got, err := VerifyFile(l.Path(), opts)
	if err != nil || len(got) != 4 {
		t.Fatalf("VerifyFile: %d records, %v", len(got), err)
	}
	l.Close()
	l2, err := Open(filepath.Dir(l.Path()))
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if l2.Head() != l.Head() || l2.Len() != 4 {
		t.Fatalf("reopened: %d records head %s, want 4 and %s", l2.Len(), l2.Head(), l.Head())
	}
	next, _ := testRound(t, 5)
	if err := l2.Append(&next, coordKey); err != nil {
		t.Fatalf("append after reopen: %v", err)
	}
	if next.Index != 4 || next.PrevHash != l.Head() {
		t.Errorf("appended index %d prev %s", next.Index, next.PrevHash)
	}
	// Records are copies: changing one does not change the log.
	recs[0].Cohort[0] = "mallory"
	if l.Records()[0].Cohort[0] != "w-a" {
		t.Error("Records() shares memory with the log")
	}
}

// A third party can recompute a hash from the line alone.
func TestHashFromLine(t *testing.T) {
	l, _ := writeLedger(t, 2)
	data, err := os.ReadFile(l.Path())
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	for i, line := range lines {
		cut := strings.Index(line, `,"hash":"`)
		if cut < 0 {
			t.Fatalf("line %d has no hash field", i+1)
		}
		if got, want := hashOf(line[:cut]+"}"), l.Records()[i].Hash; got != want {
			t.Errorf("line %d: hash of the cut line %s, record hash %s", i+1, got, want)
		}
	}
	if !strings.Contains(lines[0], `"aggregation":{"method":"fedavgm","momentum":0.9,"norm_bound":0.5,"norm_mode":"clip","server_lr":1}`) {
		t.Errorf("aggregation not in flat sorted form: %s", lines[0])
	}
	if !strings.Contains(lines[0], fmt.Sprintf(`"seed":"%d"`, uint64(math.MaxUint64-1))) {
		t.Errorf("seed not a decimal string: %s", lines[0])
	}
}

// Every one-byte change anywhere in the file must fail verification with
// an error that names a record.
func TestEveryByteEditFails(t *testing.T) {
	l, _ := writeLedger(t, 2)
	data, err := os.ReadFile(l.Path())
	if err != nil {
		t.Fatal(err)
	}
	opts := VerifyOptions{Head: l.Head()}
	if _, err := VerifyReader(bytes.NewReader(data), opts); err != nil {
		t.Fatalf("untouched file: %v", err)
	}
	step := 1
	if testing.Short() {
		step = 7
	}
	edits := 0
	defer func() {
		t.Logf("%d one-byte edits of a %d-byte, 2-record ledger all failed verification", edits, len(data))
	}()
	for i := 0; i < len(data); i += step {
		for _, mask := range []byte{0x01, 0x20, 0x80} {
			edited := bytes.Clone(data)
			edited[i] ^= mask
			edits++
			_, err := VerifyReader(bytes.NewReader(edited), opts)
			var ve *VerifyError
			if !errors.As(err, &ve) {
				t.Fatalf("byte %d (%q) ^ %#x: got %v, want a *VerifyError", i, data[i], mask, err)
			}
			if !strings.HasPrefix(ve.Error(), "record ") {
				t.Fatalf("byte %d: error %q does not name the record", i, ve)
			}
		}
	}
}

func TestVerifyNamesFirstBadRecord(t *testing.T) {
	l, store := writeLedger(t, 4)
	other := key(2)
	resealed := func(recs []Record, from int, priv ed25519.PrivateKey) {
		for i := from; i < len(recs); i++ {
			var prev *Record
			if i > 0 {
				prev = &recs[i-1]
			}
			if err := Seal(&recs[i], prev, priv); err != nil {
				t.Fatal(err)
			}
		}
	}
	tests := []struct {
		name   string
		edit   func([]Record) []Record
		opts   VerifyOptions
		index  int
		reason string
	}{
		{"hash", func(r []Record) []Record { r[2].Hash = adapter(99); return r }, VerifyOptions{}, 2, "hash mismatch"},
		{"tokens edited", func(r []Record) []Record { r[1].Updates[0].Tokens++; return r }, VerifyOptions{}, 1, "hash mismatch"},
		{"rehashed, not re-signed", func(r []Record) []Record {
			r[1].Updates[0].EnergyWh = 0.01
			r[1].Hash, _ = r[1].ComputeHash()
			return r
		}, VerifyOptions{}, 1, "bad coordinator signature"},
		{"record dropped", func(r []Record) []Record { return append(r[:1], r[2:]...) }, VerifyOptions{}, 1, "index 2 out of sequence"},
		{"records swapped", func(r []Record) []Record { r[1], r[2] = r[2], r[1]; return r }, VerifyOptions{}, 1, "index 2 out of sequence"},
		{"tail cut", func(r []Record) []Record { return r[:3] }, VerifyOptions{Head: l.Head()}, 2, "missing from the end"},
		{"other key signs record 2", func(r []Record) []Record {
			r[2].CoordinatorKey = pubText(other)
			r[2].Hash, _ = r[2].ComputeHash()
			r[2].Signature = base64.StdEncoding.EncodeToString(ed25519.Sign(other, []byte(SigningPrefix+r[2].Hash)))
			return r
		}, VerifyOptions{}, 2, "coordinator_key"},
		{"other key re-signs all", func(r []Record) []Record { resealed(r, 0, other); return r }, VerifyOptions{CoordinatorKey: pubText(coordKey)}, 0, "signed by coordinator key"},
		{"adapter gap", func(r []Record) []Record {
			r[3].AdapterBefore = adapter(77)
			r[3].Hash, _ = r[3].ComputeHash()
			r[3].Signature = base64.StdEncoding.EncodeToString(ed25519.Sign(coordKey, []byte(SigningPrefix+r[3].Hash)))
			return r
		}, VerifyOptions{}, 3, "adapter_before"},
		{"stored update altered", func(r []Record) []Record { return r }, VerifyOptions{UpdateStore: func(h string) ([]byte, error) {
			b := bytes.Clone(store[h])
			b[40] ^= 1
			return b, nil
		}}, 0, "stored bytes hash to"},
		{"store error", func(r []Record) []Record { return r }, VerifyOptions{UpdateStore: func(string) ([]byte, error) {
			return nil, errors.New("disk on fire")
		}}, 0, "disk on fire"},
		{"recompute differs", func(r []Record) []Record { return r }, VerifyOptions{Recompute: func(r Record) (string, error) {
			if r.Index == 2 {
				return adapter(1234), nil
			}
			return r.AdapterAfter, nil
		}}, 2, "adapter_after mismatch"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			recs := tt.edit(l.Records())
			err := Verify(recs, tt.opts)
			var ve *VerifyError
			if !errors.As(err, &ve) {
				t.Fatalf("got %v, want a *VerifyError", err)
			}
			if ve.Index != tt.index || !strings.Contains(ve.Reason, tt.reason) {
				t.Fatalf("got %q (index %d), want index %d and reason containing %q", ve, ve.Index, tt.index, tt.reason)
			}
			if !strings.HasPrefix(ve.Error(), fmt.Sprintf("record %d (round %d): ", ve.Index, ve.Round)) {
				t.Errorf("error %q does not start with the record and round", ve)
			}
		})
	}
}

// The worker's signature is checked against stored update bytes: an
// entry whose claims differ from the signed update fails even when the
// coordinator signed the record.
func TestStoredUpdateChecks(t *testing.T) {
	rec, store := testRound(t, 1)
	ka := key(10)
	forged := signedUpdate(t, "w-a", key(66), 1, adapter(0)) // signed by someone else
	tests := []struct {
		name   string
		edit   func(*Record)
		reason string
	}{
		{"ok", func(*Record) {}, ""},
		{"tokens inflated", func(r *Record) { r.Updates[0].Tokens *= 10 }, "tokens"},
		{"energy", func(r *Record) { r.Updates[0].EnergyWh = 9 }, "energy_wh"},
		{"worker key", func(r *Record) { r.Updates[0].WorkerKey = pubText(key(12)) }, "bad update signature"},
		{"forged update", func(r *Record) {
			e := entryFor(t, forged, ka)
			store[e.UpdateHash] = forged
			r.Updates[0] = e
		}, "bad update signature"},
		{"stale base", func(r *Record) {
			b := signedUpdate(t, "w-a", ka, 1, adapter(55))
			e := entryFor(t, b, ka)
			store[e.UpdateHash] = b
			r.Updates[0] = e
		}, "base adapter"},
		{"size", func(r *Record) { r.Updates[0].Bytes++ }, "bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := rec.clone()
			tt.edit(&r)
			if err := Seal(&r, nil, coordKey); err != nil {
				t.Fatal(err)
			}
			err := Verify([]Record{r}, VerifyOptions{UpdateStore: mapStore(store)})
			if tt.reason == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.reason) {
				t.Fatalf("got %v, want an error about %q", err, tt.reason)
			}
			// Without the stored bytes the same record verifies: the
			// check needs the update.
			if err := Verify([]Record{r}, VerifyOptions{UpdateStore: mapStore(nil)}); err != nil {
				t.Fatalf("with nothing stored: %v", err)
			}
		})
	}
	if err := Verify([]Record{rec}, VerifyOptions{}); err == nil {
		t.Error("unsealed record verified")
	}
}

func TestSealRejects(t *testing.T) {
	first, _ := testRound(t, 1)
	if err := Seal(&first, nil, coordKey); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		edit   func(*Record)
		reason string
	}{
		{"adapter hash", func(r *Record) { r.AdapterAfter = "XYZ" }, "adapter_after"},
		{"uppercase hash", func(r *Record) { r.AdapterAfter = strings.ToUpper(adapter(2)) }, "adapter_after"},
		{"adapter gap", func(r *Record) { r.AdapterBefore = adapter(9) }, "adapter_before"},
		{"round repeats", func(r *Record) { r.Round = 1 }, "does not come after"},
		{"NaN flops", func(r *Record) { r.Updates[0].FLOPs = math.NaN() }, "flops"},
		{"negative energy", func(r *Record) { r.Updates[0].EnergyWh = -1 }, "energy_wh"},
		{"no reason", func(r *Record) { r.Updates[1].Reason = "" }, "without a reason"},
		{"not in cohort", func(r *Record) { r.Cohort = r.Cohort[1:] }, "not in the cohort"},
		{"cohort twice", func(r *Record) { r.Cohort = []string{"w-a", "w-a"} }, "selected twice"},
		{"same update twice", func(r *Record) { r.Updates[1].UpdateHash = r.Updates[0].UpdateHash }, "listed twice"},
		{"bad worker key", func(r *Record) { r.Updates[0].WorkerKey = "rsa:abc" }, "worker_key"},
		{"bad signature", func(r *Record) { r.Updates[0].Signature = "abc" }, "signature"},
		{"Inf param", func(r *Record) { r.Aggregation.Params["momentum"] = math.Inf(1) }, "momentum"},
		{"no method", func(r *Record) { r.Aggregation.Method = "" }, "method"},
		{"key in both maps", func(r *Record) { r.Aggregation.Options["momentum"] = "x" }, "both"},
		{"empty worker id", func(r *Record) { r.Updates[0].WorkerID = "" }, "worker id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, _ := testRound(t, 2)
			tt.edit(&r)
			before := r.clone()
			err := Seal(&r, &first, coordKey)
			if err == nil || !strings.Contains(err.Error(), tt.reason) {
				t.Fatalf("got %v, want an error about %q", err, tt.reason)
			}
			if r.Hash != "" || r.Signature != "" || r.Index != before.Index {
				t.Error("a failed Seal changed the record")
			}
		})
	}
	if err := Seal(&first, nil, ed25519.PrivateKey{1, 2}); err == nil {
		t.Error("short private key accepted")
	}
	unsealed, _ := testRound(t, 3)
	r, _ := testRound(t, 4)
	if err := Seal(&r, &unsealed, coordKey); err == nil {
		t.Error("sealed after an unsealed record")
	}
}

func TestParseRejectsNonCanonical(t *testing.T) {
	l, _ := writeLedger(t, 1)
	data, _ := os.ReadFile(l.Path())
	line := string(data)
	tests := []struct{ name, text, reason string }{
		{"space", strings.Replace(line, `"index":0`, `"index": 0`, 1), "canonical"},
		{"key case", strings.Replace(line, `"round"`, `"Round"`, 1), "canonical"},
		{"unknown field", strings.Replace(line, `{"version":1`, `{"extra":1,"version":1`, 1), "unknown field"},
		{"escaped char", strings.Replace(line, `"w-a"`, `"w\u002da"`, 1), "canonical"},
		{"no newline", strings.TrimSuffix(line, "\n"), "no newline"},
		{"two on a line", strings.TrimSuffix(line, "\n") + line, "after the record"},
		{"not JSON", "hello\n", "invalid record JSON"},
		{"blank line", line + "\n", "invalid record JSON"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(strings.NewReader(tt.text))
			if err == nil || !strings.Contains(err.Error(), tt.reason) {
				t.Fatalf("got %v, want an error about %q", err, tt.reason)
			}
			if !strings.Contains(err.Error(), "(line ") {
				t.Errorf("error %q does not name the line", err)
			}
		})
	}
}

func TestOpenRecoversTornLine(t *testing.T) {
	l, _ := writeLedger(t, 3)
	path, head := l.Path(), l.Head()
	good, _ := os.ReadFile(path)
	l.Close()

	// The line a fourth append would have written.
	recs := l.Records()
	next, _ := testRound(t, 4)
	if err := Seal(&next, &recs[2], coordKey); err != nil {
		t.Fatal(err)
	}
	line, _ := next.MarshalLine()

	for _, cut := range []int{1, len(line) / 2, len(line) - 1} {
		if err := os.WriteFile(path, append(bytes.Clone(good), line[:cut]...), 0o644); err != nil {
			t.Fatal(err)
		}
		l2, err := Open(filepath.Dir(path))
		if err != nil {
			t.Fatalf("cut %d: %v", cut, err)
		}
		if l2.Len() != 3 || l2.Head() != head {
			t.Errorf("cut %d: %d records, want 3", cut, l2.Len())
		}
		l2.Close()
		if got, _ := os.ReadFile(path); !bytes.Equal(got, good) {
			t.Errorf("cut %d: file not truncated back to the last complete line", cut)
		}
	}

	// A complete record missing only its newline is kept.
	if err := os.WriteFile(path, append(bytes.Clone(good), line...), 0o644); err != nil {
		t.Fatal(err)
	}
	l3, err := Open(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if l3.Len() != 4 || l3.Head() != next.Hash {
		t.Errorf("complete last record: %d records head %s, want 4 and %s", l3.Len(), l3.Head(), next.Hash)
	}
	l3.Close()
	if _, err := VerifyFile(path, VerifyOptions{}); err != nil {
		t.Errorf("after recovery: %v", err)
	}

	// Damage to a complete line is refused, not repaired.
	bad := bytes.Clone(good)
	bad[len(bad)/2] ^= 1
	if err := os.WriteFile(path, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(filepath.Dir(path)); err == nil {
		t.Fatal("Open accepted a damaged ledger")
	} else if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "record ") {
		t.Errorf("error %q does not name the file and record", err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, bad) {
		t.Error("Open modified a damaged ledger")
	}
}

func TestAppendRejectsWrongKeyAndKeepsState(t *testing.T) {
	l, _ := writeLedger(t, 1)
	before, _ := os.ReadFile(l.Path())
	r, _ := testRound(t, 2)
	if err := l.Append(&r, key(3)); err == nil || !strings.Contains(err.Error(), "coordinator_key") {
		t.Fatalf("got %v, want a coordinator key error", err)
	}
	if r.Hash != "" {
		t.Error("failed Append changed the record")
	}
	after, _ := os.ReadFile(l.Path())
	if !bytes.Equal(before, after) || l.Len() != 1 {
		t.Error("failed Append changed the log")
	}
	l.Close()
	if err := l.Append(&r, coordKey); err == nil {
		t.Error("Append on a closed log succeeded")
	}
}

// Appends and reads run concurrently (run with -race).
func TestConcurrentReadersDuringAppends(t *testing.T) {
	l, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var wg sync.WaitGroup
	done := make(chan struct{})
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				recs := l.Records()
				if err := Verify(recs, VerifyOptions{}); err != nil {
					t.Error(err)
					return
				}
				var buf bytes.Buffer
				l.WriteTo(&buf)
				if _, err := VerifyReader(&buf, VerifyOptions{}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for r := uint64(1); r <= 20; r++ {
		rec, _ := testRound(t, r)
		if err := l.Append(&rec, coordKey); err != nil {
			t.Fatal(err)
		}
	}
	close(done)
	wg.Wait()
	if l.Len() != 20 {
		t.Fatalf("%d records, want 20", l.Len())
	}
}

func TestServeHTTP(t *testing.T) {
	l, _ := writeLedger(t, 3)
	srv := httptest.NewServer(l)
	defer srv.Close()
	get := func(q string) (*http.Response, []byte) {
		resp, err := http.Get(srv.URL + q)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var buf bytes.Buffer
		buf.ReadFrom(resp.Body)
		return resp, buf.Bytes()
	}
	resp, body := get("/v1/ledger")
	file, _ := os.ReadFile(l.Path())
	if resp.StatusCode != 200 || !bytes.Equal(body, file) {
		t.Fatalf("GET: status %d, body equals file: %v", resp.StatusCode, bytes.Equal(body, file))
	}
	if resp.Header.Get("X-Ledger-Head") != l.Head() || resp.Header.Get("X-Ledger-Records") != "3" {
		t.Errorf("headers %v", resp.Header)
	}
	_, body = get("/v1/ledger?from=2")
	if recs, err := Parse(bytes.NewReader(body)); err != nil || len(recs) != 1 || recs[0].Index != 2 {
		t.Errorf("from=2: %d records, %v", len(recs), err)
	}
	if _, body = get("/v1/ledger?from=9"); len(body) != 0 {
		t.Errorf("from past the end: %q", body)
	}
	if resp, body = get("/v1/ledger?from=-1"); resp.StatusCode != 400 || !strings.Contains(string(body), `"error"`) {
		t.Errorf("from=-1: %d %s", resp.StatusCode, body)
	}
	resp, err := http.Post(srv.URL, "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d", resp.StatusCode)
	}
}

func TestAggregationJSON(t *testing.T) {
	a := Aggregation{Method: "fedadam", Params: map[string]float64{"beta2": 0.99, "eps": 1e-8, "big": 1e300}, Options: map[string]string{"late": "down-weight"}}
	b, err := a.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"method":"fedadam","beta2":0.99,"big":1e+300,"eps":1e-8,"late":"down-weight"}`
	if string(b) != want {
		t.Fatalf("got %s, want %s", b, want)
	}
	var back Aggregation
	if err := back.UnmarshalJSON(b); err != nil {
		t.Fatal(err)
	}
	if b2, _ := back.MarshalJSON(); !bytes.Equal(b, b2) {
		t.Errorf("round trip: %s", b2)
	}
	for _, bad := range []string{`{}`, `{"method":"x","p":[1]}`, `{"method":"x","p":true}`, `{"method":1}`, `[]`} {
		if err := new(Aggregation).UnmarshalJSON([]byte(bad)); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
}

func TestDirStore(t *testing.T) {
	dir := t.TempDir()
	h1, h2, h3 := adapter(1), adapter(2), adapter(3)
	os.WriteFile(filepath.Join(dir, h1), []byte("one"), 0o644)
	os.WriteFile(filepath.Join(dir, h2+".ocu"), []byte("two"), 0o644)
	s := DirStore(dir)
	if b, err := s(h1); err != nil || string(b) != "one" {
		t.Errorf("%s: %q %v", h1, b, err)
	}
	if b, err := s(h2); err != nil || string(b) != "two" {
		t.Errorf("%s.ocu: %q %v", h2, b, err)
	}
	if _, err := s(h3); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing: %v, want fs.ErrNotExist", err)
	}
	if _, err := s("../../etc/passwd"); err == nil || errors.Is(err, fs.ErrNotExist) {
		t.Errorf("path outside the store: %v", err)
	}
}

package coordinator

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencluster/opencluster/compress"
	"github.com/opencluster/opencluster/coordinator/internal/pgtest"
	"github.com/opencluster/opencluster/coordinator/ledger"
	"github.com/opencluster/opencluster/protocol"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func testConfig() Config {
	cfg := DefaultConfig()
	cfg.Shapes = []protocol.Shape{{Name: "layers.0.lora_A", Dims: []int{2, 4}}, {Name: "layers.0.lora_B", Dims: []int{4, 2}}}
	cfg.Recipe.Codec = "dense"
	cfg.CohortSize, cfg.MinWorkers, cfg.MinUpdates, cfg.Quorum = 3, 3, 2, 3
	cfg.RoundTimeout = time.Minute
	cfg.MaxUpdateBytes = 4096
	return cfg
}

// env is one coordinator behind a real TLS (HTTP/2) test server.
type env struct {
	t      *testing.T
	dir    string
	cfg    Config
	clock  *fakeClock
	store  Store
	led    *ledger.Log
	c      *Coordinator
	srv    *httptest.Server
	client *http.Client
}

func newEnv(t *testing.T, dir string, cfg Config, clock *fakeClock, openStore func() Store, with ...func(*Options)) *env {
	t.Helper()
	e := &env{t: t, dir: dir, cfg: cfg, clock: clock}
	if openStore != nil {
		e.store = openStore()
	} else {
		s, err := OpenSQLite(context.Background(), filepath.Join(dir, "coordinator.db"))
		if err != nil {
			t.Fatal(err)
		}
		e.store = s
	}
	led, err := ledger.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	e.led = led
	key, _, err := protocol.LoadOrCreateKey(filepath.Join(dir, "coordinator.key"))
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{Dir: dir, Store: e.store, Ledger: led, Key: key, Clock: clock, Logger: quiet}
	for _, f := range with {
		f(&opts)
	}
	e.c, err = New(context.Background(), cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = httptest.NewUnstartedServer(NewServer(e.c, ServerOptions{}))
	e.srv.EnableHTTP2 = true
	e.srv.StartTLS()
	e.client = e.srv.Client()
	t.Cleanup(e.close)
	return e
}

func (e *env) close() {
	if e.srv != nil {
		e.srv.Close()
		e.store.Close()
		e.led.Close()
		e.srv = nil
	}
}

func (e *env) step() {
	e.t.Helper()
	if err := e.c.Step(context.Background()); err != nil {
		e.t.Fatal(err)
	}
}

type worker struct {
	id   string
	pub  ed25519.PublicKey
	priv ed25519.PrivateKey
}

func (e *env) do(req *http.Request) (*http.Response, []byte) {
	e.t.Helper()
	resp, err := e.client.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.ProtoMajor != 2 {
		e.t.Errorf("%s %s: protocol %s, want HTTP/2", req.Method, req.URL.Path, resp.Proto)
	}
	return resp, b
}

func (e *env) register(name string) *worker {
	e.t.Helper()
	pub, priv, _ := ed25519.GenerateKey(nil)
	body, _ := json.Marshal(protocol.RegisterRequest{PublicKey: protocol.EncodePublicKey(pub), Name: name, ClientVersion: "test"})
	req, _ := http.NewRequest("POST", e.srv.URL+"/v1/register", bytes.NewReader(body))
	req.Header.Set(SignatureHeader, base64.StdEncoding.EncodeToString(ed25519.Sign(priv, append([]byte(RegisterPrefix), body...))))
	resp, b := e.do(req)
	if resp.StatusCode != 200 {
		e.t.Fatalf("register: %d %s", resp.StatusCode, b)
	}
	e.checkSigned(resp, b)
	var rr protocol.RegisterResponse
	if err := json.Unmarshal(b, &rr); err != nil {
		e.t.Fatal(err)
	}
	return &worker{id: rr.WorkerID, pub: pub, priv: priv}
}

func (e *env) checkSigned(resp *http.Response, body []byte) {
	e.t.Helper()
	sig, _ := base64.StdEncoding.DecodeString(resp.Header.Get(SignatureHeader))
	if !ed25519.Verify(e.c.PublicKey(), append([]byte(ResponsePrefix), body...), sig) {
		e.t.Error("response signature does not verify with the coordinator key")
	}
}

func (e *env) poll(w *worker, wait string) (*protocol.RoundInfo, int) {
	e.t.Helper()
	req, _ := http.NewRequest("GET", e.srv.URL+"/v1/round?wait="+wait, nil)
	protocol.SignPoll(req.Header, w.id, w.priv, e.clock.Now().Unix(), "GET", "/v1/round")
	resp, b := e.do(req)
	if resp.StatusCode != 200 {
		return nil, resp.StatusCode
	}
	e.checkSigned(resp, b)
	var info protocol.RoundInfo
	if err := json.Unmarshal(b, &info); err != nil {
		e.t.Fatal(err)
	}
	return &info, 200
}

// makeUpdate signs delta as w's update for the round in info.
func makeUpdate(t testing.TB, w *worker, info *protocol.RoundInfo, delta []float32, tokens uint64) ([]byte, *protocol.Update) {
	t.Helper()
	codec, err := compress.Parse(info.Recipe.Codec)
	if err != nil {
		t.Fatal(err)
	}
	p, err := codec.Encode(delta, nil, info.Seed)
	if err != nil {
		t.Fatal(err)
	}
	u := &protocol.Update{Round: info.Round, WorkerID: w.id, N: len(delta), Shapes: info.Shapes, Codec: codec.String(),
		Seed: info.Seed, Tokens: tokens, FLOPs: 1e9, EnergyWh: 0.5, Payload: p.Bytes}
	if _, err := hex.Decode(u.BaseSHA256[:], []byte(info.AdapterSHA256)); err != nil {
		t.Fatal(err)
	}
	b, err := protocol.MarshalUpdate(u, w.priv)
	if err != nil {
		t.Fatal(err)
	}
	return b, u
}

func (e *env) upload(body []byte) (int, string) {
	e.t.Helper()
	req, _ := http.NewRequest("POST", e.srv.URL+"/v1/updates", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, b := e.do(req)
	return resp.StatusCode, string(b)
}

func (e *env) get(path string) (*http.Response, []byte) {
	req, _ := http.NewRequest("GET", e.srv.URL+path, nil)
	return e.do(req)
}

func seqDelta(n int, base float32) []float32 {
	d := make([]float32, n)
	for i := range d {
		d[i] = base * float32(i+1) / float32(n)
	}
	return d
}

// startRound registers n workers and steps until the round is collecting.
func (e *env) startRound(n int) ([]*worker, *protocol.RoundInfo) {
	e.t.Helper()
	ws := make([]*worker, n)
	for i := range ws {
		ws[i] = e.register(fmt.Sprintf("w%d", i))
	}
	e.step()
	var info *protocol.RoundInfo
	for _, w := range ws {
		got, status := e.poll(w, "0s")
		if status != 200 {
			e.t.Fatalf("poll by cohort member %s: %d", w.id, status)
		}
		info = got
	}
	return ws, info
}

func TestFullRound(t *testing.T) {
	dir := t.TempDir()
	clock := &fakeClock{t: time.Unix(1_750_000_000, 0)}
	e := newEnv(t, dir, testConfig(), clock, nil)
	before, beforeHash := e.c.Adapter()

	ws, info := e.startRound(3)
	if info.Round != 1 || info.AdapterSHA256 != beforeHash || len(info.Shapes) != 2 || info.Recipe.Codec != "dense" {
		t.Fatalf("round info %+v", info)
	}
	// The adapter blob downloads, and resumes with Range.
	resp, blob := e.get(info.AdapterURL)
	if resp.StatusCode != 200 || sha256Hex(blob) != info.AdapterSHA256 {
		t.Fatalf("adapter blob: %d, hash %s", resp.StatusCode, sha256Hex(blob))
	}
	req, _ := http.NewRequest("GET", e.srv.URL+info.AdapterURL, nil)
	req.Header.Set("Range", "bytes=10-")
	resp, part := e.do(req)
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(part, blob[10:]) {
		t.Fatalf("range: %d, %d bytes", resp.StatusCode, len(part))
	}

	n := e.cfg.N()
	deltas := [][]float32{seqDelta(n, 1), seqDelta(n, -2), seqDelta(n, 4)}
	tokens := []uint64{100, 300, 600}
	for i, w := range ws {
		body, _ := makeUpdate(t, w, info, deltas[i], tokens[i])
		status, msg := e.upload(body)
		if status != 200 {
			t.Fatalf("upload %d: %d %s", i, status, msg)
		}
	}
	// A cohort member that has submitted gets no more work this round.
	if _, status := e.poll(ws[0], "0s"); status != http.StatusNoContent {
		t.Errorf("poll after submitting: %d, want 204", status)
	}
	e.step() // quorum 3 of 3: aggregate, publish, open round 2 with the same workers

	after, afterHash := e.c.Adapter()
	for i := range after {
		want := before[i] + (100*deltas[0][i]+300*deltas[1][i]+600*deltas[2][i])/1000
		if math.Abs(float64(after[i]-want)) > 1e-6 {
			t.Fatalf("adapter[%d] = %v, want %v", i, after[i], want)
		}
	}
	st := e.c.Status()
	if st.Round != 2 || st.State != StateCollecting || st.AdapterSHA256 != afterHash || st.LedgerRecords != 1 {
		t.Fatalf("status after round 1: %+v", st)
	}
	info2, status := e.poll(ws[1], "0s")
	if status != 200 || info2.Round != 2 || info2.AdapterSHA256 != afterHash || info2.Seed == info.Seed {
		t.Fatalf("round 2 info: %d %+v", status, info2)
	}

	// The ledger: served, one record, verifies with the stored updates and
	// the recomputed aggregate.
	resp, lb := e.get("/v1/ledger")
	if resp.StatusCode != 200 {
		t.Fatalf("ledger: %d", resp.StatusCode)
	}
	recs, err := ledger.VerifyReader(bytes.NewReader(lb), ledger.VerifyOptions{
		CoordinatorKey: protocol.EncodePublicKey(e.c.PublicKey()),
		UpdateStore:    ledger.DirStore(filepath.Join(dir, "updates")),
		Recompute:      Recompute(dir, e.cfg),
	})
	if err != nil {
		t.Fatalf("ledger verify: %v", err)
	}
	if len(recs) != 1 || recs[0].AdapterBefore != beforeHash || recs[0].AdapterAfter != afterHash || len(recs[0].Updates) != 3 {
		t.Fatalf("ledger record: %+v", recs)
	}

	resp, mb := e.get("/metrics")
	for _, want := range []string{"opencluster_rounds_total 1", "opencluster_updates_accepted_total 3", "opencluster_workers_registered 3", "opencluster_round_duration_seconds_count 1"} {
		if !strings.Contains(string(mb), want) {
			t.Errorf("metrics lack %q:\n%s", want, mb)
		}
	}
	if resp, b := e.get("/healthz"); resp.StatusCode != 200 || string(b) != "ok\n" {
		t.Errorf("healthz: %d %q", resp.StatusCode, b)
	}
	var sb Status
	_, b := e.get("/v1/status")
	if err := json.Unmarshal(b, &sb); err != nil || sb.CoordinatorKey != protocol.EncodePublicKey(e.c.PublicKey()) {
		t.Errorf("status: %s %v", b, err)
	}
}

func TestCompressedRoundAndServerOptimizer(t *testing.T) {
	cfg := testConfig()
	cfg.Recipe.Codec = "topk:0.25+int8:16"
	cfg.Optimizer = ServerOptimizer{Kind: OptNesterov, LR: 0.7, Momentum: 0.9}
	dir := t.TempDir()
	e := newEnv(t, dir, cfg, &fakeClock{t: time.Unix(1_750_000_000, 0)}, nil)
	ws, info := e.startRound(3)
	for round := 0; round < 2; round++ {
		for i, w := range ws {
			body, _ := makeUpdate(t, w, info, seqDelta(e.cfg.N(), float32(i+1)), 10)
			if status, msg := e.upload(body); status != 200 {
				t.Fatalf("round %d upload %d: %d %s", info.Round, i, status, msg)
			}
		}
		e.step()
		info, _ = e.poll(ws[0], "0s")
	}
	_, err := ledger.VerifyFile(filepath.Join(dir, ledger.FileName), ledger.VerifyOptions{
		UpdateStore: ledger.DirStore(filepath.Join(dir, "updates")), Recompute: Recompute(dir, e.cfg)})
	if err != nil {
		t.Fatalf("ledger with momentum state: %v", err)
	}
	if e.led.Len() != 2 {
		t.Fatalf("ledger has %d records, want 2", e.led.Len())
	}
}

func TestBadUpdatesRejected(t *testing.T) {
	cfg := testConfig()
	cfg.NormBound, cfg.NormPolicy = 10, NormReject
	clock := &fakeClock{t: time.Unix(1_750_000_000, 0)}
	e := newEnv(t, t.TempDir(), cfg, clock, nil)
	ws, info := e.startRound(3)
	n := e.cfg.N()
	good, goodU := makeUpdate(t, ws[0], info, seqDelta(n, 1), 10)

	outsider := e.register("outsider") // registered after the cohort was picked
	stranger := &worker{id: "w-unknown"}
	_, stranger.priv, _ = ed25519.GenerateKey(nil)

	resign := func(w *worker, mutate func(u *protocol.Update)) []byte {
		u := *goodU
		u.Nonce = [16]byte{}
		u.WorkerID = w.id
		mutate(&u)
		b, err := protocol.MarshalUpdate(&u, w.priv)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	badSig := bytes.Clone(good)
	badSig[len(badSig)-1] ^= 1
	tests := []struct {
		name   string
		body   []byte
		status int
		code   string
	}{
		{"empty", nil, 400, "malformed"},
		{"truncated", good[:len(good)/2], 400, "malformed"},
		{"bad signature", badSig, 401, "bad_signature"},
		{"unknown worker", resign(stranger, func(u *protocol.Update) {}), 403, "unknown_worker"},
		{"not in cohort", resign(outsider, func(u *protocol.Update) {}), 403, "not_in_cohort"},
		{"future round", resign(ws[1], func(u *protocol.Update) { u.Round = 7 }), 409, "wrong_round"},
		{"old round", resign(ws[1], func(u *protocol.Update) { u.Round = 0 }), 409, "wrong_round"},
		{"base mismatch", resign(ws[1], func(u *protocol.Update) { u.BaseSHA256[0] ^= 1 }), 409, "base_mismatch"},
		{"wrong shapes", resign(ws[1], func(u *protocol.Update) {
			u.Shapes = []protocol.Shape{{Name: "x", Dims: []int{n}}}
		}), 400, "shape_mismatch"},
		{"wrong element count", resign(ws[1], func(u *protocol.Update) {
			// The right digest but one element short: only the N check catches it.
			u.Shapes, u.N = nil, n-1
			p, _ := compress.MustParse("dense").Encode(seqDelta(n-1, 1), nil, 0)
			u.Payload = p.Bytes
		}), 400, "wrong shapes: update has 15 elements, round 1"},
		{"version 1", func() []byte { b := bytes.Clone(good); b[4] = 1; return b }(), 400, "unsupported_version"},
		{"zero tokens", resign(ws[1], func(u *protocol.Update) { u.Tokens = 0 }), 400, "zero_tokens"},
		{"over norm", resign(ws[1], func(u *protocol.Update) {
			p, _ := compress.MustParse("dense").Encode(seqDelta(n, 1000), nil, 0)
			u.Payload = p.Bytes
		}), 422, "over_norm"},
		{"oversized", make([]byte, cfg.MaxUpdateBytes+1), 413, "too_large"},
		{"NaN value", nanPayload(t, ws[1], goodU, n), 400, "malformed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, msg := e.upload(tc.body)
			if status != tc.status || !strings.Contains(msg, tc.code) {
				t.Fatalf("got %d %s; want %d %s", status, msg, tc.status, tc.code)
			}
			var eb protocol.ErrorBody
			if err := json.Unmarshal([]byte(msg), &eb); err != nil || eb.Error == "" {
				t.Errorf("body %q is not an ErrorBody", msg)
			}
			if st := e.c.Status(); st.Accepted != 0 || st.State != StateCollecting || st.Round != 1 {
				t.Errorf("round changed: %+v", st)
			}
		})
	}
	// The good update goes in once; its replay and a second update from
	// the same worker are refused.
	if status, msg := e.upload(good); status != 200 {
		t.Fatalf("good update: %d %s", status, msg)
	}
	if status, msg := e.upload(good); status != 409 || !strings.Contains(msg, "replay") {
		t.Fatalf("replayed update: %d %s", status, msg)
	}
	if status, msg := e.upload(resign(ws[0], func(u *protocol.Update) {})); status != 409 || !strings.Contains(msg, "duplicate") {
		t.Fatalf("second update: %d %s", status, msg)
	}
	if st := e.c.Status(); st.Accepted != 1 {
		t.Fatalf("accepted %d, want 1", st.Accepted)
	}
	// Close the round at the deadline (2 of 3 is min_updates), then a
	// late update for it is refused as a closed round.
	b1, _ := makeUpdate(t, ws[1], info, seqDelta(n, 1), 10)
	if status, msg := e.upload(b1); status != 200 {
		t.Fatalf("update 2: %d %s", status, msg)
	}
	clock.Add(2 * time.Minute)
	e.step()
	b2, _ := makeUpdate(t, ws[2], info, seqDelta(n, 1), 10)
	if status, msg := e.upload(b2); status != 409 || !strings.Contains(msg, "closed_round") {
		t.Fatalf("update for the closed round: %d %s", status, msg)
	}
	_, mb := e.get("/metrics")
	for _, want := range []string{`reason="bad_signature"} 1`, `reason="replay"} 1`, `reason="too_large"} 1`, `reason="closed_round"} 1`} {
		if !strings.Contains(string(mb), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	// The rejected-but-signed updates are listed in round 1's ledger record.
	rec, _ := e.led.Last()
	rejected := 0
	for _, u := range rec.Updates {
		if !u.Accepted {
			rejected++
		}
	}
	if rec.Round != 1 || rejected == 0 {
		t.Errorf("ledger record round %d lists %d rejected updates", rec.Round, rejected)
	}
	if _, err := ledger.VerifyFile(filepath.Join(e.dir, ledger.FileName), ledger.VerifyOptions{
		UpdateStore: ledger.DirStore(filepath.Join(e.dir, "updates")), Recompute: Recompute(e.dir, e.cfg)}); err != nil {
		t.Fatalf("ledger with rejected updates: %v", err)
	}
}

// nanPayload builds a correctly signed update whose dense payload holds a
// NaN: UnmarshalUpdate must refuse it. MarshalUpdate refuses it too, so
// the bytes are patched and the CRC and signature redone by hand.
func nanPayload(t *testing.T, w *worker, tmpl *protocol.Update, n int) []byte {
	u := *tmpl
	u.Nonce = [16]byte{}
	u.WorkerID = w.id
	b, err := protocol.MarshalUpdate(&u, w.priv)
	if err != nil {
		t.Fatal(err)
	}
	// The dense payload is uvarint k then k float32; find the last value.
	end := len(b) - 68
	nan := math.Float32bits(float32(math.NaN()))
	b[end-4], b[end-3], b[end-2], b[end-1] = byte(nan), byte(nan>>8), byte(nan>>16), byte(nan>>24)
	crc := crc32.Checksum(b[:end], castagnoli)
	b[end], b[end+1], b[end+2], b[end+3] = byte(crc), byte(crc>>8), byte(crc>>16), byte(crc>>24)
	copy(b[end+4:], ed25519.Sign(w.priv, b[:end+4]))
	return b
}

func TestLateUpdatesDownweighted(t *testing.T) {
	cfg := testConfig()
	cfg.Late, cfg.LateWeight, cfg.LateGrace = LateDownweight, 0.5, time.Minute
	clock := &fakeClock{t: time.Unix(1_750_000_000, 0)}
	dir := t.TempDir()
	e := newEnv(t, dir, cfg, clock, nil)
	ws, info := e.startRound(3)
	n := e.cfg.N()
	for _, w := range ws[:2] {
		b, _ := makeUpdate(t, w, info, seqDelta(n, 1), 10)
		if status, msg := e.upload(b); status != 200 {
			t.Fatal(status, msg)
		}
	}
	clock.Add(cfg.RoundTimeout + time.Second) // past the deadline, inside the grace
	e.step()
	if st := e.c.Status(); st.State != StateCollecting {
		t.Fatalf("round closed inside the late grace: %+v", st)
	}
	late, _ := makeUpdate(t, ws[2], info, seqDelta(n, 3), 10)
	status, msg := e.upload(late)
	if status != 200 || !strings.Contains(msg, "late") {
		t.Fatalf("late update: %d %s", status, msg)
	}
	before, _ := e.c.Adapter()
	e.step() // quorum 3 of 3
	after, _ := e.c.Adapter()
	// Weights 10, 10 (on time) and 5 (late): (10d + 10d + 5*3d)/25 = 1.4d.
	d := seqDelta(n, 1)
	for i := range after {
		if want := before[i] + d[i]*1.4; math.Abs(float64(after[i]-want)) > 1e-5 {
			t.Fatalf("adapter[%d] = %v, want %v", i, after[i], want)
		}
	}
	if _, err := ledger.VerifyFile(filepath.Join(dir, ledger.FileName), ledger.VerifyOptions{
		UpdateStore: ledger.DirStore(filepath.Join(dir, "updates")), Recompute: Recompute(dir, e.cfg)}); err != nil {
		t.Fatalf("ledger with a late update: %v", err)
	}
	// Past the grace, a late update is refused.
	info2, _ := e.poll(ws[0], "0s")
	clock.Add(cfg.RoundTimeout + cfg.LateGrace + time.Second)
	b, _ := makeUpdate(t, ws[0], info2, seqDelta(n, 1), 10)
	if status, msg := e.upload(b); status != 409 || !strings.Contains(msg, "late") {
		t.Fatalf("update after the grace: %d %s", status, msg)
	}
}

func TestLateRejected(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_750_000_000, 0)}
	e := newEnv(t, t.TempDir(), testConfig(), clock, nil)
	ws, info := e.startRound(3)
	clock.Add(2 * time.Minute)
	b, _ := makeUpdate(t, ws[0], info, seqDelta(e.cfg.N(), 1), 10)
	if status, msg := e.upload(b); status != 409 || !strings.Contains(msg, "late") {
		t.Fatalf("late update with late=reject: %d %s", status, msg)
	}
}

func TestDropoutsExtendThenRestart(t *testing.T) {
	cfg := testConfig()
	cfg.MaxExtensions = 1
	clock := &fakeClock{t: time.Unix(1_750_000_000, 0)}
	dir := t.TempDir()
	e := newEnv(t, dir, cfg, clock, nil)
	ws, info := e.startRound(3)
	n := e.cfg.N()
	b, _ := makeUpdate(t, ws[0], info, seqDelta(n, 1), 10)
	if status, msg := e.upload(b); status != 200 {
		t.Fatal(status, msg)
	}
	clock.Add(2 * time.Minute)
	e.step() // 1 < min_updates 2: extended
	if st := e.c.Status(); st.Round != 1 || st.State != StateCollecting || !st.Deadline.After(clock.Now()) {
		t.Fatalf("after first deadline: %+v", st)
	}
	// Workers 1 and 2 drop out; a new one arrives.
	fresh := e.register("fresh")
	clock.Add(2 * time.Minute)
	e.poll(ws[0], "0s")
	e.step() // still short, extensions used up: restarted with a new cohort
	st := e.c.Status()
	if st.Round != 1 || st.State != StateCollecting || st.Accepted != 1 || e.led.Len() != 0 {
		t.Fatalf("after restart: %+v, ledger %d", st, e.led.Len())
	}
	info2, status := e.poll(fresh, "0s")
	if status != 200 || info2.Round != 1 || info2.AdapterSHA256 != info.AdapterSHA256 {
		t.Fatalf("replacement worker: %d %+v", status, info2)
	}
	b2, _ := makeUpdate(t, fresh, info2, seqDelta(n, 1), 10)
	if status, msg := e.upload(b2); status != 200 {
		t.Fatal(status, msg)
	}
	clock.Add(2 * time.Minute)
	e.step()
	rec, ok := e.led.Last()
	if !ok || rec.Round != 1 || len(rec.Updates) != 2 || !slices.Contains(rec.Cohort, fresh.id) {
		t.Fatalf("ledger after the restarted round: %+v", rec)
	}
	if _, err := ledger.VerifyFile(filepath.Join(dir, ledger.FileName), ledger.VerifyOptions{
		UpdateStore: ledger.DirStore(filepath.Join(dir, "updates")), Recompute: Recompute(dir, e.cfg)}); err != nil {
		t.Fatal(err)
	}
}

func TestRestartResumesRoundInFlight(t *testing.T) {
	for _, backend := range []string{"sqlite", "postgres"} {
		t.Run(backend, func(t *testing.T) {
			var open func() Store
			if backend == "postgres" {
				dsn := pgtest.Start(t).NewDatabase(t)
				open = func() Store {
					st, err := OpenPostgres(context.Background(), dsn)
					if err != nil {
						t.Fatal(err)
					}
					return st
				}
			}
			testRestart(t, open)
		})
	}
}

func testRestart(t *testing.T, open func() Store) {
	dir := t.TempDir()
	clock := &fakeClock{t: time.Unix(1_750_000_000, 0)}
	e := newEnv(t, dir, testConfig(), clock, open)
	ws, info := e.startRound(3)
	n := e.cfg.N()
	b0, _ := makeUpdate(t, ws[0], info, seqDelta(n, 1), 10)
	if status, msg := e.upload(b0); status != 200 {
		t.Fatal(status, msg)
	}
	e.close() // the coordinator stops mid-round

	e2 := newEnv(t, dir, testConfig(), clock, open)
	st := e2.c.Status()
	if st.Round != 1 || st.State != StateCollecting || st.Accepted != 1 || st.Cohort != 3 {
		t.Fatalf("resumed status %+v", st)
	}
	// The accepted update is remembered: its replay and a duplicate are refused.
	if status, msg := e2.upload(b0); status != 409 {
		t.Fatalf("replay after restart: %d %s", status, msg)
	}
	for i, w := range ws[1:] {
		b, _ := makeUpdate(t, w, info, seqDelta(n, float32(i+2)), 10)
		if status, msg := e2.upload(b); status != 200 {
			t.Fatalf("upload after restart: %d %s", status, msg)
		}
	}
	e2.step()
	if st := e2.c.Status(); st.Round != 2 || e2.led.Len() != 1 {
		t.Fatalf("after round 1: %+v", st)
	}
	recs, err := ledger.VerifyFile(filepath.Join(dir, ledger.FileName), ledger.VerifyOptions{
		UpdateStore: ledger.DirStore(filepath.Join(dir, "updates")), Recompute: Recompute(dir, e2.cfg)})
	if err != nil || len(recs[0].Updates) != 3 {
		t.Fatalf("ledger after restart: %v", err)
	}
}

func TestLongPollWakesOnNewRound(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_750_000_000, 0)}
	e := newEnv(t, t.TempDir(), testConfig(), clock, nil)
	ws := []*worker{e.register("a"), e.register("b")}
	got := make(chan int, 1)
	go func() {
		_, status := e.poll(ws[0], "20s")
		got <- status
	}()
	time.Sleep(100 * time.Millisecond) // let the poll start waiting (not a timing assertion)
	e.register("c")
	e.step()
	select {
	case status := <-got:
		if status != 200 {
			t.Fatalf("long poll: %d", status)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("long poll did not wake when the round started")
	}
}

func TestPollAuth(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_750_000_000, 0)}
	e := newEnv(t, t.TempDir(), testConfig(), clock, nil)
	w := e.register("a")
	other := e.register("b")
	tests := []struct {
		name   string
		id     string
		ts     int64
		signer ed25519.PrivateKey
		status int
	}{
		{"ok", w.id, clock.Now().Unix(), w.priv, 204},
		{"wrong key", w.id, clock.Now().Unix(), other.priv, 401},
		{"stale", w.id, clock.Now().Add(-time.Hour).Unix(), w.priv, 401},
		{"unknown", "w-nobody", clock.Now().Unix(), w.priv, 403},
	}
	for _, tc := range tests {
		req, _ := http.NewRequest("GET", e.srv.URL+"/v1/round", nil)
		protocol.SignPoll(req.Header, tc.id, tc.signer, tc.ts, "GET", "/v1/round")
		if resp, b := e.do(req); resp.StatusCode != tc.status {
			t.Errorf("%s: %d %s, want %d", tc.name, resp.StatusCode, b, tc.status)
		}
	}
	// A captured poll cannot be replayed inside the time window, nor its
	// signature used for another endpoint, nor sent without a nonce.
	// (Before poll v2 a replay within 5 minutes was answered as the
	// worker, 204.)
	req, _ := http.NewRequest("GET", e.srv.URL+"/v1/round", nil)
	protocol.SignPoll(req.Header, w.id, w.priv, clock.Now().Unix(), "GET", "/v1/round")
	if resp, b := e.do(req); resp.StatusCode != 204 {
		t.Fatalf("first poll: %d %s", resp.StatusCode, b)
	}
	clock.Add(time.Minute)
	replay, _ := http.NewRequest("GET", e.srv.URL+"/v1/round", nil)
	replay.Header = req.Header.Clone()
	if resp, b := e.do(replay); resp.StatusCode != 401 || !strings.Contains(string(b), "replay") {
		t.Errorf("replayed poll: %d %s, want 401 replay", resp.StatusCode, b)
	}
	other2, _ := http.NewRequest("GET", e.srv.URL+"/v1/secagg/1?round=1&attempt=0", nil)
	protocol.SignPoll(other2.Header, w.id, w.priv, clock.Now().Unix(), "GET", "/v1/round")
	if resp, b := e.do(other2); resp.StatusCode != 401 || !strings.Contains(string(b), "bad_signature") {
		t.Errorf("a poll signed for /v1/round sent to /v1/secagg/1: %d %s, want 401 bad_signature", resp.StatusCode, b)
	}
	bare, _ := http.NewRequest("GET", e.srv.URL+"/v1/round", nil)
	protocol.SignPoll(bare.Header, w.id, w.priv, clock.Now().Unix(), "GET", "/v1/round")
	bare.Header.Del(NonceHeader)
	if resp, b := e.do(bare); resp.StatusCode != 401 {
		t.Errorf("poll without a nonce: %d %s, want 401", resp.StatusCode, b)
	}
	// Registration must be signed by the key it registers.
	pub, _, _ := ed25519.GenerateKey(nil)
	body, _ := json.Marshal(protocol.RegisterRequest{PublicKey: protocol.EncodePublicKey(pub)})
	req, _ = http.NewRequest("POST", e.srv.URL+"/v1/register", bytes.NewReader(body))
	req.Header.Set(SignatureHeader, base64.StdEncoding.EncodeToString(ed25519.Sign(w.priv, append([]byte(RegisterPrefix), body...))))
	if resp, b := e.do(req); resp.StatusCode != 401 {
		t.Errorf("register with another key's signature: %d %s", resp.StatusCode, b)
	}
}

func TestRateLimit(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_750_000_000, 0)}
	e := newEnv(t, t.TempDir(), testConfig(), clock, nil)
	s := NewServer(e.c, ServerOptions{RatePerSecond: 0.001, Burst: 2})
	codes := []int{}
	for i := 0; i < 3; i++ {
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, httptest.NewRequest("POST", "/v1/updates", bytes.NewReader([]byte("x"))))
		codes = append(codes, rec.Code)
	}
	if codes[0] != 400 || codes[1] != 400 || codes[2] != 429 {
		t.Fatalf("codes %v, want [400 400 429]", codes)
	}
}

func TestTLSCertificate(t *testing.T) {
	dir := t.TempDir()
	cfg, created, err := LoadOrCreateTLS(dir, "", "", nil)
	if err != nil || !created {
		t.Fatalf("create: %v %v", created, err)
	}
	leaf := cfg.Certificates[0]
	_, created, err = LoadOrCreateTLS(dir, "", "", nil)
	if err != nil || created {
		t.Fatalf("reload: created=%v %v", created, err)
	}
	cert, err := x509.ParseCertificate(leaf.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(cert.IPAddresses) == 0 || !cert.IPAddresses[0].Equal(net.IPv4(127, 0, 0, 1)) || !slices.Contains(cert.DNSNames, "localhost") {
		t.Errorf("SANs %v %v, want 127.0.0.1 and localhost", cert.IPAddresses, cert.DNSNames)
	}
	if _, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok {
		t.Errorf("key %T, want ECDSA", cert.PublicKey)
	}
	if _, _, err := LoadOrCreateTLS(dir, filepath.Join(dir, "tls.crt"), "", nil); err == nil {
		t.Error("cert without key: no error")
	}
}

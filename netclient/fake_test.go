package netclient

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencluster/opencluster/protocol"
	"github.com/opencluster/opencluster/train"
	"github.com/opencluster/opencluster/train/backend"
)

// testConfig is a very small model: quick to train in tests.
func testConfig() train.Config {
	return train.Config{
		Model: train.ModelConfig{VocabSize: 256, Dim: 32, Layers: 1, Heads: 2, KVHeads: 1, HiddenDim: 64,
			MaxSeqLen: 32, RopeTheta: 10000, NormEps: 1e-5, TiedEmbeddings: true},
		Train: train.TrainConfig{SeqLen: 16, BatchSize: 2, GradAccum: 1, Steps: 1, LR: 1e-2, Beta1: 0.9, Beta2: 0.95,
			Eps: 1e-8, GradClip: 1, ValFraction: 0.1, Seed: 1, Threads: 1},
		LoRA:  train.LoRAConfig{Rank: 2, Alpha: 4, Targets: []string{"q_proj", "v_proj", "down_proj"}},
		Quant: train.QuantConfig{Format: "nf4", BlockSize: 64, DoubleQuant: true},
	}
}

// writeBase saves a random base model and returns its path and bytes.
func writeBase(t *testing.T, dir string) (string, []byte) {
	t.Helper()
	m, err := train.NewModel(testConfig().Model, backend.NewCPU(1), 7)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "base.safetensors")
	if err := m.SaveBase(p); err != nil {
		t.Fatal(err)
	}
	b, err := readFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return p, b
}

// writeData makes a small text corpus.
func writeData(t *testing.T, dir string) string {
	t.Helper()
	d := filepath.Join(dir, "data")
	var sb strings.Builder
	for i := 0; i < 400; i++ {
		fmt.Fprintf(&sb, "func f%d(x int) int { return x*%d + %d }\n", i, i%7, i%13)
	}
	if err := writeFileAtomicMkdir(filepath.Join(d, "a.go"), []byte(sb.String())); err != nil {
		t.Fatal(err)
	}
	return d
}

// fakeCoordinator speaks the worker's half of the HTTP API with plain
// handlers, so the worker is tested without the real coordinator.
type fakeCoordinator struct {
	t      *testing.T
	blobs  map[string][]byte
	shapes []protocol.Shape
	n      int
	codec  string

	mu        sync.Mutex
	keys      map[string]ed25519.PublicKey
	round     uint64
	adapter   string
	updates   [][]byte // accepted bodies, in order
	failNext  int      // answer this many uploads with 503 first
	uploads   int      // upload attempts seen
	rangeReqs int      // blob requests with a Range header
	maxRounds uint64
	// hostile round info: a recipe override and a declared base size.
	batchTokens int
	baseBytes   int64
	// a Hugging Face base folder instead of one file
	baseFiles []protocol.BaseFile
	tokenizer string
	baseHash  string // overrides the hash of the base (a lie, for tests)
}

func newFake(t *testing.T, base []byte, shapes []protocol.Shape, codec string) *fakeCoordinator {
	f := &fakeCoordinator{t: t, blobs: map[string][]byte{}, shapes: shapes, n: ShapesLen(shapes), codec: codec,
		keys: map[string]ed25519.PublicKey{}, round: 1, maxRounds: 100}
	f.put(base)
	init := make([]float32, f.n)
	for i := range init {
		init[i] = float32(i%5-2) * 0.01
	}
	f.adapter = f.put(EncodeAdapter(init))
	return f
}

func (f *fakeCoordinator) put(b []byte) string {
	h := sha256.Sum256(b)
	s := hex.EncodeToString(h[:])
	f.blobs[s] = b
	return s
}

func (f *fakeCoordinator) baseSHA() string {
	if f.baseHash != "" {
		return f.baseHash
	}
	if f.baseFiles != nil {
		return protocol.BaseFolderSHA256(f.baseFiles)
	}
	for k, v := range f.blobs {
		if len(v) != 4*f.n {
			return k
		}
	}
	return ""
}

func writeErr(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(protocol.ErrorBody{Error: msg})
}

func (f *fakeCoordinator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case r.URL.Path == PathRegister && r.Method == http.MethodPost:
		body, _ := io.ReadAll(r.Body)
		var req protocol.RegisterRequest
		if err := json.Unmarshal(body, &req); err != nil {
			writeErr(w, 400, err.Error())
			return
		}
		pub, err := protocol.ParsePublicKey(req.PublicKey)
		if err != nil {
			writeErr(w, 400, err.Error())
			return
		}
		sig, _ := base64.StdEncoding.DecodeString(r.Header.Get(SignatureHeader))
		if !ed25519.Verify(pub, append([]byte(RegisterPrefix), body...), sig) {
			writeErr(w, 401, "bad registration signature")
			return
		}
		id := "w-" + protocol.KeyID(pub)
		f.keys[id] = pub
		json.NewEncoder(w).Encode(protocol.RegisterResponse{WorkerID: id, KeyID: protocol.KeyID(pub)})
	case r.URL.Path == PathRound:
		id := r.Header.Get(WorkerHeader)
		pub, ok := f.keys[id]
		if !ok {
			writeErr(w, 403, "unknown worker")
			return
		}
		sig, _ := base64.StdEncoding.DecodeString(r.Header.Get(SignatureHeader))
		ts, _ := strconv.ParseInt(r.Header.Get(TimeHeader), 10, 64)
		if !ed25519.Verify(pub, protocol.PollMessage(id, ts, r.Header.Get(protocol.NonceHeader), r.Method, r.URL.Path), sig) {
			writeErr(w, 401, "bad poll signature")
			return
		}
		if f.round > f.maxRounds {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		bt := 32
		if f.batchTokens > 0 {
			bt = f.batchTokens
		}
		json.NewEncoder(w).Encode(protocol.RoundInfo{Round: f.round, Seed: 1000 + f.round, Model: "test",
			Recipe:     protocol.Recipe{Steps: 3, LR: 1e-2, BatchTokens: bt, Codec: f.codec, Momentum: 0.5},
			BaseSHA256: f.baseSHA(), BaseFiles: f.baseFiles, TokenizerSHA256: f.tokenizer, AdapterSHA256: f.adapter, AdapterURL: PathBlobs + f.adapter, Shapes: f.shapes,
			Deadline: time.Now().Add(time.Minute), MaxUpdateBytes: 1 << 20, BaseBytes: f.baseBytes, AdapterBytes: 4 * int64(f.n)})
	case strings.HasPrefix(r.URL.Path, PathBlobs):
		b, ok := f.blobs[strings.TrimPrefix(r.URL.Path, PathBlobs)]
		if !ok {
			writeErr(w, 404, "no such blob")
			return
		}
		if r.Header.Get("Range") != "" {
			f.rangeReqs++
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(b))
	case r.URL.Path == PathUpdates && r.Method == http.MethodPost:
		f.uploads++
		body, _ := io.ReadAll(r.Body)
		if f.failNext > 0 {
			f.failNext--
			writeErr(w, 503, "try later")
			return
		}
		u, err := protocol.UnmarshalUpdate(body, f.n)
		if err != nil {
			writeErr(w, 400, err.Error())
			return
		}
		pub, ok := f.keys[u.WorkerID]
		if !ok {
			writeErr(w, 403, "unknown worker")
			return
		}
		if err := protocol.Verify(u, pub); err != nil {
			writeErr(w, 401, err.Error())
			return
		}
		if u.ShapesDigest != protocol.ShapesDigest(f.shapes) || u.N != f.n {
			writeErr(w, 400, fmt.Sprintf("wrong shapes: digest %x, %d elements", u.ShapesDigest[:8], u.N))
			return
		}
		if u.Round != f.round || hex.EncodeToString(u.BaseSHA256[:]) != f.adapter || u.Codec != f.codec {
			writeErr(w, 409, fmt.Sprintf("wrong round %d / base / codec %q", u.Round, u.Codec))
			return
		}
		// One worker: apply the delta and move to the next round.
		cur, _ := DecodeAdapter(f.blobs[f.adapter], f.n)
		u.Delta.AddTo(cur, 1)
		f.adapter = f.put(EncodeAdapter(cur))
		f.updates = append(f.updates, body)
		f.round++
		json.NewEncoder(w).Encode(protocol.UploadResponse{Accepted: true, Round: u.Round})
	default:
		writeErr(w, 404, "no route "+r.URL.Path)
	}
}

// fakeClock records sleeps and returns at once.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	sleeps []time.Duration
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	c.mu.Lock()
	c.sleeps = append(c.sleeps, d)
	c.now = c.now.Add(d)
	c.mu.Unlock()
	return ctx.Err()
}

// startWorker builds a worker on srv with state in dir.
func startWorker(t *testing.T, srv *httptest.Server, stateDir, dataDir string, clk Clock, rep Reporter) *Worker {
	t.Helper()
	st, err := OpenState(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	w, err := New(Options{
		Coordinator: srv.URL, HTTP: srv.Client(), DataDir: dataDir, State: st, Version: "test",
		LoadConfig: func(string) (train.Config, error) { return testConfig(), nil },
		Threads:    1, Clock: clk, Backoff: Backoff{Base: time.Second, Max: 8 * time.Second, Rand: func() float64 { return 0.5 }},
		Reporter: rep, PollWait: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

package netclient

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A coordinator that streams far more than the blob it names (here 64 MiB
// for a 440 KB model, with and without a Content-Length) is cut off at the
// limit: the worker's disk holds at most the limit plus one byte, and the
// part file is deleted. (Fetch used to copy the whole body to disk before
// hashing it: a fake server wrote 1.5 GiB for a 440 KB model.)
func TestCacheRefusesOversizedDownloads(t *testing.T) {
	const declared = 440 << 10
	const sent = 64 << 20
	chunk := make([]byte, 1<<20)
	rand.Read(chunk)
	for _, announce := range []bool{false, true} {
		t.Run("content-length="+strconv.FormatBool(announce), func(t *testing.T) {
			var wrote int64
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if announce {
					w.Header().Set("Content-Length", strconv.Itoa(sent))
				}
				for i := 0; i < sent/len(chunk); i++ {
					k, err := w.Write(chunk)
					wrote += int64(k)
					if err != nil {
						return
					}
				}
			}))
			defer srv.Close()
			dir := t.TempDir()
			c := &Cache{Dir: dir}
			sha := hex.EncodeToString(make([]byte, 32))
			_, n, err := c.Fetch(context.Background(), srv.Client(), srv.URL, sha, declared)
			var pe *permanentError
			if err == nil || !strings.Contains(err.Error(), "over the 450560 bytes allowed") || !errors.As(err, &pe) {
				t.Fatalf("Fetch of %d bytes for a %d-byte blob: %v, want a permanent refusal naming the limit", sent, declared, err)
			}
			if n > declared+1 {
				t.Errorf("transferred %d bytes to disk, want at most %d", n, declared+1)
			}
			if announce && n != 0 {
				t.Errorf("an announced oversized body was read (%d bytes), want refused before reading", n)
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 0 {
				t.Errorf("files left in the cache: %v", ents)
			}
		})
	}
	// Not enough disk: refused before the request.
	c := &Cache{Dir: t.TempDir(), MinFree: 1 << 30, FreeBytes: func(string) (uint64, error) { return 2 << 30, nil }}
	sum := sha256.Sum256([]byte("x"))
	if _, _, err := c.Fetch(context.Background(), http.DefaultClient, "http://127.0.0.1:1/never", hex.EncodeToString(sum[:]), 1<<31); err == nil || !strings.Contains(err.Error(), "free") {
		t.Errorf("a download that would fill the disk: %v", err)
	}
}

// Round info that asks for an absurd batch (2^40 tokens per step used to
// make the worker allocate 4 TiB and crash) is refused before any
// allocation, naming the key and the budget; and a base model larger than
// the size the signed round info declares is not downloaded past it.
func TestWorkerRefusesHostileRoundInfo(t *testing.T) {
	dir := t.TempDir()
	_, base := writeBase(t, dir)
	shapes := AdapterShapes(testConfig().Model, testConfig().LoRA)
	data := writeData(t, dir)

	fake := newFake(t, base, shapes, "topk:0.1")
	fake.batchTokens = 1 << 40
	srv := httptest.NewServer(fake)
	defer srv.Close()
	w := startWorker(t, srv, filepath.Join(dir, "state1"), data, &fakeClock{now: time.Unix(0, 0)}, ReporterFunc(func(Event) {}))
	w.o.Limits.MaxMemoryBytes = 8 << 30
	if err := w.Register(context.Background()); err != nil {
		t.Fatal(err)
	}
	info, ok, err := w.client.Round(context.Background(), w.o.State.Progress.WorkerID, w.o.State.Key, time.Now(), time.Second)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	err = w.DoRound(context.Background(), info)
	if err == nil || !strings.Contains(err.Error(), "recipe.batch_tokens 1099511627776") || !strings.Contains(err.Error(), "memory budget of 8.0 GiB") {
		t.Fatalf("round with batch_tokens 2^40: %v", err)
	}
	// The tiny recipe fits the same budget.
	fake.batchTokens = 32
	info.Recipe.BatchTokens = 32
	if err := w.DoRound(context.Background(), info); err != nil {
		t.Fatalf("a normal round under the same budget: %v", err)
	}

	fake2 := newFake(t, base, shapes, "topk:0.1")
	fake2.baseBytes = int64(len(base)) / 2 // a lie: the blob served is twice that
	srv2 := httptest.NewServer(fake2)
	defer srv2.Close()
	w2 := startWorker(t, srv2, filepath.Join(dir, "state2"), data, &fakeClock{now: time.Unix(0, 0)}, ReporterFunc(func(Event) {}))
	if err := w2.Register(context.Background()); err != nil {
		t.Fatal(err)
	}
	info2, _, err := w2.client.Round(context.Background(), w2.o.State.Progress.WorkerID, w2.o.State.Key, time.Now(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := w2.DoRound(context.Background(), info2); err == nil || !strings.Contains(err.Error(), "bytes allowed") {
		t.Fatalf("a base larger than declared: %v", err)
	}
	if w2.client.BytesDown > fake2.baseBytes+1+maxJSONBody {
		t.Errorf("downloaded %d bytes for a base declared as %d", w2.client.BytesDown, fake2.baseBytes)
	}
}

package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencluster/opencluster/compress"
	"github.com/opencluster/opencluster/coordinator/ledger"
	"github.com/opencluster/opencluster/protocol"
	"github.com/spf13/cobra"
)

// runLedger runs `opencluster ledger ARGS...` on a fresh command tree.
func runLedger(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := &cobra.Command{Use: "opencluster", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(newLedgerCmd())
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(append([]string{"ledger"}, args...))
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func exitCode(err error) int {
	var ec exitCoder
	if errors.As(err, &ec) {
		return ec.ExitCode()
	}
	if err != nil {
		return 1
	}
	return 0
}

func ledgerKey(b byte) ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{b}, ed25519.SeedSize))
}

func sha(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// testLedger writes a ledger of n rounds, each with one accepted signed
// update, to dir/ledger, and the updates to dir/updates named by hash.
func testLedger(t *testing.T, dir string, n int) *ledger.Log {
	t.Helper()
	coord, worker := ledgerKey(1), ledgerKey(2)
	l, err := ledger.Open(filepath.Join(dir, "ledger"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	updates := filepath.Join(dir, "updates")
	if err := os.MkdirAll(updates, 0o755); err != nil {
		t.Fatal(err)
	}
	codec, err := compress.Parse("topk:0.5")
	if err != nil {
		t.Fatal(err)
	}
	for r := uint64(1); r <= uint64(n); r++ {
		before := sha(fmt.Sprint(r - 1))
		p, err := codec.Encode([]float32{1e-3, -2e-3, 3e-3, 0, 5e-4, 1e-4, 0, 2e-4}, nil, r)
		if err != nil {
			t.Fatal(err)
		}
		u := &protocol.Update{Round: r, WorkerID: "w-1", N: 8, Shapes: []protocol.Shape{{Name: "a", Dims: []int{2, 4}}},
			Codec: codec.String(), Seed: r, Tokens: 512, FLOPs: 1e9, EnergyWh: 0.1, Payload: p.Bytes}
		b, _ := hex.DecodeString(before)
		copy(u.BaseSHA256[:], b)
		body, err := protocol.MarshalUpdate(u, worker)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(body)
		uh := hex.EncodeToString(sum[:])
		if err := os.WriteFile(filepath.Join(updates, uh+".ocu"), body, 0o644); err != nil {
			t.Fatal(err)
		}
		rec := ledger.Record{
			Round: r, Time: time.Date(2025, 1, 1, 0, int(r), 0, 0, time.UTC),
			AdapterBefore: before, AdapterAfter: sha(fmt.Sprint(r)), Cohort: []string{"w-1"}, Seed: r * 7,
			Aggregation: ledger.Aggregation{Method: "fedavg"},
			Updates: []ledger.UpdateEntry{{
				WorkerID: "w-1", WorkerKey: protocol.EncodePublicKey(worker.Public().(ed25519.PublicKey)),
				UpdateHash: uh, Bytes: int64(len(body)), Tokens: 512, FLOPs: 1e9, EnergyWh: 0.1,
				Signature: base64.StdEncoding.EncodeToString(u.Signature[:]), Accepted: true,
			}},
		}
		if err := l.Append(&rec, coord); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

func TestLedgerVerifyFile(t *testing.T) {
	dir := t.TempDir()
	l := testLedger(t, dir, 3)
	path := l.Path()
	updates := filepath.Join(dir, "updates")
	coordKey := protocol.EncodePublicKey(ledgerKey(1).Public().(ed25519.PublicKey))
	otherKey := protocol.EncodePublicKey(ledgerKey(9).Public().(ed25519.PublicKey))

	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	tampered := filepath.Join(dir, "tampered.jsonl")
	edited := bytes.Clone(data)
	at := bytes.Index(edited, []byte(`"round":2`)) + len(`"round":`)
	edited[at] = '5'
	if err := os.WriteFile(tampered, edited, 0o644); err != nil {
		t.Fatal(err)
	}
	badUpdates := filepath.Join(dir, "bad-updates")
	os.MkdirAll(badUpdates, 0o755)
	files, _ := filepath.Glob(filepath.Join(updates, "*"))
	round2 := l.Records()[1].Updates[0].UpdateHash
	for _, f := range files {
		b, _ := os.ReadFile(f)
		if strings.HasPrefix(filepath.Base(f), round2) {
			b[len(b)-1] ^= 1 // break round 2's stored update
		}
		os.WriteFile(filepath.Join(badUpdates, filepath.Base(f)), b, 0o644)
	}

	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"ok", []string{"verify", path}, 0, "ledger OK: 3 records, head " + l.Head()},
		{"ok with updates and pins", []string{"verify", path, "--updates", updates, "--coordinator-key", coordKey, "--head", l.Head()}, 0, "stored updates checked"},
		{"one byte edited", []string{"verify", tampered}, 1, "record 1 (round 5, line 2): hash mismatch"},
		{"bad stored update", []string{"verify", path, "--updates", badUpdates}, 1, "record 1 (round 2, line 2): update " + round2},
		{"other coordinator key", []string{"verify", path, "--coordinator-key", otherKey}, 1, "record 0 (round 1, line 1): signed by coordinator key"},
		{"head cut", []string{"verify", path, "--head", sha("x")}, 1, "missing from the end"},
		{"missing file", []string{"verify", filepath.Join(dir, "nope.jsonl")}, 2, "no such file"},
		{"missing updates dir", []string{"verify", path, "--updates", filepath.Join(dir, "nope")}, 2, "--updates"},
		{"TLS flag on a file", []string{"verify", path, "--insecure"}, 2, "apply to URLs"},
		{"no argument", []string{"verify"}, 1, "accepts 1 arg"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := runLedger(t, tt.args...)
			if got := exitCode(err); got != tt.code {
				t.Fatalf("exit %d, want %d (out %q, err %v)", got, tt.code, out, err)
			}
			msg := out
			if err != nil {
				msg += err.Error()
			}
			if !strings.Contains(msg, tt.want) {
				t.Fatalf("output %q, error %v: want %q", out, err, tt.want)
			}
		})
	}
}

// The URL form runs against a real TLS server on loopback.
func TestLedgerVerifyURL(t *testing.T) {
	dir := t.TempDir()
	l := testLedger(t, dir, 2)
	good, _ := os.ReadFile(l.Path())
	bad := bytes.Replace(good, []byte(`"tokens":512`), []byte(`"tokens":999`), 1)

	mux := http.NewServeMux()
	mux.Handle("GET /v1/ledger", l)
	mux.HandleFunc("GET /tampered/v1/ledger", func(w http.ResponseWriter, _ *http.Request) { w.Write(bad) })
	mux.HandleFunc("GET /down/v1/ledger", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		w.Write([]byte(`{"error":"coordinator is starting"}`))
	})
	srv := httptest.NewUnstartedServer(mux)
	srv.EnableHTTP2 = true
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the untrusted-certificate case logs a handshake error
	srv.StartTLS()
	defer srv.Close()

	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	notPEM := filepath.Join(dir, "not.pem")
	os.WriteFile(notPEM, []byte("hello"), 0o644)

	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"insecure", []string{"verify", srv.URL + "/v1/ledger", "--insecure"}, 0, "ledger OK: 2 records, head " + l.Head()},
		{"bare host with --ca", []string{"verify", srv.URL, "--ca", ca}, 0, "ledger OK: 2 records"},
		{"updates over the network", []string{"verify", srv.URL, "--ca", ca, "--updates", filepath.Join(dir, "updates")}, 0, "stored updates checked"},
		{"untrusted certificate", []string{"verify", srv.URL}, 2, "certificate"},
		{"tampered", []string{"verify", srv.URL + "/tampered/v1/ledger", "--insecure"}, 1, "record 0 (round 1, line 1): hash mismatch"},
		{"server error", []string{"verify", srv.URL + "/down/v1/ledger", "--insecure"}, 2, "coordinator is starting"},
		{"not found", []string{"verify", srv.URL + "/nope", "--insecure"}, 2, "404"},
		{"bad CA file", []string{"verify", srv.URL, "--ca", notPEM}, 2, "no PEM certificate"},
		{"bad URL", []string{"verify", "https://"}, 2, "want http(s)://host"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := runLedger(t, tt.args...)
			if got := exitCode(err); got != tt.code {
				t.Fatalf("exit %d, want %d (out %q, err %v)", got, tt.code, out, err)
			}
			msg := out
			if err != nil {
				msg += err.Error()
			}
			if !strings.Contains(msg, tt.want) {
				t.Fatalf("output %q, error %v: want %q", out, err, tt.want)
			}
		})
	}
}

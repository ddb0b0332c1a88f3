package web

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencluster/opencluster/coordinator/ledger"
	"github.com/opencluster/opencluster/protocol"
)

// The page verifies the ledger in JavaScript (web/_ui/src/ledger.js).
// These tests run that code under Node on ledgers made by the Go ledger
// package, intact and tampered in several ways, and require the same
// verdict as ledger.VerifyReader: pass, or fail at the same record index.

// makeLedger seals n records with key, with content that exercises the
// canonical encoding: escapes, unicode, small and large floats.
func makeLedger(t *testing.T, key ed25519.PrivateKey, n int) []byte {
	t.Helper()
	_, wpriv, _ := ed25519.GenerateKey(nil)
	wkey := protocol.EncodePublicKey(wpriv.Public().(ed25519.PublicKey))
	var buf bytes.Buffer
	var prev *ledger.Record
	adapter := ledger.HashBytes([]byte("adapter 0"))
	for i := 0; i < n; i++ {
		after := ledger.HashBytes([]byte(fmt.Sprint("adapter ", i+1)))
		sig := make([]byte, 64)
		sig[0] = byte(i)
		r := &ledger.Record{Round: uint64(3 + 2*i), Time: time.Date(2026, 5, 1, 12, i, 7, 123456789, time.UTC),
			AdapterBefore: adapter, AdapterAfter: after, Cohort: []string{"w-a<b>&c", "w-ünï\u2028code", "w-" + strings.Repeat("z", 40)},
			Seed: 1<<63 + uint64(i), Aggregation: ledger.Aggregation{Method: "fedavg+fedadam",
				Params:  map[string]float64{"lr": 0.1, "eps": 1e-7, "beta2": 0.999, "huge": 1e21, "tiny": 5e-324, "max_tokens": 1048576},
				Options: map[string]string{"codec": "topk:0.01+int8:256", "note": "quote \" backslash \\ tab \t"}},
			Updates: []ledger.UpdateEntry{
				{WorkerID: "w-a<b>&c", WorkerKey: wkey, UpdateHash: ledger.HashBytes([]byte{byte(i), 1}), Bytes: 12345, Tokens: 4096,
					FLOPs: 1.2345678901234567e12, EnergyWh: 0.1 + float64(i)/3, Signature: encodeSig(sig), Accepted: true},
				{WorkerID: "w-ünï\u2028code", WorkerKey: wkey, UpdateHash: ledger.HashBytes([]byte{byte(i), 2}), Bytes: 99, Tokens: 0,
					FLOPs: 0, EnergyWh: 0, Signature: encodeSig(sig), Accepted: false, Reason: "late: <after the deadline>"},
			}}
		if err := ledger.Seal(r, prev, key); err != nil {
			t.Fatal(err)
		}
		line, err := r.MarshalLine()
		if err != nil {
			t.Fatal(err)
		}
		buf.Write(line)
		buf.WriteByte('\n')
		prev, adapter = r, after
	}
	return buf.Bytes()
}

func encodeSig(b []byte) string {
	s, _ := json.Marshal(b) // standard base64 in quotes
	return strings.Trim(string(s), `"`)
}

type jsVerdict struct {
	OK    bool `json:"ok"`
	Count int  `json:"count"`
	Bad   *struct {
		Index  int    `json:"index"`
		Reason string `json:"reason"`
	} `json:"bad"`
}

func runJSVerify(t *testing.T, node string, body []byte, key string) jsVerdict {
	t.Helper()
	f := filepath.Join(t.TempDir(), "ledger.jsonl")
	if err := os.WriteFile(f, body, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(node, filepath.Join("_ui", "test", "verify-cli.mjs"), f, key).CombinedOutput()
	if err != nil {
		t.Fatalf("node verify-cli.mjs: %v\n%s", err, out)
	}
	var v jsVerdict
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("node output %q: %v", out, err)
	}
	return v
}

// lines splits a ledger body into its lines (without newlines).
func lines(b []byte) [][]byte { return bytes.Split(bytes.TrimSuffix(b, []byte("\n")), []byte("\n")) }

func join(ls [][]byte) []byte { return append(bytes.Join(ls, []byte("\n")), '\n') }

func TestLedgerCheckInJSAgreesWithGo(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node not installed (scripts/install-chromium.sh installs it): the page's ledger check is not exercised here")
	}
	_, key, _ := ed25519.GenerateKey(nil)
	pinned := protocol.EncodePublicKey(key.Public().(ed25519.PublicKey))
	_, other, _ := ed25519.GenerateKey(nil)
	good := makeLedger(t, key, 5)

	edit := func(i int, f func([]byte) []byte) []byte {
		ls := lines(good)
		ls[i] = f(bytes.Clone(ls[i]))
		return join(ls)
	}
	cases := []struct {
		name string
		body []byte
		key  string
	}{
		{"intact", good, pinned},
		{"empty", nil, pinned},
		{"a digit of record 2 changed", edit(2, func(l []byte) []byte { return bytes.Replace(l, []byte(`"bytes":12345`), []byte(`"bytes":12346`), 1) }), pinned},
		{"record 3 rehashed after an edit", func() []byte {
			ls := lines(good)
			l := bytes.Replace(ls[3], []byte(`"tokens":4096`), []byte(`"tokens":9999`), 1)
			cut := bytes.LastIndex(l, []byte(`,"hash":"`))
			h := ledger.HashBytes(append(bytes.Clone(l[:cut]), '}'))
			ls[3] = append(append(append(l[:cut:cut], `,"hash":"`...), h...), l[cut+9+64:]...)
			return join(ls)
		}(), pinned},
		{"record 1 dropped", func() []byte { ls := lines(good); return join(append(ls[:1:1], ls[2:]...)) }(), pinned},
		{"records 2 and 3 swapped", func() []byte { ls := lines(good); ls[2], ls[3] = ls[3], ls[2]; return join(ls) }(), pinned},
		{"spacing added to record 4", edit(4, func(l []byte) []byte { return bytes.Replace(l, []byte(`"round":`), []byte(`"round": `), 1) }), pinned},
		{"escape spelled differently in record 0", edit(0, func(l []byte) []byte { return bytes.Replace(l, []byte(`\u003c`), []byte(`<`), 1) }), pinned},
		{"signature of record 1 changed", edit(1, func(l []byte) []byte {
			i := bytes.LastIndex(l, []byte(`"signature":"`)) + 13
			if l[i] == 'A' {
				l[i] = 'B'
			} else {
				l[i] = 'A'
			}
			return l
		}), pinned},
		{"truncated last line", good[:len(good)-1], pinned},
		{"a whole chain signed by another key", makeLedger(t, other, 3), pinned},
		{"intact, but the page pins another key", good, protocol.EncodePublicKey(other.Public().(ed25519.PublicKey))},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, goErr := ledger.VerifyReader(bytes.NewReader(tc.body), ledger.VerifyOptions{CoordinatorKey: tc.key})
			js := runJSVerify(t, node, tc.body, tc.key)
			var ve *ledger.VerifyError
			switch {
			case goErr == nil:
				if !js.OK {
					t.Fatalf("Go verifies; the page flags record %d: %s", js.Bad.Index, js.Bad.Reason)
				}
				if want := len(lines(tc.body)); len(tc.body) > 0 && js.Count != want {
					t.Fatalf("page checked %d records, want %d", js.Count, want)
				}
			case errors.As(goErr, &ve):
				if js.OK {
					t.Fatalf("Go fails (%v); the page passes", goErr)
				}
				if js.Bad.Index != ve.Index {
					t.Fatalf("Go flags record %d (%v); the page flags record %d (%s)", ve.Index, goErr, js.Bad.Index, js.Bad.Reason)
				}
			default:
				t.Fatalf("Go: %v", goErr)
			}
		})
	}
}

// Package ledger is the verifiable record of federated rounds: an
// append-only hash chain with one Record per closed round, signed by the
// coordinator, stored as JSON lines in DIR/ledger.jsonl and served at
// /v1/ledger.
//
// Each record names the global adapter before and after the round (by
// SHA-256), the cohort and round seed, the aggregation settings, and every
// update the round received: its hash, size, the worker's claims (tokens,
// FLOPs, energy) and the worker's own ed25519 signature. Anyone holding the
// file can check that no record was changed, dropped from the middle,
// reordered or inserted (Verify), and, given the stored update files, that
// each accepted update really is the one its worker signed.
//
// # Canonical encoding
//
// A record's hash is the lowercase hex SHA-256 of its canonical bytes: the
// record encoded as compact JSON (no whitespace) with the fields in the
// order of the Record struct and the "hash" and "signature" fields left
// out. Strings are escaped as Go's encoding/json escapes them (including
// <, > and & as \u003c, \u003e, \u0026), numbers are in the shortest form
// that reads back to the same value, the aggregation object has "method"
// first and then its parameters in sorted key order, and the seed is a
// decimal string. A line of ledger.jsonl is the canonical encoding of the
// whole record, "hash" and "signature" being its last two fields, followed
// by "\n". So a verifier in any language can recompute a record's hash from
// the line alone: cut the line at `,"hash":"`, append `}`, and hash that.
//
// Verify insists that every line is byte for byte the canonical encoding
// of what it parses to, so spacing, key case, escapes or field order cannot
// be changed without failing verification either.
//
// The coordinator signs the ASCII bytes SigningPrefix + hash with ed25519;
// the signature is stored in standard base64. The prefix keeps a ledger
// signature from ever being mistaken for a signature over something else
// the coordinator key signs.
package ledger

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/opencluster/opencluster/protocol"
)

// FormatVersion is the version field of every record this build writes and
// the only one it reads.
const FormatVersion = 1

// GenesisHash is the prev_hash of the first record: 64 zeros. Verify also
// accepts "" there.
const GenesisHash = "0000000000000000000000000000000000000000000000000000000000000000"

// SigningPrefix is prepended to the hex hash to form the message the
// coordinator signs.
const SigningPrefix = "opencluster ledger record v1 "

// Limits that keep one record, and so one line, bounded.
const (
	MaxCohort     = 100000 // worker ids in a cohort
	MaxUpdates    = 100000 // update entries in a record
	MaxIDLen      = protocol.MaxWorkerIDLen
	MaxReasonLen  = 1024 // bytes of an entry's reason
	MaxParams     = 64   // aggregation parameters
	MaxParamLen   = 256  // bytes of a parameter name or string value
	MaxLineBytes  = 64 << 20
	maxMethodLen  = 64
	signatureB64  = 88 // base64 length of an ed25519 signature
	hashHexLength = 64
)

// Record is one closed round. The JSON field order below is the canonical
// order; do not reorder fields. Seal fills Version, Index, PrevHash,
// CoordinatorKey, Hash and Signature (and Time when it is zero); the caller
// fills the rest.
type Record struct {
	// Version is FormatVersion.
	Version int `json:"version"`
	// Index is the record's position in the chain, from 0.
	Index uint64 `json:"index"`
	// Round is the round id this record closes; ids strictly increase
	// along the chain (a round closes once).
	Round uint64 `json:"round"`
	// Time is when the round closed, in UTC.
	Time time.Time `json:"time"`
	// PrevHash is the previous record's Hash, or GenesisHash for record 0.
	PrevHash string `json:"prev_hash"`
	// AdapterBefore and AdapterAfter are the hex SHA-256 of the global
	// adapter's bytes before and after aggregation. AdapterBefore must
	// equal the previous record's AdapterAfter.
	AdapterBefore string `json:"adapter_before"`
	AdapterAfter  string `json:"adapter_after"`
	// Cohort lists the worker ids selected for the round, in the order the
	// seeded selection produced them.
	Cohort []string `json:"cohort"`
	// Seed is the round seed (cohort selection, data order, codecs); a
	// decimal string in JSON because JSON numbers lose precision above 2^53.
	Seed uint64 `json:"seed,string"`
	// Aggregation is how accepted updates were combined.
	Aggregation Aggregation `json:"aggregation"`
	// Updates lists every update the round received, accepted or not.
	Updates []UpdateEntry `json:"updates"`
	// CoordinatorKey is the key that signs the chain, "ed25519:<base64>".
	CoordinatorKey string `json:"coordinator_key"`
	// Hash is the hex SHA-256 of the canonical encoding (see the package doc).
	Hash string `json:"hash"`
	// Signature is the coordinator's ed25519 signature over
	// SigningPrefix+Hash, standard base64.
	Signature string `json:"signature"`
}

// UpdateEntry records one update a round received.
type UpdateEntry struct {
	// WorkerID is the id the coordinator gave the worker at registration.
	WorkerID string `json:"worker_id"`
	// WorkerKey is the worker's registered public key, "ed25519:<base64>".
	WorkerKey string `json:"worker_key"`
	// UpdateHash is the hex SHA-256 of the exact signed update bytes, as
	// received; stored update files are named by it.
	UpdateHash string `json:"update_hash"`
	// Bytes is the update's size in bytes.
	Bytes int64 `json:"bytes"`
	// Tokens, FLOPs and EnergyWh copy the worker's claims from the update
	// header. They are claims: the signature proves who made them, not
	// that they are true.
	Tokens   uint64  `json:"tokens"`
	FLOPs    float64 `json:"flops"`
	EnergyWh float64 `json:"energy_wh"`
	// Signature is the worker's ed25519 signature from the update, in
	// standard base64.
	Signature string `json:"signature"`
	// Accepted is true when the update went into the aggregate.
	Accepted bool `json:"accepted"`
	// Reason says why the update was rejected or down-weighted; required
	// when Accepted is false.
	Reason string `json:"reason"`
}

// NewEntry describes the update whose exact received bytes are body and
// which parsed to u (protocol.UnmarshalUpdate), from the worker whose
// registered key is workerKey ("ed25519:<base64>"). accepted and reason
// say what the round did with it.
func NewEntry(body []byte, u *protocol.Update, workerKey string, accepted bool, reason string) UpdateEntry {
	return UpdateEntry{
		WorkerID:   u.WorkerID,
		WorkerKey:  workerKey,
		UpdateHash: HashBytes(body),
		Bytes:      int64(len(body)),
		Tokens:     u.Tokens,
		FLOPs:      u.FLOPs,
		EnergyWh:   u.EnergyWh,
		Signature:  base64.StdEncoding.EncodeToString(u.Signature[:]),
		Accepted:   accepted,
		Reason:     reason,
	}
}

// HashBytes returns the lowercase hex SHA-256 of b: how the ledger names
// adapters and updates.
func HashBytes(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// Aggregation names the aggregation method and its numeric and string
// parameters. In JSON it is one flat object, "method" first and then the
// parameters in sorted key order, e.g.
//
//	{"method":"fedavgm","momentum":0.9,"norm_bound":1,"server_lr":1}
type Aggregation struct {
	// Method is e.g. "fedavg", "fedavgm", "fedadam".
	Method string
	// Params holds numeric settings (server_lr, momentum, norm_bound, ...).
	// Values must be finite.
	Params map[string]float64
	// Options holds string settings (e.g. "norm_mode": "clip"). A key may
	// not appear in both maps.
	Options map[string]string
}

// MarshalJSON writes the flat, key-sorted form.
func (a Aggregation) MarshalJSON() ([]byte, error) {
	if err := a.check(); err != nil {
		return nil, err
	}
	keys := make([]string, 0, len(a.Params)+len(a.Options))
	for k := range a.Params {
		keys = append(keys, k)
	}
	for k := range a.Options {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b bytes.Buffer
	b.WriteString(`{"method":`)
	writeJSON(&b, a.Method)
	for _, k := range keys {
		b.WriteByte(',')
		writeJSON(&b, k)
		b.WriteByte(':')
		if v, ok := a.Params[k]; ok {
			writeJSON(&b, v)
		} else {
			writeJSON(&b, a.Options[k])
		}
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// writeJSON appends the encoding/json form of a string or a finite float64
// (neither can fail once check has passed).
func writeJSON(b *bytes.Buffer, v any) {
	enc, _ := json.Marshal(v)
	b.Write(enc)
}

// UnmarshalJSON reads the flat form: numbers go to Params, strings to
// Options; any other value is an error naming the key.
func (a *Aggregation) UnmarshalJSON(data []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return fmt.Errorf("aggregation: %w", err)
	}
	m, ok := raw["method"]
	if !ok {
		return fmt.Errorf("aggregation: no \"method\" key")
	}
	*a = Aggregation{}
	if err := json.Unmarshal(m, &a.Method); err != nil {
		return fmt.Errorf("aggregation: method: %w", err)
	}
	for k, v := range raw {
		if k == "method" {
			continue
		}
		switch {
		case len(v) > 0 && v[0] == '"':
			var s string
			if err := json.Unmarshal(v, &s); err != nil {
				return fmt.Errorf("aggregation: %q: %w", k, err)
			}
			if a.Options == nil {
				a.Options = map[string]string{}
			}
			a.Options[k] = s
		default:
			var f float64
			if err := json.Unmarshal(v, &f); err != nil {
				return fmt.Errorf("aggregation: %q: want a number or a string: %w", k, err)
			}
			if a.Params == nil {
				a.Params = map[string]float64{}
			}
			a.Params[k] = f
		}
	}
	return a.check()
}

// check validates the method and parameters.
func (a Aggregation) check() error {
	if a.Method == "" || len(a.Method) > maxMethodLen || !utf8.ValidString(a.Method) {
		return fmt.Errorf("aggregation method %q: want 1..%d bytes of UTF-8", a.Method, maxMethodLen)
	}
	if n := len(a.Params) + len(a.Options); n > MaxParams {
		return fmt.Errorf("aggregation %q: %d parameters, at most %d", a.Method, n, MaxParams)
	}
	checkKey := func(k string) error {
		if k == "" || k == "method" || len(k) > MaxParamLen || !utf8.ValidString(k) {
			return fmt.Errorf("aggregation parameter name %q: want 1..%d bytes of UTF-8, not \"method\"", k, MaxParamLen)
		}
		return nil
	}
	for k, v := range a.Params {
		if err := checkKey(k); err != nil {
			return err
		}
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("aggregation parameter %q = %v: want a finite number", k, v)
		}
	}
	for k, v := range a.Options {
		if err := checkKey(k); err != nil {
			return err
		}
		if _, dup := a.Params[k]; dup {
			return fmt.Errorf("aggregation parameter %q is both a number and a string", k)
		}
		if len(v) > MaxParamLen || !utf8.ValidString(v) {
			return fmt.Errorf("aggregation option %q: value of %d bytes, want at most %d bytes of UTF-8", k, len(v), MaxParamLen)
		}
	}
	return nil
}

// canonical is Record without Hash and Signature; its encoding is what the
// hash covers. Keep its fields in step with Record.
type canonical struct {
	Version        int           `json:"version"`
	Index          uint64        `json:"index"`
	Round          uint64        `json:"round"`
	Time           time.Time     `json:"time"`
	PrevHash       string        `json:"prev_hash"`
	AdapterBefore  string        `json:"adapter_before"`
	AdapterAfter   string        `json:"adapter_after"`
	Cohort         []string      `json:"cohort"`
	Seed           uint64        `json:"seed,string"`
	Aggregation    Aggregation   `json:"aggregation"`
	Updates        []UpdateEntry `json:"updates"`
	CoordinatorKey string        `json:"coordinator_key"`
}

// CanonicalBytes returns the bytes r.Hash covers: the canonical JSON of r
// without its hash and signature.
func (r *Record) CanonicalBytes() ([]byte, error) {
	b, err := json.Marshal(canonical{
		r.Version, r.Index, r.Round, r.Time, r.PrevHash, r.AdapterBefore, r.AdapterAfter,
		r.Cohort, r.Seed, r.Aggregation, r.Updates, r.CoordinatorKey,
	})
	if err != nil {
		return nil, fmt.Errorf("ledger: encode round %d: %w", r.Round, err)
	}
	return b, nil
}

// ComputeHash returns the hex SHA-256 of r's canonical bytes.
func (r *Record) ComputeHash() (string, error) {
	b, err := r.CanonicalBytes()
	if err != nil {
		return "", err
	}
	return HashBytes(b), nil
}

// MarshalLine returns the line ledger.jsonl holds for r, without the
// trailing newline: the canonical encoding of every field.
func (r *Record) MarshalLine() ([]byte, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("ledger: encode round %d: %w", r.Round, err)
	}
	return b, nil
}

// Seal readies r to follow prev (nil for the first record) and signs it
// with the coordinator key priv: it sets Version, Index, PrevHash,
// CoordinatorKey, Time (when zero; always converted to UTC), Hash and
// Signature, after checking every field as Verify would, so a record that
// Seal accepts verifies. It returns an error, leaving r's caller-set fields
// alone, when r is invalid or does not follow prev (a round id that does not
// increase, AdapterBefore not prev's AdapterAfter, a different key).
func Seal(r *Record, prev *Record, priv ed25519.PrivateKey) error {
	if len(priv) != ed25519.PrivateKeySize {
		return fmt.Errorf("ledger: seal round %d: private key has %d bytes, want %d", r.Round, len(priv), ed25519.PrivateKeySize)
	}
	s := *r
	s.Version = FormatVersion
	s.CoordinatorKey = protocol.EncodePublicKey(priv.Public().(ed25519.PublicKey))
	if s.Time.IsZero() {
		s.Time = time.Now()
	}
	// Round-trip through RFC 3339 so the in-memory record equals what a
	// reader of the file gets (no monotonic clock reading, UTC).
	s.Time = s.Time.UTC().Round(0)
	if s.Cohort == nil {
		s.Cohort = []string{}
	}
	if s.Updates == nil {
		s.Updates = []UpdateEntry{}
	}
	if prev == nil {
		s.Index, s.PrevHash = 0, GenesisHash
	} else {
		if prev.Hash == "" {
			return fmt.Errorf("ledger: seal round %d: previous record (round %d) is not sealed", r.Round, prev.Round)
		}
		s.Index, s.PrevHash = prev.Index+1, prev.Hash
	}
	if err := checkRecord(&s); err != nil {
		return fmt.Errorf("ledger: seal round %d: %w", r.Round, err)
	}
	if prev != nil {
		if err := checkLink(&s, prev); err != nil {
			return fmt.Errorf("ledger: seal round %d: %w", r.Round, err)
		}
	}
	h, err := s.ComputeHash()
	if err != nil {
		return fmt.Errorf("ledger: seal: %w", err)
	}
	s.Hash = h
	s.Signature = base64.StdEncoding.EncodeToString(ed25519.Sign(priv, []byte(SigningPrefix+h)))
	*r = s
	return nil
}

// checkRecord checks the fields of one record on their own: formats,
// limits and consistency between the cohort and the entries. It does not
// check the hash, the signature or the link to the previous record.
func checkRecord(r *Record) error {
	if r.Version != FormatVersion {
		return fmt.Errorf("version %d: this build reads version %d", r.Version, FormatVersion)
	}
	if r.Time.IsZero() || r.Time.Location() != time.UTC {
		return fmt.Errorf("time %s: want a UTC time", r.Time)
	}
	if r.Index == 0 {
		if r.PrevHash != GenesisHash && r.PrevHash != "" {
			return fmt.Errorf("prev_hash %q: the first record's must be %d zeros or empty", r.PrevHash, hashHexLength)
		}
	} else if !isHash(r.PrevHash) {
		return fmt.Errorf("prev_hash %q: want %d lowercase hex digits", r.PrevHash, hashHexLength)
	}
	if !isHash(r.AdapterBefore) {
		return fmt.Errorf("adapter_before %q: want %d lowercase hex digits", r.AdapterBefore, hashHexLength)
	}
	if !isHash(r.AdapterAfter) {
		return fmt.Errorf("adapter_after %q: want %d lowercase hex digits", r.AdapterAfter, hashHexLength)
	}
	if _, err := protocol.ParsePublicKey(r.CoordinatorKey); err != nil {
		return fmt.Errorf("coordinator_key: %w", err)
	}
	if err := r.Aggregation.check(); err != nil {
		return err
	}
	if len(r.Cohort) > MaxCohort {
		return fmt.Errorf("cohort of %d workers, at most %d", len(r.Cohort), MaxCohort)
	}
	cohort := make(map[string]bool, len(r.Cohort))
	for i, id := range r.Cohort {
		if err := checkID(id); err != nil {
			return fmt.Errorf("cohort[%d]: %w", i, err)
		}
		if cohort[id] {
			return fmt.Errorf("cohort[%d]: worker %q selected twice", i, id)
		}
		cohort[id] = true
	}
	if len(r.Updates) > MaxUpdates {
		return fmt.Errorf("%d update entries, at most %d", len(r.Updates), MaxUpdates)
	}
	accepted := make(map[string]bool)
	hashes := make(map[string]bool, len(r.Updates))
	for i := range r.Updates {
		e := &r.Updates[i]
		if err := checkEntry(e); err != nil {
			return fmt.Errorf("update %d (worker %q): %w", i, e.WorkerID, err)
		}
		if hashes[e.UpdateHash] {
			return fmt.Errorf("update %d (worker %q): update_hash %s listed twice", i, e.WorkerID, e.UpdateHash)
		}
		hashes[e.UpdateHash] = true
		if e.Accepted {
			if !cohort[e.WorkerID] {
				return fmt.Errorf("update %d: accepted from worker %q, who is not in the cohort", i, e.WorkerID)
			}
			if accepted[e.WorkerID] {
				return fmt.Errorf("update %d: a second accepted update from worker %q", i, e.WorkerID)
			}
			accepted[e.WorkerID] = true
		}
	}
	return nil
}

func checkEntry(e *UpdateEntry) error {
	if err := checkID(e.WorkerID); err != nil {
		return err
	}
	if _, err := protocol.ParsePublicKey(e.WorkerKey); err != nil {
		return fmt.Errorf("worker_key: %w", err)
	}
	if !isHash(e.UpdateHash) {
		return fmt.Errorf("update_hash %q: want %d lowercase hex digits", e.UpdateHash, hashHexLength)
	}
	if e.Bytes <= 0 {
		return fmt.Errorf("bytes %d: want > 0", e.Bytes)
	}
	if math.IsNaN(e.FLOPs) || math.IsInf(e.FLOPs, 0) || e.FLOPs < 0 {
		return fmt.Errorf("flops %v: want a finite number >= 0", e.FLOPs)
	}
	if math.IsNaN(e.EnergyWh) || math.IsInf(e.EnergyWh, 0) || e.EnergyWh < 0 {
		return fmt.Errorf("energy_wh %v: want a finite number >= 0", e.EnergyWh)
	}
	if _, err := decodeSignature(e.Signature); err != nil {
		return fmt.Errorf("signature: %w", err)
	}
	if !e.Accepted && e.Reason == "" {
		return fmt.Errorf("rejected without a reason")
	}
	if len(e.Reason) > MaxReasonLen || !utf8.ValidString(e.Reason) {
		return fmt.Errorf("reason: %d bytes, want at most %d bytes of UTF-8", len(e.Reason), MaxReasonLen)
	}
	return nil
}

// checkLink checks that r follows prev: index, prev_hash, round order,
// adapter continuity and the coordinator key.
func checkLink(r, prev *Record) error {
	if r.Index != prev.Index+1 {
		return fmt.Errorf("index %d does not follow %d", r.Index, prev.Index)
	}
	if r.PrevHash != prev.Hash {
		return fmt.Errorf("prev_hash %s is not the previous record's hash %s", r.PrevHash, prev.Hash)
	}
	if r.Round <= prev.Round {
		return fmt.Errorf("round %d does not come after the previous record's round %d", r.Round, prev.Round)
	}
	if r.AdapterBefore != prev.AdapterAfter {
		return fmt.Errorf("adapter_before %s is not the previous record's adapter_after %s", r.AdapterBefore, prev.AdapterAfter)
	}
	if r.CoordinatorKey != prev.CoordinatorKey {
		return fmt.Errorf("coordinator_key %s differs from the previous record's %s", r.CoordinatorKey, prev.CoordinatorKey)
	}
	return nil
}

func checkID(id string) error {
	if id == "" || len(id) > MaxIDLen || !utf8.ValidString(id) {
		return fmt.Errorf("worker id %q: want 1..%d bytes of UTF-8", id, MaxIDLen)
	}
	return nil
}

// isHash reports whether s is 64 lowercase hex digits.
func isHash(s string) bool {
	if len(s) != hashHexLength {
		return false
	}
	return strings.IndexFunc(s, func(c rune) bool {
		return !('0' <= c && c <= '9' || 'a' <= c && c <= 'f')
	}) < 0
}

// decodeSignature decodes a standard-base64 ed25519 signature, insisting on
// the one canonical spelling.
func decodeSignature(s string) ([]byte, error) {
	if len(s) != signatureB64 {
		return nil, fmt.Errorf("%d characters, want %d (base64 of %d bytes)", len(s), signatureB64, ed25519.SignatureSize)
	}
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil {
		return nil, err
	}
	if len(b) != ed25519.SignatureSize {
		return nil, fmt.Errorf("%d bytes, want %d", len(b), ed25519.SignatureSize)
	}
	return b, nil
}

// clone returns a deep copy of r.
func (r *Record) clone() Record {
	c := *r
	c.Cohort = slices.Clone(r.Cohort)
	c.Updates = slices.Clone(r.Updates)
	if r.Aggregation.Params != nil {
		c.Aggregation.Params = make(map[string]float64, len(r.Aggregation.Params))
		for k, v := range r.Aggregation.Params {
			c.Aggregation.Params[k] = v
		}
	}
	if r.Aggregation.Options != nil {
		c.Aggregation.Options = make(map[string]string, len(r.Aggregation.Options))
		for k, v := range r.Aggregation.Options {
			c.Aggregation.Options[k] = v
		}
	}
	return c
}

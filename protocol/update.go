// Package protocol is what the coordinator and the workers agree on: the
// JSON API types, the signed binary format of an update, and ed25519 key
// files. It has no networking; both sides build on it.
//
// An update is one worker's result for one round: a header that says who,
// for which round, from which base adapter, with what codec and at what
// cost, a SHA-256 digest of the tensor shapes it was trained on (the
// coordinator knows the shapes; sending the digest instead of the table
// keeps every upload ~2 KB smaller), then the compressed delta (package
// compress), a CRC-32C so accidental corruption is told apart from forgery,
// and an ed25519 signature over everything before it. docs/protocol.md has
// the byte table.
package protocol

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"time"
	"unicode/utf8"

	"github.com/opencluster/opencluster/compress"
)

// Magic opens every update. Version2 is the only version this build reads
// and writes; Version1 (which carried the whole shapes table) is refused
// with ErrUnsupportedVersion.
const (
	Magic    = "OCU1"
	Version1 = 1
	Version2 = 2
)

// Limits on header fields. Every length read from an update is checked
// against these and against the bytes actually present before anything is
// allocated.
const (
	MaxWorkerIDLen = 128  // bytes of WorkerID
	MaxCodecLen    = 128  // bytes of the codec spec
	MaxShapes      = 4096 // tensors in a shapes list
	MaxNameLen     = 255  // bytes of a tensor name
	MaxDims        = 8    // dimensions per tensor
	NonceSize      = 16
)

// Sizes of the fixed parts.
const (
	fixedHeader = 4 + 2 + 2 + 8 + NonceSize + 32 + 8 + 8 + 8 + 8 + 8 + 8 + 8 // up to the worker id length
	trailer     = 4 + ed25519.SignatureSize                                  // CRC-32C + signature
)

var (
	// ErrMalformed is wrapped by every error about an update's bytes or
	// fields: truncation, bad magic, limits, shapes, checksum, payload.
	ErrMalformed = errors.New("malformed update")
	// ErrUnsupportedVersion is wrapped when the version is not Version2.
	ErrUnsupportedVersion = errors.New("unsupported update version")
	// ErrBadSignature is wrapped when Verify rejects a signature.
	ErrBadSignature = errors.New("bad update signature")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Shape names one tensor of the adapter and its dimensions. The update's
// vector is the tensors' elements concatenated in list order, so the
// products of the dims sum to the update's N.
type Shape struct {
	Name string `json:"name"`
	Dims []int  `json:"dims"`
}

// Update is one worker's signed result for one round.
type Update struct {
	// Version is set by UnmarshalUpdate; MarshalUpdate always writes Version2.
	Version uint16
	// Round is the round this update answers; with Nonce it is the replay
	// protection: the coordinator accepts one update per (worker, round)
	// and never the same nonce twice.
	Round uint64
	// Nonce is random per update; MarshalUpdate fills it when it is zero.
	Nonce [NonceSize]byte
	// BaseSHA256 is the SHA-256 of the adapter the worker trained from, so
	// a delta against a stale adapter is rejected, not merged.
	BaseSHA256 [32]byte
	// WorkerID is the id the coordinator gave at registration (1..128
	// bytes of UTF-8); it names the public key that must verify.
	WorkerID string
	// N is the number of elements in the dense delta.
	N int
	// Shapes is the sender's tensor list. It is not encoded: when it is
	// non-empty MarshalUpdate checks that the products of the dims sum to
	// N and sets ShapesDigest from it. UnmarshalUpdate leaves it nil.
	Shapes []Shape
	// ShapesDigest is ShapesDigest(shapes) of the tensors the delta is laid
	// out in; the receiver compares it with the digest of the shapes it
	// expects. MarshalUpdate sets it from Shapes, or uses it as given when
	// Shapes is empty.
	ShapesDigest [32]byte
	// Codec is the canonical compress spec of Payload, e.g. "topk:0.01+int8:256".
	Codec string
	// Seed is the seed the payload was encoded with (normally the round's).
	Seed uint64
	// Tokens, FLOPs and EnergyWh are the worker's claims for this round:
	// tokens trained, floating-point operations, and energy in watt-hours.
	Tokens   uint64
	FLOPs    float64
	EnergyWh float64
	// Started and Finished bound the local training (zero means unknown).
	Started, Finished time.Time
	// Payload is the compressed delta (compress.Payload.Bytes).
	Payload []byte
	// Delta is the decoded payload, set by UnmarshalUpdate.
	Delta *compress.Sparse
	// Signature is set by MarshalUpdate and UnmarshalUpdate.
	Signature [ed25519.SignatureSize]byte
}

func malformed(format string, args ...any) error {
	return fmt.Errorf("protocol: update: %s: %w", fmt.Sprintf(format, args...), ErrMalformed)
}

// MarshalUpdate checks u, fills u.Nonce from crypto/rand when it is all
// zero, and returns the signed encoding. It sets u.Version and u.Signature,
// and u.ShapesDigest when u.Shapes is non-empty (after checking the shapes
// sum to u.N). The payload is decoded once to check it matches the codec
// and N, so what MarshalUpdate emits UnmarshalUpdate accepts.
func MarshalUpdate(u *Update, priv ed25519.PrivateKey) ([]byte, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("protocol: marshal update: private key has %d bytes, want %d", len(priv), ed25519.PrivateKeySize)
	}
	if u.Nonce == [NonceSize]byte{} {
		if _, err := rand.Read(u.Nonce[:]); err != nil {
			return nil, fmt.Errorf("protocol: marshal update: nonce: %w", err)
		}
	}
	if len(u.Shapes) > 0 {
		total, err := CheckShapes(u.Shapes, compress.MaxN)
		if err != nil {
			return nil, err
		}
		if total != u.N {
			return nil, malformed("shapes add up to %d elements, header says %d", total, u.N)
		}
		u.ShapesDigest = ShapesDigest(u.Shapes)
	}
	if _, err := checkUpdate(u, compress.MaxN); err != nil {
		return nil, err
	}
	body, err := appendBody(nil, u)
	if err != nil {
		return nil, err
	}
	sig := ed25519.Sign(priv, body)
	u.Version = Version2
	copy(u.Signature[:], sig)
	return append(body, sig...), nil
}

// Verify checks u's signature against pub, over the canonical encoding of
// u's current fields (so a field changed after unmarshalling fails too).
func Verify(u *Update, pub ed25519.PublicKey) error {
	if len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("protocol: verify: public key has %d bytes, want %d", len(pub), ed25519.PublicKeySize)
	}
	body, err := appendBody(nil, u)
	if err != nil {
		return err
	}
	if !ed25519.Verify(pub, body, u.Signature[:]) {
		return fmt.Errorf("protocol: update from worker %q for round %d: %w", u.WorkerID, u.Round, ErrBadSignature)
	}
	return nil
}

// appendBody appends the encoding of u up to and including the CRC-32C:
// the bytes the signature covers. u's lengths must already be checked.
func appendBody(b []byte, u *Update) ([]byte, error) {
	if len(u.WorkerID) > MaxWorkerIDLen || len(u.Codec) > MaxCodecLen || uint64(len(u.Payload)) > math.MaxUint32 {
		return nil, malformed("field too long to encode")
	}
	start := len(b)
	le := binary.LittleEndian
	b = append(b, Magic...)
	b = le.AppendUint16(b, Version2)
	b = le.AppendUint16(b, 0) // flags
	b = le.AppendUint64(b, u.Round)
	b = append(b, u.Nonce[:]...)
	b = append(b, u.BaseSHA256[:]...)
	b = le.AppendUint64(b, uint64(u.N))
	b = le.AppendUint64(b, u.Seed)
	b = le.AppendUint64(b, u.Tokens)
	b = le.AppendUint64(b, math.Float64bits(u.FLOPs))
	b = le.AppendUint64(b, math.Float64bits(u.EnergyWh))
	b = le.AppendUint64(b, uint64(unixNano(u.Started)))
	b = le.AppendUint64(b, uint64(unixNano(u.Finished)))
	b = le.AppendUint16(b, uint16(len(u.WorkerID)))
	b = append(b, u.WorkerID...)
	b = append(b, byte(len(u.Codec)))
	b = append(b, u.Codec...)
	b = append(b, u.ShapesDigest[:]...)
	b = le.AppendUint32(b, uint32(len(u.Payload)))
	b = append(b, u.Payload...)
	return le.AppendUint32(b, crc32.Checksum(b[start:], castagnoli)), nil
}

// ShapesDigest is the SHA-256 of the canonical encoding of shapes, the
// bytes version 1 of the format carried as its shapes table: a uint16
// tensor count, then per tensor a uint8 name length, the name, a uint8 rank
// and each dim as a uint64, all little-endian. Two lists have the same
// digest exactly when they have the same names and dims in the same order.
// The encoding is unambiguous only for lists CheckShapes accepts (counts
// and lengths that fit their fields); callers check first.
func ShapesDigest(shapes []Shape) [32]byte {
	return sha256.Sum256(appendShapes(nil, shapes))
}

// appendShapes appends the canonical encoding ShapesDigest hashes.
func appendShapes(b []byte, shapes []Shape) []byte {
	le := binary.LittleEndian
	b = le.AppendUint16(b, uint16(len(shapes)))
	for _, s := range shapes {
		b = append(b, byte(len(s.Name)))
		b = append(b, s.Name...)
		b = append(b, byte(len(s.Dims)))
		for _, d := range s.Dims {
			b = le.AppendUint64(b, uint64(d))
		}
	}
	return b
}

// CheckShapes checks a shapes list against the limits (1..MaxShapes
// tensors, unique 1..MaxNameLen-byte UTF-8 names, 1..MaxDims dims each
// >= 1) and returns its element total, which must be at most maxElems.
func CheckShapes(shapes []Shape, maxElems int) (int, error) {
	if len(shapes) == 0 || len(shapes) > MaxShapes {
		return 0, malformed("shapes list has %d entries: want 1..%d", len(shapes), MaxShapes)
	}
	seen := make(map[string]bool, len(shapes))
	total := 0
	for i, s := range shapes {
		if s.Name == "" || len(s.Name) > MaxNameLen || !utf8.ValidString(s.Name) {
			return 0, malformed("shape %d name %q: want 1..%d bytes of UTF-8", i, s.Name, MaxNameLen)
		}
		if seen[s.Name] {
			return 0, malformed("shape %d: duplicate tensor name %q", i, s.Name)
		}
		seen[s.Name] = true
		if len(s.Dims) == 0 || len(s.Dims) > MaxDims {
			return 0, malformed("tensor %q has %d dims: want 1..%d", s.Name, len(s.Dims), MaxDims)
		}
		size := 1
		for _, d := range s.Dims {
			// Each factor is at most maxElems and the running product is
			// kept at most maxElems, so nothing here can overflow.
			if d < 1 || d > maxElems || size > maxElems/d {
				return 0, malformed("tensor %q dims %v: each must be >= 1 and the product at most %d", s.Name, s.Dims, maxElems)
			}
			size *= d
		}
		if total > maxElems-size {
			return 0, malformed("tensor %q: shapes add up to more than %d elements", s.Name, maxElems)
		}
		total += size
	}
	return total, nil
}

// unixNano maps the zero time to 0 and others to Unix nanoseconds.
func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromUnixNano(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

// checkUpdate validates every header field of u against the limits and
// decodes the payload; it returns the decoded delta.
func checkUpdate(u *Update, maxElems int) (*compress.Sparse, error) {
	if u.WorkerID == "" || len(u.WorkerID) > MaxWorkerIDLen || !utf8.ValidString(u.WorkerID) {
		return nil, malformed("worker id %q: want 1..%d bytes of UTF-8", u.WorkerID, MaxWorkerIDLen)
	}
	if u.N < 1 || u.N > maxElems {
		return nil, malformed("element count %d: want 1..%d", u.N, maxElems)
	}
	if u.ShapesDigest == [32]byte{} {
		return nil, malformed("shapes digest is all zero: set Shapes or ShapesDigest")
	}
	c, err := compress.Parse(u.Codec)
	if err != nil {
		return nil, fmt.Errorf("protocol: update: codec: %w: %w", err, ErrMalformed)
	}
	if c.String() != u.Codec {
		return nil, malformed("codec %q is not in canonical form %q", u.Codec, c.String())
	}
	if math.IsNaN(u.FLOPs) || math.IsInf(u.FLOPs, 0) || u.FLOPs < 0 {
		return nil, malformed("claimed FLOPs %v: want a finite number >= 0", u.FLOPs)
	}
	if math.IsNaN(u.EnergyWh) || math.IsInf(u.EnergyWh, 0) || u.EnergyWh < 0 {
		return nil, malformed("energy %v Wh: want a finite number >= 0", u.EnergyWh)
	}
	if !u.Started.IsZero() && !u.Finished.IsZero() && u.Finished.Before(u.Started) {
		return nil, malformed("finished %v before started %v", u.Finished, u.Started)
	}
	if uint64(len(u.Payload)) > math.MaxUint32 {
		return nil, malformed("payload of %d bytes is over 4 GiB", len(u.Payload))
	}
	delta, err := c.DecodeSparse(u.Payload, u.N)
	if err != nil {
		return nil, fmt.Errorf("protocol: update: payload: %w: %w", err, ErrMalformed)
	}
	return delta, nil
}

// reader walks an update, recording the first error with the field name.
type reader struct {
	b   []byte
	off int
	err error
}

func (r *reader) take(n int, field string) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || len(r.b)-r.off < n {
		r.err = malformed("truncated in %s at byte %d: need %d bytes, %d left", field, r.off, n, len(r.b)-r.off)
		return nil
	}
	s := r.b[r.off : r.off+n : r.off+n]
	r.off += n
	return s
}

func (r *reader) u8(field string) int {
	if s := r.take(1, field); s != nil {
		return int(s[0])
	}
	return 0
}

func (r *reader) u16(field string) int {
	if s := r.take(2, field); s != nil {
		return int(binary.LittleEndian.Uint16(s))
	}
	return 0
}

func (r *reader) u32(field string) uint32 {
	if s := r.take(4, field); s != nil {
		return binary.LittleEndian.Uint32(s)
	}
	return 0
}

func (r *reader) u64(field string) uint64 {
	if s := r.take(8, field); s != nil {
		return binary.LittleEndian.Uint64(s)
	}
	return 0
}

// UnmarshalUpdate parses and validates an update of at most maxElems
// elements: magic, version, checksum, every length against the limits and
// the bytes present, the codec spec, and the decoded payload (no NaN or
// Inf). It allocates at most O(len(b) + maxElems). It does not know the
// shapes: the receiver compares u.ShapesDigest with ShapesDigest of the
// shapes it expects, and u.N with their element total. Nor does it check
// the signature: look up the key for u.WorkerID and call Verify. Errors
// wrap ErrMalformed or ErrUnsupportedVersion.
func UnmarshalUpdate(b []byte, maxElems int) (*Update, error) {
	if maxElems < 1 || maxElems > compress.MaxN {
		return nil, fmt.Errorf("protocol: unmarshal update: maxElems %d out of range [1, %d]", maxElems, compress.MaxN)
	}
	if len(b) < 4 || string(b[:4]) != Magic {
		return nil, malformed("bad magic: want %q", Magic)
	}
	if len(b) < 6 {
		return nil, malformed("truncated in version")
	}
	if v := binary.LittleEndian.Uint16(b[4:]); v != Version2 {
		return nil, fmt.Errorf("protocol: update version %d (this build reads %d): %w", v, Version2, ErrUnsupportedVersion)
	}
	if len(b) < fixedHeader+2+1+1+1+32+4+trailer { // worker id and codec at least 1 byte each
		return nil, malformed("%d bytes is shorter than the smallest update", len(b))
	}
	// Nothing follows the signature, so the checksum sits at a fixed
	// distance from the end: check it before trusting any length.
	crcAt := len(b) - trailer
	if got, want := crc32.Checksum(b[:crcAt], castagnoli), binary.LittleEndian.Uint32(b[crcAt:]); got != want {
		return nil, malformed("checksum mismatch: computed %08x, stored %08x", got, want)
	}

	r := &reader{b: b[:crcAt], off: 6}
	u := &Update{Version: Version2}
	if flags := r.u16("flags"); flags != 0 {
		return nil, malformed("flags %#x: version 2 defines none", flags)
	}
	u.Round = r.u64("round")
	copy(u.Nonce[:], r.take(NonceSize, "nonce"))
	copy(u.BaseSHA256[:], r.take(32, "base adapter SHA-256"))
	n := r.u64("element count")
	if n < 1 || n > uint64(maxElems) {
		return nil, malformed("element count %d: want 1..%d", n, maxElems)
	}
	u.N = int(n)
	u.Seed = r.u64("seed")
	u.Tokens = r.u64("tokens")
	u.FLOPs = math.Float64frombits(r.u64("FLOPs"))
	u.EnergyWh = math.Float64frombits(r.u64("energy"))
	u.Started = fromUnixNano(int64(r.u64("started")))
	u.Finished = fromUnixNano(int64(r.u64("finished")))
	wl := r.u16("worker id length")
	if r.err == nil && (wl < 1 || wl > MaxWorkerIDLen) {
		return nil, malformed("worker id length %d: want 1..%d", wl, MaxWorkerIDLen)
	}
	u.WorkerID = string(r.take(wl, "worker id"))
	cl := r.u8("codec length")
	if r.err == nil && (cl < 1 || cl > MaxCodecLen) {
		return nil, malformed("codec length %d: want 1..%d", cl, MaxCodecLen)
	}
	u.Codec = string(r.take(cl, "codec"))
	copy(u.ShapesDigest[:], r.take(32, "shapes digest"))
	pl := r.u32("payload length")
	u.Payload = bytes.Clone(r.take(int(pl), "payload"))
	if r.err != nil {
		return nil, r.err
	}
	if r.off != len(r.b) {
		return nil, malformed("%d unexpected bytes after the payload", len(r.b)-r.off)
	}
	copy(u.Signature[:], b[crcAt+4:])
	delta, err := checkUpdate(u, maxElems)
	if err != nil {
		return nil, err
	}
	u.Delta = delta
	return u, nil
}

// Equal reports whether a and b encode to the same signed bytes.
func (u *Update) Equal(v *Update) bool {
	a, err1 := appendBody(nil, u)
	b, err2 := appendBody(nil, v)
	return err1 == nil && err2 == nil && bytes.Equal(a, b) && u.Signature == v.Signature
}

package protocol

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash/crc32"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencluster/opencluster/compress"
)

// testKey is a fixed key so tests and fuzz seeds are reproducible.
var testKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))

func randDelta(n int, seed uint64) []float32 {
	r := rand.New(rand.NewPCG(seed, 2))
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(r.NormFloat64()) * 1e-3
	}
	return x
}

// testUpdate builds a valid update of two LoRA tensors (n = 2*8*4) coded
// with spec.
func testUpdate(t testing.TB, spec string) *Update {
	t.Helper()
	shapes := []Shape{{"layers.0.attn.q.lora_A", []int{4, 8}}, {"layers.0.attn.q.lora_B", []int{8, 4}}}
	n := 64
	c, err := compress.Parse(spec)
	if err != nil {
		t.Fatal(err)
	}
	p, err := c.Encode(randDelta(n, 1), nil, 99)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	return &Update{
		Round:      17,
		Nonce:      [NonceSize]byte{1, 2, 3},
		BaseSHA256: [32]byte{0xab, 0xcd},
		WorkerID:   "w-42",
		N:          n,
		Shapes:     shapes,
		Codec:      c.String(),
		Seed:       99,
		Tokens:     123456,
		FLOPs:      6.5e12,
		EnergyWh:   1.25,
		Started:    start,
		Finished:   start.Add(90 * time.Second),
		Payload:    p.Bytes,
	}
}

var testSpecs = []string{"dense", "topk:0.1+int8:64", "randk:0.25+q4:64", "q4:64", "randk:0.5:scaled"}

func TestUpdateRoundTrip(t *testing.T) {
	for _, spec := range testSpecs {
		u := testUpdate(t, spec)
		b, err := MarshalUpdate(u, testKey)
		if err != nil {
			t.Fatalf("%s: MarshalUpdate: %v", spec, err)
		}
		got, err := UnmarshalUpdate(b, 1000)
		if err != nil {
			t.Fatalf("%s: UnmarshalUpdate: %v", spec, err)
		}
		if err := Verify(got, testKey.Public().(ed25519.PublicKey)); err != nil {
			t.Fatalf("%s: Verify: %v", spec, err)
		}
		if !got.Equal(u) || got.Version != Version2 {
			t.Fatalf("%s: round trip differs:\n got %+v\nwant %+v", spec, got, u)
		}
		if !got.Started.Equal(u.Started) || !got.Finished.Equal(u.Finished) || got.WorkerID != u.WorkerID || got.Shapes != nil {
			t.Fatalf("%s: fields differ", spec)
		}
		if got.ShapesDigest != ShapesDigest(u.Shapes) {
			t.Fatalf("%s: shapes digest %x, want ShapesDigest(shapes) %x", spec, got.ShapesDigest, ShapesDigest(u.Shapes))
		}
		want, _ := compress.MustParse(spec).Decode(u.Payload, u.N)
		if !slices.Equal(got.Delta.Dense(), want) {
			t.Fatalf("%s: decoded delta differs", spec)
		}
	}
}

func TestMarshalFillsNonce(t *testing.T) {
	u := testUpdate(t, "dense")
	u.Nonce = [NonceSize]byte{}
	if _, err := MarshalUpdate(u, testKey); err != nil {
		t.Fatal(err)
	}
	if u.Nonce == ([NonceSize]byte{}) {
		t.Error("nonce left zero")
	}
}

func TestVerifyRejects(t *testing.T) {
	u := testUpdate(t, "topk:0.1+int8:64")
	b, err := MarshalUpdate(u, testKey)
	if err != nil {
		t.Fatal(err)
	}
	pub := testKey.Public().(ed25519.PublicKey)
	other, _, _ := GenerateKey()
	tampers := map[string]func(*Update){
		"round":   func(u *Update) { u.Round++ },
		"nonce":   func(u *Update) { u.Nonce[0] ^= 1 },
		"worker":  func(u *Update) { u.WorkerID = "w-43" },
		"tokens":  func(u *Update) { u.Tokens *= 10 },
		"energy":  func(u *Update) { u.EnergyWh = 0 },
		"shapes":  func(u *Update) { u.ShapesDigest[5] ^= 1 },
		"payload": func(u *Update) { u.Payload = slices.Clone(u.Payload); u.Payload[3] ^= 1 },
		"sig":     func(u *Update) { u.Signature[0] ^= 1 },
	}
	for name, tamper := range tampers {
		got, err := UnmarshalUpdate(b, 1000)
		if err != nil {
			t.Fatal(err)
		}
		tamper(got)
		if err := Verify(got, pub); !errors.Is(err, ErrBadSignature) {
			t.Errorf("%s changed: Verify = %v, want ErrBadSignature", name, err)
		}
	}
	got, _ := UnmarshalUpdate(b, 1000)
	if err := Verify(got, other); !errors.Is(err, ErrBadSignature) {
		t.Errorf("other key: Verify = %v, want ErrBadSignature", err)
	}
	if err := Verify(got, pub[:5]); err == nil {
		t.Error("short public key accepted")
	}
	// A re-signed forgery (valid CRC, wrong key) parses but does not verify.
	forged := slices.Clone(b)
	copy(forged[len(forged)-64:], ed25519.Sign(ed25519.NewKeyFromSeed(make([]byte, 32)), forged[:len(forged)-64]))
	fu, err := UnmarshalUpdate(forged, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if err := Verify(fu, pub); !errors.Is(err, ErrBadSignature) {
		t.Errorf("forged signature: Verify = %v", err)
	}
}

// resign recomputes the CRC and signature after a test edits the bytes, so
// the field validation (not the checksum) is what rejects them.
func resign(b []byte) []byte {
	body := b[:len(b)-trailer]
	out := binary.LittleEndian.AppendUint32(slices.Clone(body), crc32.Checksum(body, castagnoli))
	return append(out, ed25519.Sign(testKey, out)...)
}

func TestUnmarshalRejects(t *testing.T) {
	u := testUpdate(t, "topk:0.1+int8:64")
	good, err := MarshalUpdate(u, testKey)
	if err != nil {
		t.Fatal(err)
	}
	at := func(off int, v ...byte) []byte { b := slices.Clone(good); copy(b[off:], v); return resign(b) }
	le64 := func(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }
	wid := fixedHeader               // worker id length
	codecAt := wid + 2 + len("w-42") // codec length
	digestAt := codecAt + 1 + len(u.Codec)
	payloadAt := digestAt + 32
	flopsAt, energyAt, startAt := 88, 96, 104

	remarshal := func(edit func(*Update)) []byte {
		v := testUpdate(t, "topk:0.1+int8:64")
		v.ShapesDigest = ShapesDigest(v.Shapes)
		edit(v)
		body, err := appendBody(nil, v)
		if err != nil {
			t.Fatal(err)
		}
		return append(body, ed25519.Sign(testKey, body)...)
	}
	tests := []struct {
		name    string
		b       []byte
		max     int
		wantErr error
		in      string // the error must mention this
	}{
		{"empty", nil, 1000, ErrMalformed, "magic"},
		{"bad magic", append([]byte("OCU2"), good[4:]...), 1000, ErrMalformed, "magic"},
		{"version 1", at(4, 1, 0), 1000, ErrUnsupportedVersion, "version 1"},
		{"version 3", at(4, 3, 0), 1000, ErrUnsupportedVersion, "version 3"},
		{"truncated", good[:len(good)-1], 1000, ErrMalformed, ""},
		{"truncated header", good[:50], 1000, ErrMalformed, "shorter"},
		{"checksum", func() []byte { b := slices.Clone(good); b[30] ^= 1; return b }(), 1000, ErrMalformed, "checksum"},
		{"flags", at(6, 1), 1000, ErrMalformed, "flags"},
		{"n zero", at(64, le64(0)...), 1000, ErrMalformed, "element count"},
		{"n over limit", good, 63, ErrMalformed, "element count 64"},
		{"n huge", at(64, le64(1<<62)...), 1000, ErrMalformed, "element count"},
		{"worker id empty", at(wid, 0, 0), 1000, ErrMalformed, "worker id length 0"},
		{"worker id long", at(wid, 0xff, 0xff), 1000, ErrMalformed, "worker id length"},
		{"codec length 0", at(codecAt, 0), 1000, ErrMalformed, "codec length"},
		{"codec unknown", at(codecAt+1, 'x'), 1000, ErrMalformed, "codec"},
		{"zero shapes digest", at(digestAt, make([]byte, 32)...), 1000, ErrMalformed, "shapes digest"},
		{"truncated in digest", resign(slices.Concat(good[:digestAt+10], good[len(good)-trailer:])), 1000, ErrMalformed, ""},
		{"payload length huge", at(payloadAt, 0xff, 0xff, 0xff, 0xff), 1000, ErrMalformed, "truncated in payload"},
		{"nan flops", at(flopsAt, le64(math.Float64bits(math.NaN()))...), 1000, ErrMalformed, "FLOPs"},
		{"negative energy", at(energyAt, le64(math.Float64bits(-1))...), 1000, ErrMalformed, "energy"},
		{"finished before started", at(startAt, le64(math.MaxInt64)...), 1000, ErrMalformed, "finished"},
		{"trailing bytes", resign(slices.Concat(good[:len(good)-trailer], []byte{0}, good[len(good)-trailer:])), 1000, ErrMalformed, "unexpected bytes"},
		{"non-canonical codec", remarshal(func(v *Update) { v.Codec = "topk:0.10+int8:64" }), 1000, ErrMalformed, "canonical"},
		{"payload for other codec", remarshal(func(v *Update) { v.Codec = "dense" }), 1000, ErrMalformed, "payload"},
		{"nan in payload", remarshal(func(v *Update) {
			v.Codec = "dense"
			v.Payload = binary.AppendUvarint(nil, 64)
			for i := range 64 {
				f := float32(i)
				if i == 9 {
					f = float32(math.NaN())
				}
				v.Payload = binary.LittleEndian.AppendUint32(v.Payload, math.Float32bits(f))
			}
		}), 1000, ErrMalformed, "entry 9 is NaN"},
	}
	for _, tt := range tests {
		_, err := UnmarshalUpdate(tt.b, tt.max)
		if !errors.Is(err, tt.wantErr) {
			t.Errorf("%s: err = %v, want %v", tt.name, err, tt.wantErr)
			continue
		}
		if !strings.Contains(err.Error(), tt.in) {
			t.Errorf("%s: error %q does not mention %q", tt.name, err, tt.in)
		}
	}
	if _, err := UnmarshalUpdate(tests[len(tests)-1].b, 1000); !errors.Is(err, compress.ErrCorrupt) {
		t.Errorf("payload error %v does not wrap compress.ErrCorrupt", err)
	}
	if _, err := UnmarshalUpdate(good, 0); err == nil {
		t.Error("maxElems 0 accepted")
	}
}

func TestMarshalRejectsShapes(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Update)
		in   string // the error must mention this
	}{
		{"duplicate tensor", func(v *Update) { v.Shapes[1].Name = v.Shapes[0].Name }, "duplicate"},
		{"bad utf-8 name", func(v *Update) { v.Shapes[0].Name = "\xff" }, "UTF-8"},
		{"empty name", func(v *Update) { v.Shapes[0].Name = "" }, "name"},
		{"rank zero", func(v *Update) { v.Shapes[0].Dims = nil }, "0 dims"},
		{"dim zero", func(v *Update) { v.Shapes[0].Dims = []int{0, 8} }, "dims [0 8]"},
		{"shapes product", func(v *Update) { v.Shapes[0].Dims = []int{4, 9} }, "shapes add up to 68 elements, header says 64"},
		{"no shapes, no digest", func(v *Update) { v.Shapes = nil }, "shapes digest is all zero"},
	}
	for _, tt := range tests {
		v := testUpdate(t, "dense")
		tt.edit(v)
		_, err := MarshalUpdate(v, testKey)
		if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tt.in) {
			t.Errorf("%s: err = %v, want ErrMalformed mentioning %q", tt.name, err, tt.in)
		}
	}
}

// TestMarshalWithDigest: a sender that knows only the digest (no shapes
// list) produces the same bytes as one that gives the shapes.
func TestMarshalWithDigest(t *testing.T) {
	a := testUpdate(t, "q4:64")
	ba, err := MarshalUpdate(a, testKey)
	if err != nil {
		t.Fatal(err)
	}
	b := testUpdate(t, "q4:64")
	b.ShapesDigest, b.Shapes = ShapesDigest(b.Shapes), nil
	bb, err := MarshalUpdate(b, testKey)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ba, bb) {
		t.Error("update marshalled from the digest differs from one marshalled from the shapes")
	}
}

func TestShapesDigest(t *testing.T) {
	base := []Shape{{"a.lora_A", []int{4, 8}}, {"a.lora_B", []int{8, 4}}}
	// The canonical encoding, written out by hand: count, then per tensor
	// name length, name, rank, dims as uint64 little-endian.
	var enc []byte
	enc = binary.LittleEndian.AppendUint16(enc, 2)
	for _, s := range base {
		enc = append(enc, byte(len(s.Name)))
		enc = append(enc, s.Name...)
		enc = append(enc, byte(len(s.Dims)))
		for _, d := range s.Dims {
			enc = binary.LittleEndian.AppendUint64(enc, uint64(d))
		}
	}
	if got, want := ShapesDigest(base), sha256.Sum256(enc); got != want {
		t.Fatalf("ShapesDigest = %x, want SHA-256 of the canonical encoding %x", got, want)
	}
	if ShapesDigest(base) != ShapesDigest([]Shape{{"a.lora_A", []int{4, 8}}, {"a.lora_B", []int{8, 4}}}) {
		t.Error("equal lists have different digests")
	}
	others := map[string][]Shape{
		"renamed":    {{"a.lora_X", []int{4, 8}}, {"a.lora_B", []int{8, 4}}},
		"reordered":  {{"a.lora_B", []int{8, 4}}, {"a.lora_A", []int{4, 8}}},
		"transposed": {{"a.lora_A", []int{8, 4}}, {"a.lora_B", []int{8, 4}}},
		"reshaped":   {{"a.lora_A", []int{32}}, {"a.lora_B", []int{8, 4}}},
		"dropped":    {{"a.lora_A", []int{4, 8}}},
		// Name/dim boundaries must not alias: moving a byte between the
		// name and the next field changes the encoding.
		"split": {{"a.lora_A", []int{4, 8}}, {"a.lora_", []int{8, 4}}, {"B", []int{1}}},
	}
	for name, o := range others {
		if ShapesDigest(o) == ShapesDigest(base) {
			t.Errorf("%s: same digest as the original", name)
		}
	}
}

// goldenUpdateSHA256 is the SHA-256 of the update testUpdate(t, "dense")
// marshals to with testKey. It pins the byte layout: if this test fails,
// the encoding changed, so bump the version (Version2 -> Version3), keep
// refusing the old one, update docs/protocol.md, and only then update this
// value.
const goldenUpdateSHA256 = "48d1ae0af07cc93da2248bf93962ee95f7c778552e5f13feb78bfe3ba9f51baa"

func TestUpdateGolden(t *testing.T) {
	b, err := MarshalUpdate(testUpdate(t, "dense"), testKey)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	if got := hex.EncodeToString(sum[:]); got != goldenUpdateSHA256 {
		t.Errorf("update encoding changed: SHA-256 %s, golden %s (%d bytes); a byte change needs a version bump", got, goldenUpdateSHA256, len(b))
	}
}

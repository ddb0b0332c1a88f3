package secagg

import (
	"crypto/ed25519"
	"encoding/binary"
	"fmt"
	"math"
)

// Stage numbers, as they appear in message headers.
const (
	StageAdvertise = 1
	StageShareKeys = 2
	StageMasked    = 3
	StageConfirm   = 4
	StageUnmask    = 5
	// NumStages is the number of stages; a round's transcript has one list
	// of messages per stage.
	NumStages = 5
)

var stageNames = [...]string{"", "advertise", "share keys", "masked input", "confirm survivors", "unmask"}

// Wire format of a client message (little-endian):
//
//	"OCSA" | version 1 | stage (1 byte) | round (8) | params hash (32) |
//	sender index (4) | body | ed25519 signature (64)
//
// The signature covers sigContext and every byte before it, so a message
// cannot be moved to another round (round and hash), stage or sender.
const (
	magic      = "OCSA"
	version    = 1
	headerSize = 4 + 1 + 1 + 8 + 32 + 4
	sigContext = "opencluster secagg v1 message "
	ctSize     = 2*ScalarSize + 16 // two scalars + the GCM tag
	keySize    = 32                // an X25519 public key
)

// Share kinds revealed in the unmask stage.
const (
	kindSelfMask = 1 // a share of β: the neighbour's input arrived
	kindMaskKey  = 2 // a share of σ: the neighbour dropped
)

// MessageInfo reads the stage and sender index from a message's header,
// without checking anything else (Receive does that).
func MessageInfo(msg []byte) (stage, sender int, ok bool) {
	if len(msg) < headerSize || string(msg[:4]) != magic {
		return 0, 0, false
	}
	return int(msg[5]), int(binary.LittleEndian.Uint32(msg[46:])), true
}

// IsStage reports whether msg's header names stage.
func IsStage(msg []byte, stage int) bool {
	st, _, ok := MessageInfo(msg)
	return ok && st == stage
}

// header is a parsed message header.
type header struct {
	stage  int
	round  uint64
	hash   [32]byte
	sender int
}

func appendHeader(b []byte, stage int, p *Params, hash [32]byte, sender int) []byte {
	b = append(b, magic...)
	b = append(b, version, byte(stage))
	b = binary.LittleEndian.AppendUint64(b, p.Round)
	b = append(b, hash[:]...)
	return binary.LittleEndian.AppendUint32(b, uint32(sender))
}

func sign(priv ed25519.PrivateKey, b []byte) []byte {
	sig := ed25519.Sign(priv, append([]byte(sigContext), b...))
	return append(b, sig...)
}

// openMessage checks msg's framing, round, params hash, stage and sender
// signature, and returns the header and the body.
func openMessage(p *Params, hash [32]byte, stage int, msg []byte) (header, []byte, error) {
	var h header
	bad := func(format string, args ...any) (header, []byte, error) {
		return header{}, nil, fmt.Errorf("secagg: %s message: %s: %w", stageNames[stage], fmt.Sprintf(format, args...), ErrMessage)
	}
	if len(msg) < headerSize+ed25519.SignatureSize {
		return bad("%d bytes, shorter than a header and signature", len(msg))
	}
	if string(msg[:4]) != magic || msg[4] != version {
		return bad("not a version-%d secure-aggregation message", version)
	}
	h.stage = int(msg[5])
	h.round = binary.LittleEndian.Uint64(msg[6:])
	copy(h.hash[:], msg[14:46])
	sender := binary.LittleEndian.Uint32(msg[46:])
	if h.stage != stage {
		if h.stage >= 1 && h.stage <= NumStages {
			return bad("it is a %s message (replayed or misrouted)", stageNames[h.stage])
		}
		return bad("unknown stage %d", h.stage)
	}
	if h.round != p.Round {
		return bad("for round %d, this is round %d (replayed?)", h.round, p.Round)
	}
	if h.hash != hash {
		return bad("for other round parameters (params hash %x, want %x)", h.hash[:6], hash[:6])
	}
	if int64(sender) >= int64(len(p.Keys)) {
		return bad("sender %d is not in the cohort of %d", sender, len(p.Keys))
	}
	h.sender = int(sender)
	body := msg[headerSize : len(msg)-ed25519.SignatureSize]
	signed := append([]byte(sigContext), msg[:len(msg)-ed25519.SignatureSize]...)
	if !ed25519.Verify(p.Keys[h.sender], signed, msg[len(msg)-ed25519.SignatureSize:]) {
		return bad("signature does not verify with sender %d's key", h.sender)
	}
	return h, body, nil
}

// advert is a parsed stage-1 body: the share-encryption public key, the
// mask-agreement public key, and a SHA-256 commitment to the self-mask
// seed β, which lets the server check a reconstructed β.
type advert struct{ cPub, sPub, betaCommit []byte }

const advertSize = 3 * 32

func parseAdvert(body []byte) (advert, error) {
	if len(body) != advertSize {
		return advert{}, fmt.Errorf("body of %d bytes, want %d", len(body), advertSize)
	}
	return advert{cPub: body[:32], sPub: body[32:64], betaCommit: body[64:96]}, nil
}

// Routed is one encrypted share on its way from one client to another;
// the server hands each client the ones addressed to it.
type Routed struct {
	From       int
	Ciphertext []byte
}

// parseShareKeys reads a stage-2 body: count (4), then per share the
// recipient index (4) and the ciphertext (ctSize).
func parseShareKeys(body []byte, n int) (map[int][]byte, error) {
	if len(body) < 4 {
		return nil, fmt.Errorf("body of %d bytes", len(body))
	}
	count := int(binary.LittleEndian.Uint32(body))
	body = body[4:]
	if count > n || len(body) != count*(4+ctSize) {
		return nil, fmt.Errorf("%d shares in %d bytes", count, len(body))
	}
	out := make(map[int][]byte, count)
	for i := range count {
		e := body[i*(4+ctSize):]
		to := binary.LittleEndian.Uint32(e)
		if int64(to) >= int64(n) {
			return nil, fmt.Errorf("share %d is for client %d, outside the cohort of %d", i, to, n)
		}
		if _, dup := out[int(to)]; dup {
			return nil, fmt.Errorf("two shares for client %d", to)
		}
		out[int(to)] = e[4 : 4+ctSize]
	}
	return out, nil
}

// packedSize is the bytes of n values of bits bits each.
func packedSize(n int, bits uint) int { return (n*int(bits) + 7) / 8 }

// pack appends v's low bits bits per element, least significant first.
func pack(dst []byte, v []uint32, bits uint) []byte {
	var acc uint64
	var nacc uint
	for _, x := range v {
		acc |= uint64(x&ringMask(bits)) << nacc
		nacc += bits
		for nacc >= 8 {
			dst = append(dst, byte(acc))
			acc >>= 8
			nacc -= 8
		}
	}
	if nacc > 0 {
		dst = append(dst, byte(acc))
	}
	return dst
}

func unpack(b []byte, n int, bits uint) ([]uint32, error) {
	if len(b) != packedSize(n, bits) {
		return nil, fmt.Errorf("%d bytes for %d values of %d bits, want %d", len(b), n, bits, packedSize(n, bits))
	}
	out := make([]uint32, n)
	var acc uint64
	var nacc uint
	j := 0
	for i := range out {
		for nacc < bits {
			acc |= uint64(b[j]) << nacc
			j++
			nacc += 8
		}
		out[i] = uint32(acc) & ringMask(bits)
		acc >>= bits
		nacc -= bits
	}
	if acc != 0 {
		return nil, fmt.Errorf("padding bits are not zero")
	}
	return out, nil
}

// Claims are what a worker says its round cost: tokens trained, FLOPs and
// energy. They travel in its signed masked-input message beside the masked
// vector, as a plain update carries them in its header: the signature
// proves who made them, not that they are true, and they say nothing
// about the update's values (the same for any update of the round's
// recipe; docs/privacy.md).
type Claims struct {
	Tokens   uint64
	FLOPs    float64
	EnergyWh float64
}

// claimsSize is the claims' encoding: tokens (u64), FLOPs (f64), energy
// in Wh (f64), little-endian.
const claimsSize = 24

func (c Claims) check() error {
	for _, v := range []struct {
		name string
		x    float64
	}{{"FLOPs", c.FLOPs}, {"energy", c.EnergyWh}} {
		if math.IsNaN(v.x) || math.IsInf(v.x, 0) || v.x < 0 {
			return fmt.Errorf("claimed %s %v: want a finite number >= 0", v.name, v.x)
		}
	}
	return nil
}

func appendClaims(b []byte, c Claims) []byte {
	b = binary.LittleEndian.AppendUint64(b, c.Tokens)
	b = binary.LittleEndian.AppendUint64(b, math.Float64bits(c.FLOPs))
	return binary.LittleEndian.AppendUint64(b, math.Float64bits(c.EnergyWh))
}

// parseMasked reads a stage-3 body: the claims and the packed vector. A
// body of the packed vector alone (a worker from before claims) has none.
func parseMasked(body []byte, p *Params) (Claims, []uint32, error) {
	var c Claims
	if len(body) == claimsSize+packedSize(p.Length, p.Bits) {
		c = Claims{Tokens: binary.LittleEndian.Uint64(body),
			FLOPs:    math.Float64frombits(binary.LittleEndian.Uint64(body[8:])),
			EnergyWh: math.Float64frombits(binary.LittleEndian.Uint64(body[16:]))}
		if err := c.check(); err != nil {
			return Claims{}, nil, err
		}
		body = body[claimsSize:]
	}
	v, err := unpack(body, p.Length, p.Bits)
	return c, v, err
}

// revealed is one share sent in the unmask stage.
type revealed struct {
	about int
	kind  byte
	value []byte
}

// parseUnmask reads a stage-4 body: count (4), then per share the client it
// is about (4), its kind (1) and the value (ScalarSize).
func parseUnmask(body []byte, n int) ([]revealed, error) {
	const entry = 4 + 1 + ScalarSize
	if len(body) < 4 {
		return nil, fmt.Errorf("body of %d bytes", len(body))
	}
	count := int(binary.LittleEndian.Uint32(body))
	body = body[4:]
	if count > n || len(body) != count*entry {
		return nil, fmt.Errorf("%d shares in %d bytes", count, len(body))
	}
	out := make([]revealed, count)
	seen := make(map[int]bool, count)
	for i := range out {
		e := body[i*entry:]
		r := revealed{about: int(binary.LittleEndian.Uint32(e)), kind: e[4], value: e[5:entry]}
		if r.about < 0 || r.about >= n {
			return nil, fmt.Errorf("share %d is about client %d, outside the cohort of %d", i, r.about, n)
		}
		if r.kind != kindSelfMask && r.kind != kindMaskKey {
			return nil, fmt.Errorf("share %d has unknown kind %d", i, r.kind)
		}
		if seen[r.about] {
			return nil, fmt.Errorf("two shares about client %d", r.about)
		}
		seen[r.about] = true
		out[i] = r
	}
	return out, nil
}

// EncodeRouted and DecodeRouted carry the shares addressed to one client
// from the server to that client: count (4), then per share the sender (4)
// and the ciphertext.
func EncodeRouted(rs []Routed) []byte {
	b := binary.LittleEndian.AppendUint32(nil, uint32(len(rs)))
	for _, r := range rs {
		b = binary.LittleEndian.AppendUint32(b, uint32(r.From))
		b = append(b, r.Ciphertext...)
	}
	return b
}

// DecodeRouted reads EncodeRouted's output for a cohort of n.
func DecodeRouted(b []byte, n int) ([]Routed, error) {
	if len(b) < 4 {
		return nil, fmt.Errorf("secagg: routed shares: %d bytes: %w", len(b), ErrMessage)
	}
	count := int(binary.LittleEndian.Uint32(b))
	b = b[4:]
	if count > n || len(b) != count*(4+ctSize) {
		return nil, fmt.Errorf("secagg: routed shares: %d shares in %d bytes: %w", count, len(b), ErrMessage)
	}
	out := make([]Routed, count)
	for i := range out {
		e := b[i*(4+ctSize):]
		from := binary.LittleEndian.Uint32(e)
		if int64(from) >= int64(n) {
			return nil, fmt.Errorf("secagg: routed share %d from client %d, outside the cohort of %d: %w", i, from, n, ErrMessage)
		}
		out[i] = Routed{From: int(from), Ciphertext: e[4 : 4+ctSize]}
	}
	return out, nil
}

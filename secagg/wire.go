package secagg

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
)

// What the server hands a client before each stage, and the stored form of
// a whole round, as bytes. Each list is a little-endian count followed by
// its items; every count and length is checked against the bytes present
// before anything is allocated.

// EncodeMessages carries a list of signed client messages from the server
// to a client: the neighbours' adverts (stage 2's input) or the survivors'
// confirmations (stage 5's input).
func EncodeMessages(msgs [][]byte) []byte { return encodeList(msgs) }

// DecodeMessages reads EncodeMessages's output: at most n messages of at
// most 64 KiB each.
func DecodeMessages(b []byte, n int) ([][]byte, error) {
	out, err := decodeList(b, n, 1<<16)
	if err != nil {
		return nil, fmt.Errorf("secagg: relayed messages: %v: %w", err, ErrMessage)
	}
	return out, nil
}

// EncodeAdverts and DecodeAdverts are EncodeMessages and DecodeMessages
// for stage 2's input.
func EncodeAdverts(msgs [][]byte) []byte { return EncodeMessages(msgs) }

// DecodeAdverts reads EncodeAdverts's output.
func DecodeAdverts(b []byte, n int) ([][]byte, error) { return DecodeMessages(b, n) }

// EncodeSurvivors carries the survivor list (stage 4's input).
func EncodeSurvivors(idx []int) []byte {
	b := binary.LittleEndian.AppendUint32(nil, uint32(len(idx)))
	for _, i := range idx {
		b = binary.LittleEndian.AppendUint32(b, uint32(i))
	}
	return b
}

// survivorHash is what a stage-4 confirmation signs: the SHA-256 of the
// survivor list, so the message stays 32 bytes at any cohort size.
func survivorHash(idx []int) []byte {
	h := sha256.Sum256(append([]byte("opencluster secagg v1 survivors "), EncodeSurvivors(idx)...))
	return h[:]
}

// DecodeSurvivors reads EncodeSurvivors's output for a cohort of n.
func DecodeSurvivors(b []byte, n int) ([]int, error) {
	if len(b) < 4 {
		return nil, fmt.Errorf("secagg: survivors: %d bytes: %w", len(b), ErrMessage)
	}
	count := int(binary.LittleEndian.Uint32(b))
	if count > n || len(b) != 4+4*count {
		return nil, fmt.Errorf("secagg: survivors: %d entries in %d bytes for a cohort of %d: %w", count, len(b), n, ErrMessage)
	}
	out := make([]int, count)
	for i := range out {
		v := binary.LittleEndian.Uint32(b[4+4*i:])
		if int64(v) >= int64(n) {
			return nil, fmt.Errorf("secagg: survivors: index %d outside the cohort of %d: %w", v, n, ErrMessage)
		}
		out[i] = int(v)
	}
	return out, nil
}

func encodeList(items [][]byte) []byte {
	b := binary.LittleEndian.AppendUint32(nil, uint32(len(items)))
	for _, it := range items {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(it)))
		b = append(b, it...)
	}
	return b
}

func decodeList(b []byte, maxItems int, maxLen int) ([][]byte, error) {
	if len(b) < 4 {
		return nil, fmt.Errorf("%d bytes", len(b))
	}
	count := int(binary.LittleEndian.Uint32(b))
	b = b[4:]
	if count > maxItems || count > len(b)/4 {
		return nil, fmt.Errorf("%d items in %d bytes (at most %d)", count, len(b), maxItems)
	}
	out := make([][]byte, count)
	for i := range out {
		if len(b) < 4 {
			return nil, fmt.Errorf("item %d: truncated", i)
		}
		l := int(binary.LittleEndian.Uint32(b))
		b = b[4:]
		if l > maxLen || l > len(b) {
			return nil, fmt.Errorf("item %d: %d bytes, %d left (at most %d)", i, l, len(b), maxLen)
		}
		out[i] = b[:l]
		b = b[l:]
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%d bytes after the last item", len(b))
	}
	return out, nil
}

// Transcript is a whole stored round: the params and every accepted
// message of each stage. The coordinator writes it when the round unmasks;
// Recompute replays it.
type Transcript struct {
	Params *Params
	Stages [NumStages][][]byte
}

const transcriptMagic = "OCST2\n"

// MarshalBinary writes the transcript: magic, the params as JSON (length
// prefixed), then the NumStages stages as lists.
func (t *Transcript) MarshalBinary() ([]byte, error) {
	pj, err := json.Marshal(t.Params)
	if err != nil {
		return nil, err
	}
	b := append([]byte(transcriptMagic), binary.LittleEndian.AppendUint32(nil, uint32(len(pj)))...)
	b = append(b, pj...)
	for _, st := range t.Stages {
		l := encodeList(st)
		b = binary.LittleEndian.AppendUint64(b, uint64(len(l)))
		b = append(b, l...)
	}
	return b, nil
}

// UnmarshalBinary reads MarshalBinary's output and validates the params.
func (t *Transcript) UnmarshalBinary(b []byte) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("secagg: transcript: %s: %w", fmt.Sprintf(format, args...), ErrMessage)
	}
	if len(b) < len(transcriptMagic)+4 || string(b[:len(transcriptMagic)]) != transcriptMagic {
		return bad("not a transcript")
	}
	b = b[len(transcriptMagic):]
	pl := int(binary.LittleEndian.Uint32(b))
	b = b[4:]
	if pl > len(b) || pl > 4<<20 {
		return bad("params of %d bytes, %d left", pl, len(b))
	}
	var p Params
	if err := json.Unmarshal(b[:pl], &p); err != nil {
		return bad("params: %v", err)
	}
	if err := p.Validate(); err != nil {
		return err
	}
	b = b[pl:]
	for i := range t.Stages {
		if len(b) < 8 {
			return bad("stage %d truncated", i+1)
		}
		l := binary.LittleEndian.Uint64(b)
		b = b[8:]
		if l > uint64(len(b)) {
			return bad("stage %d: %d bytes, %d left", i+1, l, len(b))
		}
		st, err := decodeList(b[:l], len(p.Keys), MaxLength*4+1024)
		if err != nil {
			return bad("stage %d: %v", i+1, err)
		}
		t.Stages[i] = st
		b = b[l:]
	}
	if len(b) != 0 {
		return bad("%d trailing bytes", len(b))
	}
	t.Params = &p
	return nil
}

// ServerTranscript is the transcript of a server's round so far.
func (s *Server) ServerTranscript() *Transcript {
	t := &Transcript{Params: s.p}
	for i := range t.Stages {
		t.Stages[i] = s.Messages(i + 1)
	}
	return t
}

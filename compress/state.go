package compress

import (
	"encoding/binary"
	"fmt"
	"github.com/opencluster/opencluster/internal/atomicfile"
	"hash/crc32"
	"math"
	"os"
)

// State is a worker's error-feedback memory, carried from round to round
// and saved to disk so a restarted worker resumes where it stopped.
type State struct {
	// Momentum is the DGC momentum factor m in [0, 1); 0 is plain error
	// feedback and keeps no velocity.
	Momentum float32
	// Residual holds, per entry, what has been computed but not yet sent.
	Residual []float32
	// Velocity is the momentum buffer; nil when Momentum is 0.
	Velocity []float32
}

// NewState returns an empty state for vectors of n elements.
func NewState(n int, momentum float32) (*State, error) {
	if n < 0 || n > MaxN {
		return nil, fmt.Errorf("compress: state size %d out of range [0, %d]", n, MaxN)
	}
	if !(momentum >= 0 && momentum < 1) {
		return nil, fmt.Errorf("compress: momentum %v: want [0, 1)", momentum)
	}
	s := &State{Momentum: momentum, Residual: make([]float32, n)}
	if momentum != 0 {
		s.Velocity = make([]float32, n)
	}
	return s, nil
}

// N is the number of elements the state is for.
func (s *State) N() int { return len(s.Residual) }

// check reports whether s fits an n-element delta.
func (s *State) check(n int) error {
	if len(s.Residual) != n {
		return fmt.Errorf("compress: error-feedback state is for %d elements, delta has %d", len(s.Residual), n)
	}
	if !(s.Momentum >= 0 && s.Momentum < 1) {
		return fmt.Errorf("compress: error-feedback state momentum %v: want [0, 1)", s.Momentum)
	}
	if s.Momentum != 0 && len(s.Velocity) != n {
		return fmt.Errorf("compress: error-feedback state has momentum %v but %d velocity entries for %d elements", s.Momentum, len(s.Velocity), n)
	}
	return nil
}

// State file layout, little-endian:
//
//	[4]byte  magic "OCEF"
//	uint16   version (1)
//	uint16   flags (bit 0: velocity present; other bits 0)
//	float32  momentum
//	uint64   n
//	n × float32 residual
//	n × float32 velocity (when flag bit 0)
//	uint32   CRC-32C (Castagnoli) of everything before it
const (
	stateMagic   = "OCEF"
	stateVersion = 1
	stateHeader  = 4 + 2 + 2 + 4 + 8
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// MarshalBinary encodes s in the state file format.
func (s *State) MarshalBinary() ([]byte, error) {
	if err := s.check(len(s.Residual)); err != nil {
		return nil, err
	}
	var flags uint16
	vecs := 1
	if s.Velocity != nil {
		flags, vecs = 1, 2
		if len(s.Velocity) != len(s.Residual) {
			return nil, fmt.Errorf("compress: state has %d velocity entries for %d elements", len(s.Velocity), len(s.Residual))
		}
	}
	b := make([]byte, 0, stateHeader+4*vecs*len(s.Residual)+4)
	b = append(b, stateMagic...)
	b = binary.LittleEndian.AppendUint16(b, stateVersion)
	b = binary.LittleEndian.AppendUint16(b, flags)
	b = binary.LittleEndian.AppendUint32(b, math.Float32bits(s.Momentum))
	b = binary.LittleEndian.AppendUint64(b, uint64(len(s.Residual)))
	for _, v := range s.Residual {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
	}
	for _, v := range s.Velocity {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli)), nil
}

// UnmarshalBinary decodes the state file format, rejecting truncation,
// corruption (checksum), unknown versions and non-finite values.
func (s *State) UnmarshalBinary(b []byte) error {
	if len(b) < stateHeader+4 {
		return fmt.Errorf("compress: state: %d bytes is shorter than the header: %w", len(b), ErrCorrupt)
	}
	if string(b[:4]) != stateMagic {
		return fmt.Errorf("compress: state: bad magic %q, want %q: %w", b[:4], stateMagic, ErrCorrupt)
	}
	if v := binary.LittleEndian.Uint16(b[4:]); v != stateVersion {
		return fmt.Errorf("compress: state: unsupported version %d (this build reads %d)", v, stateVersion)
	}
	flags := binary.LittleEndian.Uint16(b[6:])
	if flags&^1 != 0 {
		return fmt.Errorf("compress: state: unknown flags %#x: %w", flags, ErrCorrupt)
	}
	m := math.Float32frombits(binary.LittleEndian.Uint32(b[8:]))
	n64 := binary.LittleEndian.Uint64(b[12:])
	vecs := uint64(1 + flags&1)
	if n64 > MaxN || uint64(len(b)) != stateHeader+4*vecs*n64+4 {
		return fmt.Errorf("compress: state: %d elements do not match the %d-byte file: %w", n64, len(b), ErrCorrupt)
	}
	body, sum := b[:len(b)-4], binary.LittleEndian.Uint32(b[len(b)-4:])
	if got := crc32.Checksum(body, castagnoli); got != sum {
		return fmt.Errorf("compress: state: checksum %08x, want %08x: %w", got, sum, ErrCorrupt)
	}
	n := int(n64)
	if !(m >= 0 && m < 1) || (m != 0) != (flags&1 == 1) {
		return fmt.Errorf("compress: state: momentum %v does not match velocity flag %d: %w", m, flags&1, ErrCorrupt)
	}
	read := func(what string, off int) ([]float32, error) {
		out := make([]float32, n)
		for i := range out {
			v := math.Float32frombits(binary.LittleEndian.Uint32(b[off+4*i:]))
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return nil, fmt.Errorf("compress: state: %s[%d] is %v: %w", what, i, v, ErrCorrupt)
			}
			out[i] = v
		}
		return out, nil
	}
	res, err := read("residual", stateHeader)
	if err != nil {
		return err
	}
	var vel []float32
	if flags&1 == 1 {
		if vel, err = read("velocity", stateHeader+4*n); err != nil {
			return err
		}
	}
	*s = State{Momentum: m, Residual: res, Velocity: vel}
	return nil
}

// Save writes s to path atomically: a temporary file in the same
// directory is written, synced and renamed over path, so a crash leaves
// either the old state or the new one, never half of one.
func (s *State) Save(path string) error {
	b, err := s.MarshalBinary()
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(path, b, 0o600)
}

// LoadState reads a state written by Save.
func LoadState(path string) (*State, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("compress: load state: %w", err)
	}
	s := new(State)
	if err := s.UnmarshalBinary(b); err != nil {
		return nil, fmt.Errorf("%w (file %s)", err, path)
	}
	return s, nil
}

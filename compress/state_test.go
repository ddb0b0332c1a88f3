package compress

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
)

func TestStateRoundTrip(t *testing.T) {
	for _, m := range []float32{0, 0.9} {
		st, err := NewState(300, m)
		if err != nil {
			t.Fatal(err)
		}
		c := MustParse("topk:0.05+int8:64")
		for round := range uint64(3) {
			mustEncode(t, c, randVec(300, round), st, round)
		}
		path := filepath.Join(t.TempDir(), "ef.state")
		if err := st.Save(path); err != nil {
			t.Fatal(err)
		}
		if runtime.GOOS != "windows" {
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("state file mode %v, want 0600", fi.Mode().Perm())
			}
		}
		got, err := LoadState(path)
		if err != nil {
			t.Fatal(err)
		}
		if got.Momentum != st.Momentum || !slices.Equal(got.Residual, st.Residual) || !slices.Equal(got.Velocity, st.Velocity) {
			t.Fatalf("momentum %v: loaded state differs", m)
		}
		// A restarted worker continues exactly like one that never stopped.
		a := mustEncode(t, c, randVec(300, 9), st, 9)
		b := mustEncode(t, c, randVec(300, 9), got, 9)
		if !slices.Equal(a.Bytes, b.Bytes) {
			t.Fatalf("momentum %v: resumed state encodes differently", m)
		}
		// No temp files left behind.
		entries, _ := os.ReadDir(filepath.Dir(path))
		if len(entries) != 1 {
			t.Errorf("directory holds %d entries after Save, want 1", len(entries))
		}
	}
}

func TestStateRejectsCorruption(t *testing.T) {
	st, _ := NewState(10, 0.5)
	st.Residual[3] = 1.5
	good, _ := st.MarshalBinary()
	flip := func(i int) []byte { b := slices.Clone(good); b[i] ^= 1; return b }
	withCRC := func(b []byte) []byte {
		b = slices.Clone(b[:len(b)-4])
		return binary.LittleEndian.AppendUint32(b, crcC(b))
	}
	nanState := slices.Clone(good)
	binary.LittleEndian.PutUint32(nanState[stateHeader+4:], math.Float32bits(float32(math.NaN())))
	v2 := slices.Clone(good)
	v2[4] = 2
	tests := map[string][]byte{
		"empty":          nil,
		"truncated":      good[:len(good)-1],
		"bad magic":      flip(0),
		"bit flip":       flip(stateHeader + 5),
		"bad checksum":   flip(len(good) - 1),
		"extra byte":     append(slices.Clone(good), 0),
		"nan residual":   withCRC(nanState),
		"future version": withCRC(v2),
		"huge n":         withCRC(slices.Concat(good[:12], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}, good[20:])),
	}
	for name, b := range tests {
		var s State
		if err := s.UnmarshalBinary(b); err == nil {
			t.Errorf("%s: UnmarshalBinary accepted it", name)
		} else if name != "future version" && !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: error %v does not wrap ErrCorrupt", name, err)
		}
	}
	path := filepath.Join(t.TempDir(), "missing")
	if _, err := LoadState(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("LoadState(missing) = %v, want ErrNotExist", err)
	}
	for _, m := range []float32{-0.1, 1, float32(math.NaN())} {
		if _, err := NewState(3, m); err == nil {
			t.Errorf("NewState momentum %v accepted", m)
		}
	}
}

func crcC(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

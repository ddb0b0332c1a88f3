package protocol

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"runtime"
	"testing"
)

// fuzzMaxElems is the element limit the fuzz target parses under.
const fuzzMaxElems = 4096

// allocBound is the most UnmarshalUpdate may allocate for an input of n
// bytes: linear in the input and in maxElems, never driven by a length
// field. The constants are generous; a length-driven allocation (say 4 GiB
// from a forged payload length) is orders of magnitude above them.
func allocBound(n int) uint64 { return uint64(64*n + 64*fuzzMaxElems + 1<<16) }

// FuzzUnmarshalUpdate must never panic and never allocate beyond
// allocBound; whatever it accepts must re-encode to the same bytes (so the
// signature check in Verify sees exactly what was sent).
func FuzzUnmarshalUpdate(f *testing.F) {
	for _, spec := range testSpecs {
		b, err := MarshalUpdate(testUpdate(f, spec), testKey)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, false)
		f.Add(b, true)
	}
	f.Add([]byte(Magic), false)
	f.Fuzz(func(t *testing.T, b []byte, fixCRC bool) {
		// With fixCRC the checksum is recomputed, so mutations get past
		// it and exercise the field parsing behind it.
		if fixCRC && len(b) >= trailer {
			b = bytes.Clone(b)
			at := len(b) - trailer
			binary.LittleEndian.PutUint32(b[at:], crc32.Checksum(b[:at], castagnoli))
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		u, err := UnmarshalUpdate(b, fuzzMaxElems)
		runtime.ReadMemStats(&after)
		if got := after.TotalAlloc - before.TotalAlloc; got > allocBound(len(b)) {
			t.Fatalf("allocated %d bytes for a %d-byte input (bound %d)", got, len(b), allocBound(len(b)))
		}
		if err != nil {
			return
		}
		if u.N > fuzzMaxElems || u.Delta == nil || u.Delta.N != u.N {
			t.Fatalf("accepted N = %d, delta %+v", u.N, u.Delta)
		}
		body, err := appendBody(nil, u)
		if err != nil {
			t.Fatalf("accepted update does not re-encode: %v", err)
		}
		if !bytes.Equal(body, b[:len(b)-64]) || !bytes.Equal(u.Signature[:], b[len(b)-64:]) {
			t.Fatalf("accepted update re-encodes differently")
		}
	})
}

package secagg

import (
	"testing"
)

// FuzzServerReceive feeds arbitrary bytes to a server in each stage: it
// must refuse them without panicking (nothing but the cohort's keys can
// sign, so the fuzzer mostly exercises the framing and length checks; the
// seeds are real messages, which the mutator then bends).
func FuzzServerReceive(f *testing.F) {
	p, privs := cohort(f, 4, 16, 8, 0)
	c, _ := NewClient(p, 0, privs[0], detReader(1))
	m, _ := c.Advertise()
	f.Add(m)
	f.Add([]byte("OCSA"))
	f.Fuzz(func(t *testing.T, b []byte) {
		srv, _ := NewServer(p)
		_ = srv.Receive(b)
		_, _, _ = openMessage(p, srv.hash, StageAdvertise, b)
		_, _, _ = parseMasked(b, p)
	})
}

// FuzzDecoders: the body parsers must not panic or over-allocate on any
// input.
func FuzzDecoders(f *testing.F) {
	f.Add([]byte{1, 0, 0, 0}, 8)
	f.Add(EncodeRouted([]Routed{{From: 1, Ciphertext: make([]byte, ctSize)}}), 13)
	f.Fuzz(func(t *testing.T, b []byte, bits int) {
		_, _ = DecodeRouted(b, 10)
		_, _ = parseShareKeys(b, 10)
		_, _ = parseUnmask(b, 10)
		_, _ = parseAdvert(b)
		if bits >= 1 && bits <= 32 {
			n := len(b) * 8 / bits
			if v, err := unpack(b, n, uint(bits)); err == nil {
				if got := pack(nil, v, uint(bits)); string(got) != string(b) {
					t.Fatalf("unpack/pack not inverse")
				}
			}
		}
	})
}

// FuzzTranscript: the stored-round reader must refuse garbage cleanly,
// and what it accepts must re-encode to the same bytes.
func FuzzTranscript(f *testing.F) {
	p, _ := cohort(f, 4, 16, 8, 0)
	good, _ := (&Transcript{Params: p}).MarshalBinary()
	f.Add(good)
	f.Add(EncodeSurvivors([]int{1, 2}))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = DecodeSurvivors(b, 10)
		_, _ = DecodeAdverts(b, 10)
		var tr Transcript
		if tr.UnmarshalBinary(b) == nil {
			again, err := tr.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			var tr2 Transcript
			if err := tr2.UnmarshalBinary(again); err != nil {
				t.Fatalf("re-encoded transcript refused: %v", err)
			}
		}
	})
}

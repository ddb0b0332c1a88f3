package data

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/opencluster/opencluster/train/tokenizer"
)

// randomText is bytes of multi-byte characters, control characters and
// bytes that are not UTF-8 at all.
func randomText(rng *rand.Rand, n int) []byte {
	pieces := []string{"a", " ", "\n", "é", "中", "😀", "👩\u200d👧", "\x1b", "\u202e", "\xff", "\xe4\xbd", "\xf0\x9f\x98", "\x80"}
	var b []byte
	for len(b) < n {
		b = append(b, pieces[rng.IntN(len(pieces))]...)
	}
	return b
}

// TestTextStreamBytes streams byte ids after a prompt: the pieces join to
// Printable of the whole, and whenever the bytes so far are valid UTF-8
// everything has been returned (a character is held only while unfinished).
func TestTextStreamBytes(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 300 {
		prompt, gen := randomText(rng, rng.IntN(6)), randomText(rng, 1+rng.IntN(30))
		st := NewTextStream(ByteTokenizer{})
		got := st.Text(prompt)
		all := slices.Clone(prompt)
		for _, b := range gen {
			s, err := st.Add(int32(b))
			if err != nil {
				t.Fatal(err)
			}
			got += s
			all = append(all, b)
			if utf8.Valid(all) && got != Printable(all) {
				t.Fatalf("after %q the stream returned %q, want %q", all, got, Printable(all))
			}
		}
		rest, err := st.Flush()
		if err != nil {
			t.Fatal(err)
		}
		if got += rest; got != Printable(all) {
			t.Fatalf("%q then %q: stream gave %q, want %q", prompt, gen, got, Printable(all))
		}
	}
	if _, err := NewTextStream(ByteTokenizer{}).Add(256); err == nil || !strings.Contains(err.Error(), "256") {
		t.Errorf("Add(256) = %v, want an error naming the id", err)
	}
}

// TestTextStreamHF streams random ids of a trained byte-level BPE (single
// bytes of multi-byte characters among them) and compares with Decode.
func TestTextStreamHF(t *testing.T) {
	tok, _, err := tokenizer.Train([]string{"héllo wörld 中文 😀 emoji 👩‍👧", "the worker trains"}, 300)
	if err != nil {
		t.Fatal(err)
	}
	hf := HFTokenizer{T: tok}
	rng := rand.New(rand.NewPCG(3, 4))
	for range 300 {
		ids := make([]int32, 1+rng.IntN(30))
		for i := range ids {
			ids[i] = int32(rng.IntN(tok.VocabSize()))
		}
		st := NewTextStream(hf)
		var got string
		for _, id := range ids {
			s, err := st.Add(id)
			if err != nil {
				t.Fatal(err)
			}
			got += s
		}
		rest, _ := st.Flush()
		whole, err := hf.Decode(ids)
		if err != nil {
			t.Fatal(err)
		}
		if got+rest != Printable(whole) {
			t.Fatalf("ids %v: stream gave %q, want %q", ids, got+rest, Printable(whole))
		}
	}
}

// upperTokenizer is a tokenizer the stream knows nothing about.
type upperTokenizer struct{ ByteTokenizer }

func (upperTokenizer) Decode(ids []int32) ([]byte, error) {
	b, err := ByteTokenizer{}.Decode(ids)
	return []byte(strings.ToUpper(string(b))), err
}

func TestTextStreamOtherTokenizer(t *testing.T) {
	st := NewTextStream(upperTokenizer{})
	for _, c := range []byte("abc") {
		if s, _ := st.Add(int32(c)); s != "" {
			t.Fatalf("Add returned %q before Flush", s)
		}
	}
	if s, err := st.Flush(); s != "ABC" || err != nil {
		t.Errorf("Flush = %q, %v; want ABC", s, err)
	}
}

package tokenizer

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"
)

// streamAll feeds ids one at a time and returns every piece Add returned,
// then Flush's.
func streamAll(t *testing.T, tok *Tokenizer, ids []int32, skip bool) []string {
	t.Helper()
	st := tok.NewStream(skip)
	var pieces []string
	for _, id := range ids {
		s, err := st.Add(id)
		if err != nil {
			t.Fatalf("Add(%d): %v", id, err)
		}
		pieces = append(pieces, s)
	}
	s, err := st.Flush()
	if err != nil {
		t.Fatal(err)
	}
	return append(pieces, s)
}

// streamTexts are multilingual and emoji texts beside testdata/texts.json:
// characters the SentencePiece vocabularies lack (byte fallback) and
// emoji sequences of up to 7 code points.
var streamTexts = []string{
	"Emoji 🧑🏿‍🚀 then 👩‍👩‍👧‍👦, flags 🇺🇦🇧🇷, keycap 1️⃣, and 🫠🪿🫎 in a row",
	"𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙 and 𓀀𓀁 hieroglyphs, 𠜎𠜱𠝹 rare Han",
	"Ελληνικά, עברית, العربية, हिन्दी, ภาษาไทย, ქართული, Հայերեն, ᏣᎳᎩ",
	"混合テキスト with 한국어 and emoji 🎌🍣 at the end🍣",
	"\U0001F600",
	"a\u0301 combining, Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚̚o̙̔ͮ̇͐̇",
}

// TestStreamMatchesDecode streams the ids of every test text through every
// real tokenizer: the pieces join to Decode's text, a piece never holds half
// a character, and the text of every token that ends on a whole character is
// returned at once, not held to the end.
func TestStreamMatchesDecode(t *testing.T) {
	dir, exp := loadExpected(t)
	texts := append(append([]string(nil), exp.Texts...), streamTexts...)
	for _, name := range referenceModels {
		t.Run(name, func(t *testing.T) {
			tok := loadOnce(t, filepath.Join(dir, "models", name))
			for _, text := range texts {
				ids := tok.Encode(text, true)
				for _, skip := range []bool{false, true} {
					want, err := tok.Decode(ids, skip)
					if err != nil {
						t.Fatal(err)
					}
					pieces := streamAll(t, tok, ids, skip)
					if got := strings.Join(pieces, ""); got != want {
						t.Fatalf("%q (skip %v): stream gave %q, Decode %q", text, skip, got, want)
					}
					checkLive(t, tok, ids, skip, pieces, text)
				}
			}
		})
	}
}

// checkLive checks that after each id the stream has returned all of
// Decode(ids[:i+1]) whenever that text is whole: valid UTF-8 that no later
// token can change (the last decoded token is not a byte-fallback piece).
func checkLive(t *testing.T, tok *Tokenizer, ids []int32, skip bool, pieces []string, text string) {
	t.Helper()
	var sent strings.Builder
	last := ""
	for i, id := range ids {
		sent.WriteString(pieces[i])
		if !(skip && tok.IsSpecial(id)) {
			last, _ = tok.Token(id)
		}
		prefix, _ := tok.Decode(ids[:i+1], skip)
		if strings.ContainsRune(prefix, utf8.RuneError) || isByteToken(last) {
			continue
		}
		if sent.String() != prefix {
			t.Fatalf("%q (skip %v): after token %d (%q) the stream returned %q, want %q", text, skip, i, last, sent.String(), prefix)
		}
	}
}

// TestStreamRandomIDs streams random id sequences, weighted towards byte
// pieces and special tokens so that runs are cut, invalid and unfinished,
// through every real tokenizer: the pieces always join to Decode's text.
func TestStreamRandomIDs(t *testing.T) {
	dir := referenceDir(t)
	for _, name := range referenceModels {
		t.Run(name, func(t *testing.T) {
			tok := loadOnce(t, filepath.Join(dir, "models", name))
			checkRandomStreams(t, tok, 300)
		})
	}
}

func checkRandomStreams(t *testing.T, tok *Tokenizer, n int) {
	t.Helper()
	var bytePieces, special []int32
	for id := int32(0); int(id) < tok.VocabSize(); id++ {
		s, ok := tok.Token(id)
		switch {
		case !ok:
		case tok.IsSpecial(id):
			special = append(special, id)
		case isByteToken(s):
			bytePieces = append(bytePieces, id)
		case len(appendByteLevel(nil, s)) == 1 && utf8.RuneCountInString(s) == 1:
			bytePieces = append(bytePieces, id) // one byte-level byte
		}
	}
	rng := rand.New(rand.NewPCG(7, uint64(tok.VocabSize())))
	pick := func() int32 {
		switch r := rng.IntN(10); {
		case r < 5 && len(bytePieces) > 0:
			return bytePieces[rng.IntN(len(bytePieces))]
		case r == 5 && len(special) > 0:
			return special[rng.IntN(len(special))]
		}
		for {
			id := int32(rng.IntN(tok.VocabSize()))
			if _, ok := tok.Token(id); ok {
				return id
			}
		}
	}
	for i := 0; i < n; i++ {
		ids := make([]int32, 1+rng.IntN(40))
		for j := range ids {
			ids[j] = pick()
		}
		for _, skip := range []bool{false, true} {
			want, _ := tok.Decode(ids, skip)
			if got := strings.Join(streamAll(t, tok, ids, skip), ""); got != want {
				t.Fatalf("ids %v (skip %v): stream gave %q, Decode %q", ids, skip, got, want)
			}
		}
	}
}

// TestStreamDecoderChains covers decoder chains the real files do not use:
// no decoder, Strip at the end, Metaspace per token, a Replace on joined
// text (which no cut is safe for: everything waits for Flush).
func TestStreamDecoderChains(t *testing.T) {
	var vocab []string
	for b := 0; b < 256; b++ {
		vocab = append(vocab, fmt.Sprintf("<0x%02X>", b))
	}
	vocab = append(vocab, "▁", "▁▁", "a", "b", "ab", "▁a", " ", "  ", "é", "▁b▁", "")
	var sb strings.Builder
	for i, v := range vocab {
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, "%q:%d", v, i)
	}
	model := `"model":{"type":"BPE","vocab":{` + sb.String() + `},"merges":[],"byte_fallback":true}`
	added := fmt.Sprintf(`"added_tokens":[{"id":%d,"content":"<s>","special":true},{"id":%d,"content":"<x>","special":false}]`, len(vocab), len(vocab)+1)
	for _, c := range []struct {
		name, decoder string
		whole         bool
	}{
		{"none", `null`, false},
		{"strip both ends", `{"type":"Sequence","decoders":[{"type":"Replace","pattern":{"String":"▁"},"content":" "},{"type":"ByteFallback"},{"type":"Fuse"},{"type":"Strip","content":" ","start":2,"stop":2}]}`, false},
		{"metaspace per token", `{"type":"Sequence","decoders":[{"type":"Metaspace","replacement":"▁","prepend_scheme":"always","split":true},{"type":"ByteFallback"},{"type":"Fuse"}]}`, false},
		{"strip per token", `{"type":"Sequence","decoders":[{"type":"Strip","content":"▁","start":1,"stop":1},{"type":"ByteFallback"}]}`, false},
		{"byte level", `{"type":"ByteLevel"}`, false},
		{"replace after fuse", `{"type":"Sequence","decoders":[{"type":"ByteFallback"},{"type":"Fuse"},{"type":"Replace","pattern":{"String":"ab"},"content":"X"}]}`, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			tok, err := Parse([]byte(`{` + model + `,` + added + `,"decoder":` + c.decoder + `}`))
			if err != nil {
				t.Fatal(err)
			}
			if got := tok.NewStream(false).whole; got != c.whole {
				t.Errorf("whole = %v, want %v", got, c.whole)
			}
			checkRandomStreams(t, tok, 2000)
		})
	}
}

func TestStreamErrors(t *testing.T) {
	tok, err := Parse([]byte(`{"model":{"type":"BPE","vocab":{"a":0,"b":1},"merges":[]},"decoder":{"type":"Fuse"}}`))
	if err != nil {
		t.Fatal(err)
	}
	st := tok.NewStream(false)
	if _, err := st.Add(7); err == nil || !strings.Contains(err.Error(), "id 7") {
		t.Errorf("Add(7) = %v, want an error naming id 7", err)
	}
	if s, err := st.Add(1); s != "b" || err != nil {
		t.Errorf("Add(1) = %q, %v", s, err)
	}
	st.Flush()
	if _, err := st.Add(0); err == nil {
		t.Error("Add after Flush succeeded")
	}
}

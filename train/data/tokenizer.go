// Package data turns a directory of the user's text files into training and
// validation batches: a tokenizer, a deterministic train/validation split, and
// a streaming sampler that reads only the windows it needs.
package data

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/opencluster/opencluster/train/tokenizer"
)

// Tokenizer maps text to token ids and back. The byte-level tokenizer is the
// built-in default; the interface leaves room for a BPE one later.
type Tokenizer interface {
	// Encode returns the token ids of text.
	Encode(text []byte) []int32
	// Decode returns the bytes of ids. Ids outside the vocabulary are an error.
	Decode(ids []int32) ([]byte, error)
	// VocabSize is the number of distinct ids.
	VocabSize() int
}

// ByteTokenizer is the identity tokenizer over bytes: vocabulary 256, one
// token per byte, every byte sequence representable. The streaming loader
// relies on that one-to-one mapping to read token windows straight from disk.
type ByteTokenizer struct{}

// Encode returns one id per byte.
func (ByteTokenizer) Encode(text []byte) []int32 {
	ids := make([]int32, len(text))
	for i, b := range text {
		ids[i] = int32(b)
	}
	return ids
}

// Decode returns the bytes of ids; an id outside [0,256) is an error naming
// its position.
func (ByteTokenizer) Decode(ids []int32) ([]byte, error) {
	out := make([]byte, len(ids))
	for i, id := range ids {
		if id < 0 || id > 255 {
			return nil, fmt.Errorf("decode: token %d at position %d is outside the byte vocabulary [0,256)", id, i)
		}
		out[i] = byte(id)
	}
	return out, nil
}

// VocabSize is 256.
func (ByteTokenizer) VocabSize() int { return 256 }

// HFTokenizer adapts a Hugging Face tokenizer: Encode adds the special
// tokens the tokenizer's post-processor adds (BOS), as a prompt needs;
// Decode leaves special tokens out.
type HFTokenizer struct{ T *tokenizer.Tokenizer }

// Encode returns the ids of text, BOS included where the model uses one.
// Invalid UTF-8 is encoded as U+FFFD, as text from a terminal would be.
func (h HFTokenizer) Encode(text []byte) []int32 {
	return h.T.Encode(strings.ToValidUTF8(string(text), "\uFFFD"), true)
}

// Decode returns the text of ids without special tokens.
func (h HFTokenizer) Decode(ids []int32) ([]byte, error) {
	s, err := h.T.Decode(ids, true)
	return []byte(s), err
}

// VocabSize is the tokenizer's.
func (h HFTokenizer) VocabSize() int { return h.T.VocabSize() }

// Printable renders bytes a model produced so they are safe to print on a
// terminal: valid UTF-8 text, newlines and tabs pass through; control
// characters, invisible format characters (such as bidirectional overrides)
// and bytes that are not valid UTF-8 become \xNN or \uNNNN escapes.
func Printable(b []byte) string {
	var sb strings.Builder
	for len(b) > 0 {
		r, size := utf8.DecodeRune(b)
		switch {
		case r == utf8.RuneError && size <= 1:
			fmt.Fprintf(&sb, `\x%02x`, b[0])
		case r == '\n' || r == '\t':
			sb.WriteRune(r)
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || unicode.Is(unicode.Cf, r):
			if r < 0x80 {
				fmt.Fprintf(&sb, `\x%02x`, r)
			} else {
				fmt.Fprintf(&sb, `\u%04x`, r)
			}
		default:
			sb.Write(b[:size])
		}
		b = b[size:]
	}
	return sb.String()
}

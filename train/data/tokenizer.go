// Package data turns a directory of the user's text files into training and
// validation batches: a tokenizer, a deterministic train/validation split, and
// a streaming sampler that reads only the windows it needs.
package data

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
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

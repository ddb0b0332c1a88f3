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

// TextStream turns generated ids into printable text as they are sampled:
// the concatenation of what Text, Add and Flush return is Printable of the
// given bytes followed by the decoded ids. A character split over several
// tokens (byte-fallback or byte-level pieces of one UTF-8 sequence) is held
// back until it is complete, so it is never printed as escapes of its
// halves.
type TextStream struct {
	add     func(id int32) ([]byte, error)
	flush   func() ([]byte, error)
	pending []byte // the end of the bytes, inside a UTF-8 sequence
}

// NewTextStream starts a stream for ids of tok. A Hugging Face tokenizer
// decodes as it goes (special tokens left out, as HFTokenizer.Decode does);
// the byte tokenizer passes bytes on; another tokenizer decodes every id at
// Flush.
func NewTextStream(tok Tokenizer) *TextStream {
	switch t := tok.(type) {
	case HFTokenizer:
		st := t.T.NewStream(true)
		return &TextStream{
			add: func(id int32) ([]byte, error) {
				s, err := st.Add(id)
				return []byte(s), err
			},
			flush: func() ([]byte, error) {
				s, err := st.Flush()
				return []byte(s), err
			},
		}
	case ByteTokenizer:
		return &TextStream{add: func(id int32) ([]byte, error) {
			if id < 0 || id > 255 {
				return nil, fmt.Errorf("decode: token %d is outside the byte vocabulary [0,256)", id)
			}
			return []byte{byte(id)}, nil
		}}
	}
	var ids []int32
	return &TextStream{
		add:   func(id int32) ([]byte, error) { ids = append(ids, id); return nil, nil },
		flush: func() ([]byte, error) { return tok.Decode(ids) },
	}
}

// Text passes bytes that are not token ids (the prompt) through the same
// printable stage and returns what can be printed now.
func (s *TextStream) Text(b []byte) string {
	s.pending = append(s.pending, b...)
	n := len(s.pending)
	if !tokenizer.CompleteUTF8(s.pending) {
		// Hold the unfinished sequence from its first byte on: no
		// decoder reads a first byte as part of what came before.
		for n--; !utf8.RuneStart(s.pending[n]); n-- {
		}
	}
	out := Printable(s.pending[:n])
	s.pending = append(s.pending[:0], s.pending[n:]...)
	return out
}

// Add takes the next generated id and returns the text it completes.
func (s *TextStream) Add(id int32) (string, error) {
	b, err := s.add(id)
	if err != nil {
		return "", err
	}
	return s.Text(b), nil
}

// Flush returns the rest of the text; bytes of an unfinished sequence are
// escaped, as Printable escapes them.
func (s *TextStream) Flush() (string, error) {
	var b []byte
	if s.flush != nil {
		var err error
		if b, err = s.flush(); err != nil {
			return "", err
		}
	}
	out := Printable(append(s.pending, b...))
	s.pending = nil
	return out, nil
}

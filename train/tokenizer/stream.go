package tokenizer

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Stream decodes ids one at a time, as a model generates them, and returns
// only text that is final: the concatenation of everything Add and Flush
// return equals Decode of all the ids. Text that a later token could still
// change is held back: a run of <0xXX> byte-fallback tokens (a longer run
// may turn U+FFFD replacements into a character, or a character into
// replacements), and byte-level bytes that end inside a UTF-8 sequence. So
// a character split over several tokens is never returned in halves.
//
// Each call decodes only a short window (the held tokens and a little
// context before them), so a long generation costs linear time.
type Stream struct {
	t    *Tokenizer
	skip bool
	// What the decoder chain joins across tokens, and whether it can be cut
	// at all (whole: every token waits for Flush).
	byteLevel, byteFallback, whole bool

	win     []string // context tokens, then tokens whose text is not all returned
	ctx     int      // leading entries of win that are context
	ctxText string   // decode(win[:ctx]) on its own
	sent    string   // text after ctxText already returned
	done    bool
}

// NewStream starts decoding a sequence of ids; skipSpecialTokens leaves out
// added tokens marked special, as Decode does.
func (t *Tokenizer) NewStream(skipSpecialTokens bool) *Stream {
	s := &Stream{t: t, skip: skipSpecialTokens}
	joined := false
	var walk func(d decoder)
	walk = func(d decoder) {
		switch d := d.(type) {
		case decSequence:
			for _, e := range d {
				walk(e)
			}
		case byteLevelDec:
			s.byteLevel, joined = true, true
		case byteFallbackDec:
			s.byteFallback, joined = true, true
		case fuseDec:
			joined = true
		case replaceDec:
			// On joined text a pattern of several characters could match
			// across two tokens, so no cut is safe.
			if joined && utf8.RuneCountInString(d.from) != 1 {
				s.whole = true
			}
		}
	}
	if t.decoder != nil {
		walk(t.decoder)
	}
	return s
}

// Add takes the next id and returns the text that became final with it
// (often "", while a character is incomplete). An id outside the vocabulary
// is an error naming it.
func (s *Stream) Add(id int32) (string, error) {
	if s.done {
		return "", errors.New("tokenizer: stream: Add after Flush")
	}
	tok, ok := s.t.Token(id)
	if !ok {
		return "", fmt.Errorf("tokenizer: stream: id %d is not in the vocabulary (size %d)", id, s.t.vocabSize)
	}
	if s.skip && s.t.IsSpecial(id) {
		return "", nil
	}
	s.win = append(s.win, tok)
	k := s.cut()
	if k == s.ctx {
		return "", nil
	}
	out, err := s.emit(k)
	if err != nil {
		return "", err
	}
	s.anchor(k)
	return out, nil
}

// Flush returns the rest of the text (incomplete sequences decoded as Decode
// decodes them) and ends the stream.
func (s *Stream) Flush() (string, error) {
	if s.done {
		return "", nil
	}
	s.done = true
	return s.emit(len(s.win))
}

// emit returns the text of win[:k] not yet returned.
func (s *Stream) emit(k int) (string, error) {
	full := s.decode(s.win[:k])
	if !strings.HasPrefix(full, s.ctxText) || !strings.HasPrefix(full[len(s.ctxText):], s.sent) {
		// The cut rules below make this impossible for the decoders this
		// package implements; say so rather than print wrong text.
		return "", fmt.Errorf("tokenizer: stream: the decoded text of %q changed after it was returned", s.win[:k])
	}
	text := full[len(s.ctxText):]
	out := text[len(s.sent):]
	s.sent = text
	return out, nil
}

// anchor drops the tokens before boundary k once their text is returned,
// keeping the fewest tokens before k whose text is not empty as context:
// decoded after context, the next tokens come out as they do in the whole
// sequence (no leading space stripped, no first-token rule of Metaspace).
func (s *Stream) anchor(k int) {
	for c := 1; c <= k; c++ {
		if text := s.decode(s.win[k-c : k]); text != "" {
			s.win = append(s.win[:0:0], s.win[k-c:]...)
			s.ctx, s.ctxText, s.sent = c, text, ""
			return
		}
	}
}

// cut returns the last boundary k in (ctx, len(win)] before which the text
// is final, or ctx when there is none.
func (s *Stream) cut() int {
	if s.whole {
		return s.ctx
	}
	for k := len(s.win); k > s.ctx; k-- {
		if s.clean(k) {
			return k
		}
	}
	return s.ctx
}

// clean reports whether the decoder chain can be cut before token k: no
// byte-fallback run goes on across it (at the end: the last token is not a
// byte token, as the next one might be), and the byte-level bytes before it
// end on a whole UTF-8 sequence.
func (s *Stream) clean(k int) bool {
	if s.byteFallback {
		_, before := parseByteToken(s.win[k-1])
		if before && (k == len(s.win) || isByteToken(s.win[k])) {
			return false
		}
	}
	if s.byteLevel {
		var tail []byte // the last (up to) 4 bytes before k
		for i := k - 1; i >= 0 && len(tail) < utf8.UTFMax; i-- {
			tail = append(appendByteLevel(nil, s.win[i]), tail...)
		}
		return CompleteUTF8(tail)
	}
	return true
}

func isByteToken(t string) bool {
	_, ok := parseByteToken(t)
	return ok
}

// CompleteUTF8 reports whether no byte appended to b could join its last
// bytes into one character: b does not end inside a valid but unfinished
// UTF-8 sequence (an invalid byte is replaced on its own whatever follows).
// Text cut there decodes, piece by piece, as it does whole.
func CompleteUTF8(b []byte) bool {
	for i := len(b) - 1; i >= 0 && i >= len(b)-utf8.UTFMax; i-- {
		if !utf8.RuneStart(b[i]) {
			continue
		}
		return utf8.FullRune(b[i:])
	}
	return true
}

// decode decodes token strings as Decode does (on a copy: decoders rewrite
// their input).
func (s *Stream) decode(tokens []string) string {
	return s.t.decodeStrings(append([]string(nil), tokens...))
}

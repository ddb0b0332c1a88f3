package tokenizer

import (
	"encoding/json"
	"strings"
	"unicode/utf8"
)

// decoder turns a list of token strings back into text pieces, as the
// tokenizers library's decode_chain does; the pieces are then concatenated.
type decoder interface {
	decode(tokens []string) []string
}

type decSequence []decoder

func (s decSequence) decode(tokens []string) []string {
	for _, d := range s {
		tokens = d.decode(tokens)
	}
	return tokens
}

// byteLevelDec maps GPT-2's printable characters back to bytes; a token
// holding any other character contributes its own UTF-8 bytes.
type byteLevelDec struct{}

func (byteLevelDec) decode(tokens []string) []string {
	var buf []byte
	for _, t := range tokens {
		buf = appendByteLevel(buf, t)
	}
	return []string{lossyUTF8(buf)}
}

// appendByteLevel appends the bytes token t stands for: each character
// through GPT-2's table, or t's own UTF-8 when a character is not in it.
func appendByteLevel(buf []byte, t string) []byte {
	start := len(buf)
	for _, r := range t {
		b, found := runeToByte[r]
		if !found {
			return append(buf[:start], t...)
		}
		buf = append(buf, b)
	}
	return buf
}

// byteFallbackDec turns runs of <0xXX> tokens into the text they spell, or
// one U+FFFD per byte when the run is not valid UTF-8.
type byteFallbackDec struct{}

func (byteFallbackDec) decode(tokens []string) []string {
	out := make([]string, 0, len(tokens))
	var pending []byte
	flush := func() {
		if len(pending) == 0 {
			return
		}
		if utf8.Valid(pending) {
			out = append(out, string(pending))
		} else {
			for range pending {
				out = append(out, "\uFFFD")
			}
		}
		pending = pending[:0]
	}
	for _, t := range tokens {
		if b, ok := parseByteToken(t); ok {
			pending = append(pending, b)
			continue
		}
		flush()
		out = append(out, t)
	}
	flush()
	return out
}

func parseByteToken(t string) (byte, bool) {
	if len(t) != 6 || !strings.HasPrefix(t, "<0x") || t[5] != '>' {
		return 0, false
	}
	var v byte
	for _, c := range []byte(t[3:5]) {
		v <<= 4
		switch {
		case c >= '0' && c <= '9':
			v |= c - '0'
		case c >= 'A' && c <= 'F':
			v |= c - 'A' + 10
		case c >= 'a' && c <= 'f':
			v |= c - 'a' + 10
		default:
			return 0, false
		}
	}
	return v, true
}

// fuseDec joins every token into one.
type fuseDec struct{}

func (fuseDec) decode(tokens []string) []string { return []string{strings.Join(tokens, "")} }

// replaceDec substitutes a literal in every token.
type replaceDec struct{ from, to string }

func (r replaceDec) decode(tokens []string) []string {
	for i, t := range tokens {
		tokens[i] = strings.ReplaceAll(t, r.from, r.to)
	}
	return tokens
}

// stripDec removes up to start characters equal to content from the left of
// every token and up to stop from the right.
type stripDec struct {
	content     rune
	start, stop int
}

func (s stripDec) decode(tokens []string) []string {
	for i, t := range tokens {
		for n := 0; n < s.start; n++ {
			r, size := utf8.DecodeRuneInString(t)
			if size == 0 || r != s.content {
				break
			}
			t = t[size:]
		}
		for n := 0; n < s.stop; n++ {
			r, size := utf8.DecodeLastRuneInString(t)
			if size == 0 || r != s.content {
				break
			}
			t = t[:len(t)-size]
		}
		tokens[i] = t
	}
	return tokens
}

// metaspaceDec turns ▁ back into spaces; in the first token they are
// dropped unless prepend_scheme is "never".
type metaspaceDec struct {
	replacement rune
	scheme      string
}

func (m metaspaceDec) decode(tokens []string) []string {
	for i, t := range tokens {
		var sb strings.Builder
		for _, r := range t {
			switch {
			case r != m.replacement:
				sb.WriteRune(r)
			case i == 0 && m.scheme != "never":
			default:
				sb.WriteByte(' ')
			}
		}
		tokens[i] = sb.String()
	}
	return tokens
}

func parseDecoder(raw json.RawMessage, path string) (decoder, error) {
	kind, err := typed(raw, path)
	if err != nil {
		return nil, err
	}
	switch kind {
	case "Sequence":
		seq, err := parseList(raw, path, "decoders", parseDecoder)
		return decSequence(seq), err
	case "ByteLevel":
		return byteLevelDec{}, nil
	case "ByteFallback":
		return byteFallbackDec{}, nil
	case "Fuse":
		return fuseDec{}, nil
	case "Replace":
		var v struct {
			Pattern patternJSON `json:"pattern"`
			Content string      `json:"content"`
		}
		if err := decodeInto(raw, path, &v); err != nil {
			return nil, err
		}
		if v.Pattern.String == nil || v.Pattern.Regex != nil {
			return nil, errAt(path+".pattern", `only {"String": ...} patterns are supported in decoders`)
		}
		return replaceDec{from: *v.Pattern.String, to: v.Content}, nil
	case "Strip":
		var v struct {
			Content string `json:"content"`
			Start   int    `json:"start"`
			Stop    int    `json:"stop"`
		}
		if err := decodeInto(raw, path, &v); err != nil {
			return nil, err
		}
		if utf8.RuneCountInString(v.Content) != 1 {
			return nil, errAt(path+".content", "%q must be one character", v.Content)
		}
		r, _ := utf8.DecodeRuneInString(v.Content)
		return stripDec{content: r, start: v.Start, stop: v.Stop}, nil
	case "Metaspace":
		m, err := parseMetaspace(raw, path)
		if err != nil {
			return nil, err
		}
		r, _ := utf8.DecodeRuneInString(m.replacement)
		return metaspaceDec{replacement: r, scheme: m.scheme}, nil
	}
	return nil, unsupported(path+".type", kind)
}

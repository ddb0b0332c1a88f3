package tokenizer

import (
	"encoding/json"
	"strings"
	"unicode"
	"unicode/utf8"
)

// piece is a span of normalized text on its way to the model. atStart marks
// the piece that begins at offset 0 of the input (Metaspace's "first").
type piece struct {
	text    string
	atStart bool
}

// preTokenizer splits pieces into words (and may rewrite them, as ByteLevel
// and Metaspace do).
type preTokenizer interface {
	preTokenize(in []piece) []piece
}

type preSequence []preTokenizer

func (s preSequence) preTokenize(in []piece) []piece {
	for _, p := range s {
		in = p.preTokenize(in)
	}
	return in
}

// splitBehavior is what happens to the delimiters a Split pattern matches.
type splitBehavior int

const (
	removed splitBehavior = iota
	isolated
	mergedWithPrevious
	mergedWithNext
	contiguous
)

var splitBehaviors = map[string]splitBehavior{
	"Removed": removed, "Isolated": isolated, "MergedWithPrevious": mergedWithPrevious,
	"MergedWithNext": mergedWithNext, "Contiguous": contiguous,
}

// span is a byte range of a piece and whether it is a delimiter.
type span struct {
	start, end int
	match      bool
}

// splitBy cuts s at the given delimiter ranges as the tokenizers library's
// NormalizedString.split does, and returns the non-empty parts.
func splitBy(s string, matches [][]int, invert bool, behavior splitBehavior) []span {
	spans := make([]span, 0, 2*len(matches)+1)
	prev := 0
	for _, m := range matches {
		if prev != m[0] {
			spans = append(spans, span{prev, m[0], invert})
		}
		spans = append(spans, span{m[0], m[1], !invert})
		prev = m[1]
	}
	if prev != len(s) {
		spans = append(spans, span{prev, len(s), invert})
	}
	var out []span
	switch behavior {
	case isolated:
		out = spans
	case removed:
		for _, sp := range spans {
			if !sp.match {
				out = append(out, sp)
			}
		}
	case contiguous:
		prevMatch := false
		for _, sp := range spans {
			if sp.match == prevMatch && len(out) > 0 {
				out[len(out)-1].end = sp.end
			} else {
				out = append(out, sp)
			}
			prevMatch = sp.match
		}
	case mergedWithPrevious:
		prevMatch := false
		for _, sp := range spans {
			if sp.match && !prevMatch && len(out) > 0 {
				out[len(out)-1].end = sp.end
			} else {
				out = append(out, sp)
			}
			prevMatch = sp.match
		}
	case mergedWithNext:
		prevMatch := false
		for i := len(spans) - 1; i >= 0; i-- {
			sp := spans[i]
			if sp.match && !prevMatch && len(out) > 0 {
				out[len(out)-1].start = sp.start
			} else {
				out = append(out, sp)
			}
			prevMatch = sp.match
		}
		for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
			out[i], out[j] = out[j], out[i]
		}
	}
	parts := out[:0]
	for _, sp := range out {
		if sp.end > sp.start {
			parts = append(parts, sp)
		}
	}
	return parts
}

// splitPieces applies split (which may rewrite the text it cuts) to every
// piece; atStart stays on the part at offset 0 of a piece that had it.
func splitPieces(in []piece, split func(string) (string, []span)) []piece {
	out := make([]piece, 0, len(in))
	for _, p := range in {
		s, spans := split(p.text)
		for _, sp := range spans {
			out = append(out, piece{text: s[sp.start:sp.end], atStart: p.atStart && sp.start == 0})
		}
	}
	return out
}

func whole(s string) (string, []span) {
	if s == "" {
		return s, nil
	}
	return s, []span{{0, len(s), false}}
}

// splitPre is the Split pre-tokenizer.
type splitPre struct {
	literal  string
	re       *pattern
	behavior splitBehavior
	invert   bool
}

func (sp *splitPre) preTokenize(in []piece) []piece {
	return splitPieces(in, func(s string) (string, []span) {
		return s, splitBy(s, sp.matches(s), sp.invert, sp.behavior)
	})
}

func (sp *splitPre) matches(s string) [][]int {
	if sp.re != nil {
		return sp.re.findAll(s)
	}
	if sp.literal == "" {
		return nil
	}
	var m [][]int
	for off := 0; ; {
		i := strings.Index(s[off:], sp.literal)
		if i < 0 {
			return m
		}
		m = append(m, []int{off + i, off + i + len(sp.literal)})
		off += i + len(sp.literal)
	}
}

// gpt2Pattern is the split ByteLevel applies when use_regex is set.
const gpt2Pattern = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`

// byteLevelPre maps every byte to a printable character (GPT-2's table),
// after an optional leading space and an optional GPT-2 split.
type byteLevelPre struct {
	addPrefixSpace bool
	re             *pattern // nil unless use_regex
}

func (b *byteLevelPre) preTokenize(in []piece) []piece {
	if b.addPrefixSpace || b.re != nil {
		in = splitPieces(in, func(s string) (string, []span) {
			if b.addPrefixSpace && !strings.HasPrefix(s, " ") {
				s = " " + s
			}
			if b.re == nil {
				return whole(s)
			}
			return s, splitBy(s, b.re.findAll(s), false, isolated)
		})
	}
	for i := range in {
		in[i].text = byteLevelEncode(in[i].text)
	}
	return in
}

// metaspacePre replaces spaces with the replacement character (▁), adds one
// in front as prepend_scheme says, and optionally splits before each.
type metaspacePre struct {
	replacement string
	scheme      string // "always", "first" or "never"
	split       bool
}

func (m *metaspacePre) preTokenize(in []piece) []piece {
	out := make([]piece, 0, len(in))
	for _, p := range in {
		s := strings.ReplaceAll(p.text, " ", m.replacement)
		if !strings.HasPrefix(s, m.replacement) && (m.scheme == "always" || (m.scheme == "first" && p.atStart)) {
			s = m.replacement + s
		}
		if !m.split {
			if s != "" {
				out = append(out, piece{text: s, atStart: p.atStart})
			}
			continue
		}
		var idx [][]int
		for off := 0; off < len(s); {
			i := strings.Index(s[off:], m.replacement)
			if i < 0 {
				break
			}
			idx = append(idx, []int{off + i, off + i + len(m.replacement)})
			off += i + len(m.replacement)
		}
		for _, sp := range splitBy(s, idx, false, mergedWithNext) {
			out = append(out, piece{text: s[sp.start:sp.end], atStart: p.atStart && sp.start == 0})
		}
	}
	return out
}

// digitsPre splits digits (Unicode numbers) from the rest: each one on its
// own (individual_digits, as SmolLM does) or runs of them together.
type digitsPre struct{ individual bool }

func (d digitsPre) preTokenize(in []piece) []piece {
	behavior := contiguous
	if d.individual {
		behavior = isolated
	}
	return splitPieces(in, func(s string) (string, []span) {
		var m [][]int
		for i, r := range s {
			if unicode.IsNumber(r) {
				m = append(m, []int{i, i + utf8.RuneLen(r)})
			}
		}
		return s, splitBy(s, m, false, behavior)
	})
}

func parsePreTokenizer(raw json.RawMessage, path string) (preTokenizer, error) {
	kind, err := typed(raw, path)
	if err != nil {
		return nil, err
	}
	switch kind {
	case "Sequence":
		seq, err := parseList(raw, path, "pretokenizers", parsePreTokenizer)
		return preSequence(seq), err
	case "Split":
		var v struct {
			Pattern  patternJSON `json:"pattern"`
			Behavior string      `json:"behavior"`
			Invert   bool        `json:"invert"`
		}
		if err := decodeInto(raw, path, &v); err != nil {
			return nil, err
		}
		b, ok := splitBehaviors[v.Behavior]
		if !ok {
			return nil, unsupported(path+".behavior", v.Behavior)
		}
		lit, re, err := compilePattern(v.Pattern, path+".pattern")
		if err != nil {
			return nil, err
		}
		return &splitPre{literal: lit, re: re, behavior: b, invert: v.Invert}, nil
	case "ByteLevel":
		var v struct {
			AddPrefixSpace bool  `json:"add_prefix_space"`
			UseRegex       *bool `json:"use_regex"`
		}
		if err := decodeInto(raw, path, &v); err != nil {
			return nil, err
		}
		b := &byteLevelPre{addPrefixSpace: v.AddPrefixSpace}
		if v.UseRegex == nil || *v.UseRegex {
			b.re = gpt2Regex()
		}
		return b, nil
	case "Metaspace":
		m, err := parseMetaspace(raw, path)
		if err != nil {
			return nil, err
		}
		return m, nil
	case "Digits":
		var v struct {
			Individual bool `json:"individual_digits"`
		}
		if err := decodeInto(raw, path, &v); err != nil {
			return nil, err
		}
		return digitsPre{individual: v.Individual}, nil
	}
	return nil, unsupported(path+".type", kind)
}

func parseMetaspace(raw json.RawMessage, path string) (*metaspacePre, error) {
	var v struct {
		Replacement    string  `json:"replacement"`
		PrependScheme  *string `json:"prepend_scheme"`
		AddPrefixSpace *bool   `json:"add_prefix_space"`
		Split          *bool   `json:"split"`
	}
	if err := decodeInto(raw, path, &v); err != nil {
		return nil, err
	}
	if utf8.RuneCountInString(v.Replacement) != 1 {
		return nil, errAt(path+".replacement", "%q must be one character", v.Replacement)
	}
	m := &metaspacePre{replacement: v.Replacement, scheme: "always", split: true}
	if v.Split != nil {
		m.split = *v.Split
	}
	switch {
	case v.PrependScheme != nil:
		switch *v.PrependScheme {
		case "always", "first", "never":
			m.scheme = *v.PrependScheme
		default:
			return nil, unsupported(path+".prepend_scheme", *v.PrependScheme)
		}
	case v.AddPrefixSpace != nil && !*v.AddPrefixSpace:
		m.scheme = "never"
	}
	return m, nil
}

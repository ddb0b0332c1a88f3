package tokenizer

import (
	"encoding/json"
	"strings"
	"unicode"

	"golang.org/x/text/unicode/norm"
)

// normalizer rewrites a piece of text before pre-tokenization.
type normalizer interface {
	normalize(s string) string
}

type normSequence []normalizer

func (n normSequence) normalize(s string) string {
	for _, x := range n {
		s = x.normalize(s)
	}
	return s
}

type unicodeNorm struct{ form norm.Form }

func (n unicodeNorm) normalize(s string) string { return n.form.String(s) }

// prepend adds its text in front of every non-empty piece.
type prepend string

func (p prepend) normalize(s string) string {
	if s == "" {
		return s
	}
	return string(p) + s
}

// replace substitutes a literal string or a regular expression.
type replace struct {
	literal string
	re      *pattern
	content string
}

func (r replace) normalize(s string) string {
	if r.re == nil {
		if r.literal == "" {
			return s
		}
		return strings.ReplaceAll(s, r.literal, r.content)
	}
	var sb strings.Builder
	prev := 0
	for _, m := range r.re.findAll(s) {
		sb.WriteString(s[prev:m[0]])
		sb.WriteString(r.content)
		prev = m[1]
	}
	sb.WriteString(s[prev:])
	return sb.String()
}

type lowercase struct{}

func (lowercase) normalize(s string) string { return strings.ToLower(s) }

type strip struct{ left, right bool }

func (st strip) normalize(s string) string {
	if st.left {
		s = strings.TrimLeftFunc(s, unicode.IsSpace)
	}
	if st.right {
		s = strings.TrimRightFunc(s, unicode.IsSpace)
	}
	return s
}

// patternJSON is the {"String": ...} or {"Regex": ...} object of Split and
// Replace.
type patternJSON struct {
	String *string `json:"String"`
	Regex  *string `json:"Regex"`
}

func parseNormalizer(raw json.RawMessage, path string) (normalizer, error) {
	kind, err := typed(raw, path)
	if err != nil {
		return nil, err
	}
	switch kind {
	case "Sequence":
		seq, err := parseList(raw, path, "normalizers", parseNormalizer)
		return normSequence(seq), err
	case "NFC":
		return unicodeNorm{norm.NFC}, nil
	case "NFD":
		return unicodeNorm{norm.NFD}, nil
	case "NFKC":
		return unicodeNorm{norm.NFKC}, nil
	case "NFKD":
		return unicodeNorm{norm.NFKD}, nil
	case "Lowercase":
		return lowercase{}, nil
	case "Prepend":
		var v struct {
			Prepend string `json:"prepend"`
		}
		if err := decodeInto(raw, path, &v); err != nil {
			return nil, err
		}
		return prepend(v.Prepend), nil
	case "Strip":
		var v struct {
			Left  bool `json:"strip_left"`
			Right bool `json:"strip_right"`
		}
		if err := decodeInto(raw, path, &v); err != nil {
			return nil, err
		}
		return strip{v.Left, v.Right}, nil
	case "Replace":
		var v struct {
			Pattern patternJSON `json:"pattern"`
			Content string      `json:"content"`
		}
		if err := decodeInto(raw, path, &v); err != nil {
			return nil, err
		}
		lit, re, err := compilePattern(v.Pattern, path+".pattern")
		if err != nil {
			return nil, err
		}
		return replace{literal: lit, re: re, content: v.Content}, nil
	}
	return nil, unsupported(path+".type", kind)
}

// compilePattern returns a literal string or a compiled regular expression.
func compilePattern(p patternJSON, path string) (string, *pattern, error) {
	switch {
	case p.String != nil && p.Regex == nil:
		return *p.String, nil, nil
	case p.Regex != nil && p.String == nil:
		re, err := compileRegex(*p.Regex)
		if err != nil {
			return "", nil, errAt(path+".Regex", "%v", err)
		}
		return "", re, nil
	}
	return "", nil, errAt(path, `want exactly one of "String" or "Regex"`)
}

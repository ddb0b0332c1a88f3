package tokenizer

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// Hand-written matchers for the split patterns of GPT-2, Llama 3 and Qwen2,
// which most byte-level tokenizers use. They return exactly the matches the
// regular expressions give (FuzzSplitters compares them with regexp2 on
// arbitrary text) several times faster; any other pattern runs on regexp2.

// qwenPattern is Llama 3's pattern with single digits (Qwen2, Qwen2.5, Qwen3).
const qwenPattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`

// fastSplitter returns the hand-written matcher for a known pattern.
func fastSplitter(expr string) func(string) [][]int {
	switch expr {
	case Llama3Pattern:
		return func(s string) [][]int { return splitLlama3(s, 3) }
	case qwenPattern:
		return func(s string) [][]int { return splitLlama3(s, 1) }
	case gpt2Pattern:
		return splitGPT2
	}
	return nil
}

type runeClass uint8

const (
	classOther  runeClass = iota // not whitespace, letter or number
	classLetter                  // \p{L}
	classNumber                  // \p{N}
	classSpace                   // \s
)

func classOf(r rune) runeClass {
	if r < utf8.RuneSelf {
		switch {
		case 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z':
			return classLetter
		case '0' <= r && r <= '9':
			return classNumber
		case r == ' ', '\t' <= r && r <= '\r':
			return classSpace
		}
		return classOther
	}
	switch {
	case unicode.IsLetter(r):
		return classLetter
	case unicode.IsNumber(r):
		return classNumber
	case unicode.IsSpace(r):
		return classSpace
	}
	return classOther
}

// scanner walks a string rune by rune with one rune of lookahead.
type scanner struct{ s string }

func (sc scanner) at(i int) (rune, runeClass, int) {
	if i >= len(sc.s) {
		return -1, classOther, 0
	}
	r, size := utf8.DecodeRuneInString(sc.s[i:])
	return r, classOf(r), size
}

// run returns the end of the run of runes of class c starting at i, at most
// limit runes (limit < 0: no limit).
func (sc scanner) run(i int, c runeClass, limit int) int {
	for n := 0; i < len(sc.s) && n != limit; n++ {
		_, rc, size := sc.at(i)
		if rc != c {
			break
		}
		i += size
	}
	return i
}

// contraction matches 's 't 're 've 'm 'll 'd at i (case-insensitively
// when fold), returning its end or -1.
func (sc scanner) contraction(i int, fold bool) int {
	if i >= len(sc.s) || sc.s[i] != '\'' {
		return -1
	}
	lower := func(j int) byte {
		if j >= len(sc.s) {
			return 0
		}
		c := sc.s[j]
		if fold && 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		return c
	}
	// Under Unicode case folding, as regexp2's (?i) does it, the long s ſ
	// matches s; no other non-ASCII letter folds into this set.
	if fold && strings.HasPrefix(sc.s[i+1:], "ſ") {
		return i + 1 + len("ſ")
	}
	switch lower(i + 1) {
	case 's', 't', 'm', 'd':
		return i + 2
	case 'r', 'v':
		if lower(i+2) == 'e' {
			return i + 3
		}
	case 'l':
		if lower(i+2) == 'l' {
			return i + 3
		}
	}
	return -1
}

// whitespace matches the three whitespace alternatives shared by both
// pattern families at i (a whitespace rune): \s*[\r\n]+ (Llama 3 only, when
// crlf), then \s+(?!\S), then \s+.
func (sc scanner) whitespace(i int, crlf bool) int {
	end := sc.run(i, classSpace, -1)
	if crlf {
		last := -1
		for j := i; j < end; {
			r, _, size := sc.at(j)
			if r == '\r' || r == '\n' {
				last = j + size
			}
			j += size
		}
		if last > 0 {
			return last
		}
	}
	if end == len(sc.s) {
		return end
	}
	// Followed by a non-space: give the last whitespace rune back, if
	// that leaves one.
	_, size := utf8.DecodeLastRuneInString(sc.s[:end])
	if end-size > i {
		return end - size
	}
	return end
}

// splitLlama3 matches Llama 3's pattern (maxDigits 3) or Qwen2's (1).
func splitLlama3(s string, maxDigits int) [][]int {
	sc := scanner{s}
	out := make([][]int, 0, len(s)/4+1)
	for i := 0; i < len(s); {
		end := sc.llama3At(i, maxDigits)
		out = append(out, []int{i, end})
		i = end
	}
	return out
}

func (sc scanner) llama3At(i, maxDigits int) int {
	if end := sc.contraction(i, true); end > 0 {
		return end
	}
	r, c, size := sc.at(i)
	// [^\r\n\p{L}\p{N}]?\p{L}+
	if c == classLetter {
		return sc.run(i, classLetter, -1)
	}
	if c != classNumber && r != '\r' && r != '\n' {
		if _, nc, _ := sc.at(i + size); nc == classLetter {
			return sc.run(i+size, classLetter, -1)
		}
	}
	// \p{N}{1,maxDigits}
	if c == classNumber {
		return sc.run(i, classNumber, maxDigits)
	}
	// ' ?[^\s\p{L}\p{N}]+[\r\n]*'
	j := i
	if r == ' ' {
		if _, nc, _ := sc.at(i + 1); nc == classOther && i+1 < len(sc.s) {
			j = i + 1
		}
	}
	if _, jc, _ := sc.at(j); jc == classOther && j < len(sc.s) {
		j = sc.run(j, classOther, -1)
		for j < len(sc.s) && (sc.s[j] == '\r' || sc.s[j] == '\n') {
			j++
		}
		return j
	}
	return sc.whitespace(i, true)
}

// splitGPT2 matches GPT-2's pattern.
func splitGPT2(s string) [][]int {
	sc := scanner{s}
	out := make([][]int, 0, len(s)/4+1)
	for i := 0; i < len(s); {
		end := sc.gpt2At(i)
		out = append(out, []int{i, end})
		i = end
	}
	return out
}

func (sc scanner) gpt2At(i int) int {
	if end := sc.contraction(i, false); end > 0 {
		return end
	}
	r, c, _ := sc.at(i)
	j := i
	if r == ' ' && i+1 < len(sc.s) {
		j = i + 1
	}
	// ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+' in that order.
	if _, jc, _ := sc.at(j); j < len(sc.s) {
		switch jc {
		case classLetter, classNumber, classOther:
			return sc.run(j, jc, -1)
		}
	}
	if c != classSpace {
		return sc.run(i, c, -1) // unreachable: a non-space starts one of the above
	}
	return sc.whitespace(i, false)
}

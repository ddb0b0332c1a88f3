package tokenizer

import (
	"fmt"
	"unicode"
	"unicode/utf8"
)

// addedToken is an entry of tokenizer.json's added_tokens.
type addedToken struct {
	id                         int32
	content                    string
	singleWord, lstrip, rstrip bool
	normalized, special        bool
}

// addedVocab finds added tokens in text: those with normalized=false in the
// raw text, the others in the normalized text, leftmost-longest first, as
// the tokenizers library's AddedVocabulary does.
type addedVocab struct {
	byContent map[string]int32
	byID      map[int32]*addedToken
	raw, norm *trie
}

// newAddedVocab registers the added tokens in file order and gives each its
// id as the tokenizers library does: the model's id when the content is in
// the vocabulary (or was added before), else the next id after the
// vocabulary. A file whose "id" disagrees is loaded the same way, and the
// disagreement is reported in warnings.
func newAddedVocab(list []addedJSON, n normalizer, m *bpe) (*addedVocab, []string, error) {
	v := &addedVocab{byContent: map[string]int32{}, byID: map[int32]*addedToken{}, raw: newTrie(), norm: newTrie()}
	var warnings []string
	modelSize := int32(len(m.vocab))
	maxAdded := int32(-1)
	for i, a := range list {
		p := fmt.Sprintf("added_tokens[%d]", i)
		if a.Content == nil {
			return nil, nil, errAt(p+".content", "missing")
		}
		id, known := v.byContent[*a.Content]
		if !known {
			id, known = m.vocab[*a.Content]
		}
		if !known {
			id = modelSize
			if maxAdded >= modelSize {
				id = maxAdded + 1
			}
		}
		if id >= maxTokenID {
			return nil, nil, errAt(p, "too many added tokens")
		}
		if a.ID != nil && *a.ID != int64(id) {
			warnings = append(warnings, fmt.Sprintf("tokenizer.json: %s.id: %q is given id %d but gets %d, as the tokenizers library assigns it", p, *a.Content, *a.ID, id))
		}
		if _, inModel := m.vocab[*a.Content]; !inModel {
			maxAdded = max(maxAdded, id)
		}
		t := &addedToken{
			id: id, content: *a.Content, singleWord: a.SingleWord, lstrip: a.LStrip, rstrip: a.RStrip,
			normalized: !a.Special, special: a.Special,
		}
		if a.Normalized != nil {
			t.normalized = *a.Normalized
		}
		v.byID[t.id] = t
		v.byContent[t.content] = t.id
		if t.content == "" {
			continue
		}
		if t.normalized {
			key := t.content
			if n != nil {
				key = n.normalize(key)
			}
			v.norm.add(key, t)
		} else {
			v.raw.add(t.content, t)
		}
	}
	return v, warnings, nil
}

// addedPiece is a span of the input: an added token (id >= 0) or normalized
// text for the pre-tokenizer (id < 0).
type addedPiece struct {
	text    string
	id      int32
	atStart bool
}

// split extracts added tokens from text and normalizes the rest.
func (v *addedVocab) split(text string, n normalizer) []addedPiece {
	var out []addedPiece
	for _, p := range v.raw.split(text, true) {
		if p.id >= 0 {
			out = append(out, p)
			continue
		}
		s := p.text
		if n != nil {
			s = n.normalize(s)
		}
		for _, q := range v.norm.split(s, p.atStart) {
			if q.id >= 0 || q.text != "" {
				out = append(out, q)
			}
		}
	}
	return out
}

// trie is a byte trie of token contents. At the root, starts says which
// bytes begin some token, so most positions of a text are passed over
// without a map lookup.
type trie struct {
	next   map[byte]*trie
	token  *addedToken
	starts [256]bool
}

func newTrie() *trie { return &trie{} }

func (t *trie) add(s string, tok *addedToken) {
	t.starts[s[0]] = true
	n := t
	for i := 0; i < len(s); i++ {
		if n.next == nil {
			n.next = map[byte]*trie{}
		}
		c, ok := n.next[s[i]]
		if !ok {
			c = &trie{}
			n.next[s[i]] = c
		}
		n = c
	}
	if n.token == nil {
		n.token = tok
	}
}

// longest returns the longest token that starts s and its length.
func (t *trie) longest(s string) (*addedToken, int) {
	var best *addedToken
	bestLen := 0
	n := t
	for i := 0; i < len(s); i++ {
		c, ok := n.next[s[i]]
		if !ok {
			break
		}
		n = c
		if n.token != nil {
			best, bestLen = n.token, i+1
		}
	}
	return best, bestLen
}

// split cuts s at its added tokens. atStart says whether s begins at offset
// 0 of the input.
func (t *trie) split(s string, atStart bool) []addedPiece {
	if t.next == nil || s == "" {
		return []addedPiece{{text: s, id: -1, atStart: atStart}}
	}
	var out []addedPiece
	done := 0 // bytes of s already emitted
	for i := 0; i < len(s); {
		if !t.starts[s[i]] {
			i++
			continue
		}
		tok, n := t.longest(s[i:])
		if tok == nil {
			i++
			continue
		}
		start, stop := i, i+n
		i = stop
		if tok.singleWord && (endsWithWord(s[:start]) || startsWithWord(s[stop:])) {
			continue
		}
		if tok.lstrip {
			start = max(done, start-trailingSpace(s[:start]))
		}
		if tok.rstrip {
			stop += leadingSpace(s[stop:])
		}
		if done < start {
			out = append(out, addedPiece{text: s[done:start], id: -1, atStart: atStart && done == 0})
		}
		out = append(out, addedPiece{text: s[start:stop], id: tok.id})
		done = stop
		i = max(i, stop)
	}
	if done < len(s) {
		out = append(out, addedPiece{text: s[done:], id: -1, atStart: atStart && done == 0})
	}
	return out
}

func isWordRune(r rune) bool {
	return r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.IsMark(r) || unicode.Is(unicode.Pc, r)
}

func endsWithWord(s string) bool {
	r, size := utf8.DecodeLastRuneInString(s)
	return size > 0 && isWordRune(r)
}

func startsWithWord(s string) bool {
	r, size := utf8.DecodeRuneInString(s)
	return size > 0 && isWordRune(r)
}

// trailingSpace is the byte length of the whitespace that ends s.
func trailingSpace(s string) int {
	n := 0
	for len(s) > n {
		r, size := utf8.DecodeLastRuneInString(s[:len(s)-n])
		if !unicode.IsSpace(r) {
			break
		}
		n += size
	}
	return n
}

// leadingSpace is the byte length of the whitespace that starts s.
func leadingSpace(s string) int {
	n := 0
	for n < len(s) {
		r, size := utf8.DecodeRuneInString(s[n:])
		if !unicode.IsSpace(r) {
			break
		}
		n += size
	}
	return n
}

package tokenizer

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

// pathError is an error about one JSON path of tokenizer.json.
type pathError struct {
	path string
	msg  string
}

func (e *pathError) Error() string { return "tokenizer.json: " + e.path + ": " + e.msg }

func errAt(path, format string, args ...any) error {
	return &pathError{path: path, msg: fmt.Sprintf(format, args...)}
}

func unsupported(path, kind string) error {
	return errAt(path, "%q is not supported", kind)
}

// fileJSON is the top level of tokenizer.json.
type fileJSON struct {
	Version       string          `json:"version"`
	Truncation    json.RawMessage `json:"truncation"`
	Padding       json.RawMessage `json:"padding"`
	AddedTokens   []addedJSON     `json:"added_tokens"`
	Normalizer    json.RawMessage `json:"normalizer"`
	PreTokenizer  json.RawMessage `json:"pre_tokenizer"`
	PostProcessor json.RawMessage `json:"post_processor"`
	Decoder       json.RawMessage `json:"decoder"`
	Model         json.RawMessage `json:"model"`
}

type addedJSON struct {
	ID         *int64  `json:"id"`
	Content    *string `json:"content"`
	SingleWord bool    `json:"single_word"`
	LStrip     bool    `json:"lstrip"`
	RStrip     bool    `json:"rstrip"`
	Normalized *bool   `json:"normalized"`
	Special    bool    `json:"special"`
}

// typed reads the "type" field of a component object.
func typed(raw json.RawMessage, path string) (string, error) {
	var h struct {
		Type *string `json:"type"`
	}
	if err := json.Unmarshal(raw, &h); err != nil {
		return "", errAt(path, "%v", err)
	}
	if h.Type == nil {
		return "", errAt(path+".type", "missing")
	}
	return *h.Type, nil
}

func isNull(raw json.RawMessage) bool {
	r := bytes.TrimSpace(raw)
	return len(r) == 0 || string(r) == "null"
}

func decodeInto(raw json.RawMessage, path string, v any) error {
	if err := json.Unmarshal(raw, v); err != nil {
		return errAt(path, "%v", err)
	}
	return nil
}

// parseList reads the list field of a Sequence component, parsing each
// element at its own path.
func parseList[T any](raw json.RawMessage, path, field string, parse func(json.RawMessage, string) (T, error)) ([]T, error) {
	var v map[string]json.RawMessage
	if err := decodeInto(raw, path, &v); err != nil {
		return nil, err
	}
	if isNull(v[field]) {
		return nil, errAt(path+"."+field, "missing")
	}
	var items []json.RawMessage
	if err := decodeInto(v[field], path+"."+field, &items); err != nil {
		return nil, err
	}
	out := make([]T, 0, len(items))
	for i, r := range items {
		x, err := parse(r, fmt.Sprintf("%s.%s[%d]", path, field, i))
		if err != nil {
			return nil, err
		}
		out = append(out, x)
	}
	return out, nil
}

// Parse builds a Tokenizer from the bytes of a tokenizer.json file.
func Parse(raw []byte) (*Tokenizer, error) {
	var f fileJSON
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, fmt.Errorf("tokenizer.json: %w", err)
	}
	if isNull(f.Model) {
		return nil, errAt("model", "missing")
	}
	t := &Tokenizer{hash: sha256.Sum256(raw)}
	var err error
	if t.model, err = parseModel(f.Model, "model"); err != nil {
		return nil, err
	}
	if !isNull(f.Normalizer) {
		if t.normalizer, err = parseNormalizer(f.Normalizer, "normalizer"); err != nil {
			return nil, err
		}
	}
	if !isNull(f.PreTokenizer) {
		if t.pre, err = parsePreTokenizer(f.PreTokenizer, "pre_tokenizer"); err != nil {
			return nil, err
		}
	}
	if !isNull(f.Decoder) {
		if t.decoder, err = parseDecoder(f.Decoder, "decoder"); err != nil {
			return nil, err
		}
	}
	if !isNull(f.Truncation) {
		return nil, errAt("truncation", "must be null: truncation is a training setting here (--max-seq-len), not part of the tokenizer")
	}
	// Padding is ignored: batches are built by the data loader.
	if t.added, t.warnings, err = newAddedVocab(f.AddedTokens, t.normalizer, t.model); err != nil {
		return nil, err
	}
	if !isNull(f.PostProcessor) {
		if t.post, err = parsePostProcessor(f.PostProcessor, "post_processor", t); err != nil {
			return nil, err
		}
	}
	t.index()
	if err := checkPostIDs(t.post, t); err != nil {
		return nil, err
	}
	return t, nil
}

// checkPostIDs makes sure every id a post-processor adds is a token.
func checkPostIDs(p postProcessor, t *Tokenizer) error {
	switch p := p.(type) {
	case postSequence:
		for _, q := range p {
			if err := checkPostIDs(q, t); err != nil {
				return err
			}
		}
	case template:
		for _, id := range append(append([]int32{}, p.before...), p.after...) {
			if _, ok := t.Token(id); !ok {
				return errAt("post_processor", "adds id %d, which is not a token", id)
			}
		}
	}
	return nil
}

// index builds the id -> token table and the vocabulary size.
func (t *Tokenizer) index() {
	maxID := int32(-1)
	for _, id := range t.model.vocab {
		maxID = max(maxID, id)
	}
	for id := range t.added.byID {
		maxID = max(maxID, id)
	}
	t.vocabSize = int(maxID) + 1
	t.idToToken = make([]string, t.vocabSize)
	t.present = make([]bool, t.vocabSize)
	var shared []int32
	for s, id := range t.model.vocab {
		// Two tokens with one id: decode by the smaller string, so the
		// result does not depend on map order (the library's depends on
		// its hash map's).
		if t.present[id] {
			shared = append(shared, id)
			if s > t.idToToken[id] {
				continue
			}
		}
		t.idToToken[id], t.present[id] = s, true
	}
	if len(shared) > 0 {
		sort.Slice(shared, func(i, j int) bool { return shared[i] < shared[j] })
		id := shared[0]
		t.warnings = append(t.warnings, fmt.Sprintf("tokenizer.json: model.vocab: %d tokens share an id with another (the first: id %d, which decodes as %q)", len(shared), id, t.idToToken[id]))
	}
	for id, a := range t.added.byID {
		t.idToToken[id], t.present[id] = a.content, true
	}
}

// maxTokenID bounds ids so a hostile file cannot make index allocate a
// huge table: no real vocabulary comes near it.
const maxTokenID = 1 << 24

// parseModel reads the "model" object: only BPE is implemented.
func parseModel(raw json.RawMessage, path string) (*bpe, error) {
	kind, err := typed(raw, path)
	if err != nil {
		// Old files may omit model.type for BPE; tell them apart by "merges".
		var probe map[string]json.RawMessage
		if json.Unmarshal(raw, &probe) != nil || probe["merges"] == nil {
			return nil, err
		}
		kind = "BPE"
	}
	if kind != "BPE" {
		return nil, unsupported(path+".type", kind)
	}
	var m struct {
		Dropout                 *float64         `json:"dropout"`
		UnkToken                *string          `json:"unk_token"`
		ContinuingSubwordPrefix *string          `json:"continuing_subword_prefix"`
		EndOfWordSuffix         *string          `json:"end_of_word_suffix"`
		FuseUnk                 bool             `json:"fuse_unk"`
		ByteFallback            bool             `json:"byte_fallback"`
		IgnoreMerges            bool             `json:"ignore_merges"`
		Vocab                   map[string]int64 `json:"vocab"`
		Merges                  json.RawMessage  `json:"merges"`
	}
	if err := decodeInto(raw, path, &m); err != nil {
		return nil, err
	}
	if m.Dropout != nil && *m.Dropout != 0 {
		return nil, errAt(path+".dropout", "%g: BPE dropout is random and is not supported; set it to null", *m.Dropout)
	}
	if m.Vocab == nil {
		return nil, errAt(path+".vocab", "missing")
	}
	b := &bpe{
		vocab:        make(map[string]int32, len(m.Vocab)),
		byteFallback: m.ByteFallback,
		fuseUnk:      m.FuseUnk,
		ignoreMerges: m.IgnoreMerges,
		unk:          -1,
	}
	if m.ContinuingSubwordPrefix != nil {
		b.prefix = *m.ContinuingSubwordPrefix
	}
	if m.EndOfWordSuffix != nil {
		b.suffix = *m.EndOfWordSuffix
	}
	var bad []string
	for k, id := range m.Vocab {
		if id < 0 || id >= maxTokenID {
			bad = append(bad, k)
			continue
		}
		b.vocab[k] = int32(id)
	}
	if len(bad) > 0 {
		sort.Strings(bad) // the same message every time
		return nil, errAt(fmt.Sprintf("%s.vocab[%q]", path, bad[0]), "id %d is outside [0,%d)", m.Vocab[bad[0]], maxTokenID)
	}
	if m.UnkToken != nil {
		id, ok := b.vocab[*m.UnkToken]
		if !ok {
			return nil, errAt(path+".unk_token", "%q is not in the vocabulary", *m.UnkToken)
		}
		b.unk = id
	}
	if b.byteFallback {
		for i := range 256 {
			if id, ok := b.vocab[fmt.Sprintf("<0x%02X>", i)]; ok {
				b.byteIDs[i] = id
			} else {
				b.byteIDs[i] = -1
			}
		}
	}
	pairs, err := parseMerges(m.Merges, path+".merges")
	if err != nil {
		return nil, err
	}
	b.merges = make(map[uint64]merge, len(pairs))
	for i, p := range pairs {
		a, ok1 := b.vocab[p[0]]
		c, ok2 := b.vocab[p[1]]
		n, ok3 := b.vocab[p[0]+p[1]]
		if !ok1 || !ok2 || !ok3 {
			return nil, errAt(fmt.Sprintf("%s.merges[%d]", path, i), "merge %q + %q uses a token missing from the vocabulary", p[0], p[1])
		}
		key := pairKey(a, c)
		if _, dup := b.merges[key]; !dup {
			b.merges[key] = merge{rank: int32(i), id: n}
		}
	}
	b.cache = newWordCache(cacheCapacity)
	return b, nil
}

// parseMerges reads merges written as "a b" strings or as ["a", "b"] pairs.
func parseMerges(raw json.RawMessage, path string) ([][2]string, error) {
	if isNull(raw) {
		return nil, nil
	}
	var strs []string
	if err := json.Unmarshal(raw, &strs); err == nil {
		out := make([][2]string, len(strs))
		for i, s := range strs {
			a, b, ok := strings.Cut(s, " ")
			if !ok || strings.Contains(b, " ") {
				return nil, errAt(fmt.Sprintf("%s[%d]", path, i), "%q is not two tokens separated by one space", s)
			}
			out[i] = [2]string{a, b}
		}
		return out, nil
	}
	var pairs [][]string
	if err := json.Unmarshal(raw, &pairs); err != nil {
		return nil, errAt(path, "want a list of \"a b\" strings or [\"a\", \"b\"] pairs: %v", err)
	}
	out := make([][2]string, len(pairs))
	for i, p := range pairs {
		if len(p) != 2 {
			return nil, errAt(fmt.Sprintf("%s[%d]", path, i), "want two tokens, got %d", len(p))
		}
		out[i] = [2]string{p[0], p[1]}
	}
	return out, nil
}

func truncateJSON(raw json.RawMessage) string {
	s := string(raw)
	if len(s) > 60 {
		s = s[:60] + "..."
	}
	return s
}

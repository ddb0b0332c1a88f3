// Package tokenizer reads Hugging Face tokenizer.json files and encodes text
// exactly as the Hugging Face `tokenizers` library does, for the two BPE
// families open models use: byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM)
// and SentencePiece-style BPE with byte fallback (Llama 2, Mistral 7B,
// TinyLlama). It also reads tokenizer_config.json and special_tokens_map.json
// (special tokens, add_bos_token, the chat template), renders chat
// templates, and trains small byte-level BPE tokenizers.
//
// Anything a file uses that is not implemented (a Unigram or WordPiece model,
// an unknown normalizer, pre-tokenizer, post-processor or decoder) is refused
// with an error naming its JSON path, never silently approximated.
package tokenizer

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Tokenizer is a loaded tokenizer.json with its configuration. It is safe
// for concurrent use.
type Tokenizer struct {
	model      *bpe
	normalizer normalizer   // nil: none
	pre        preTokenizer // nil: the whole piece is one word
	post       postProcessor
	decoder    decoder // nil: tokens are joined with spaces
	added      *addedVocab

	vocabSize int // one more than the largest id
	idToToken []string

	// From tokenizer_config.json / special_tokens_map.json, when present.
	bos, eos, pad, unk string
	chatTemplate       string

	warnings []string // what the files do that HF accepts with a warning
	present  []bool   // ids some token has (a token may be the empty string)
	hash     [32]byte // of the files read, for Fingerprint
}

// Fingerprint identifies the tokenizer by the files it was read from
// (tokenizer.json and the config files), for caches keyed on it.
func (t *Tokenizer) Fingerprint() string { return hex.EncodeToString(t.hash[:16]) }

// SpecialTokens returns the ids the post-processor adds before and after a
// sequence when special tokens are added (BOS, and EOS for some models).
func (t *Tokenizer) SpecialTokens() (before, after []int32) {
	var walk func(p postProcessor)
	walk = func(p postProcessor) {
		switch p := p.(type) {
		case postSequence:
			for _, q := range p {
				walk(q)
			}
		case template:
			before = append(before, p.before...)
			after = append(after, p.after...)
		}
	}
	walk(t.post)
	return before, after
}

// Warnings lists what the files do that the tokenizers library accepts
// with a warning (an added token whose "id" disagrees with the id it gets).
func (t *Tokenizer) Warnings() []string { return t.warnings }

// MaxFileSize bounds the tokenizer files Load reads (the largest real
// tokenizer.json files are tens of megabytes).
const MaxFileSize = 256 << 20

// Load reads a tokenizer from path: either a tokenizer.json file, or a folder
// holding tokenizer.json and, optionally, tokenizer_config.json and
// special_tokens_map.json (read from the file's folder too).
func Load(path string) (*Tokenizer, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	dir, file := path, filepath.Join(path, "tokenizer.json")
	if !fi.IsDir() {
		dir, file = filepath.Dir(path), path
	}
	raw, err := readBounded(file)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && fi.IsDir() {
			return nil, fmt.Errorf("tokenizer: %s has no tokenizer.json (only the Hugging Face tokenizers format is supported)", path)
		}
		return nil, err
	}
	t, err := Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	for _, name := range []string{"special_tokens_map.json", "tokenizer_config.json"} {
		b, err := readBounded(filepath.Join(dir, name))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if err := t.applyConfig(b, name); err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Join(dir, name), err)
		}
	}
	// Newer transformers save the template in a file of its own, which
	// wins over tokenizer_config.json's field as it does there.
	b, err := readBounded(filepath.Join(dir, "chat_template.jinja"))
	switch {
	case err == nil:
		t.SetChatTemplate(string(b))
	case !errors.Is(err, os.ErrNotExist):
		return nil, err
	}
	return t, nil
}

// SetChatTemplate replaces the chat template (a --chat-template file, or
// chat_template.jinja beside tokenizer.json).
func (t *Tokenizer) SetChatTemplate(src string) {
	t.chatTemplate = src
	t.hash = sha256.Sum256(append(append(t.hash[:], "chat_template"...), src...))
}

// ForModel returns the tokenizer a command should use: the file or folder
// given explicitly, else the model folder's tokenizer.json when base is a
// Hugging Face folder that has one, else nil (the byte-level tokenizer).
func ForModel(explicit, base string) (*Tokenizer, error) {
	if explicit != "" {
		return Load(explicit)
	}
	if base == "" {
		return nil, nil
	}
	if fi, err := os.Stat(filepath.Join(base, "tokenizer.json")); err == nil && fi.Mode().IsRegular() {
		return Load(base)
	}
	return nil, nil
}

func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	if fi.Size() > MaxFileSize {
		return nil, fmt.Errorf("tokenizer: %s is %d bytes, more than the %d a tokenizer file may have", path, fi.Size(), MaxFileSize)
	}
	b := make([]byte, fi.Size())
	if _, err := f.ReadAt(b, 0); err != nil && fi.Size() > 0 {
		return nil, fmt.Errorf("tokenizer: reading %s: %w", path, err)
	}
	return b, nil
}

// VocabSize is one more than the largest token id, added tokens included:
// the number of rows an embedding matrix needs.
func (t *Tokenizer) VocabSize() int { return t.vocabSize }

// TokenID returns the id of a token string (a vocabulary entry or an added
// token), as it appears in tokenizer.json.
func (t *Tokenizer) TokenID(token string) (int32, bool) {
	if id, ok := t.added.byContent[token]; ok {
		return id, true
	}
	id, ok := t.model.vocab[token]
	return id, ok
}

// Token returns the string of id ("" and false when id is not used).
func (t *Tokenizer) Token(id int32) (string, bool) {
	if id < 0 || int(id) >= len(t.idToToken) {
		return "", false
	}
	return t.idToToken[id], t.present[id]
}

// IsSpecial reports whether id is an added token marked special.
func (t *Tokenizer) IsSpecial(id int32) bool {
	a, ok := t.added.byID[id]
	return ok && a.special
}

// BOS returns the beginning-of-sequence token from tokenizer_config.json or
// special_tokens_map.json, with its id.
func (t *Tokenizer) BOS() (string, int32, bool) { return t.special(t.bos) }

// EOS returns the end-of-sequence token, with its id.
func (t *Tokenizer) EOS() (string, int32, bool) { return t.special(t.eos) }

// Pad returns the padding token, with its id.
func (t *Tokenizer) Pad() (string, int32, bool) { return t.special(t.pad) }

func (t *Tokenizer) special(s string) (string, int32, bool) {
	if s == "" {
		return "", -1, false
	}
	id, ok := t.TokenID(s)
	return s, id, ok
}

// ChatTemplate is the Jinja chat template from tokenizer_config.json ("" when
// there is none).
func (t *Tokenizer) ChatTemplate() string { return t.chatTemplate }

// Encode returns the token ids of text as the Hugging Face tokenizers
// library's encode does: added and special tokens written in the text are
// recognised, the rest is normalized, pre-tokenized and split by BPE, and
// with addSpecialTokens the post-processor adds BOS/EOS.
func (t *Tokenizer) Encode(text string, addSpecialTokens bool) []int32 {
	var ids []int32
	for _, p := range t.added.split(text, t.normalizer) {
		if p.id >= 0 {
			ids = append(ids, p.id)
			continue
		}
		words := []piece{{text: p.text, atStart: p.atStart}}
		if t.pre != nil {
			words = t.pre.preTokenize(words)
		}
		for _, w := range words {
			ids = t.model.appendWord(ids, w.text)
		}
	}
	if addSpecialTokens && t.post != nil {
		ids = t.post.process(ids)
	}
	return ids
}

// Decode returns the text of ids as the Hugging Face tokenizers library's
// decode does (invalid UTF-8 becomes U+FFFD). skipSpecialTokens leaves out
// added tokens marked special. An id outside the vocabulary is an error
// naming its position.
func (t *Tokenizer) Decode(ids []int32, skipSpecialTokens bool) (string, error) {
	tokens := make([]string, 0, len(ids))
	for i, id := range ids {
		s, ok := t.Token(id)
		if !ok {
			return "", fmt.Errorf("tokenizer: decode: id %d at position %d is not in the vocabulary (size %d)", id, i, t.vocabSize)
		}
		if a, isAdded := t.added.byID[id]; isAdded {
			if skipSpecialTokens && a.special {
				continue
			}
		}
		tokens = append(tokens, s)
	}
	return t.decodeStrings(tokens), nil
}

// decodeStrings runs the decoder chain over token strings (which it may
// overwrite) and joins the pieces.
func (t *Tokenizer) decodeStrings(tokens []string) string {
	if t.decoder == nil {
		return strings.Join(tokens, " ") // as the tokenizers library does
	}
	return strings.Join(t.decoder.decode(tokens), "")
}

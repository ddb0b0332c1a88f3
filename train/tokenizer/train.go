package tokenizer

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/opencluster/opencluster/internal/atomicfile"
)

// Llama3Pattern is Llama 3's pre-tokenizer split, which trained tokenizers
// use too, so they run the same code path as real byte-level models.
const Llama3Pattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`

// Special tokens of trained tokenizers (ChatML, so the chat template below
// renders conversations with them).
const (
	TrainedBOS     = "<|begin_of_text|>"
	TrainedEOS     = "<|end_of_text|>"
	TrainedIMStart = "<|im_start|>"
	TrainedIMEnd   = "<|im_end|>"
)

// TrainedChatTemplate is the ChatML template trained tokenizers carry.
const TrainedChatTemplate = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"

// Train learns a byte-level BPE tokenizer with vocabSize ids (256 byte
// tokens, the merges, then the four special tokens) from the documents in
// corpus. The result is a real tokenizer.json: byte-level like GPT-2 and
// Llama 3 (Llama 3's split pattern), so a model trained with it runs the
// same code path as one with a real tokenizer. Training is deterministic:
// the most frequent pair is merged first, ties broken by the smaller pair
// of ids.
func Train(corpus []string, vocabSize int) (*Tokenizer, []byte, error) {
	specials := []string{TrainedBOS, TrainedEOS, TrainedIMStart, TrainedIMEnd}
	if vocabSize < 256+len(specials) {
		return nil, nil, fmt.Errorf("tokenizer: train: vocab size %d is smaller than the %d byte and special tokens", vocabSize, 256+len(specials))
	}
	split, err := compileRegex(Llama3Pattern)
	if err != nil {
		return nil, nil, err
	}
	// Count the words, as byte ids.
	counts := map[string]int{}
	for _, doc := range corpus {
		for _, m := range split.findAll(doc) {
			counts[doc[m[0]:m[1]]]++
		}
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	words := make([][]int32, len(keys))
	freq := make([]int, len(keys))
	for i, k := range keys {
		words[i] = make([]int32, len(k))
		for j := 0; j < len(k); j++ {
			words[i][j] = int32(k[j])
		}
		freq[i] = counts[k]
	}
	vocab := make([]string, 256, vocabSize)
	for b := range 256 {
		vocab[b] = string(byteToRune[b])
	}
	pairs := map[uint64]int{}
	where := map[uint64][]int32{} // pair -> words that may hold it
	for wi, w := range words {
		for j := 0; j+1 < len(w); j++ {
			k := pairKey(w[j], w[j+1])
			pairs[k] += freq[wi]
			where[k] = append(where[k], int32(wi))
		}
	}
	var merges []string
	for len(vocab)+len(specials) < vocabSize {
		best, bestN := uint64(0), 0
		for k, n := range pairs {
			if n > bestN || (n == bestN && k < best) {
				best, bestN = k, n
			}
		}
		if bestN < 2 {
			break // nothing left worth merging
		}
		a, b := int32(best>>32), int32(uint32(best))
		id := int32(len(vocab))
		vocab = append(vocab, vocab[a]+vocab[b])
		merges = append(merges, vocab[a]+" "+vocab[b])
		seen := map[int32]bool{}
		for _, wi := range where[best] {
			if seen[wi] {
				continue
			}
			seen[wi] = true
			w, f := words[wi], freq[wi]
			for j := 0; j+1 < len(w); j++ {
				pairs[pairKey(w[j], w[j+1])] -= f
			}
			out := w[:0]
			for j := 0; j < len(w); j++ {
				if j+1 < len(w) && w[j] == a && w[j+1] == b {
					out = append(out, id)
					j++
				} else {
					out = append(out, w[j])
				}
			}
			words[wi] = out
			for j := 0; j+1 < len(out); j++ {
				k := pairKey(out[j], out[j+1])
				pairs[k] += f
				if out[j] == id || out[j+1] == id {
					where[k] = append(where[k], wi)
				}
			}
		}
		for k, n := range pairs {
			if n <= 0 {
				delete(pairs, k)
			}
		}
		delete(where, best)
	}
	raw, err := trainedJSON(vocab, merges, specials)
	if err != nil {
		return nil, nil, err
	}
	tok, err := Parse(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("tokenizer: train: the trained tokenizer does not load: %w", err)
	}
	tok.bos, tok.eos, tok.chatTemplate = TrainedBOS, TrainedEOS, TrainedChatTemplate
	return tok, raw, nil
}

func trainedJSON(vocab, merges, specials []string) ([]byte, error) {
	v := make(map[string]int, len(vocab))
	for i, s := range vocab {
		v[s] = i
	}
	type added struct {
		ID         int    `json:"id"`
		Content    string `json:"content"`
		SingleWord bool   `json:"single_word"`
		LStrip     bool   `json:"lstrip"`
		RStrip     bool   `json:"rstrip"`
		Normalized bool   `json:"normalized"`
		Special    bool   `json:"special"`
	}
	var addedTokens []added
	for i, s := range specials {
		addedTokens = append(addedTokens, added{ID: len(vocab) + i, Content: s, Special: true})
	}
	byteLevel := map[string]any{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
	doc := map[string]any{
		"version":      "1.0",
		"truncation":   nil,
		"padding":      nil,
		"added_tokens": addedTokens,
		"normalizer":   nil,
		"pre_tokenizer": map[string]any{"type": "Sequence", "pretokenizers": []any{
			map[string]any{"type": "Split", "pattern": map[string]string{"Regex": Llama3Pattern}, "behavior": "Isolated", "invert": false},
			byteLevel,
		}},
		"post_processor": byteLevel,
		"decoder":        byteLevel,
		"model": map[string]any{
			"type": "BPE", "dropout": nil, "unk_token": nil, "continuing_subword_prefix": nil,
			"end_of_word_suffix": nil, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
			"vocab": v, "merges": merges,
		},
	}
	return json.MarshalIndent(doc, "", " ")
}

// WriteFolder writes a trained tokenizer as a Hugging Face tokenizer folder:
// tokenizer.json (raw, as Train returned it) and tokenizer_config.json with
// the special tokens and the chat template.
func WriteFolder(dir string, raw []byte) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("tokenizer: %w", err)
	}
	cfg, err := json.MarshalIndent(map[string]any{
		"tokenizer_class":              "PreTrainedTokenizerFast",
		"bos_token":                    TrainedBOS,
		"eos_token":                    TrainedEOS,
		"pad_token":                    TrainedEOS,
		"add_bos_token":                false,
		"chat_template":                TrainedChatTemplate,
		"model_max_length":             1 << 20,
		"clean_up_tokenization_spaces": false,
	}, "", " ")
	if err != nil {
		return err
	}
	for name, b := range map[string][]byte{"tokenizer.json": raw, "tokenizer_config.json": cfg} {
		if err := atomicfile.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return fmt.Errorf("tokenizer: %w", err)
		}
	}
	return nil
}

package tokenizer

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
)

// referenceDir is the cache scripts/fetch-tokenizers.sh fills with real
// tokenizer files and the ids the Hugging Face tokenizers library gives for
// testdata/texts.json. Tests that need it skip when it is missing, unless
// OPENCLUSTER_REQUIRE_TOKENIZERS=1 (CI) makes that a failure.
func referenceDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("OPENCLUSTER_TOKENIZERS")
	if dir == "" {
		base := os.Getenv("XDG_CACHE_HOME")
		if base == "" {
			home, _ := os.UserHomeDir()
			base = filepath.Join(home, ".cache")
		}
		dir = filepath.Join(base, "opencluster", "tokenizers")
	}
	if _, err := os.Stat(filepath.Join(dir, "stamp")); err != nil {
		msg := "no reference tokenizer files in " + dir + "; run scripts/fetch-tokenizers.sh (make test does)"
		if os.Getenv("OPENCLUSTER_REQUIRE_TOKENIZERS") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return dir
}

var loaded sync.Map // path -> *Tokenizer, so each real file is parsed once per test binary

// loadOnce loads a reference tokenizer file or folder, once.
func loadOnce(t testing.TB, path string) *Tokenizer {
	t.Helper()
	if tok, ok := loaded.Load(path); ok {
		return tok.(*Tokenizer)
	}
	tok, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	loaded.Store(path, tok)
	return tok
}

type expectedModel struct {
	IDs                [][]int32 `json:"ids"`
	IDsSpecial         [][]int32 `json:"ids_special"`
	Decoded            []string  `json:"decoded"`
	DecodedSkipSpecial []string  `json:"decoded_skip_special"`
}

type expectedFile struct {
	Reference string                   `json:"reference"`
	Texts     []string                 `json:"texts"`
	Models    map[string]expectedModel `json:"models"`
}

func loadExpected(t testing.TB) (string, expectedFile) {
	dir := referenceDir(t)
	var exp expectedFile
	b, err := os.ReadFile(filepath.Join(dir, "expected", "tokenizers.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &exp); err != nil {
		t.Fatal(err)
	}
	var texts struct {
		Texts []string `json:"texts"`
	}
	b, err = os.ReadFile(filepath.Join("testdata", "texts.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &texts); err != nil {
		t.Fatal(err)
	}
	// The expected file holds the test texts, then chat renderings.
	if len(exp.Texts) < len(texts.Texts) || !reflect.DeepEqual(texts.Texts, exp.Texts[:len(texts.Texts)]) {
		t.Fatalf("%s was made from other texts than testdata/texts.json; rerun scripts/fetch-tokenizers.sh", dir)
	}
	return dir, exp
}

var referenceModels = []string{"llama3", "qwen", "sentencepiece-bpe", "sentencepiece-metaspace", "gpt2-style", "llama3-flags", "smollm-style", "digits-contiguous"}

// TestMatchesReference encodes every test text with every real tokenizer
// and compares the ids, with and without special tokens, and the decoded
// text with the Hugging Face tokenizers library's.
func TestMatchesReference(t *testing.T) {
	dir, exp := loadExpected(t)
	t.Logf("reference: %s", exp.Reference)
	for _, name := range referenceModels {
		t.Run(name, func(t *testing.T) {
			want, ok := exp.Models[name]
			if !ok {
				t.Fatalf("no expected ids for %s", name)
			}
			tok := loadOnce(t, filepath.Join(dir, "models", name))
			bad := 0
			for i, text := range exp.Texts {
				check := func(what string, got, want any) {
					if !reflect.DeepEqual(got, want) {
						bad++
						if bad <= 8 {
							t.Errorf("text %d %q %s:\n got  %v\n want %v", i, text, what, got, want)
						}
					}
				}
				check("ids", nonNil(tok.Encode(text, false)), nonNil(want.IDs[i]))
				ids := tok.Encode(text, true)
				check("ids with special tokens", nonNil(ids), nonNil(want.IDsSpecial[i]))
				dec, err := tok.Decode(want.IDsSpecial[i], false)
				if err != nil {
					t.Fatal(err)
				}
				check("decode", dec, want.Decoded[i])
				dec, _ = tok.Decode(want.IDsSpecial[i], true)
				check("decode skipping special tokens", dec, want.DecodedSkipSpecial[i])
			}
			if bad > 0 {
				t.Errorf("%d mismatches over %d texts", bad, len(exp.Texts))
			}
		})
	}
}

func nonNil(ids []int32) []int32 {
	if ids == nil {
		return []int32{}
	}
	return ids
}

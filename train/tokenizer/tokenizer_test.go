package tokenizer

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"
)

// corpus is a small multilingual training corpus for Train.
func corpus() []string {
	var texts struct {
		Texts []string `json:"texts"`
	}
	b, err := os.ReadFile(filepath.Join("testdata", "texts.json"))
	if err != nil {
		panic(err)
	}
	if err := json.Unmarshal(b, &texts); err != nil {
		panic(err)
	}
	var docs []string
	for range 3 {
		docs = append(docs, texts.Texts...)
	}
	docs = append(docs, strings.Repeat("the model learns from text on every machine and the data stays home. ", 40))
	return docs
}

var trainOnce = sync.OnceValues(func() (*Tokenizer, []byte) {
	tok, raw, err := Train(corpus(), 600)
	if err != nil {
		panic(err)
	}
	return tok, raw
})

func trained(t testing.TB) (*Tokenizer, []byte) {
	t.Helper()
	return trainOnce()
}

func TestTrainRoundTripsAndCompresses(t *testing.T) {
	tok, raw := trained(t)
	if tok.VocabSize() != 600 {
		t.Errorf("VocabSize = %d, want 600", tok.VocabSize())
	}
	_, again, err := Train(corpus(), 600)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw, again) {
		t.Error("training twice on the same corpus gave different tokenizer.json files")
	}
	texts := append(corpus(), "\x00\x01 control bytes", "emoji 🤗 not in the corpus ǅ", "<|im_start|>user\nhi<|im_end|>\n")
	var bytesIn, idsOut int
	for _, text := range texts {
		ids := tok.Encode(text, false)
		got, err := tok.Decode(ids, false)
		if err != nil {
			t.Fatal(err)
		}
		if got != text {
			t.Errorf("Decode(Encode(%q)) = %q", text, got)
		}
		bytesIn += len(text)
		idsOut += len(ids)
	}
	if ratio := float64(bytesIn) / float64(idsOut); ratio < 2 {
		t.Errorf("trained tokenizer gives %.2f bytes per token on its own corpus; merges should give at least 2", ratio)
	}
	ids := tok.Encode("<|im_start|>user", false)
	if id, _ := tok.TokenID(TrainedIMStart); ids[0] != id {
		t.Errorf("special token in text encoded as %v, want it first as id %d", ids, id)
	}
	if s, _ := tok.Decode(ids, true); s != "user" {
		t.Errorf("Decode skipping special tokens = %q, want %q", s, "user")
	}
}

// TestTrainedMatchesReference runs the Hugging Face tokenizers library on
// the file Train wrote: same ids for every test text.
func TestTrainedMatchesReference(t *testing.T) {
	dir := referenceDir(t)
	tok, raw := trained(t)
	file := filepath.Join(t.TempDir(), "tokenizer.json")
	if err := os.WriteFile(file, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	texts := corpus()
	in, _ := json.Marshal(map[string]any{"texts": texts})
	cmd := exec.Command("node", filepath.Join(dir, "npm", "reference.js"), "encode", file)
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("reference: %v\n%s", err, stderr.String())
	}
	var ref struct {
		IDs [][]int32 `json:"ids"`
	}
	if err := json.Unmarshal(out, &ref); err != nil {
		t.Fatal(err)
	}
	for i, text := range texts {
		if got := nonNil(tok.Encode(text, false)); !reflect.DeepEqual(got, nonNil(ref.IDs[i])) {
			t.Errorf("text %q:\n got  %v\n want %v", text, got, ref.IDs[i])
		}
	}
}

func TestWriteFolderAndLoad(t *testing.T) {
	_, raw := trained(t)
	dir := filepath.Join(t.TempDir(), "tok")
	if err := WriteFolder(dir, raw); err != nil {
		t.Fatal(err)
	}
	tok, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if s, id, ok := tok.EOS(); !ok || s != TrainedEOS || id != 597 {
		t.Errorf("EOS = %q %d %v", s, id, ok)
	}
	if s, _, ok := tok.BOS(); !ok || s != TrainedBOS {
		t.Errorf("BOS = %q %v", s, ok)
	}
	if tok.ChatTemplate() != TrainedChatTemplate {
		t.Errorf("chat template not read back")
	}
	if ids := tok.Encode("hello", true); len(ids) == 0 || ids[0] == 596 {
		t.Errorf("add_bos_token false, but Encode added BOS: %v", ids)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("Load of a missing folder succeeded")
	}
	empty := t.TempDir()
	if _, err := Load(empty); err == nil || !strings.Contains(err.Error(), "no tokenizer.json") {
		t.Errorf("Load of a folder without tokenizer.json: %v", err)
	}
}

// mutate returns the trained tokenizer.json with one JSON path replaced.
func mutate(t *testing.T, raw []byte, set func(m map[string]any)) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	set(m)
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRefusesWhatIsNotImplemented(t *testing.T) {
	_, raw := trained(t)
	model := func(m map[string]any) map[string]any { return m["model"].(map[string]any) }
	cases := []struct {
		name string
		set  func(m map[string]any)
		want string
	}{
		{"unigram", func(m map[string]any) { model(m)["type"] = "Unigram" }, `tokenizer.json: model.type: "Unigram" is not supported`},
		{"wordpiece", func(m map[string]any) { model(m)["type"] = "WordPiece" }, `model.type: "WordPiece" is not supported`},
		{"normalizer", func(m map[string]any) {
			m["normalizer"] = map[string]any{"type": "Sequence", "normalizers": []any{map[string]any{"type": "NFC"}, map[string]any{"type": "BertNormalizer"}}}
		}, `normalizer.normalizers[1].type: "BertNormalizer" is not supported`},
		{"pre-tokenizer", func(m map[string]any) {
			m["pre_tokenizer"].(map[string]any)["pretokenizers"].([]any)[1] = map[string]any{"type": "Whitespace"}
		}, `pre_tokenizer.pretokenizers[1].type: "Whitespace" is not supported`},
		{"split behaviour", func(m map[string]any) {
			m["pre_tokenizer"].(map[string]any)["pretokenizers"].([]any)[0].(map[string]any)["behavior"] = "Sideways"
		}, `pre_tokenizer.pretokenizers[0].behavior: "Sideways" is not supported`},
		{"bad regex", func(m map[string]any) {
			m["pre_tokenizer"].(map[string]any)["pretokenizers"].([]any)[0].(map[string]any)["pattern"] = map[string]any{"Regex": "(unclosed"}
		}, `pre_tokenizer.pretokenizers[0].pattern.Regex`},
		{"decoder", func(m map[string]any) { m["decoder"] = map[string]any{"type": "WordPiece"} }, `decoder.type: "WordPiece" is not supported`},
		{"post-processor", func(m map[string]any) { m["post_processor"] = map[string]any{"type": "RobertaProcessing"} }, `post_processor.type: "RobertaProcessing" is not supported`},
		{"no type", func(m map[string]any) { m["decoder"] = map[string]any{"kind": "ByteLevel"} }, `decoder.type: missing`},
		{"dropout", func(m map[string]any) { model(m)["dropout"] = 0.1 }, `model.dropout: 0.1`},
		{"merge of unknown token", func(m map[string]any) {
			model(m)["merges"] = append(model(m)["merges"].([]any), "zz qq")
		}, `model.merges[`},
		{"malformed merge", func(m map[string]any) { model(m)["merges"] = []any{"a b c"} }, `model.merges[0]: "a b c" is not two tokens`},
		{"negative id", func(m map[string]any) { model(m)["vocab"].(map[string]any)["Ā"] = -3 }, `model.vocab["Ā"]: id -3`},
		{"unknown unk", func(m map[string]any) { model(m)["unk_token"] = "<nope>" }, `model.unk_token: "<nope>" is not in the vocabulary`},
		{"truncation", func(m map[string]any) { m["truncation"] = map[string]any{"max_length": 8} }, `truncation: must be null`},
		{"template without A", func(m map[string]any) {
			m["post_processor"] = map[string]any{"type": "TemplateProcessing", "single": []any{}, "special_tokens": map[string]any{}}
		}, `post_processor.single: has no sequence A`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse(mutate(t, raw, c.set))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v, want one containing %q", err, c.want)
			}
		})
	}
	if _, err := Parse([]byte(`{"model": `)); err == nil || !strings.HasPrefix(err.Error(), "tokenizer.json:") {
		t.Errorf("truncated JSON: %v", err)
	}
}

func TestSplitBehaviours(t *testing.T) {
	// "the-final--countdown" split on "-", as the tokenizers library
	// documents each behaviour.
	s := "the-final--countdown"
	var m [][]int
	for i := 0; i < len(s); i++ {
		if s[i] == '-' {
			m = append(m, []int{i, i + 1})
		}
	}
	cases := map[splitBehavior][]string{
		removed:            {"the", "final", "countdown"},
		isolated:           {"the", "-", "final", "-", "-", "countdown"},
		mergedWithPrevious: {"the-", "final-", "-", "countdown"},
		mergedWithNext:     {"the", "-final", "-", "-countdown"},
		contiguous:         {"the", "-", "final", "--", "countdown"},
	}
	for b, want := range cases {
		var got []string
		for _, sp := range splitBy(s, m, false, b) {
			got = append(got, s[sp.start:sp.end])
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("behaviour %d: %q, want %q", b, got, want)
		}
	}
}

func TestLossyUTF8(t *testing.T) {
	cases := []struct{ in, want string }{
		{"plain", "plain"},
		{"a\xffb", "a\uFFFDb"},
		{"\xe2\x9c", "\uFFFD"},                 // a truncated 3-byte sequence is one maximal subpart
		{"\xe2\x9c\x93\xe2", "✓\uFFFD"},        // complete then truncated
		{"\xed\xa0\x80", "\uFFFD\uFFFD\uFFFD"}, // a surrogate: three subparts
		{"\xf0\x9f\xa4", "\uFFFD"},
		{"\xc0\xaf", "\uFFFD\uFFFD"},
	}
	for _, c := range cases {
		if got := lossyUTF8([]byte(c.in)); got != c.want {
			t.Errorf("lossyUTF8(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestDecodeRejectsUnknownIDs(t *testing.T) {
	tok, _ := trained(t)
	if _, err := tok.Decode([]int32{5, 600}, false); err == nil || !strings.Contains(err.Error(), "position 1") {
		t.Errorf("Decode of an id past the vocabulary: %v", err)
	}
	if _, err := tok.Decode([]int32{-1}, false); err == nil {
		t.Error("Decode of a negative id succeeded")
	}
}

func TestConcurrentEncode(t *testing.T) {
	tok, _ := trained(t)
	texts := corpus()
	want := make([][]int32, len(texts))
	for i, s := range texts {
		want[i] = tok.Encode(s, false)
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range texts {
				j := (i + g*7) % len(texts)
				if got := tok.Encode(texts[j], false); !reflect.DeepEqual(got, want[j]) {
					t.Errorf("concurrent Encode(%q) differs", texts[j])
					return
				}
			}
		}()
	}
	wg.Wait()
}

// FuzzParse feeds arbitrary bytes to the tokenizer.json reader: it must
// return an error or a tokenizer that encodes and decodes without panicking.
func FuzzParse(f *testing.F) {
	_, raw, err := Train([]string{"hello world, hello fuzz. 123 🤗"}, 270)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(raw, "hello world")
	f.Add([]byte(`{"model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2},"merges":["a b"]},"added_tokens":[{"id":3,"content":"<s>","special":true,"lstrip":true,"rstrip":true}],"normalizer":{"type":"Sequence","normalizers":[{"type":"Prepend","prepend":"▁"},{"type":"Replace","pattern":{"String":" "},"content":"▁"}]},"pre_tokenizer":{"type":"Metaspace","replacement":"▁","prepend_scheme":"first","split":true},"decoder":{"type":"Sequence","decoders":[{"type":"ByteFallback"},{"type":"Fuse"},{"type":"Strip","content":" ","start":1,"stop":0}]},"post_processor":{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<s>"}},{"Sequence":{"id":"A"}}],"special_tokens":{"<s>":{"ids":[3]}}}}`), "ab <s> ba")
	f.Add([]byte(`{"model":{"type":"BPE","vocab":{"<unk>":0,"<0x41>":1,"x":2},"merges":[],"unk_token":"<unk>","byte_fallback":true,"fuse_unk":true}}`), "xAyzx")
	f.Fuzz(func(t *testing.T, raw []byte, text string) {
		tok, err := Parse(raw)
		if err != nil {
			return
		}
		for _, special := range []bool{false, true} {
			ids := tok.Encode(text, special)
			for _, id := range ids {
				if id < 0 || int(id) >= tok.VocabSize() {
					t.Fatalf("Encode gave id %d outside [0,%d)", id, tok.VocabSize())
				}
			}
			s, err := tok.Decode(ids, special)
			if err != nil {
				t.Fatal(err)
			}
			if !utf8.ValidString(s) {
				t.Fatalf("Decode gave invalid UTF-8 %q", s)
			}
		}
	})
}

func TestTemplateIDsMustBeTokens(t *testing.T) {
	_, raw := trained(t)
	b := mutate(t, raw, func(m map[string]any) {
		m["post_processor"] = map[string]any{"type": "TemplateProcessing",
			"single":         []any{map[string]any{"SpecialToken": map[string]any{"id": "<x>"}}, map[string]any{"Sequence": map[string]any{"id": "A"}}},
			"special_tokens": map[string]any{"<x>": map[string]any{"ids": []any{9999}}}}
	})
	if _, err := Parse(b); err == nil || !strings.Contains(err.Error(), "adds id 9999") {
		t.Errorf("template adding a missing id: %v", err)
	}
}

func TestChatTemplateFileWins(t *testing.T) {
	_, raw := trained(t)
	dir := filepath.Join(t.TempDir(), "tok")
	if err := WriteFolder(dir, raw); err != nil {
		t.Fatal(err)
	}
	before, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	const src = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
	if err := os.WriteFile(filepath.Join(dir, "chat_template.jinja"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	tok, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if tok.ChatTemplate() != src {
		t.Errorf("chat_template.jinja was not used: %q", tok.ChatTemplate())
	}
	if tok.Fingerprint() == before.Fingerprint() {
		t.Error("the fingerprint did not change with the chat template")
	}
}

// A vocabulary may give one id to several tokens, or hold the empty
// string: decoding is then the same on every run (the smaller string),
// a warning says so, and the empty token decodes (it once read as "not
// in the vocabulary", depending on map order; found by FuzzParse).
func TestSharedIDsAndEmptyToken(t *testing.T) {
	raw := []byte(`{"model":{"type":"BPE","vocab":{"":0,"b":1,"a":1,"c":2},"merges":[]}}`)
	for range 20 {
		tok, err := Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		s, err := tok.Decode([]int32{0, 1, 2}, false)
		if err != nil {
			t.Fatal(err)
		}
		if s != " a c" {
			t.Fatalf("decode = %q, want %q", s, " a c")
		}
		if w := tok.Warnings(); len(w) != 1 || !strings.Contains(w[0], "id 1") {
			t.Fatalf("warnings %q, want one naming id 1", w)
		}
	}
}

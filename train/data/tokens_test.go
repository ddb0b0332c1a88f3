package data

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencluster/opencluster/train/tokenizer"
)

var testTokenizer = sync.OnceValue(func() *tokenizer.Tokenizer {
	corpus := []string{string(prose(1, 20000)), "You are a helpful assistant. What is the capital of France? The capital of France is Paris."}
	tok, _, err := tokenizer.Train(corpus, 400)
	if err != nil {
		panic(err)
	}
	return tok
})

func tokOpts(t *testing.T, dir string) Options {
	return Options{Dir: dir, SeqLen: 16, BatchSize: 4, ValFraction: 0.2, Seed: 1, ChunkSize: 512,
		Logger: slog.New(slog.DiscardHandler), Tokenizer: testTokenizer(), Pack: true, CacheDir: filepath.Join(t.TempDir(), "cache")}
}

func TestTokenizedTextFolder(t *testing.T) {
	tok := testTokenizer()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a.txt"), prose(1, 9000))
	writeFile(t, filepath.Join(dir, "sub", "b.md"), prose(2, 7000))
	o := tokOpts(t, dir)
	d1, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer d1.Close()
	st := d1.Stats()
	if st.Files != 2 || st.Examples < 20 || st.TrainTokens == 0 || st.ValTokens == 0 {
		t.Fatalf("stats %+v", st)
	}
	// Far fewer tokens than bytes: the tokenizer, not bytes, made them.
	if float64(st.TrainTokens+st.ValTokens) > 0.6*float64(st.Bytes) {
		t.Errorf("%d tokens for %d bytes: not tokenized with the BPE tokenizer", st.TrainTokens+st.ValTokens, st.Bytes)
	}
	cached, _ := filepath.Glob(filepath.Join(o.CacheDir, "tokens-*"))
	if len(cached) != 2 {
		t.Fatalf("cache holds %v, want an ids file and its index", cached)
	}
	b, err := d1.TrainBatch(3, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Every row decodes to text of the corpus; targets are the next tokens.
	all := string(prose(1, 9000)) + string(prose(2, 7000))
	for i := 0; i < b.B; i++ {
		row := b.Tokens[i*b.T : (i+1)*b.T]
		s, err := tok.Decode(row, true)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(all, strings.TrimSpace(s)) && !strings.Contains(s, "<|") {
			t.Errorf("row %d decodes to %q, not text of the corpus", i, s)
		}
		for j := 0; j+1 < b.T; j++ {
			if b.Targets[i*b.T+j] != row[j+1] {
				t.Fatalf("row %d: target %d is %d, next token %d", i, j, b.Targets[i*b.T+j], row[j+1])
			}
		}
	}
	// A second Open reads the cache and gives the same batches, in any order.
	d2, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	for _, step := range []int{9, 3, 1} {
		x, _ := d1.TrainBatch(step, 1)
		y, err := d2.TrainBatch(step, 1)
		if err != nil || !reflect.DeepEqual(x, y) {
			t.Fatalf("step %d: batches differ between two Opens (%v)", step, err)
		}
	}
	v1, _ := d1.ValBatches(2)
	v2, _ := d2.ValBatches(2)
	if !reflect.DeepEqual(v1, v2) || len(v1) != 2 {
		t.Fatal("validation batches differ between two Opens")
	}
	// Train and validation never share an example.
	inVal := map[[2]uint32]bool{}
	for _, ex := range d1.tokens.val {
		inVal[[2]uint32{ex.file, ex.unit}] = true
	}
	for _, ex := range d1.tokens.train {
		if inVal[[2]uint32{ex.file, ex.unit}] {
			t.Fatalf("chunk %d of %s is in both splits", ex.unit, d1.files[ex.file])
		}
	}
	// Changing a file makes a new cache instead of reading stale ids.
	writeFile(t, filepath.Join(dir, "a.txt"), prose(3, 9000))
	d3, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	d3.Close()
	if now, _ := filepath.Glob(filepath.Join(o.CacheDir, "tokens-*")); len(now) != 2 || reflect.DeepEqual(now, cached) {
		t.Errorf("after editing a file the cache holds %v (before: %v), want a new cache replacing the old", now, cached)
	}
	// Another folder gets a cache of its own beside it.
	other := t.TempDir()
	writeFile(t, filepath.Join(other, "c.txt"), prose(4, 9000))
	o2 := o
	o2.Dir = other
	d4, err := Open(o2)
	if err != nil {
		t.Fatal(err)
	}
	d4.Close()
	if now, _ := filepath.Glob(filepath.Join(o.CacheDir, "tokens-*")); len(now) != 4 {
		t.Errorf("two folders share the cache folder with %d files, want 4", len(now))
	}
}

func TestTokenCacheSurvivesCorruption(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a.txt"), prose(1, 9000))
	o := tokOpts(t, dir)
	d, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := d.TrainBatch(1, 0)
	d.Close()
	bins, _ := filepath.Glob(filepath.Join(o.CacheDir, "tokens-*.bin"))
	if err := os.WriteFile(bins[0], []byte("torn"), 0o644); err != nil {
		t.Fatal(err)
	}
	d, err = Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if got, _ := d.TrainBatch(1, 0); !reflect.DeepEqual(got, want) {
		t.Error("a torn cache file was used instead of being rebuilt")
	}
}

// chatLines returns JSONL lines: conversations and plain texts.
func chatLines(n int) []byte {
	var b strings.Builder
	for i := range n {
		if i%3 == 2 {
			fmt.Fprintf(&b, "{\"text\": \"plain document %d: the model learns from text on every machine.\"}\n", i)
			continue
		}
		line, _ := json.Marshal(map[string]any{"messages": []map[string]string{
			{"role": "system", "content": "You are a helpful assistant."},
			{"role": "user", "content": fmt.Sprintf("Question %d: what is the capital of France?", i)},
			{"role": "assistant", "content": fmt.Sprintf("The capital of France is Paris (%d).", i)},
		}})
		b.Write(line)
		b.WriteByte('\n')
	}
	return []byte(b.String())
}

func TestChatJSONLMasksPrompts(t *testing.T) {
	tok := testTokenizer()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "chat.jsonl"), chatLines(60))
	o := tokOpts(t, filepath.Join(dir, "chat.jsonl"))
	o.SeqLen = 160
	for _, pack := range []bool{false, true} {
		o.Pack = pack
		d, err := Open(o)
		if err != nil {
			t.Fatal(err)
		}
		st := d.Stats()
		if st.Examples != 60 || st.BadLines != 0 {
			t.Fatalf("pack=%v: stats %+v", pack, st)
		}
		scored, masked := 0, 0
		for step := 1; step <= 5; step++ {
			b, err := d.TrainBatch(step, 0)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < b.B; i++ {
				var picked []int32
				for j := 0; j < b.T; j++ {
					if tg := b.Targets[i*b.T+j]; tg >= 0 {
						picked = append(picked, tg)
						scored++
					} else {
						masked++
					}
				}
				s, _ := tok.Decode(picked, false)
				// Only replies, their end-of-turn tokens and plain texts
				// are learned: never the system or user turns.
				for _, prompt := range []string{"helpful assistant", "Question", "user\n", "system\n"} {
					if strings.Contains(s, prompt) {
						t.Errorf("pack=%v: a scored target spells prompt text %q: %q", pack, prompt, s)
					}
				}
			}
		}
		if scored == 0 || masked == 0 {
			t.Errorf("pack=%v: %d scored and %d masked targets; want both", pack, scored, masked)
		}
		if !pack {
			// Unpacked rows start at an example's beginning.
			b, _ := d.TrainBatch(1, 0)
			if s, _ := tok.Decode(b.Tokens[:8], false); !strings.HasPrefix(s, "<|im_start|>") && !strings.HasPrefix(s, "plain") {
				t.Errorf("unpacked row starts with %q, not an example's start", s)
			}
		}
		d.Close()
	}
}

func TestTruncationSides(t *testing.T) {
	tok := testTokenizer()
	dir := t.TempDir()
	var b strings.Builder
	for i := range 30 {
		fmt.Fprintf(&b, "{\"text\": \"BEGIN %s END %d\"}\n", strings.Repeat("the model learns ", 20), i)
	}
	writeFile(t, filepath.Join(dir, "long.jsonl"), []byte(b.String()))
	o := tokOpts(t, dir)
	o.Pack = false
	for side, want := range map[string]string{TruncateRight: "BEGIN", TruncateLeft: "END"} {
		o.Truncation = side
		d, err := Open(o)
		if err != nil {
			t.Fatal(err)
		}
		batch, _ := d.TrainBatch(1, 0)
		s, _ := tok.Decode(batch.Tokens[:batch.T], true)
		if !strings.Contains(s, want) {
			t.Errorf("truncation %s kept %q, want the part with %s", side, s, want)
		}
		d.Close()
	}
	o.Truncation = "middle"
	if _, err := Open(o); err == nil || !strings.Contains(err.Error(), `truncation "middle"`) {
		t.Errorf("bad truncation: %v", err)
	}
}

func TestMalformedLines(t *testing.T) {
	dir := t.TempDir()
	good := chatLines(40)
	bad := []struct{ line, want string }{
		{`{"text": 5}`, "invalid JSON"},
		{`{"messages": [{"role": "user", "content": "hi"}]}`, "no assistant message"},
		{`{"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}`, `messages[0]: "content" must be a string`},
		{`{"prompt": "x"}`, `want {"text"`},
		{`not json at all`, "invalid JSON"},
		{`{"text": "a"} {"text": "b"}`, "more than one JSON value"},
		{`{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]}`, ""},
	}
	for i, c := range bad {
		body := append(append([]byte{}, good...), []byte(c.line+"\n")...)
		body = append(body, good...)
		path := filepath.Join(dir, fmt.Sprintf("f%d.jsonl", i))
		writeFile(t, path, body)
		o := tokOpts(t, path)
		o.SeqLen = 32
		d, err := Open(o)
		if c.want == "" { // a valid line
			if err != nil {
				t.Errorf("line %q: %v", c.line, err)
			} else {
				d.Close()
			}
			continue
		}
		if err == nil {
			d.Close()
			t.Errorf("line %q accepted", c.line)
			continue
		}
		for _, w := range []string{fmt.Sprintf("f%d.jsonl:41:", i), c.want, "--skip-bad-lines"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("line %q: error %q does not mention %q", c.line, err, w)
			}
		}
		o.SkipBadLines = true
		d, err = Open(o)
		if err != nil {
			t.Fatalf("line %q with SkipBadLines: %v", c.line, err)
		}
		if st := d.Stats(); st.BadLines != 1 || st.Examples != 80 {
			t.Errorf("line %q with SkipBadLines: %d bad lines, %d examples; want 1 and 80", c.line, st.BadLines, st.Examples)
		}
		d.Close()
	}
}

// TestStopOnBadLineLeaksNothing fails on a bad line early in a long file:
// the readers and encoders all stop.
func TestStopOnBadLineLeaksNothing(t *testing.T) {
	dir := t.TempDir()
	body := append([]byte("{\"nope\": 1}\n"), bytes.Repeat([]byte("{\"text\": \"the model learns from text on every machine\"}\n"), 5000)...)
	writeFile(t, filepath.Join(dir, "big.jsonl"), body)
	before := runtime.NumGoroutine()
	for range 5 {
		if _, err := Open(tokOpts(t, dir)); err == nil || !strings.Contains(err.Error(), "big.jsonl:1:") {
			t.Fatalf("error %v, want one naming big.jsonl:1", err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("%d goroutines left running after failed Opens (%d before)", n, before)
	}
}

func TestChatNeedsTokenizer(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "c.jsonl"), chatLines(30))
	o := tokOpts(t, dir)
	o.Tokenizer = nil
	_, err := Open(o)
	if err == nil || !strings.Contains(err.Error(), "needs a tokenizer") || !strings.Contains(err.Error(), "c.jsonl:1") {
		t.Errorf("chat data without a tokenizer: %v", err)
	}
	// Plain JSONL text works byte-level.
	writeFile(t, filepath.Join(dir, "c.jsonl"), []byte(strings.Repeat("{\"text\": \"byte level text is fine here\"}\n", 40)))
	d, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if b, _ := d.TrainBatch(1, 0); b.Tokens[0] > 255 {
		t.Errorf("byte-level JSONL gave id %d", b.Tokens[0])
	}
}

func TestPackedRowsAlwaysLearnSomething(t *testing.T) {
	dir := t.TempDir()
	// Long prompts, one-word replies, short windows: most windows are prompt only.
	var b strings.Builder
	for i := range 40 {
		line, _ := json.Marshal(map[string]any{"messages": []map[string]string{
			{"role": "user", "content": strings.Repeat(fmt.Sprintf("the model learns from text %d. ", i), 8)},
			{"role": "assistant", "content": "yes"},
		}})
		b.Write(line)
		b.WriteByte('\n')
	}
	writeFile(t, filepath.Join(dir, "c.jsonl"), []byte(b.String()))
	o := tokOpts(t, dir)
	o.SeqLen, o.BatchSize = 8, 1
	d, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for step := 1; step <= 30; step++ {
		b, err := d.TrainBatch(step, 0)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, tg := range b.Targets {
			if tg >= 0 {
				n++
			}
		}
		if n == 0 {
			t.Fatalf("step %d: a packed row with no target", step)
		}
	}
	vals, _ := d.ValBatches(d.NumValBatches())
	for i, v := range vals {
		n := 0
		for _, tg := range v.Targets {
			if tg >= 0 {
				n++
			}
		}
		if n == 0 {
			t.Fatalf("validation batch %d has no target", i)
		}
	}
}

// A chat template is someone else's code (it comes with the model): one
// that would fill the machine's memory is stopped by the sandbox and fails
// the whole Open, naming the refusal, even with SkipBadLines (it is not
// any line's fault, and trying it on every line would cost each time).
func TestHostileChatTemplateIsRefused(t *testing.T) {
	tok, _, err := tokenizer.Train([]string{string(prose(3, 4000))}, 300)
	if err != nil {
		t.Fatal(err)
	}
	tok.SetChatTemplate(`{% set s = 'ab' %}{% for i in range(40) %}{% set s = s ~ s %}{% endfor %}{% for m in messages %}{{ s }}{% endfor %}`)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "chat.jsonl"), chatLines(30))
	o := tokOpts(t, filepath.Join(dir, "chat.jsonl"))
	o.Tokenizer, o.SkipBadLines = tok, true
	_, err = Open(o)
	if !errors.Is(err, tokenizer.ErrTemplateRefused) || !strings.Contains(err.Error(), "chat.jsonl:1:") || !strings.Contains(err.Error(), "memory") {
		t.Fatalf("Open with a template that doubles a string 40 times: %v; want the template refused for its memory, naming chat.jsonl:1", err)
	}
}

package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencluster/opencluster/train/tokenizer"
)

func TestTokenizeRoundTrip(t *testing.T) {
	tok, raw, err := tokenizer.Train([]string{strings.Repeat("the worker trains the adapter on its data. ", 50)}, 300)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "tok")
	if err := tokenizer.WriteFolder(dir, raw); err != nil {
		t.Fatal(err)
	}
	text := "the worker trains 🤗\n<|im_start|>"
	stdin = text
	out, _, err := execute(t, "tokenize", "--tokenizer", dir, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var ids []int32
	if err := json.Unmarshal([]byte(out), &ids); err != nil {
		t.Fatalf("--json output %q: %v", out, err)
	}
	want := tok.Encode(text, true)
	if len(ids) != len(want) || len(ids) >= len(text) {
		t.Fatalf("ids %v, want %v (fewer ids than bytes)", ids, want)
	}
	plain := strings.Trim(strings.ReplaceAll(out, ",", " "), "[]\n")
	stdin = plain
	back, _, err := execute(t, "tokenize", "--tokenizer", filepath.Join(dir, "tokenizer.json"), "--decode")
	if err != nil {
		t.Fatal(err)
	}
	if back != text+"\n" {
		t.Errorf("--decode gave %q, want %q", back, text)
	}
	stdin = plain
	back, _, _ = execute(t, "tokenize", "--tokenizer", dir, "--decode", "--skip-special-tokens")
	if strings.Contains(back, "<|im_start|>") {
		t.Errorf("--skip-special-tokens kept the special token: %q", back)
	}

	for _, c := range []struct {
		args  []string
		stdin string
		want  string
	}{
		{[]string{"tokenize"}, "x", "--tokenizer is required"},
		{[]string{"tokenize", "--tokenizer", t.TempDir()}, "x", "no tokenizer.json"},
		{[]string{"tokenize", "--tokenizer", dir, "--decode"}, "1 two 3", `item 1 "two"`},
		{[]string{"tokenize", "--tokenizer", dir, "--decode"}, "[5, 99999]", "id 99999 at position 1"},
		{[]string{"tokenize", "--tokenizer", dir}, "bad \xff byte", "not valid UTF-8"},
	} {
		stdin = c.stdin
		if _, _, err := execute(t, c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error %v, want %q", c.args, err, c.want)
		}
	}
}

// TestChatFineTuneCommands runs pretrain and train on chat JSONL with a BPE
// tokenizer folder, unpacked rows and a malformed line skipped, then
// generates with the same tokenizer.
func TestChatFineTuneCommands(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", t.TempDir()) // the token cache goes there
	dir := t.TempDir()
	var b strings.Builder
	var corpus []string
	for i := range 60 {
		line, _ := json.Marshal(map[string]any{"messages": []map[string]string{
			{"role": "user", "content": fmt.Sprintf("what does worker %d send?", i)},
			{"role": "assistant", "content": fmt.Sprintf("worker %d sends its update.", i)},
		}})
		b.Write(line)
		b.WriteByte('\n')
		corpus = append(corpus, string(line))
		if i == 30 {
			b.WriteString("{\"messages\": \"not a list\"}\n")
		}
	}
	data := filepath.Join(dir, "chat.jsonl")
	if err := os.WriteFile(data, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	_, raw, err := tokenizer.Train(corpus, 300)
	if err != nil {
		t.Fatal(err)
	}
	tokDir := filepath.Join(dir, "tok")
	if err := tokenizer.WriteFolder(tokDir, raw); err != nil {
		t.Fatal(err)
	}
	cfg := smallConfig(t, dir)
	src, _ := os.ReadFile(cfg)
	if err := os.WriteFile(cfg, []byte(strings.Replace(string(src), "vocab_size: 256", "vocab_size: 300", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(dir, "base.safetensors")
	common := []string{"--config", cfg, "--data", data, "--tokenizer", tokDir, "--steps", "3", "--threads", "1", "--json"}
	_, _, err = execute(t, append([]string{"pretrain", "--out", base}, common...)...)
	if err == nil || !strings.Contains(err.Error(), "chat.jsonl:32:") || !strings.Contains(err.Error(), "--skip-bad-lines") {
		t.Fatalf("malformed line: %v", err)
	}
	common = append(common, "--skip-bad-lines", "--pack=false", "--truncation", "left")
	if _, _, err := execute(t, append([]string{"pretrain", "--out", base}, common...)...); err != nil {
		t.Fatal(err)
	}
	adapter := filepath.Join(dir, "adapter")
	if _, _, err := execute(t, append([]string{"train", "--base", base, "--out", adapter}, common...)...); err != nil {
		t.Fatal(err)
	}
	// --chat-template replaces the tokenizer's template.
	custom := filepath.Join(dir, "custom.jinja")
	if err := os.WriteFile(custom, []byte("{{ raise_exception('the custom template ran') }}"), 0o644); err != nil {
		t.Fatal(err)
	}
	noSkip := []string{"--config", cfg, "--data", data, "--tokenizer", tokDir, "--steps", "3", "--threads", "1", "--json"}
	if _, _, err := execute(t, append([]string{"train", "--base", base, "--out", filepath.Join(dir, "a2"), "--chat-template", custom}, noSkip...)...); err == nil || !strings.Contains(err.Error(), "chat.jsonl:1:") || !strings.Contains(err.Error(), "the custom template ran") {
		t.Errorf("--chat-template: %v", err)
	}
	// pretrain --chat-template writes the template into its folder, where
	// generate --chat finds it: this one refuses system turns, which the
	// training data has none of.
	systemless := filepath.Join(dir, "systemless.jinja")
	tmpl := "{% if messages[0]['role'] == 'system' %}{{ raise_exception('the systemless template ran') }}{% endif %}" + tokenizer.TrainedChatTemplate
	if err := os.WriteFile(systemless, []byte(tmpl), 0o644); err != nil {
		t.Fatal(err)
	}
	base2 := filepath.Join(dir, "base2")
	if _, _, err := execute(t, append([]string{"pretrain", "--out", base2, "--chat-template", systemless}, common...)...); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(base2, "chat_template.jinja")); string(got) != tmpl {
		t.Errorf("chat_template.jinja in the pretrained folder holds %q, want the --chat-template file", got)
	}
	if cfg, _ := os.ReadFile(filepath.Join(base2, "tokenizer_config.json")); !strings.Contains(string(cfg), "eos_token") || strings.Contains(string(cfg), "chat_template") {
		t.Errorf("tokenizer_config.json should keep its tokens and lose the replaced template:\n%s", cfg)
	}
	chat := []string{"generate", "--base", base2, "--chat", "--prompt", "what does worker 3 send?", "--max-tokens", "4", "--threads", "1"}
	if _, _, err := execute(t, chat...); err != nil {
		t.Errorf("generate --chat: %v", err)
	}
	if _, _, err := execute(t, append(chat, "--system", "be brief")...); err == nil || !strings.Contains(err.Error(), "the systemless template ran") {
		t.Errorf("generate --chat --system on the pretrained folder: %v, want the --chat-template template to run", err)
	}
	out, _, err := execute(t, "generate", "--base", base, "--adapter", adapter, "--config", cfg, "--tokenizer", tokDir, "--prompt", "worker 3", "--max-tokens", "5", "--threads", "1")
	if err != nil || !strings.HasPrefix(out, "worker 3") {
		t.Fatalf("generate: %q, %v", out, err)
	}
	// A byte-level model cannot take this tokenizer's ids.
	_, _, err = execute(t, "generate", "--base", base, "--tokenizer", filepath.Join(t.TempDir(), "none"), "--prompt", "x")
	if err == nil || !strings.Contains(err.Error(), "--tokenizer") {
		t.Errorf("missing tokenizer: %v", err)
	}
}

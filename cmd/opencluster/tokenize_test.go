package main

import (
	"encoding/json"
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

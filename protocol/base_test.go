package protocol

import (
	"strings"
	"testing"
)

func TestBaseManifest(t *testing.T) {
	h := func(c byte) string { return strings.Repeat(string(c), 64) }
	files := []BaseFile{{"model.safetensors", h('a'), 1000}, {"config.json", h('b'), 10}, {"tokenizer.json", h('c'), 77}}
	want := "opencluster base v1\n" + h('b') + " 10 config.json\n" + h('a') + " 1000 model.safetensors\n" + h('c') + " 77 tokenizer.json\n"
	if got := string(BaseManifest(files)); got != want {
		t.Fatalf("manifest\n%s\nwant\n%s", got, want)
	}
	rev := []BaseFile{files[2], files[1], files[0]}
	if BaseFolderSHA256(rev) != BaseFolderSHA256(files) {
		t.Error("the folder hash depends on the list's order")
	}
	for i, edit := range []func(*BaseFile){
		func(f *BaseFile) { f.Name = "model-00001.safetensors" },
		func(f *BaseFile) { f.SHA256 = h('d') },
		func(f *BaseFile) { f.Bytes++ },
	} {
		changed := append([]BaseFile(nil), files...)
		edit(&changed[0])
		if BaseFolderSHA256(changed) == BaseFolderSHA256(files) {
			t.Errorf("edit %d leaves the folder hash unchanged", i)
		}
	}
	if err := CheckBaseFiles(files, h('c')); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []struct {
		files []BaseFile
		tok   string
		want  string
	}{
		{[]BaseFile{{"../config.json", h('a'), 1}}, "", "plain file name"},
		{[]BaseFile{{"sub/config.json", h('a'), 1}}, "", "plain file name"},
		{[]BaseFile{{".hidden", h('a'), 1}}, "", "plain file name"},
		{[]BaseFile{{"config.json", h('a'), 1}, {"config.json", h('b'), 1}}, "", "twice"},
		{[]BaseFile{{"config.json", "ABC", 1}}, "", "malformed"},
		{[]BaseFile{{"config.json", h('a'), -1}}, "", "malformed"},
		{[]BaseFile{{"model.safetensors", h('a'), 1}}, "", "no config.json"},
		{files, h('d'), "tokenizer_sha256"},
		{files, "", "tokenizer_sha256"},
		{make([]BaseFile, MaxBaseFiles+1), "", "at most"},
	} {
		if err := CheckBaseFiles(bad.files, bad.tok); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%v: error %v, want %q", bad.files[:min(2, len(bad.files))], err, bad.want)
		}
	}
}

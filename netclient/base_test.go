package netclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencluster/opencluster/protocol"
	"github.com/opencluster/opencluster/train"
	"github.com/opencluster/opencluster/train/backend"
	"github.com/opencluster/opencluster/train/tokenizer"
)

// hfBase writes a Hugging Face folder (a model with a trained BPE
// tokenizer) and puts its files on the fake coordinator.
func hfBase(t *testing.T, dir string, f *fakeCoordinator) (*tokenizer.Tokenizer, train.ModelConfig) {
	t.Helper()
	return hfBaseWith(t, dir, f, nil)
}

// hfBaseWith is hfBase with the files edited by edit (name, content) before
// they are served.
func hfBaseWith(t *testing.T, dir string, f *fakeCoordinator, edit func(string, []byte) []byte) (*tokenizer.Tokenizer, train.ModelConfig) {
	t.Helper()
	tok, raw, err := tokenizer.Train([]string{strings.Repeat("func f(x int) int { return x*7 + 3 }\n", 20)}, 300)
	if err != nil {
		t.Fatal(err)
	}
	tokDir, model := filepath.Join(dir, "tok"), filepath.Join(dir, "model")
	if err := tokenizer.WriteFolder(tokDir, raw); err != nil {
		t.Fatal(err)
	}
	mc := testConfig().Model
	mc.VocabSize = tok.VocabSize()
	m, err := train.NewModel(mc, backend.NewCPU(1), 7)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.SaveHF(model, train.SaveOptions{TokenizerDir: tokDir}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} {
		b, err := os.ReadFile(filepath.Join(model, name))
		if err != nil {
			t.Fatal(err)
		}
		if edit != nil {
			b = edit(name, b)
		}
		sha := f.put(b)
		f.baseFiles = append(f.baseFiles, protocol.BaseFile{Name: name, SHA256: sha, Bytes: int64(len(b))})
		if name == "tokenizer.json" {
			f.tokenizer = sha
		}
	}
	return tok, mc
}

// A round over a Hugging Face base folder: the worker fetches every file,
// assembles the folder, and tokenizes its data with the base's tokenizer.
func TestWorkerTrainsOnABaseFolderWithItsTokenizer(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig()
	fake := newFake(t, []byte("unused"), nil, "dense")
	_, mc := hfBase(t, dir, fake)
	fake.shapes = AdapterShapes(mc, cfg.LoRA)
	fake.n = ShapesLen(fake.shapes)
	init := make([]float32, fake.n)
	fake.adapter = fake.put(EncodeAdapter(init))
	fake.maxRounds = 1
	srv := httptest.NewServer(fake)
	defer srv.Close()
	state := filepath.Join(dir, "state")
	w := startWorker(t, srv, state, writeData(t, dir), &fakeClock{now: time.Unix(0, 0)}, nil)
	w.o.MaxRounds = 1
	if err := w.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(fake.updates) != 1 {
		t.Fatalf("%d updates, want 1", len(fake.updates))
	}
	folder := filepath.Join(state, basesDir, protocol.BaseFolderSHA256(fake.baseFiles))
	if !folderComplete(folder, fake.baseFiles) {
		t.Errorf("base folder %s not assembled", folder)
	}
	if caches, _ := filepath.Glob(filepath.Join(state, tokensDir, "tokens-*")); len(caches) == 0 {
		t.Error("the data was not tokenized with the base's tokenizer (no token cache in the state folder)")
	}
	if w.dsTokenizer != fake.tokenizer {
		t.Errorf("dataset tokenized with %q, the round names %q", w.dsTokenizer, fake.tokenizer)
	}
}

// A round whose file list does not hash to its base, or that is larger than
// the worker allows, is refused before anything is downloaded.
func TestWorkerRefusesBadBaseFolders(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(f *fakeCoordinator, w *Worker)
		want string
	}{
		{"hash lie", func(f *fakeCoordinator, _ *Worker) { f.baseHash = strings.Repeat("0", 64) }, "not the hash of base_files"},
		{"path name", func(f *fakeCoordinator, _ *Worker) { f.baseFiles[0].Name = "../../worker.key" }, "plain file name"},
		{"too big", func(f *fakeCoordinator, w *Worker) { w.o.Limits.MaxDownloadBytes = 100 }, "max_download_bytes"},
		{"tokenizer mismatch", func(f *fakeCoordinator, _ *Worker) { f.tokenizer = f.adapter }, "tokenizer_sha256"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			fake := newFake(t, []byte("unused"), nil, "dense")
			hfBase(t, dir, fake)
			srv := httptest.NewServer(fake)
			defer srv.Close()
			w := startWorker(t, srv, filepath.Join(dir, "state"), writeData(t, dir), &fakeClock{now: time.Unix(0, 0)}, nil)
			tc.edit(fake, w)
			info := protocol.RoundInfo{Round: 1, BaseSHA256: fake.baseSHA(), BaseFiles: fake.baseFiles, TokenizerSHA256: fake.tokenizer, Deadline: time.Now().Add(time.Minute)}
			if _, err := w.fetchBase(context.Background(), info); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one naming %q", err, tc.want)
			}
			if _, err := os.Stat(filepath.Join(dir, "state", basesDir)); err == nil {
				t.Error("a base folder was assembled for a refused round")
			}
		})
	}
}

// A coordinator serving a base folder whose chat template would take the
// worker's memory (a string doubled forty times): the worker renders it in
// its sandbox, refuses the template with an error that says so, and stays
// up; nothing is uploaded.
func TestWorkerRefusesAHostileChatTemplate(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig()
	fake := newFake(t, []byte("unused"), nil, "dense")
	hostile := `{% set s = 'ab' %}{% for i in range(40) %}{% set s = s ~ s %}{% endfor %}{{ s }}`
	_, mc := hfBaseWith(t, dir, fake, func(name string, b []byte) []byte {
		if name != "tokenizer_config.json" {
			return b
		}
		var c map[string]any
		if err := json.Unmarshal(b, &c); err != nil {
			t.Fatal(err)
		}
		c["chat_template"] = hostile
		out, _ := json.Marshal(c)
		return out
	})
	fake.shapes = AdapterShapes(mc, cfg.LoRA)
	fake.n = ShapesLen(fake.shapes)
	fake.adapter = fake.put(EncodeAdapter(make([]float32, fake.n)))
	fake.maxRounds = 1
	srv := httptest.NewServer(fake)
	defer srv.Close()
	data := writeData(t, dir)
	var chats strings.Builder
	for i := range 20 {
		fmt.Fprintf(&chats, `{"messages": [{"role": "user", "content": "q%d"}, {"role": "assistant", "content": "a%d"}]}`+"\n", i, i)
	}
	if err := os.WriteFile(filepath.Join(data, "chat.jsonl"), []byte(chats.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	w := startWorker(t, srv, filepath.Join(dir, "state"), data, &fakeClock{now: time.Unix(0, 0)}, nil)
	w.o.MaxRounds = 1
	err := w.Run(context.Background())
	if !errors.Is(err, tokenizer.ErrTemplateRefused) || !strings.Contains(err.Error(), "memory") {
		t.Fatalf("worker run with a hostile chat template: %v; want the template refused for its memory", err)
	}
	if len(fake.updates) != 0 {
		t.Errorf("%d updates uploaded", len(fake.updates))
	}
}

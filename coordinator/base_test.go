package coordinator

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencluster/opencluster/coordinator/ledger"
	"github.com/opencluster/opencluster/protocol"
)

// A Hugging Face base folder is published file by file: the round names
// every file and the tokenizer by hash, the base by its manifest's hash,
// and each blob serves the bytes of its file.
func TestBaseFolderPublished(t *testing.T) {
	base := filepath.Join(t.TempDir(), "model")
	os.MkdirAll(filepath.Join(base, "original"), 0o755)
	files := map[string]string{
		"config.json": `{"architectures": ["LlamaForCausalLM"]}`, "model.safetensors": "weights",
		"tokenizer.json": `{"model": {}}`, "tokenizer_config.json": `{}`,
		"README.md": "not needed", "pytorch_model.bin": "not needed", "original/consolidated.00.pth": "not needed",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(base, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	e := newEnv(t, t.TempDir(), testConfig(), &fakeClock{t: time.Unix(1_750_000_000, 0)}, nil, func(o *Options) { o.BaseModelPath = base })
	_, info := e.startRound(3)
	var names []string
	for _, f := range info.BaseFiles {
		names = append(names, f.Name)
		sum := sha256.Sum256([]byte(files[f.Name]))
		if f.SHA256 != hex.EncodeToString(sum[:]) || f.Bytes != int64(len(files[f.Name])) {
			t.Errorf("%s: %s %d bytes, want the file's hash and size", f.Name, f.SHA256, f.Bytes)
		}
		resp, body := e.get("/v1/blobs/" + f.SHA256)
		if resp.StatusCode != 200 || string(body) != files[f.Name] {
			t.Errorf("blob of %s: %d %q", f.Name, resp.StatusCode, body)
		}
	}
	if got := strings.Join(names, " "); got != "config.json model.safetensors tokenizer.json tokenizer_config.json" {
		t.Errorf("published %s", got)
	}
	if info.BaseSHA256 != protocol.BaseFolderSHA256(info.BaseFiles) || info.BaseBytes != int64(len("weights")+len(files["config.json"])+len(files["tokenizer.json"])+2) {
		t.Errorf("base %s (%d bytes), want the manifest's hash", info.BaseSHA256, info.BaseBytes)
	}
	if err := protocol.CheckBaseFiles(info.BaseFiles, info.TokenizerSHA256); err != nil || info.TokenizerSHA256 == "" {
		t.Errorf("tokenizer %q: %v", info.TokenizerSHA256, err)
	}
	if resp, body := e.get("/v1/blobs/" + info.BaseSHA256); resp.StatusCode != 200 || string(body) != string(protocol.BaseManifest(info.BaseFiles)) {
		t.Errorf("the manifest blob: %d %q", resp.StatusCode, body)
	}

	// A folder without weights is refused, naming it.
	empty := t.TempDir()
	os.WriteFile(filepath.Join(empty, "config.json"), []byte("{}"), 0o644)
	dir := t.TempDir()
	st, err := OpenSQLite(context.Background(), filepath.Join(dir, "c.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	led, err := ledger.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer led.Close()
	key, _, _ := protocol.LoadOrCreateKey(filepath.Join(dir, "k"))
	if _, err := New(context.Background(), testConfig(), Options{Dir: dir, Store: st, Ledger: led, Key: key, Logger: quiet, BaseModelPath: empty}); err == nil || !strings.Contains(err.Error(), "no safetensors") {
		t.Errorf("a folder without weights: %v", err)
	}
}

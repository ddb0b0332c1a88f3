package coordinator

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/opencluster/opencluster/protocol"
)

// baseFolderFiles are the files of a Hugging Face folder a worker needs:
// the config, the weights and the tokenizer. Everything else (README,
// licence, original/ checkpoints, pytorch_model.bin duplicates) stays out.
var baseFolderFiles = []string{"config.json", "generation_config.json", "model.safetensors.index.json",
	"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
	"merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json"}

func isBaseFolderFile(name string) bool {
	if strings.HasSuffix(name, ".safetensors") {
		return true
	}
	for _, n := range baseFolderFiles {
		if n == name {
			return true
		}
	}
	return false
}

// publishBase puts the base model into the blob store: one safetensors
// file, or the files of a Hugging Face folder (each its own blob) plus the
// folder's manifest (protocol.BaseManifest), whose hash names the base.
func (c *Coordinator) publishBase(ctx context.Context, path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("coordinator: base model: %w", err)
	}
	if !st.IsDir() {
		sum, size, err := putFile(c.blobDir(), path)
		if err != nil {
			return err
		}
		if err := c.store.PutBlob(ctx, Blob{SHA256: sum, Kind: BlobBase, Size: size, Created: c.clock.Now()}); err != nil {
			return err
		}
		c.base, c.baseBytes = sum, size
		return nil
	}
	entries, err := os.ReadDir(path)
	if err != nil {
		return fmt.Errorf("coordinator: base model: %w", err)
	}
	var files []protocol.BaseFile
	var total int64
	for _, e := range entries {
		if !e.Type().IsRegular() || !isBaseFolderFile(e.Name()) {
			continue
		}
		sum, size, err := putFile(c.blobDir(), filepath.Join(path, e.Name()))
		if err != nil {
			return err
		}
		if err := c.store.PutBlob(ctx, Blob{SHA256: sum, Kind: BlobBase, Size: size, Created: c.clock.Now()}); err != nil {
			return err
		}
		files = append(files, protocol.BaseFile{Name: e.Name(), SHA256: sum, Bytes: size})
		total += size
		if e.Name() == "tokenizer.json" {
			c.tokenizer = sum
		}
	}
	sort.Slice(files, func(i, j int) bool { return files[i].Name < files[j].Name })
	hasWeights := false
	for _, f := range files {
		hasWeights = hasWeights || strings.HasSuffix(f.Name, ".safetensors")
	}
	if !hasWeights {
		return fmt.Errorf("coordinator: base model folder %s holds no safetensors weights", path)
	}
	if err := protocol.CheckBaseFiles(files, c.tokenizer); err != nil {
		return fmt.Errorf("coordinator: base model folder %s: %w", path, err)
	}
	manifest, err := c.putBlob(ctx, BlobBase, protocol.BaseManifest(files))
	if err != nil {
		return err
	}
	if manifest != protocol.BaseFolderSHA256(files) {
		return errors.New("coordinator: base manifest hash mismatch") // cannot happen: same bytes, same hash
	}
	c.base, c.baseFiles, c.baseBytes = manifest, files, total
	return nil
}

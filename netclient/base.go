package netclient

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/opencluster/opencluster/protocol"
	"github.com/opencluster/opencluster/train/tokenizer"
)

// basesDir holds the base folders a worker assembled from cached blobs:
// bases/<base sha256>/<file name>, each file a hard link to (or a copy of)
// its blob in cache/.
const basesDir = "bases"

// fetchBase downloads the round's base and returns the path to load: the
// cached safetensors file, or the assembled Hugging Face folder.
func (w *Worker) fetchBase(ctx context.Context, info protocol.RoundInfo) (string, error) {
	if len(info.BaseFiles) == 0 {
		if info.TokenizerSHA256 != "" {
			return "", &permanentError{fmt.Errorf("netclient: round %d names a tokenizer but its base is a single file", info.Round)}
		}
		return w.fetch(ctx, info.Round, info.Deadline, info.BaseSHA256, PathBlobs+info.BaseSHA256, info.BaseBytes)
	}
	if err := protocol.CheckBaseFiles(info.BaseFiles, info.TokenizerSHA256); err != nil {
		return "", &permanentError{fmt.Errorf("netclient: round %d: %w", info.Round, err)}
	}
	if got := protocol.BaseFolderSHA256(info.BaseFiles); got != info.BaseSHA256 {
		return "", &permanentError{fmt.Errorf("netclient: round %d: base_sha256 %s is not the hash of base_files (%s)", info.Round, info.BaseSHA256, got)}
	}
	var total int64
	for _, f := range info.BaseFiles {
		total += f.Bytes
	}
	if total > w.o.Limits.MaxDownloadBytes {
		return "", &permanentError{fmt.Errorf("netclient: the round's base folder is %d bytes, over this worker's limits.max_download_bytes %d", total, w.o.Limits.MaxDownloadBytes)}
	}
	dir := filepath.Join(w.o.State.Dir, basesDir, info.BaseSHA256)
	if folderComplete(dir, info.BaseFiles) {
		return dir, nil
	}
	paths := make([]string, len(info.BaseFiles))
	for i, f := range info.BaseFiles {
		p, err := w.fetch(ctx, info.Round, info.Deadline, f.SHA256, PathBlobs+f.SHA256, max(f.Bytes, 1))
		if err != nil {
			return "", err
		}
		paths[i] = p
	}
	tmp := dir + ".tmp"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return "", fmt.Errorf("netclient: %w", err)
	}
	for i, f := range info.BaseFiles {
		if err := linkOrCopy(paths[i], filepath.Join(tmp, f.Name)); err != nil {
			return "", fmt.Errorf("netclient: base file %s: %w", f.Name, err)
		}
	}
	os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		return "", fmt.Errorf("netclient: %w", err)
	}
	return dir, nil
}

// folderComplete reports whether dir holds every file at its size.
func folderComplete(dir string, files []protocol.BaseFile) bool {
	for _, f := range files {
		st, err := os.Stat(filepath.Join(dir, f.Name))
		if err != nil || st.Size() != f.Bytes {
			return false
		}
	}
	return true
}

// linkOrCopy makes dst the same bytes as src: a hard link when the file
// system allows one, a copy otherwise.
func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// roundTokenizer loads the tokenizer a round names from its base folder
// (nil for the byte-level tokenizer).
func roundTokenizer(info protocol.RoundInfo, basePath string) (*tokenizer.Tokenizer, error) {
	if info.TokenizerSHA256 == "" {
		return nil, nil
	}
	tok, err := tokenizer.Load(basePath)
	if err != nil {
		return nil, fmt.Errorf("netclient: round %d tokenizer %s: %w", info.Round, info.TokenizerSHA256[:12], err)
	}
	return tok, nil
}

package coordinator

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/opencluster/opencluster/internal/atomicfile"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// Files under the coordinator's directory:
//
//	DIR/blobs/<sha256>    adapters, base models, optimizer states (content-addressed)
//	DIR/updates/<sha256>  the exact bytes of every accepted update
//	DIR/coordinator.db    the SQLite store (when not on PostgreSQL)
//	DIR/ledger.jsonl      the ledger
//	DIR/coordinator.key   the coordinator's ed25519 key (PEM, 0600)
//	DIR/tls.crt, tls.key  the self-signed certificate made on first start
const (
	blobsDir   = "blobs"
	updatesDir = "updates"
)

// isHash reports whether s is a lowercase hex SHA-256.
func isHash(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

func sha256Hex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// putContent writes data to dir/<sha256(data)> atomically unless a file of
// that name already exists (content addressing makes it the same bytes),
// and returns the hash.
func putContent(dir string, data []byte) (string, error) {
	sum := sha256Hex(data)
	path := filepath.Join(dir, sum)
	if fi, err := os.Stat(path); err == nil && fi.Size() == int64(len(data)) {
		return sum, nil
	}
	if err := atomicfile.WriteFile(path, data, 0o644); err != nil {
		return "", err
	}
	return sum, nil
}

// putFile copies the file at src into dir under its SHA-256, streaming, and
// returns the hash and size.
func putFile(dir, src string) (string, int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", 0, fmt.Errorf("coordinator: publish %s: %w", src, err)
	}
	defer in.Close()
	f, err := os.CreateTemp(dir, ".blob.tmp*")
	if err != nil {
		return "", 0, fmt.Errorf("coordinator: publish %s: %w", src, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), in)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", 0, fmt.Errorf("coordinator: publish %s: %w", src, err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if err := os.Rename(tmp, filepath.Join(dir, sum)); err != nil {
		return "", 0, fmt.Errorf("coordinator: publish %s: %w", src, err)
	}
	syncDir(dir)
	return sum, n, nil
}

// readContent reads dir/<hash> and checks the bytes hash to its name.
func readContent(dir, hash string) ([]byte, error) {
	if !isHash(hash) {
		return nil, fmt.Errorf("coordinator: %q is not a hex SHA-256", hash)
	}
	b, err := os.ReadFile(filepath.Join(dir, hash))
	if err != nil {
		return nil, fmt.Errorf("coordinator: content %s: %w", hash, err)
	}
	if got := sha256Hex(b); got != hash {
		return nil, fmt.Errorf("coordinator: content %s: file hashes to %s (corrupt)", hash, got)
	}
	return b, nil
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

func notExist(err error) bool { return errors.Is(err, fs.ErrNotExist) }

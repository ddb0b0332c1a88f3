package coordinator

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/opencluster/opencluster/internal/atomicfile"
)

// Files under the coordinator's directory:
//
//	DIR/blobs/<sha256>    adapters, base models, optimizer states (content-addressed)
//	DIR/updates/<sha256>  the exact bytes of every accepted update
//	DIR/coordinator.db    the SQLite store (when not on PostgreSQL)
//	DIR/ledger.jsonl      the ledger
//	DIR/coordinator.key   the coordinator's ed25519 key (PEM, 0600)
//	DIR/coordinator.pub   its public half (PEM, 0644), for verifiers
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
	if err := f.Chmod(0o644); err != nil { // served to every worker: not a secret
		f.Close()
		return "", 0, fmt.Errorf("coordinator: publish %s: %w", src, err)
	}
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

// content keeps content-addressed bytes: files in a directory (the real
// coordinator, so a restart finds them) or a map in memory (the simulator,
// Options.InMemory, where an fsync per update would dominate a run).
type content interface {
	put(data []byte) (string, error)
	get(hash string) ([]byte, error)
	open(hash string) (io.ReadSeekCloser, error)
}

// dirContent is a directory of files named by their SHA-256.
type dirContent string

func (d dirContent) put(data []byte) (string, error) { return putContent(string(d), data) }
func (d dirContent) get(hash string) ([]byte, error) { return readContent(string(d), hash) }
func (d dirContent) open(hash string) (io.ReadSeekCloser, error) {
	if !isHash(hash) {
		return nil, fmt.Errorf("coordinator: %q is not a hex SHA-256", hash)
	}
	return os.Open(filepath.Join(string(d), hash))
}

// memContent holds the bytes in memory.
type memContent struct {
	mu sync.Mutex
	m  map[string][]byte
}

func newMemContent() *memContent { return &memContent{m: map[string][]byte{}} }

func (c *memContent) put(data []byte) (string, error) {
	sum := sha256Hex(data)
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[sum]; !ok {
		c.m[sum] = bytes.Clone(data)
	}
	return sum, nil
}

func (c *memContent) get(hash string) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b, ok := c.m[hash]
	if !ok {
		return nil, fmt.Errorf("coordinator: content %s: %w", hash, fs.ErrNotExist)
	}
	return b, nil
}

type nopCloser struct{ *bytes.Reader }

func (nopCloser) Close() error { return nil }

func (c *memContent) open(hash string) (io.ReadSeekCloser, error) {
	b, err := c.get(hash)
	if err != nil {
		return nil, err
	}
	return nopCloser{bytes.NewReader(b)}, nil
}

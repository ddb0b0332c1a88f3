package netclient

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// Cache keeps downloaded blobs (base models, adapters) named by their
// SHA-256 under Dir. A download in progress lives in <sha>.part; an
// interrupted one resumes with an HTTP Range request; a finished one is
// hashed before it is renamed into place, so a file named by a hash
// always has that hash.
type Cache struct {
	Dir string
	// FreeBytes, when set, reports the free space of the file system
	// holding a path; Fetch then refuses a download that would leave less
	// than MinFree bytes free.
	FreeBytes func(path string) (uint64, error)
	MinFree   int64

	mu       sync.Mutex
	verified map[string]bool // hashes checked since this process started
}

// isSHA256 reports whether s is 64 lowercase hex digits.
func isSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil && strings.ToLower(s) == s
}

// Path is where the blob with hash sha lives once fetched.
func (c *Cache) Path(sha string) string { return filepath.Join(c.Dir, sha) }

// Has reports whether the blob is cached and has its hash (checked once per
// process; a file that fails is removed).
func (c *Cache) Has(sha string) bool {
	if !isSHA256(sha) {
		return false
	}
	c.mu.Lock()
	ok := c.verified[sha]
	c.mu.Unlock()
	if ok {
		if _, err := os.Stat(c.Path(sha)); err == nil {
			return true
		}
	}
	got, err := hashFile(c.Path(sha))
	if err != nil {
		return false
	}
	if got != sha {
		os.Remove(c.Path(sha))
		return false
	}
	c.markVerified(sha)
	return true
}

func (c *Cache) markVerified(sha string) {
	c.mu.Lock()
	if c.verified == nil {
		c.verified = map[string]bool{}
	}
	c.verified[sha] = true
	c.mu.Unlock()
}

func hashFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("netclient: hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Fetch makes sure the blob sha is in the cache, downloading it from url
// with client hc when needed, resuming a partial download. It returns the
// file's path and the bytes it transferred. The blob may be at most limit
// bytes: a larger Content-Length is refused before reading, and the body
// is cut off, the part file deleted, as soon as it runs past limit, so a
// server cannot fill the disk. A body whose hash is not sha is deleted
// and reported: the next attempt starts over.
func (c *Cache) Fetch(ctx context.Context, hc *http.Client, url, sha string, limit int64) (path string, n int64, err error) {
	if !isSHA256(sha) {
		return "", 0, &permanentError{fmt.Errorf("netclient: blob hash %q is not 64 lowercase hex digits", sha)}
	}
	if limit <= 0 {
		return "", 0, &permanentError{fmt.Errorf("netclient: fetch blob %s: no size limit given", sha[:12])}
	}
	final := c.Path(sha)
	if c.Has(sha) {
		return final, 0, nil
	}
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return "", 0, fmt.Errorf("netclient: cache %s: %w", c.Dir, err)
	}
	part := final + ".part"
	f, err := os.OpenFile(part, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return "", 0, fmt.Errorf("netclient: cache %s: %w", part, err)
	}
	defer f.Close()
	have, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return "", 0, fmt.Errorf("netclient: cache %s: %w", part, err)
	}
	tooBig := func(what string, size int64) error {
		f.Close()
		os.Remove(part)
		return &permanentError{fmt.Errorf("netclient: fetch blob %s: %s %d bytes, over the %d bytes allowed (the size the round info declares, or this worker's limits.max_download_bytes); discarded", sha[:12], what, size, limit)}
	}
	if have > limit {
		return "", 0, tooBig("a partial download already holds", have)
	}
	if c.FreeBytes != nil {
		if free, err := c.FreeBytes(c.Dir); err == nil && int64(free) < limit-have+c.MinFree {
			return "", 0, fmt.Errorf("netclient: fetch blob %s: %d bytes to download would leave less than %d bytes free in %s (%d free; limits.min_free_disk_bytes)", sha[:12], limit-have, c.MinFree, c.Dir, free)
		}
	}

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", 0, err
	}
	if have > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(have, 10)+"-")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", 0, fmt.Errorf("netclient: fetch blob %s: %w", sha[:12], err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusPartialContent && have > 0:
		start, ok := contentRangeStart(resp.Header.Get("Content-Range"))
		if !ok || start != have {
			return "", 0, fmt.Errorf("netclient: fetch blob %s: asked for bytes from %d, got Content-Range %q", sha[:12], have, resp.Header.Get("Content-Range"))
		}
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable && have > 0:
		// The part file already holds the whole blob (or more): check it.
	case resp.StatusCode == http.StatusOK:
		// No range support, or a fresh download: start from zero.
		if err := f.Truncate(0); err != nil {
			return "", 0, fmt.Errorf("netclient: cache %s: %w", part, err)
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return "", 0, err
		}
		have = 0
	default:
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return "", 0, &StatusError{Method: http.MethodGet, URL: url, Code: resp.StatusCode, Message: errorMessage(b)}
	}
	if resp.ContentLength > limit-have {
		return "", 0, tooBig("the server announces", have+resp.ContentLength)
	}
	if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
		n, err = io.Copy(f, io.LimitReader(resp.Body, limit-have+1))
		if have+n > limit {
			return "", n, tooBig("the server sent more than that: at least", have+n)
		}
		if err != nil {
			f.Sync() // keep what arrived for the next attempt
			return "", n, fmt.Errorf("netclient: fetch blob %s: interrupted after %d bytes (kept in %s): %w", sha[:12], n, part, err)
		}
	}
	if err := f.Sync(); err != nil {
		return "", n, fmt.Errorf("netclient: cache %s: %w", part, err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", n, err
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", n, fmt.Errorf("netclient: hash %s: %w", part, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sha {
		f.Close()
		os.Remove(part)
		return "", n, fmt.Errorf("netclient: fetch blob: downloaded bytes hash to %s, want %s; discarded", got, sha)
	}
	f.Close()
	if err := os.Rename(part, final); err != nil {
		return "", n, fmt.Errorf("netclient: cache %s: %w", final, err)
	}
	syncDir(c.Dir)
	c.markVerified(sha)
	return final, n, nil
}

// contentRangeStart parses "bytes START-END/TOTAL".
func contentRangeStart(h string) (int64, bool) {
	rest, ok := strings.CutPrefix(h, "bytes ")
	if !ok {
		return 0, false
	}
	s, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	v, err := strconv.ParseInt(s, 10, 64)
	return v, err == nil
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

package ledger

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
)

// FileName is the ledger's file inside its directory.
const FileName = "ledger.jsonl"

// Log is an append-only ledger backed by DIR/ledger.jsonl. It keeps every
// record and line in memory (a record is a few hundred bytes per update),
// so reads never touch the disk. Its methods are safe for concurrent use;
// appends are serialized. One process at a time may hold a ledger
// directory open for appending.
type Log struct {
	path string

	mu      sync.RWMutex
	f       *os.File
	size    int64    // bytes of complete lines in the file
	records []Record // verified, in order
	lines   [][]byte // canonical lines, each ending in "\n"
	broken  error    // set when a failed append could not be undone
}

// Open opens (creating it and dir when missing) the ledger in dir, reads
// it and verifies the whole chain. A crash in the middle of an append can
// leave a final line without its newline: if that line is a complete
// record that verifies, Open ends it with the newline and keeps it;
// otherwise Open truncates the torn bytes and logs how many it dropped. A
// bad complete line anywhere is an error, never repaired: that is
// tampering or disk corruption for a person to look at.
func Open(dir string) (*Log, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("ledger: %w", err)
	}
	path := filepath.Join(dir, FileName)
	_, statErr := os.Stat(path)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("ledger: %w", err)
	}
	if errors.Is(statErr, fs.ErrNotExist) {
		// A new file: sync its directory entry so it survives a crash.
		if err := syncDir(dir); err != nil {
			f.Close()
			return nil, fmt.Errorf("ledger: create %s: %w", path, err)
		}
	}
	l, err := load(f, path)
	if err != nil {
		f.Close()
		return nil, err
	}
	return l, nil
}

func load(f *os.File, path string) (*Log, error) {
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("ledger: read %s: %w", path, err)
	}
	complete, tail := data, []byte(nil)
	if i := bytes.LastIndexByte(data, '\n'); i+1 < len(data) {
		complete, tail = data[:i+1], data[i+1:]
	}
	recs, lines, err := parse(bytes.NewReader(complete))
	if err == nil {
		err = verify(recs, lines, VerifyOptions{})
	}
	if err != nil {
		return nil, fmt.Errorf("ledger %s: %w", path, err)
	}
	l := &Log{path: path, f: f, size: int64(len(complete)), records: recs}
	for _, r := range recs {
		line, err := r.MarshalLine()
		if err != nil { // cannot happen: it was parsed from this form
			return nil, err
		}
		l.lines = append(l.lines, append(line, '\n'))
	}
	if len(tail) > 0 {
		if err := l.recoverTail(tail); err != nil {
			return nil, err
		}
	}
	return l, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && runtime.GOOS != "windows" {
		return err
	}
	return nil
}

// recoverTail keeps a final line that lacks only its newline, or cuts it.
func (l *Log) recoverTail(tail []byte) error {
	if r, err := parseLine(tail); err == nil {
		if verify(append(l.records, r), nil, VerifyOptions{}) == nil {
			if _, err := l.f.WriteAt([]byte{'\n'}, l.size+int64(len(tail))); err != nil {
				return fmt.Errorf("ledger: %s: end the last record's line: %w", l.path, err)
			}
			if err := l.f.Sync(); err != nil {
				return fmt.Errorf("ledger: %s: %w", l.path, err)
			}
			l.records = append(l.records, r)
			l.lines = append(l.lines, append(bytes.Clone(tail), '\n'))
			l.size += int64(len(tail)) + 1
			slog.Warn("ledger: completed the last record's line after a crash", "file", l.path, "index", r.Index, "round", r.Round)
			return nil
		}
	}
	if err := l.f.Truncate(l.size); err != nil {
		return fmt.Errorf("ledger: %s: truncate a torn last line: %w", l.path, err)
	}
	if err := l.f.Sync(); err != nil {
		return fmt.Errorf("ledger: %s: %w", l.path, err)
	}
	slog.Warn("ledger: dropped a torn last line left by a crash", "file", l.path, "bytes", len(tail), "records", len(l.records))
	return nil
}

// Path returns the ledger file's path.
func (l *Log) Path() string { return l.path }

// Append seals r after the last record with the coordinator key priv (see
// Seal), writes its line and fsyncs the file before returning. On success
// r holds the sealed record. On failure the file and the Log are as they
// were; if a failed write cannot be undone, the Log refuses further
// appends and Open repairs the file.
func (l *Log) Append(r *Record, priv ed25519.PrivateKey) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return fmt.Errorf("ledger: append round %d to %s: log is closed", r.Round, l.path)
	}
	if l.broken != nil {
		return fmt.Errorf("ledger: append round %d to %s: an earlier write failed and could not be undone (reopen to repair): %w", r.Round, l.path, l.broken)
	}
	var prev *Record
	if n := len(l.records); n > 0 {
		prev = &l.records[n-1]
	}
	s := *r
	if err := Seal(&s, prev, priv); err != nil {
		return err
	}
	line, err := s.MarshalLine()
	if err != nil {
		return err
	}
	line = append(line, '\n')
	if _, err := l.f.WriteAt(line, l.size); err != nil {
		return l.undo(fmt.Errorf("ledger: append round %d to %s: %w", r.Round, l.path, err))
	}
	if err := l.f.Sync(); err != nil {
		return l.undo(fmt.Errorf("ledger: append round %d to %s: fsync: %w", r.Round, l.path, err))
	}
	l.size += int64(len(line))
	l.records = append(l.records, s.clone())
	l.lines = append(l.lines, line)
	*r = s
	return nil
}

// undo cuts a partly written line off the file.
func (l *Log) undo(err error) error {
	if terr := l.f.Truncate(l.size); terr != nil {
		l.broken = terr
		return errors.Join(err, fmt.Errorf("ledger: truncate %s back to %d bytes: %w", l.path, l.size, terr))
	}
	return err
}

// Records returns a copy of every record, in order.
func (l *Log) Records() []Record {
	l.mu.RLock()
	defer l.mu.RUnlock()
	out := make([]Record, len(l.records))
	for i := range l.records {
		out[i] = l.records[i].clone()
	}
	return out
}

// Len returns the number of records.
func (l *Log) Len() int {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return len(l.records)
}

// Last returns a copy of the last record, and false when the log is empty.
func (l *Log) Last() (Record, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if len(l.records) == 0 {
		return Record{}, false
	}
	return l.records[len(l.records)-1].clone(), true
}

// Head returns the last record's hash, or "" when the log is empty.
func (l *Log) Head() string {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if len(l.records) == 0 {
		return ""
	}
	return l.records[len(l.records)-1].Hash
}

// WriteTo writes the ledger's lines exactly as the file holds them.
func (l *Log) WriteTo(w io.Writer) (int64, error) {
	lines, _, _ := l.snapshot(0)
	return writeLines(w, lines)
}

// snapshot returns the lines from record index from on, the head hash and
// the record count, read together. Lines are never modified once appended,
// so they can be written out after the lock is released.
func (l *Log) snapshot(from int) (lines [][]byte, head string, total int) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	total = len(l.records)
	if total > 0 {
		head = l.records[total-1].Hash
	}
	return l.lines[min(from, total):total:total], head, total
}

func writeLines(w io.Writer, lines [][]byte) (int64, error) {
	var n int64
	for _, line := range lines {
		k, err := w.Write(line)
		n += int64(k)
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// ServeHTTP serves the ledger as JSON lines: what GET /v1/ledger returns.
// The optional query parameter from=N starts at record index N; the
// X-Ledger-Head header carries the head hash (empty for an empty ledger)
// and X-Ledger-Records the total record count. Errors are JSON
// {"error": "..."} bodies, as elsewhere in the API.
func (l *Log) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	fail := func(code int, msg string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		b, _ := json.Marshal(map[string]string{"error": msg})
		w.Write(append(b, '\n'))
	}
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		fail(http.StatusMethodNotAllowed, "method "+req.Method+" not allowed: use GET")
		return
	}
	from := 0
	if s := req.URL.Query().Get("from"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			fail(http.StatusBadRequest, fmt.Sprintf("from=%q: want a record index >= 0", s))
			return
		}
		from = n
	}
	lines, head, total := l.snapshot(from)
	w.Header().Set("Content-Type", "application/jsonl")
	w.Header().Set("X-Ledger-Head", head)
	w.Header().Set("X-Ledger-Records", strconv.Itoa(total))
	if req.Method == http.MethodHead {
		return
	}
	writeLines(w, lines)
}

// Close closes the file. The Log's records stay readable.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

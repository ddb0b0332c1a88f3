package data

import (
	"bytes"
	"container/list"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/opencluster/opencluster/train/tokenizer"
)

// Defaults for Options fields left zero.
const (
	// DefaultChunkSize is the split granularity in bytes: every chunk of
	// every file goes to train or validation as a whole.
	DefaultChunkSize = 4096
	// DefaultMaxOpenFiles bounds the file handles the loader keeps open.
	DefaultMaxOpenFiles = 16
	// SniffSize is how much of each file is inspected to tell text from binary.
	SniffSize = 8192
)

// Options configures Open.
type Options struct {
	Dir         string  // root of the user's text files, read recursively
	SeqLen      int     // T: tokens per sequence (each window holds T+1 bytes)
	BatchSize   int     // B: sequences per batch
	ValFraction float64 // share of chunks held out for validation, in (0,1)
	Seed        uint64  // seeds the training batch stream

	// ChunkSize is the split granularity in bytes; 0 means
	// max(DefaultChunkSize, 4*(SeqLen+1)). The split depends only on the
	// relative path, the chunk index and this size, so it is stable for the
	// same files whatever else changes.
	ChunkSize int
	// MaxOpenFiles bounds open file handles; 0 means DefaultMaxOpenFiles.
	MaxOpenFiles int
	// Logger receives warnings about skipped files; nil means slog.Default().
	Logger *slog.Logger

	// Tokenizer encodes the text; nil keeps the byte-level tokenizer, whose
	// windows are read straight from the files. With a tokenizer, or when
	// there are JSONL files, every file is tokenized once into a cache
	// (CacheDir) and batches are read from it.
	Tokenizer *tokenizer.Tokenizer
	// Pack concatenates examples (documents end with EOS) and cuts windows
	// of SeqLen+1 tokens across them; without it each example is one row,
	// cut to SeqLen+1 tokens as Truncation says and padded (padding is never
	// a target). The byte-level text loader always packs.
	Pack bool
	// Truncation is TruncateRight (default) or TruncateLeft.
	Truncation string
	// SkipBadLines skips malformed JSONL lines (counted in Stats.BadLines)
	// instead of failing on the first.
	SkipBadLines bool
	// CacheDir holds the token cache; "" means the user's cache folder.
	CacheDir string
}

// Batch is B sequences of T tokens, row-major, and their next-token targets:
// Targets[i] is the token after Tokens[i] in the source text.
type Batch struct {
	Tokens  []int32
	Targets []int32
	B, T    int
}

// segment is a run of consecutive chunks of one file that all belong to the
// same split; a window never leaves its segment, so train and validation
// windows never share a byte.
type segment struct {
	file       int   // index into Dataset.files
	start, end int64 // byte range [start, end)
}

// windows is the number of window start positions in s for windows of n bytes.
func (s segment) windows(n int64) int64 {
	if s.end-s.start < n {
		return 0
	}
	return s.end - s.start - n + 1
}

// Stats describes what Open found.
type Stats struct {
	Files        int      // text files indexed
	Skipped      []string // binary files skipped (relative paths)
	Bytes        int64    // total bytes of the indexed files
	TrainWindows int64    // distinct training window start positions (unpacked: rows)
	ValWindows   int      // fixed validation windows (unpacked: rows)

	// Tokenized data only.
	Examples    int   // text chunks and JSONL lines kept
	TrainTokens int64 // tokens in the training split
	ValTokens   int64 // tokens in the validation split
	BadLines    int   // malformed JSONL lines skipped (SkipBadLines)
	Dropped     int   // examples with nothing to learn from (empty, or no target left after truncation)
}

// Dataset streams batches from a directory of text files. It indexes file
// sizes once and then reads only the windows each batch needs with ReadAt,
// through a bounded cache of open files. Its methods are safe for
// concurrent use.
type Dataset struct {
	opts     Options
	root     string
	files    []string // paths relative to root, slash-separated, sorted
	train    []segment
	trainCum []int64 // trainCum[i] = windows in train[:i+1]
	val      []valWindow
	stats    Stats

	tokens *tokenStore // tokenized data; nil for the byte-level loader

	mu    sync.Mutex
	open  map[int]*list.Element // file index -> element holding *openFile
	lru   *list.List            // front = most recently used
	limit int
}

type valWindow struct {
	file int
	off  int64
}

type openFile struct {
	idx int
	f   *os.File
}

// Open indexes opts.Dir: it walks the tree (hidden entries skipped; symbolic
// links followed only when they resolve to a file inside the tree), skips
// binary files with a warning naming each, splits every file into chunks
// assigned to train or validation by a hash of (relative path, chunk index),
// and fixes the validation windows. It reads at most SniffSize bytes of each
// file; batches are read later, on demand.
func Open(opts Options) (*Dataset, error) {
	if opts.Dir == "" {
		return nil, errors.New("data: no directory given")
	}
	if opts.SeqLen <= 0 || opts.BatchSize <= 0 {
		return nil, fmt.Errorf("data %s: seq_len (%d) and batch_size (%d) must be positive", opts.Dir, opts.SeqLen, opts.BatchSize)
	}
	if !(opts.ValFraction > 0 && opts.ValFraction < 1) {
		return nil, fmt.Errorf("data %s: val_fraction must be in (0,1), got %g", opts.Dir, opts.ValFraction)
	}
	window := int64(opts.SeqLen + 1)
	if opts.ChunkSize == 0 {
		opts.ChunkSize = max(DefaultChunkSize, 4*int(window))
	}
	if opts.ChunkSize <= 0 {
		return nil, fmt.Errorf("data %s: chunk size must be positive, got %d", opts.Dir, opts.ChunkSize)
	}
	if opts.MaxOpenFiles <= 0 {
		opts.MaxOpenFiles = DefaultMaxOpenFiles
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	root, found, skipped, err := walk(opts)
	if err != nil {
		return nil, err
	}
	d := &Dataset{opts: opts, root: root, open: map[int]*list.Element{}, lru: list.New(), limit: opts.MaxOpenFiles}
	d.stats.Skipped = skipped
	if opts.Tokenizer != nil || hasJSONL(found) {
		if err := d.openTokens(found); err != nil {
			return nil, err
		}
		return d, nil
	}
	for _, f := range found {
		d.files = append(d.files, f.rel)
		d.stats.Bytes += f.size
	}
	d.stats.Files = len(d.files)
	chunk := int64(opts.ChunkSize)
	sizes := make([]int64, len(found))
	for i, f := range found {
		sizes[i] = f.size
	}
	valSegs := d.split(sizes, chunk, nil)
	if len(valSegs) == 0 {
		// A small corpus can miss validation entirely by chance: then the
		// chunk that is closest to being chosen is held out, which is just
		// as deterministic.
		if best, ok := d.closestValChunk(sizes, chunk, window); ok {
			d.train = nil
			valSegs = d.split(sizes, chunk, &best)
		}
	}

	var total int64
	for _, s := range d.train {
		total += s.windows(window)
		d.trainCum = append(d.trainCum, total)
	}
	d.stats.TrainWindows = total
	if total == 0 {
		return nil, fmt.Errorf("data directory %s: the training split (%.0f%% of %d bytes) is too small for one sequence of %d bytes; add text or shorten seq_len", opts.Dir, 100*(1-opts.ValFraction), d.stats.Bytes, window)
	}
	// Validation: non-overlapping windows, in file order.
	for _, s := range valSegs {
		for off := s.start; off+window <= s.end; off += window {
			d.val = append(d.val, valWindow{s.file, off})
		}
	}
	d.stats.ValWindows = len(d.val)
	if len(d.val) == 0 {
		return nil, fmt.Errorf("data directory %s: the validation split (val_fraction %g of %d bytes) is too small for one sequence of %d bytes; add text, raise val_fraction or shorten seq_len", opts.Dir, opts.ValFraction, d.stats.Bytes, window)
	}
	return d, nil
}

// indexed is a text file found under the data root.
type indexed struct {
	rel  string
	size int64
}

// walk finds the text files under opts.Dir (or opts.Dir itself when it is a
// file): hidden entries skipped; symbolic links followed only when they
// resolve to a file inside the tree; binary files skipped with a warning
// naming each. It returns the root and the files sorted by relative path.
func walk(opts Options) (string, []indexed, []string, error) {
	root, err := filepath.Abs(opts.Dir)
	if err == nil {
		root, err = filepath.EvalSymlinks(root)
	}
	if err != nil {
		return "", nil, nil, fmt.Errorf("data directory %s: %w", opts.Dir, err)
	}
	if fi, err := os.Stat(root); err != nil {
		return "", nil, nil, fmt.Errorf("data directory %s: %w", opts.Dir, err)
	} else if !fi.IsDir() && !fi.Mode().IsRegular() {
		return "", nil, nil, fmt.Errorf("data directory %s: not a directory", opts.Dir)
	}

	var found []indexed
	var skipped []string
	if fi, err := os.Stat(root); err == nil && fi.Mode().IsRegular() {
		// One file: its folder is the root.
		size, binary, why, err := sniff(root)
		if err != nil {
			return "", nil, nil, err
		}
		if binary {
			return "", nil, nil, fmt.Errorf("data file %s: not text (%s)", opts.Dir, why)
		}
		return filepath.Dir(root), []indexed{{filepath.Base(root), size}}, nil, nil
	}
	err = filepath.WalkDir(root, func(path string, de fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("data: reading %s: %w", path, err)
		}
		if path == root {
			return nil
		}
		rel, _ := filepath.Rel(root, path)
		if strings.HasPrefix(de.Name(), ".") {
			opts.Logger.Debug("skipping hidden entry", "path", rel)
			if de.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if de.IsDir() {
			return nil
		}
		if de.Type()&fs.ModeSymlink != 0 {
			target, err := filepath.EvalSymlinks(path)
			if err != nil {
				return fmt.Errorf("data: symbolic link %s: %w", path, err)
			}
			if r, err := filepath.Rel(root, target); err != nil || r == ".." || strings.HasPrefix(r, ".."+string(filepath.Separator)) {
				opts.Logger.Warn("skipping symbolic link that leaves the data directory", "path", rel, "target", target)
				return nil
			}
			fi, err := os.Stat(target)
			if err != nil {
				return fmt.Errorf("data: symbolic link %s: %w", path, err)
			}
			if !fi.Mode().IsRegular() {
				opts.Logger.Debug("skipping symbolic link to a non-file", "path", rel)
				return nil
			}
		} else if !de.Type().IsRegular() {
			opts.Logger.Warn("skipping non-regular file", "path", rel)
			return nil
		}
		size, binary, why, err := sniff(path)
		if err != nil {
			return err
		}
		if binary {
			opts.Logger.Warn("skipping binary file", "path", rel, "reason", why)
			skipped = append(skipped, filepath.ToSlash(rel))
			return nil
		}
		if size == 0 {
			return nil
		}
		found = append(found, indexed{filepath.ToSlash(rel), size})
		return nil
	})
	if err != nil {
		return "", nil, nil, err
	}
	if len(found) == 0 {
		if len(skipped) > 0 {
			return "", nil, nil, fmt.Errorf("data directory %s: no text files (skipped %d binary files, e.g. %s)", opts.Dir, len(skipped), skipped[0])
		}
		return "", nil, nil, fmt.Errorf("data directory %s: no text files found", opts.Dir)
	}
	sort.Slice(found, func(i, j int) bool { return found[i].rel < found[j].rel })
	return root, found, skipped, nil
}

// chunkRef names one chunk of one file.
type chunkRef struct {
	file  int
	index int64
}

// split cuts every file into chunks, assigns each to train or validation
// (force, when not nil, goes to validation whatever its hash), merges runs of
// the same split into segments, keeps the training segments in d.train and
// returns the validation segments.
func (d *Dataset) split(sizes []int64, chunk int64, force *chunkRef) []segment {
	var valSegs []segment
	for fi, size := range sizes {
		var cur segment
		curVal, have := false, false
		for c := int64(0); c*chunk < size; c++ {
			isVal := chunkIsVal(d.files[fi], c, d.opts.ValFraction) || (force != nil && *force == chunkRef{fi, c})
			end := min((c+1)*chunk, size)
			if have && isVal == curVal {
				cur.end = end
				continue
			}
			if have {
				d.addSegment(cur, curVal, &valSegs)
			}
			cur, curVal, have = segment{file: fi, start: c * chunk, end: end}, isVal, true
		}
		if have {
			d.addSegment(cur, curVal, &valSegs)
		}
	}
	return valSegs
}

// closestValChunk returns the chunk, among those long enough for a window
// and not a file's only chunk, whose hash score is lowest.
func (d *Dataset) closestValChunk(sizes []int64, chunk, window int64) (chunkRef, bool) {
	best, bestScore, ok := chunkRef{}, 2.0, false
	for fi, size := range sizes {
		n := (size + chunk - 1) / chunk
		for c := int64(0); c < n && n > 1; c++ {
			if min((c+1)*chunk, size)-c*chunk < window {
				continue
			}
			if s := chunkScore(d.files[fi], c); s < bestScore {
				best, bestScore, ok = chunkRef{fi, c}, s, true
			}
		}
	}
	return best, ok
}

func (d *Dataset) addSegment(s segment, isVal bool, val *[]segment) {
	if isVal {
		*val = append(*val, s)
	} else if s.windows(int64(d.opts.SeqLen+1)) > 0 {
		d.train = append(d.train, s)
	}
}

// chunkIsVal decides the split of one chunk from its relative path and index
// alone: its score compared with the fraction.
func chunkIsVal(rel string, chunk int64, fraction float64) bool {
	return chunkScore(rel, chunk) < fraction
}

// chunkScore hashes a chunk's relative path and index to a number uniform in
// [0,1): FNV-1a over both, finished with a splitmix64 mix.
func chunkScore(rel string, chunk int64) float64 {
	h := fnv.New64a()
	h.Write([]byte(rel))
	var b [9]byte
	binary.LittleEndian.PutUint64(b[1:], uint64(chunk))
	h.Write(b[:])
	x := h.Sum64()
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return float64(x>>11) / (1 << 53)
}

// sniff returns a file's size and whether its first SniffSize bytes look
// binary (a NUL byte, or invalid UTF-8), with the reason.
func sniff(path string) (size int64, binary bool, why string, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, false, "", fmt.Errorf("data: cannot read %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, false, "", fmt.Errorf("data: cannot read %s: %w", path, err)
	}
	buf := make([]byte, min(int64(SniffSize), fi.Size()))
	n, err := io.ReadFull(f, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return 0, false, "", fmt.Errorf("data: cannot read %s: %w", path, err)
	}
	buf = buf[:n]
	if i := bytes.IndexByte(buf, 0); i >= 0 {
		return fi.Size(), true, fmt.Sprintf("NUL byte at offset %d", i), nil
	}
	if int64(n) < fi.Size() {
		// The prefix may end inside a multi-byte character: drop that tail.
		for k := 1; k < utf8.UTFMax && k <= len(buf); k++ {
			if utf8.RuneStart(buf[len(buf)-k]) {
				if !utf8.FullRune(buf[len(buf)-k:]) {
					buf = buf[:len(buf)-k]
				}
				break
			}
		}
	}
	if !utf8.Valid(buf) {
		return fi.Size(), true, "invalid UTF-8", nil
	}
	return fi.Size(), false, "", nil
}

// Stats reports what Open indexed.
func (d *Dataset) Stats() Stats { return d.stats }

// Files lists the indexed text files, relative to the directory.
func (d *Dataset) Files() []string { return append([]string(nil), d.files...) }

// TrainBatch returns micro-batch micro of optimizer step step. Its windows
// are drawn uniformly over every training window position by a PCG generator
// seeded with (Seed, step, micro) alone, so a resumed run reads exactly the
// batches the uninterrupted run would have.
func (d *Dataset) TrainBatch(step, micro int) (Batch, error) {
	if d.tokens != nil {
		return d.tokenTrainBatch(step, micro)
	}
	rng := rand.New(rand.NewPCG(d.opts.Seed, uint64(uint32(step))<<32|uint64(uint32(micro))))
	B, T := d.opts.BatchSize, d.opts.SeqLen
	b := newBatch(B, T)
	total := d.trainCum[len(d.trainCum)-1]
	for i := 0; i < B; i++ {
		pos := int64(rng.Uint64N(uint64(total)))
		s := sort.Search(len(d.trainCum), func(j int) bool { return d.trainCum[j] > pos })
		prev := int64(0)
		if s > 0 {
			prev = d.trainCum[s-1]
		}
		seg := d.train[s]
		if err := d.readWindow(b, i, seg.file, seg.start+pos-prev); err != nil {
			return Batch{}, err
		}
	}
	return b, nil
}

// NumValBatches is how many distinct validation batches there are: the fixed
// validation windows divided into batches of B, the last one wrapping around.
func (d *Dataset) NumValBatches() int {
	n := len(d.val)
	if d.tokens != nil {
		n = d.tokens.valRows
	}
	return (n + d.opts.BatchSize - 1) / d.opts.BatchSize
}

// ValBatches returns n validation batches (at most NumValBatches). When there
// are more validation windows than n*B, the windows are spread evenly over the
// whole validation split, so a short evaluation still sees every part of the
// data. The same dataset and n always give the same batches.
func (d *Dataset) ValBatches(n int) ([]Batch, error) {
	if d.tokens != nil {
		return d.tokenValBatches(n)
	}
	n = min(n, d.NumValBatches())
	if n <= 0 {
		return nil, nil
	}
	B := d.opts.BatchSize
	want := n * B
	out := make([]Batch, n)
	for i := range out {
		out[i] = newBatch(B, d.opts.SeqLen)
		for j := 0; j < B; j++ {
			k := i*B + j
			var w valWindow
			if want <= len(d.val) {
				w = d.val[int(int64(k)*int64(len(d.val))/int64(want))]
			} else {
				w = d.val[k%len(d.val)]
			}
			if err := d.readWindow(out[i], j, w.file, w.off); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

func newBatch(B, T int) Batch {
	return Batch{Tokens: make([]int32, B*T), Targets: make([]int32, B*T), B: B, T: T}
}

// readWindow reads T+1 bytes of file fi at off into row i of b.
func (d *Dataset) readWindow(b Batch, i, fi int, off int64) error {
	T := b.T
	buf := make([]byte, T+1)
	if err := d.readAt(fi, buf, off); err != nil {
		return err
	}
	for t := 0; t < T; t++ {
		b.Tokens[i*T+t] = int32(buf[t])
		b.Targets[i*T+t] = int32(buf[t+1])
	}
	return nil
}

// readAt reads len(buf) bytes at off from file fi through the bounded cache
// of open files. A file that shrank since Open is an error naming it.
func (d *Dataset) readAt(fi int, buf []byte, off int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var f *os.File
	if e, ok := d.open[fi]; ok {
		d.lru.MoveToFront(e)
		f = e.Value.(*openFile).f
	} else {
		path := filepath.Join(d.root, filepath.FromSlash(d.files[fi]))
		var err error
		f, err = os.Open(path)
		if err != nil {
			return fmt.Errorf("data: cannot read %s: %w", path, err)
		}
		for d.lru.Len() >= d.limit {
			old := d.lru.Remove(d.lru.Back()).(*openFile)
			delete(d.open, old.idx)
			old.f.Close()
		}
		d.open[fi] = d.lru.PushFront(&openFile{fi, f})
	}
	if _, err := f.ReadAt(buf, off); err != nil {
		path := filepath.Join(d.root, filepath.FromSlash(d.files[fi]))
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("data: %s is shorter than when it was indexed (reading %d bytes at offset %d): %w", path, len(buf), off, err)
		}
		return fmt.Errorf("data: reading %s at offset %d: %w", path, off, err)
	}
	return nil
}

// OpenFiles is the number of file handles currently held.
func (d *Dataset) OpenFiles() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.lru.Len()
}

// Close releases every open file.
func (d *Dataset) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var first error
	for e := d.lru.Front(); e != nil; e = e.Next() {
		if err := e.Value.(*openFile).f.Close(); err != nil && first == nil {
			first = err
		}
	}
	d.lru.Init()
	d.open = map[int]*list.Element{}
	if d.tokens != nil && d.tokens.f != nil {
		if err := d.tokens.f.Close(); err != nil && first == nil {
			first = err
		}
		d.tokens.f = nil
	}
	return first
}

package data

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/opencluster/opencluster/internal/atomicfile"
	"github.com/opencluster/opencluster/train/tokenizer"
)

// Truncation says which end of an example longer than a row is kept when
// packing is off.
const (
	TruncateRight = "right" // keep the beginning (the tokenizers library's default)
	TruncateLeft  = "left"  // keep the end
)

// MaxLineBytes bounds one JSONL line.
const MaxLineBytes = 16 << 20

// unscored marks a stored token that is not a training target (a prompt
// token of a chat example); ids stay below 2^24.
const unscored = 1 << 31

// example is one tokenized unit: a chunk of a text file or a JSONL line.
type example struct {
	file, unit uint32 // file index and chunk index or 1-based line number
	off        int64  // first token in the cache file
	n          uint32 // tokens
}

// tokenStore serves batches from a file of token ids written at Open.
type tokenStore struct {
	f          *os.File
	pad        int32
	train, val []example
	trainCum   []int64 // packed: tokens in train[:i+1]
	valCum     []int64
	valRows    int
}

// encoder turns text and conversations into stored tokens.
type encoder struct {
	tok      *tokenizer.Tokenizer // nil: bytes
	chatOnce sync.Once            // compiles chat on first use, from any goroutine
	chat     *tokenizer.ChatTemplate
	chatErr  error
	eos      int32 // -1: none
	pre      []int32
	post     []int32
}

func newEncoder(tok *tokenizer.Tokenizer) *encoder {
	e := &encoder{tok: tok, eos: -1}
	if tok != nil {
		e.pre, e.post = tok.SpecialTokens()
		if _, id, ok := tok.EOS(); ok {
			e.eos = id
		}
	}
	return e
}

// close stops the chat template's renderers, if it started any; later
// conversations fail.
func (e *encoder) close() {
	e.chatOnce.Do(func() { e.chatErr = errors.New("data: tokenizing stopped") })
	e.chat.Close()
}

// text encodes a piece of a document: the post-processor's leading special
// tokens (BOS) before the first piece; its trailing ones and EOS after the
// last.
func (e *encoder) text(s string, first, last bool) []int32 {
	var ids []int32
	if e.tok == nil {
		ids = make([]int32, len(s))
		for i := 0; i < len(s); i++ {
			ids[i] = int32(s[i])
		}
		return ids
	}
	if first {
		ids = append(ids, e.pre...)
	}
	ids = append(ids, e.tok.Encode(s, false)...)
	if last {
		ids = append(ids, e.post...)
		if e.eos >= 0 && (len(ids) == 0 || ids[len(ids)-1] != e.eos) {
			ids = append(ids, e.eos)
		}
	}
	return ids
}

// conversation encodes a chat example; only assistant tokens are scored.
func (e *encoder) conversation(msgs []tokenizer.Message) ([]uint32, error) {
	if e.tok == nil {
		return nil, errors.New("chat data needs a tokenizer with a chat_template (--tokenizer)")
	}
	e.chatOnce.Do(func() { e.chat, e.chatErr = e.tok.CompileChatTemplate() })
	if e.chatErr != nil {
		return nil, e.chatErr
	}
	ids, assistant, err := e.tok.EncodeChat(e.chat, msgs)
	if err != nil {
		return nil, err
	}
	out := make([]uint32, len(ids))
	for i, id := range ids {
		out[i] = uint32(id)
		if !assistant[i] {
			out[i] |= unscored
		}
	}
	return out, nil
}

func scoredAll(ids []int32) []uint32 {
	out := make([]uint32, len(ids))
	for i, id := range ids {
		out[i] = uint32(id)
	}
	return out
}

// openTokens tokenizes the files (or reuses the cache of an earlier Open
// of the same files with the same tokenizer), splits the examples and
// prepares packed windows or rows.
func (d *Dataset) openTokens(found []indexed) error {
	o := d.opts
	for _, f := range found {
		d.files = append(d.files, f.rel)
		d.stats.Bytes += f.size
	}
	d.stats.Files = len(d.files)
	if o.Truncation == "" {
		o.Truncation = TruncateRight
	}
	if o.Truncation != TruncateRight && o.Truncation != TruncateLeft {
		return fmt.Errorf("data %s: truncation %q: want %q or %q", o.Dir, o.Truncation, TruncateRight, TruncateLeft)
	}
	d.opts = o
	enc := newEncoder(o.Tokenizer)
	defer enc.close()
	key, err := cacheKey(d.root, found, o)
	if err != nil {
		return err
	}
	dir := o.CacheDir
	if dir == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			return fmt.Errorf("data: no token cache folder given and no user cache folder: %w", err)
		}
		dir = filepath.Join(base, "opencluster", "tokens")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("data: token cache %s: %w", dir, err)
	}
	// One cache per data folder: the name starts with a hash of the folder,
	// and a rebuilt cache replaces the folder's older ones.
	rootSum := sha256.Sum256([]byte(d.root))
	prefix := "tokens-" + hex.EncodeToString(rootSum[:6]) + "-"
	bin := filepath.Join(dir, prefix+key+".bin")
	idx := filepath.Join(dir, prefix+key+".idx")
	examples, bad, err := readIndex(idx, bin)
	if err != nil {
		o.Logger.Info("tokenizing data", "dir", o.Dir, "files", len(found), "cache", bin)
		if examples, bad, err = d.tokenize(enc, bin, idx); err != nil {
			return err
		}
		old, _ := filepath.Glob(filepath.Join(dir, prefix+"*"))
		for _, p := range old {
			if p != bin && p != idx {
				os.Remove(p)
			}
		}
	}
	d.stats.BadLines = bad
	f, err := os.Open(bin)
	if err != nil {
		return fmt.Errorf("data: token cache: %w", err)
	}
	ts := &tokenStore{f: f}
	d.tokens = ts
	if o.Tokenizer != nil {
		if _, id, ok := o.Tokenizer.Pad(); ok {
			ts.pad = id
		} else if enc.eos >= 0 {
			ts.pad = enc.eos
		}
	}
	return d.splitExamples(examples)
}

// splitExamples assigns every example to train or validation by the hash
// of its file and unit, as the byte-level loader splits chunks.
func (d *Dataset) splitExamples(examples []example) error {
	o, ts := d.opts, d.tokens
	window := int64(o.SeqLen + 1)
	usable := func(ex example) bool {
		if o.Pack {
			return ex.n > 0
		}
		ok, err := ts.hasTarget(ex, o.SeqLen, o.Truncation)
		return err == nil && ok
	}
	isVal := func(ex example) bool { return chunkIsVal(d.files[ex.file], int64(ex.unit), o.ValFraction) }
	var best = -1
	for i, ex := range examples {
		if !usable(ex) {
			d.stats.Dropped++
			continue
		}
		if isVal(ex) {
			ts.val = append(ts.val, ex)
		} else {
			ts.train = append(ts.train, ex)
		}
		if best < 0 || chunkScore(d.files[ex.file], int64(ex.unit)) < chunkScore(d.files[examples[best].file], int64(examples[best].unit)) {
			best = i
		}
	}
	if len(ts.val) == 0 && len(ts.train) > 1 {
		// As with chunks: the example closest to being chosen is held out.
		ts.train = ts.train[:0]
		ts.val = []example{examples[best]}
		for i, ex := range examples {
			if i != best && usable(ex) {
				ts.train = append(ts.train, ex)
			}
		}
	}
	d.stats.Examples = len(ts.train) + len(ts.val)
	for _, ex := range ts.train {
		d.stats.TrainTokens += int64(ex.n)
	}
	for _, ex := range ts.val {
		d.stats.ValTokens += int64(ex.n)
	}
	if o.Pack {
		ts.trainCum = cumulative(ts.train)
		ts.valCum = cumulative(ts.val)
		d.stats.TrainWindows = max(0, d.stats.TrainTokens-window+1)
		ts.valRows = int(d.stats.ValTokens / window)
	} else {
		d.stats.TrainWindows = int64(len(ts.train))
		ts.valRows = len(ts.val)
	}
	d.stats.ValWindows = ts.valRows
	if d.stats.TrainWindows <= 0 {
		dropped := ""
		if d.stats.Dropped > 0 {
			dropped = fmt.Sprintf(" (%d examples dropped: no target to learn within their first seq_len+1 tokens; raise seq_len or use --truncation left)", d.stats.Dropped)
		}
		if d.stats.BadLines > 0 {
			dropped += fmt.Sprintf(" (%d malformed lines skipped)", d.stats.BadLines)
		}
		return fmt.Errorf("data %s: the training split (%d examples, %d tokens) is too small for one sequence of %d tokens%s; add data or shorten seq_len", o.Dir, len(ts.train), d.stats.TrainTokens, window, dropped)
	}
	if ts.valRows == 0 {
		return fmt.Errorf("data %s: the validation split (val_fraction %g: %d examples, %d tokens) is too small for one sequence of %d tokens; add data, raise val_fraction or shorten seq_len", o.Dir, o.ValFraction, len(ts.val), d.stats.ValTokens, window)
	}
	return nil
}

func cumulative(exs []example) []int64 {
	cum := make([]int64, len(exs))
	var total int64
	for i, ex := range exs {
		total += int64(ex.n)
		cum[i] = total
	}
	return cum
}

// cacheKey fingerprints what the stored tokens depend on: the tokenizer,
// the chunk size, --skip-bad-lines and every file's path, size and
// modification time.
func cacheKey(root string, found []indexed, o Options) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "opencluster tokens v1\nchunk %d\nskip %v\n", o.ChunkSize, o.SkipBadLines)
	if o.Tokenizer != nil {
		fmt.Fprintf(h, "tokenizer %s\n", o.Tokenizer.Fingerprint())
	}
	for _, f := range found {
		fi, err := os.Stat(filepath.Join(root, filepath.FromSlash(f.rel)))
		if err != nil {
			return "", fmt.Errorf("data: %w", err)
		}
		fmt.Fprintf(h, "%q %d %d\n", f.rel, fi.Size(), fi.ModTime().UnixNano())
	}
	return hex.EncodeToString(h.Sum(nil)[:12]), nil
}

const indexMagic = "OCTOKENS1\n"

// readIndex loads a finished cache's index; an error means it must be
// rebuilt.
func readIndex(idx, bin string) ([]example, int, error) {
	b, err := os.ReadFile(idx)
	if err != nil {
		return nil, 0, err
	}
	if !bytes.HasPrefix(b, []byte(indexMagic)) || (len(b)-len(indexMagic)-8)%20 != 0 {
		return nil, 0, errors.New("token cache index: bad format")
	}
	b = b[len(indexMagic):]
	bad := int(binary.LittleEndian.Uint64(b))
	b = b[8:]
	exs := make([]example, len(b)/20)
	var total int64
	for i := range exs {
		r := b[20*i:]
		exs[i] = example{file: binary.LittleEndian.Uint32(r), unit: binary.LittleEndian.Uint32(r[4:]), off: int64(binary.LittleEndian.Uint64(r[8:])), n: binary.LittleEndian.Uint32(r[16:])}
		if exs[i].off != total {
			return nil, 0, errors.New("token cache index: examples out of order")
		}
		total += int64(exs[i].n)
	}
	if fi, err := os.Stat(bin); err != nil || fi.Size() != 4*total {
		return nil, 0, errors.New("token cache: size does not match its index")
	}
	return exs, bad, nil
}

// tokenize reads every file once, in order, and writes the token cache: the
// ids file first, then its index (whose presence marks the cache complete).
func (d *Dataset) tokenize(enc *encoder, bin, idx string) ([]example, int, error) {
	tmp, err := os.CreateTemp(filepath.Dir(bin), ".tokens-*.tmp")
	if err != nil {
		return nil, 0, fmt.Errorf("data: token cache: %w", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	w := bufio.NewWriterSize(tmp, 1<<20)
	var exs []example
	var off int64
	bad := 0
	emit := func(file, unit int, toks []uint32) error {
		exs = append(exs, example{file: uint32(file), unit: uint32(unit), off: off, n: uint32(len(toks))})
		off += int64(len(toks))
		var buf [4]byte
		for _, t := range toks {
			binary.LittleEndian.PutUint32(buf[:], t)
			if _, err := w.Write(buf[:]); err != nil {
				return fmt.Errorf("data: writing token cache %s: %w", bin, err)
			}
		}
		return nil
	}
	// The files are read in order by one goroutine; chunks and lines are
	// encoded on every core and written back in order.
	p := newPipeline(runtime.GOMAXPROCS(0))
	go func() {
		defer p.close()
		for fi, rel := range d.files {
			path := filepath.Join(d.root, filepath.FromSlash(rel))
			var err error
			if strings.HasSuffix(rel, ".jsonl") {
				err = d.tokenizeJSONL(enc, fi, path, p)
			} else {
				err = d.tokenizeText(enc, fi, path, p)
			}
			if err != nil {
				p.fail(err)
				return
			}
		}
	}()
	for j := range p.order {
		<-j.done
		err := j.err
		if err != nil && j.line > 0 {
			switch {
			case errors.Is(err, tokenizer.ErrTemplateRefused):
				// Not the line's fault: the chat template broke the
				// sandbox's limits, and fails every line.
				err = fmt.Errorf("data: %s:%d: %w", j.path, j.line, err)
			case !d.opts.SkipBadLines:
				err = fmt.Errorf("data: %s:%d: %w (use --skip-bad-lines to skip such lines)", j.path, j.line, err)
			default:
				if bad < 5 {
					d.opts.Logger.Warn("skipping bad line", "file", j.path, "line", j.line, "error", err)
				}
				bad++
				continue
			}
		}
		if err == nil && len(j.toks) > 0 {
			err = emit(j.file, j.unit, j.toks)
		}
		if err != nil {
			p.stop()
			return nil, 0, err
		}
	}
	if err := w.Flush(); err != nil {
		return nil, 0, fmt.Errorf("data: writing token cache %s: %w", bin, err)
	}
	if err := tmp.Sync(); err != nil {
		return nil, 0, fmt.Errorf("data: writing token cache %s: %w", bin, err)
	}
	if err := os.Rename(tmp.Name(), bin); err != nil {
		return nil, 0, fmt.Errorf("data: token cache: %w", err)
	}
	ib := make([]byte, 0, len(indexMagic)+8+20*len(exs))
	ib = append(ib, indexMagic...)
	ib = binary.LittleEndian.AppendUint64(ib, uint64(bad))
	for _, ex := range exs {
		ib = binary.LittleEndian.AppendUint32(ib, ex.file)
		ib = binary.LittleEndian.AppendUint32(ib, ex.unit)
		ib = binary.LittleEndian.AppendUint64(ib, uint64(ex.off))
		ib = binary.LittleEndian.AppendUint32(ib, ex.n)
	}
	if err := atomicfile.WriteFile(idx, ib, 0o644); err != nil {
		return nil, 0, fmt.Errorf("data: token cache: %w", err)
	}
	return exs, bad, nil
}

// tokenizeText cuts a text file into chunks of about ChunkSize bytes at line
// ends (a longer line is cut at a character boundary) and encodes each, so
// no file is read whole; BOS goes before the first chunk, EOS after the last.
func (d *Dataset) tokenizeText(enc *encoder, fi int, path string, p *pipeline) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("data: cannot read %s: %w", path, err)
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 64<<10)
	size := d.opts.ChunkSize
	var chunk []byte
	unit := 0
	flush := func(last bool) error {
		if len(chunk) == 0 && !last {
			return nil
		}
		if !utf8.Valid(chunk) {
			return fmt.Errorf("data: %s: chunk %d (bytes from %d) is not valid UTF-8", path, unit, int64(unit)*int64(size))
		}
		text, first := string(chunk), unit == 0
		chunk = chunk[:0]
		if err := p.submit(&job{file: fi, unit: unit, run: func() ([]uint32, error) {
			return scoredAll(enc.text(text, first, last)), nil
		}}); err != nil {
			return err
		}
		unit++
		return nil
	}
	for {
		line, err := r.ReadSlice('\n')
		for len(line) > 0 {
			room := size - len(chunk)
			if len(line) <= room {
				chunk = append(chunk, line...)
				line = nil
				break
			}
			if len(chunk) > 0 {
				if ferr := flush(false); ferr != nil {
					return ferr
				}
				continue
			}
			cut := room
			for cut > 0 && !utf8.RuneStart(line[cut]) {
				cut--
			}
			if cut == 0 {
				cut = room
			}
			chunk = append(chunk, line[:cut]...)
			line = line[cut:]
			if ferr := flush(false); ferr != nil {
				return ferr
			}
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if errors.Is(err, io.EOF) {
			return flush(true)
		}
		if err != nil {
			return fmt.Errorf("data: reading %s: %w", path, err)
		}
		if len(chunk) >= size {
			if err := flush(false); err != nil {
				return err
			}
		}
	}
}

// record is one JSONL line: {"text": ...} or {"messages": [...]}.
type record struct {
	Text     *string           `json:"text"`
	Messages []json.RawMessage `json:"messages"`
}

// tokenizeJSONL encodes one example per line. A malformed line is an error
// naming the file and line, or with SkipBadLines is skipped and counted
// (by the caller, which reads the results in order).
func (d *Dataset) tokenizeJSONL(enc *encoder, fi int, path string, p *pipeline) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("data: cannot read %s: %w", path, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), MaxLineBytes)
	for line := 1; sc.Scan(); line++ {
		b := bytes.Clone(bytes.TrimSpace(sc.Bytes()))
		if len(b) == 0 {
			continue
		}
		if err := p.submit(&job{file: fi, unit: line, path: path, line: line, run: func() ([]uint32, error) {
			return d.jsonlExample(enc, b)
		}}); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return fmt.Errorf("data: %s: a line is longer than %d bytes", path, MaxLineBytes)
		}
		return fmt.Errorf("data: reading %s: %w", path, err)
	}
	return nil
}

// job is one chunk or line to encode.
type job struct {
	file, unit int
	path       string // JSONL only: for messages about the line
	line       int    // JSONL only: its 1-based number; 0 for text chunks
	run        func() ([]uint32, error)
	toks       []uint32
	err        error
	done       chan struct{}
}

// pipeline runs jobs on several goroutines and hands them back in the
// order they were submitted, holding a bounded number in flight.
type pipeline struct {
	work    chan *job
	order   chan *job
	stopped chan struct{}
	once    sync.Once
}

func newPipeline(workers int) *pipeline {
	p := &pipeline{work: make(chan *job), order: make(chan *job, 4*workers), stopped: make(chan struct{})}
	for range workers {
		go func() {
			for j := range p.work {
				j.toks, j.err = j.run()
				close(j.done)
			}
		}()
	}
	return p
}

var errStopped = errors.New("data: tokenizing stopped")

// submit queues j; it fails once the consumer has stopped.
func (p *pipeline) submit(j *job) error {
	j.done = make(chan struct{})
	select {
	case p.order <- j:
	case <-p.stopped:
		return errStopped
	}
	select {
	case p.work <- j:
	case <-p.stopped:
		j.err = errStopped
		close(j.done) // queued but never run: the drain must not wait for it
		return errStopped
	}
	return nil
}

// fail hands the consumer a reading error, in order.
func (p *pipeline) fail(err error) {
	if errors.Is(err, errStopped) {
		return
	}
	j := &job{err: err, done: make(chan struct{})}
	close(j.done)
	select {
	case p.order <- j:
	case <-p.stopped:
	}
}

// close ends the stream (the producer calls it when done).
func (p *pipeline) close() {
	close(p.work)
	close(p.order)
}

// stop tells the producer to quit early; the jobs already queued finish on
// their own.
func (p *pipeline) stop() {
	p.once.Do(func() { close(p.stopped) })
	go func() {
		for j := range p.order {
			<-j.done
		}
	}()
}

func (d *Dataset) jsonlExample(enc *encoder, b []byte) ([]uint32, error) {
	var rec record
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&rec); err != nil {
		return nil, fmt.Errorf("invalid JSON: %v", err)
	}
	if dec.More() {
		return nil, errors.New("more than one JSON value on the line")
	}
	switch {
	case rec.Text != nil && rec.Messages == nil:
		return scoredAll(enc.text(*rec.Text, true, true)), nil
	case rec.Messages != nil && rec.Text == nil:
		msgs := make([]tokenizer.Message, len(rec.Messages))
		assistant := false
		for i, raw := range rec.Messages {
			var m tokenizer.Message
			if err := json.Unmarshal(raw, &m); err != nil {
				return nil, fmt.Errorf("messages[%d]: want an object with \"role\" and \"content\": %v", i, err)
			}
			if _, ok := m["role"].(string); !ok {
				return nil, fmt.Errorf("messages[%d]: \"role\" must be a string", i)
			}
			if _, ok := m["content"].(string); !ok {
				return nil, fmt.Errorf("messages[%d]: \"content\" must be a string", i)
			}
			assistant = assistant || m.Role() == "assistant"
			msgs[i] = m
		}
		if !assistant {
			return nil, errors.New("the conversation has no assistant message to learn from")
		}
		return enc.conversation(msgs)
	}
	return nil, errors.New(`want {"text": "..."} or {"messages": [{"role": ..., "content": ...}, ...]}`)
}

// read returns n stored tokens starting at token off of the cache file.
func (ts *tokenStore) read(off int64, n int) ([]uint32, error) {
	buf := make([]byte, 4*n)
	if _, err := ts.f.ReadAt(buf, 4*off); err != nil {
		return nil, fmt.Errorf("data: reading token cache %s: %w", ts.f.Name(), err)
	}
	out := make([]uint32, n)
	for i := range out {
		out[i] = binary.LittleEndian.Uint32(buf[4*i:])
	}
	return out, nil
}

// readStream reads n tokens from position pos of the concatenation of exs.
func (ts *tokenStore) readStream(exs []example, cum []int64, pos int64, n int) ([]uint32, error) {
	out := make([]uint32, 0, n)
	i := sort.Search(len(cum), func(j int) bool { return cum[j] > pos })
	for len(out) < n && i < len(exs) {
		start := int64(0)
		if i > 0 {
			start = cum[i-1]
		}
		from := pos - start
		take := min(int64(n-len(out)), int64(exs[i].n)-from)
		part, err := ts.read(exs[i].off+from, int(take))
		if err != nil {
			return nil, err
		}
		out = append(out, part...)
		pos += take
		i++
	}
	if len(out) < n {
		return nil, fmt.Errorf("data: token stream ends at %d, want %d more tokens", pos, n-len(out))
	}
	return out, nil
}

// window returns the tokens of one unpacked row: the example cut to T+1
// tokens on the truncation side.
func (ts *tokenStore) window(ex example, T int, side string) ([]uint32, error) {
	n := min(int(ex.n), T+1)
	off := ex.off
	if side == TruncateLeft {
		off += int64(ex.n) - int64(n)
	}
	return ts.read(off, n)
}

// hasTarget reports whether an unpacked row of ex scores at least one target.
func (ts *tokenStore) hasTarget(ex example, T int, side string) (bool, error) {
	if ex.n < 2 {
		return false, nil
	}
	w, err := ts.window(ex, T, side)
	if err != nil {
		return false, err
	}
	return scores(w), nil
}

// fill writes row i of b from stored tokens w (len <= T+1), padding the
// rest: a target is -1 where the next token is padding or unscored.
func (ts *tokenStore) fill(b Batch, i int, w []uint32) {
	T := b.T
	for t := 0; t < T; t++ {
		b.Tokens[i*T+t] = ts.pad
		b.Targets[i*T+t] = -1
		if t < len(w) {
			b.Tokens[i*T+t] = int32(w[t] &^ unscored)
		}
		if t+1 < len(w) && w[t+1]&unscored == 0 {
			b.Targets[i*T+t] = int32(w[t+1])
		}
	}
}

func (d *Dataset) tokenTrainBatch(step, micro int) (Batch, error) {
	ts := d.tokens
	rng := rand.New(rand.NewPCG(d.opts.Seed, uint64(uint32(step))<<32|uint64(uint32(micro))))
	B, T := d.opts.BatchSize, d.opts.SeqLen
	b := newBatch(B, T)
	for i := 0; i < B; i++ {
		var w []uint32
		var err error
		if d.opts.Pack {
			// A packed window can fall wholly inside prompts (long chat
			// prompts, short seq_len): draw again, a bounded number of
			// times, so a row has something to learn.
			for try := 0; try < maxRedraws; try++ {
				pos := int64(rng.Uint64N(uint64(d.stats.TrainWindows)))
				if w, err = ts.readStream(ts.train, ts.trainCum, pos, T+1); err != nil || scores(w) {
					break
				}
			}
		} else {
			w, err = ts.window(ts.train[rng.IntN(len(ts.train))], T, d.opts.Truncation)
		}
		if err != nil {
			return Batch{}, err
		}
		ts.fill(b, i, w)
	}
	return b, nil
}

func (d *Dataset) tokenValBatches(n int) ([]Batch, error) {
	ts := d.tokens
	n = min(n, d.NumValBatches())
	B, T := d.opts.BatchSize, d.opts.SeqLen
	want := n * B
	out := make([]Batch, n)
	for i := range out {
		out[i] = newBatch(B, T)
		for j := 0; j < B; j++ {
			k := i*B + j
			row := k % ts.valRows
			if want <= ts.valRows {
				row = int(int64(k) * int64(ts.valRows) / int64(want))
			}
			var w []uint32
			var err error
			if d.opts.Pack {
				// The next window when this one holds no target.
				for try := 0; try < min(maxRedraws, ts.valRows); try++ {
					r := (row + try) % ts.valRows
					if w, err = ts.readStream(ts.val, ts.valCum, int64(r)*int64(T+1), T+1); err != nil || scores(w) {
						break
					}
				}
			} else {
				w, err = ts.window(ts.val[row], T, d.opts.Truncation)
			}
			if err != nil {
				return nil, err
			}
			ts.fill(out[i], j, w)
		}
	}
	return out, nil
}

// maxRedraws bounds the windows tried for one packed row.
const maxRedraws = 64

// scores reports whether a window has a target to learn.
func scores(w []uint32) bool {
	for _, t := range w[1:] {
		if t&unscored == 0 {
			return true
		}
	}
	return false
}

// hasJSONL reports whether any file is JSONL.
func hasJSONL(found []indexed) bool {
	for _, f := range found {
		if strings.HasSuffix(f.rel, ".jsonl") {
			return true
		}
	}
	return false
}

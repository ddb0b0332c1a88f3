package data

import (
	"bytes"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// prose returns n bytes of deterministic printable text.
func prose(seed uint64, n int) []byte {
	words := []string{"the", "model", "learns", "from", "text", "on", "every", "machine", "and", "data", "stays", "home"}
	r := rand.New(rand.NewPCG(seed, 7))
	var b bytes.Buffer
	for b.Len() < n {
		b.WriteString(words[r.IntN(len(words))])
		if r.IntN(9) == 0 {
			b.WriteString(".\n")
		} else {
			b.WriteByte(' ')
		}
	}
	return b.Bytes()[:n]
}

func writeFile(t *testing.T, path string, body []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, body, 0o644); err != nil {
		t.Fatal(err)
	}
}

// logTo returns a logger writing text records to buf.
func logTo(buf *bytes.Buffer) *slog.Logger { return slog.New(slog.NewTextHandler(buf, nil)) }

func opts(dir string) Options {
	return Options{Dir: dir, SeqLen: 16, BatchSize: 4, ValFraction: 0.2, Seed: 1, ChunkSize: 256, Logger: slog.New(slog.DiscardHandler)}
}

func TestByteTokenizerRoundTrip(t *testing.T) {
	var tok Tokenizer = ByteTokenizer{}
	in := []byte("héllo\x00\xff world")
	ids := tok.Encode(in)
	if len(ids) != len(in) {
		t.Fatalf("Encode gave %d ids for %d bytes", len(ids), len(in))
	}
	out, err := tok.Decode(ids)
	if err != nil || !bytes.Equal(out, in) {
		t.Fatalf("Decode(Encode(x)) = %q, %v; want %q", out, err, in)
	}
	if _, err := tok.Decode([]int32{65, 300}); err == nil || !strings.Contains(err.Error(), "position 1") {
		t.Errorf("out-of-vocabulary id: error %v, want one naming position 1", err)
	}
	if tok.VocabSize() != 256 {
		t.Errorf("VocabSize = %d", tok.VocabSize())
	}
}

func TestPrintable(t *testing.T) {
	cases := []struct{ in, want string }{
		{"plain text\nnext\tline", "plain text\nnext\tline"},
		{"bell\x07", `bell\x07`},
		{"esc\x1b[31m", `esc\x1b[31m`},
		{"bad \xff\xfe utf8", `bad \xff\xfe utf8`},
		{"café ✓", "café ✓"},
		{"rtl\u202eoverride", `rtl\u202eoverride`},
		{"cut \xe2\x9c", `cut \xe2\x9c`},
	}
	for _, c := range cases {
		if got := Printable([]byte(c.in)); got != c.want {
			t.Errorf("Printable(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestOpenRecursesAndSkipsBinary(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a.txt"), prose(1, 3000))
	writeFile(t, filepath.Join(dir, "sub", "deeper", "b.md"), prose(2, 3000))
	writeFile(t, filepath.Join(dir, "sub", "image.png"), append([]byte("\x89PNG\r\n\x1a\n\x00\x00"), prose(3, 100)...))
	writeFile(t, filepath.Join(dir, "latin1.txt"), []byte("caf\xe9 au lait, plain latin-1 text"))
	writeFile(t, filepath.Join(dir, ".git", "objects"), prose(4, 3000))
	writeFile(t, filepath.Join(dir, "empty.txt"), nil)
	var logs bytes.Buffer
	o := opts(dir)
	o.Logger = logTo(&logs)
	d, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if got, want := d.Files(), []string{"a.txt", "sub/deeper/b.md"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Files = %v, want %v", got, want)
	}
	st := d.Stats()
	if !reflect.DeepEqual(st.Skipped, []string{"latin1.txt", "sub/image.png"}) {
		t.Errorf("Skipped = %v", st.Skipped)
	}
	for _, name := range []string{"sub/image.png", "latin1.txt", "NUL byte", "invalid UTF-8"} {
		if !strings.Contains(logs.String(), name) {
			t.Errorf("warnings do not mention %q:\n%s", name, logs.String())
		}
	}
	if st.Bytes != 6000 {
		t.Errorf("Bytes = %d, want 6000", st.Bytes)
	}
}

func TestSniffIgnoresCharacterCutAtPrefixEnd(t *testing.T) {
	dir := t.TempDir()
	body := bytes.Repeat([]byte("a"), SniffSize-1)
	body = append(body, "✓ and more text after the sniffed prefix"...) // ✓ straddles the prefix end
	body = append(body, prose(5, 2000)...)
	writeFile(t, filepath.Join(dir, "long.txt"), body)
	d, err := Open(opts(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if len(d.Stats().Skipped) != 0 {
		t.Errorf("a multi-byte character cut by the sniff prefix made the file look binary")
	}
}

func TestSymlinks(t *testing.T) {
	dir := t.TempDir()
	outside := t.TempDir()
	writeFile(t, filepath.Join(dir, "in.txt"), prose(1, 3000))
	writeFile(t, filepath.Join(outside, "secret.txt"), prose(2, 3000))
	if err := os.Symlink(filepath.Join(outside, "secret.txt"), filepath.Join(dir, "leak.txt")); err != nil {
		t.Skip("no symlinks here:", err)
	}
	if err := os.Symlink(outside, filepath.Join(dir, "leakdir")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "in.txt"), filepath.Join(dir, "alias.txt")); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	o := opts(dir)
	o.Logger = logTo(&logs)
	d, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if got, want := d.Files(), []string{"alias.txt", "in.txt"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Files = %v, want %v (links out of the tree must not be followed)", got, want)
	}
	if !strings.Contains(logs.String(), "leak.txt") {
		t.Errorf("no warning names leak.txt:\n%s", logs.String())
	}
}

func TestDeterministicDisjointSplit(t *testing.T) {
	dir := t.TempDir()
	// One big file: the split must cut it too.
	writeFile(t, filepath.Join(dir, "big.txt"), prose(9, 40000))
	o := opts(dir)
	o.ValFraction = 0.25
	d1, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer d1.Close()
	d2, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if !reflect.DeepEqual(d1.train, d2.train) || !reflect.DeepEqual(d1.val, d2.val) {
		t.Fatal("two Opens of the same files split differently")
	}
	// Roughly the requested share goes to validation.
	var valBytes int64
	inVal := make([]bool, 40000)
	for c := int64(0); c*256 < 40000; c++ {
		if chunkIsVal("big.txt", c, 0.25) {
			for i := c * 256; i < min((c+1)*256, 40000); i++ {
				inVal[i] = true
				valBytes++
			}
		}
	}
	if frac := float64(valBytes) / 40000; frac < 0.12 || frac > 0.38 {
		t.Errorf("validation share %.2f, want about 0.25", frac)
	}
	// No training window touches a validation byte, and every validation
	// window lies in validation bytes.
	for _, s := range d1.train {
		for i := s.start; i < s.end; i++ {
			if inVal[i] {
				t.Fatalf("training segment [%d,%d) contains validation byte %d", s.start, s.end, i)
			}
		}
	}
	for _, w := range d1.val {
		for i := w.off; i < w.off+17; i++ {
			if !inVal[i] {
				t.Fatalf("validation window at %d contains training byte %d", w.off, i)
			}
		}
	}
	// Adding a file leaves the split of the existing one unchanged.
	writeFile(t, filepath.Join(dir, "other.txt"), prose(10, 5000))
	d3, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer d3.Close()
	var before, after []segment
	for _, s := range d1.train {
		before = append(before, s)
	}
	for _, s := range d3.train {
		if d3.files[s.file] == "big.txt" {
			after = append(after, s)
		}
	}
	if !reflect.DeepEqual(before, after) {
		t.Error("adding other.txt changed the split of big.txt")
	}
}

func TestBatchStreamIsAFunctionOfSeedAndStep(t *testing.T) {
	dir := t.TempDir()
	for i := range 5 {
		writeFile(t, filepath.Join(dir, fmt.Sprintf("f%d.txt", i)), prose(uint64(i), 4000))
	}
	o := opts(dir)
	d1, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer d1.Close()
	d2, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	// d2 reads the steps out of order, as a resumed run would.
	for _, step := range []int{7, 3, 1} {
		for micro := range 2 {
			a, err := d1.TrainBatch(step, micro)
			if err != nil {
				t.Fatal(err)
			}
			b, err := d2.TrainBatch(step, micro)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(a, b) {
				t.Fatalf("step %d micro %d differs between two datasets", step, micro)
			}
		}
	}
	a, _ := d1.TrainBatch(1, 0)
	b, _ := d1.TrainBatch(2, 0)
	c, _ := d1.TrainBatch(1, 1)
	if reflect.DeepEqual(a.Tokens, b.Tokens) || reflect.DeepEqual(a.Tokens, c.Tokens) {
		t.Error("different steps or micro-batches gave the same batch")
	}
	o.Seed = 2
	d3, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer d3.Close()
	if e, _ := d3.TrainBatch(1, 0); reflect.DeepEqual(a.Tokens, e.Tokens) {
		t.Error("a different seed gave the same batch")
	}
	// Targets are the tokens shifted by one, read from the file.
	if a.B != 4 || a.T != 16 || len(a.Tokens) != 64 {
		t.Fatalf("batch shape B=%d T=%d len=%d", a.B, a.T, len(a.Tokens))
	}
	for i := 0; i < a.B; i++ {
		row, tgt := a.Tokens[i*16:(i+1)*16], a.Targets[i*16:(i+1)*16]
		for t2 := 0; t2+1 < 16; t2++ {
			if tgt[t2] != row[t2+1] {
				t.Fatalf("row %d: target %d is %d, token %d is %d", i, t2, tgt[t2], t2+1, row[t2+1])
			}
		}
	}
}

func TestValidationBatchesAreFixed(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a.txt"), prose(1, 30000))
	d, err := Open(opts(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	v1, err := d.ValBatches(3)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.TrainBatch(5, 0); err != nil {
		t.Fatal(err)
	}
	v2, _ := d.ValBatches(3)
	if len(v1) != 3 || !reflect.DeepEqual(v1, v2) {
		t.Fatalf("validation batches changed between calls (%d batches)", len(v1))
	}
	all, _ := d.ValBatches(1 << 20)
	if len(all) != d.NumValBatches() {
		t.Errorf("ValBatches(huge) gave %d batches, want NumValBatches=%d", len(all), d.NumValBatches())
	}
}

func TestOpenFilesStayBounded(t *testing.T) {
	dir := t.TempDir()
	for i := range 40 {
		writeFile(t, filepath.Join(dir, fmt.Sprintf("f%02d.txt", i)), prose(uint64(i), 1500))
	}
	o := opts(dir)
	o.MaxOpenFiles = 3
	d, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for step := range 30 {
		if _, err := d.TrainBatch(step, 0); err != nil {
			t.Fatal(err)
		}
		if n := d.OpenFiles(); n > 3 {
			t.Fatalf("step %d: %d files open, limit 3", step, n)
		}
	}
	if err := d.Close(); err != nil || d.OpenFiles() != 0 {
		t.Errorf("Close: %v, %d still open", err, d.OpenFiles())
	}
}

func TestOpenErrors(t *testing.T) {
	empty := t.TempDir()
	binOnly := t.TempDir()
	writeFile(t, filepath.Join(binOnly, "blob.bin"), []byte{0, 1, 2, 3})
	tiny := t.TempDir()
	writeFile(t, filepath.Join(tiny, "short.txt"), []byte("just a few words"))
	notDir := filepath.Join(tiny, "short.txt")
	cases := []struct {
		name string
		o    Options
		want []string
	}{
		{"missing dir", opts(filepath.Join(empty, "nope")), []string{"nope"}},
		{"a single small file", opts(notDir), []string{"short.txt", "too small"}},
		{"empty dir", opts(empty), []string{empty, "no text files"}},
		{"only binaries", opts(binOnly), []string{binOnly, "blob.bin"}},
		{"too small", opts(tiny), []string{tiny, "too small"}},
		{"no dir", Options{SeqLen: 1, BatchSize: 1, ValFraction: 0.1}, []string{"no directory"}},
		{"bad fraction", func() Options { o := opts(tiny); o.ValFraction = 1; return o }(), []string{"val_fraction"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d, err := Open(c.o)
			if err == nil {
				d.Close()
				t.Fatal("Open succeeded")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestValidationSplitTooSmall(t *testing.T) {
	dir := t.TempDir()
	// One chunk: nothing can be held out.
	writeFile(t, filepath.Join(dir, "a.txt"), prose(1, 250))
	o := opts(dir)
	o.ValFraction = 1e-9
	_, err := Open(o)
	if err == nil || !strings.Contains(err.Error(), "validation split") || !strings.Contains(err.Error(), dir) {
		t.Fatalf("error %v, want one about the validation split naming %s", err, dir)
	}
}

func TestSmallCorpusStillGetsValidation(t *testing.T) {
	dir := t.TempDir()
	// Three chunks and a fraction so small that no hash picks one: the
	// closest chunk is held out instead, the same one every time.
	writeFile(t, filepath.Join(dir, "a.txt"), prose(1, 700))
	o := opts(dir)
	o.ValFraction = 1e-9
	d1, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer d1.Close()
	d2, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if d1.Stats().ValWindows == 0 || d1.Stats().TrainWindows == 0 || !reflect.DeepEqual(d1.val, d2.val) {
		t.Fatalf("stats %+v; want both splits non-empty and repeatable", d1.Stats())
	}
}

func TestUnreadableFile(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root reads every file")
	}
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a.txt"), prose(1, 3000))
	p := filepath.Join(dir, "locked.txt")
	writeFile(t, p, prose(2, 3000))
	if err := os.Chmod(p, 0); err != nil {
		t.Fatal(err)
	}
	_, err := Open(opts(dir))
	if err == nil || !strings.Contains(err.Error(), "locked.txt") {
		t.Fatalf("error %v, want one naming locked.txt", err)
	}
}

func TestFileShrunkAfterOpen(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "a.txt")
	writeFile(t, p, prose(1, 20000))
	d, err := Open(opts(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := os.Truncate(p, 10); err != nil {
		t.Fatal(err)
	}
	var last error
	for step := 0; step < 5 && last == nil; step++ {
		_, last = d.TrainBatch(step, 0)
	}
	if last == nil || !strings.Contains(last.Error(), "a.txt") {
		t.Fatalf("error %v, want one naming a.txt", last)
	}
}

// BenchmarkTrainBatch measures reading one tiny-preset batch (16 windows of
// 65 bytes) from 20 files through the open-file cache.
func BenchmarkTrainBatch(b *testing.B) {
	dir := b.TempDir()
	for i := range 20 {
		p := filepath.Join(dir, fmt.Sprintf("f%02d.txt", i))
		if err := os.WriteFile(p, prose(uint64(i), 64<<10), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	d, err := Open(Options{Dir: dir, SeqLen: 64, BatchSize: 16, ValFraction: 0.1, Seed: 1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	b.SetBytes(16 * 65)
	for i := 0; b.Loop(); i++ {
		if _, err := d.TrainBatch(i, 0); err != nil {
			b.Fatal(err)
		}
	}
}

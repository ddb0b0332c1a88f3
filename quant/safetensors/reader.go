package safetensors

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"slices"
)

// Source is what a loader needs of a safetensors file: File (all of it in
// memory) and Reader (tensor by tensor from disk) both provide it.
type Source interface {
	Has(name string) bool
	// Tensor returns the tensor called name.
	Tensor(name string) (Tensor, error)
}

var (
	_ Source = (*File)(nil)
	_ Source = (*Reader)(nil)
)

// Reader reads a safetensors file tensor by tensor with bounded reads: the
// header is parsed and checked as Parse checks it (against the file's size),
// and a tensor's bytes are read only when asked for, so a loader holds one
// tensor at a time rather than the whole file. Not safe for concurrent use.
type Reader struct {
	Metadata map[string]string
	path     string
	f        *os.File
	dataOff  int64
	h        *header
}

// OpenReader opens path and parses its header.
func OpenReader(path string) (*Reader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	r, err := newReader(f, path)
	if err != nil {
		f.Close()
		return nil, err
	}
	return r, nil
}

func newReader(f *os.File, path string) (*Reader, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	size := st.Size()
	var lenBuf [8]byte
	if size < 8 {
		return nil, fmt.Errorf("%s: safetensors: truncated: %d bytes, need at least 8 for the header length", path, size)
	}
	if _, err := f.ReadAt(lenBuf[:], 0); err != nil {
		return nil, fmt.Errorf("%s: safetensors: %w", path, err)
	}
	n := binary.LittleEndian.Uint64(lenBuf[:])
	if n > MaxHeaderSize {
		return nil, fmt.Errorf("%s: safetensors: header length %d exceeds the %d-byte limit", path, n, MaxHeaderSize)
	}
	if n > uint64(size-8) {
		return nil, fmt.Errorf("%s: safetensors: header length %d larger than the %d bytes after it (truncated file?)", path, n, size-8)
	}
	hdr := make([]byte, n)
	if _, err := f.ReadAt(hdr, 8); err != nil {
		return nil, fmt.Errorf("%s: safetensors: reading the header: %w", path, err)
	}
	h, err := parseHeader(hdr, uint64(size)-8-n)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &Reader{Metadata: h.meta, path: path, f: f, dataOff: 8 + int64(n), h: h}, nil
}

// Close closes the file.
func (r *Reader) Close() error { return r.f.Close() }

// Path is the file's path.
func (r *Reader) Path() string { return r.path }

// Names returns the tensor names in sorted order.
func (r *Reader) Names() []string { return append([]string(nil), r.h.names...) }

// Has reports whether the file holds a tensor called name.
func (r *Reader) Has(name string) bool {
	_, ok := r.h.entries[name]
	return ok
}

// Info returns a tensor's dtype and shape without reading its data.
func (r *Reader) Info(name string) (dtype string, shape []int, err error) {
	e, ok := r.h.entries[name]
	if !ok {
		return "", nil, fmt.Errorf("safetensors: %s: no tensor %q", r.path, name)
	}
	return e.dtype, slices.Clone(e.shape), nil
}

// MaxTensorBytes is the size of the file's largest tensor, so a caller can
// size a read buffer no larger than any read needs.
func (r *Reader) MaxTensorBytes() int64 {
	var n uint64
	for _, e := range r.h.entries {
		n = max(n, e.end-e.begin)
	}
	return int64(n)
}

// Tensor reads the tensor called name into fresh memory.
func (r *Reader) Tensor(name string) (Tensor, error) {
	e, ok := r.h.entries[name]
	if !ok {
		return Tensor{}, fmt.Errorf("safetensors: %s: no tensor %q", r.path, name)
	}
	data := make([]byte, e.end-e.begin)
	if err := r.readAt(name, data, e.begin); err != nil {
		return Tensor{}, err
	}
	return Tensor{DType: e.dtype, Shape: slices.Clone(e.shape), Data: data}, nil
}

// ReadChunks reads tensor name in pieces of at most len(buf) bytes (rounded
// down to whole elements), calling fn(first, data) with the index of the
// first element and the raw little-endian bytes of the piece, which alias
// buf. It bounds the memory a conversion needs to buf plus its output.
func (r *Reader) ReadChunks(name string, buf []byte, fn func(first int, data []byte) error) error {
	e, ok := r.h.entries[name]
	if !ok {
		return fmt.Errorf("safetensors: %s: no tensor %q", r.path, name)
	}
	size := dtypeSizes[e.dtype]
	step := len(buf) / size * size
	if step == 0 {
		return fmt.Errorf("safetensors: %s: a %d-byte buffer holds no %s element", name, len(buf), e.dtype)
	}
	for at := e.begin; at < e.end; at += uint64(step) {
		piece := buf[:min(uint64(step), e.end-at)]
		if err := r.readAt(name, piece, at); err != nil {
			return err
		}
		if err := fn(int((at-e.begin)/uint64(size)), piece); err != nil {
			return err
		}
	}
	return nil
}

func (r *Reader) readAt(name string, dst []byte, off uint64) error {
	if _, err := r.f.ReadAt(dst, r.dataOff+int64(off)); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("safetensors: %s: reading tensor %q: %w", r.path, name, err)
	}
	return nil
}

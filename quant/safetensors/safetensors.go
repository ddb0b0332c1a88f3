// Package safetensors reads and writes the safetensors format: an 8-byte
// little-endian header length N, N bytes of JSON mapping each tensor name to
// {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the
// data section) plus an optional "__metadata__" map of strings, then the data.
//
// Parsing is strict, because checkpoints come from strangers: the header must
// fit in the file, every tensor's byte range must match its shape and dtype,
// and the ranges must tile the data section exactly, with no gap, overlap or
// trailing byte. Every error names the file or tensor that was wrong. Writes
// are atomic: a temp file in the same directory, fsynced, then renamed.
package safetensors

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"os"
	"sort"
	"unsafe"
)

// MaxHeaderSize bounds the JSON header (the reference implementation uses
// the same 100 MB cap) so a corrupt length cannot make us allocate wildly.
const MaxHeaderSize = 100 << 20

// dtypeSizes is the element size in bytes of every dtype the format names.
var dtypeSizes = map[string]int{
	"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
	"I16": 2, "U16": 2, "F16": 2, "BF16": 2,
	"I32": 4, "U32": 4, "F32": 4,
	"I64": 8, "U64": 8, "F64": 8,
}

// DTypeSize returns the size in bytes of one element of dtype, or an error
// for a dtype the format does not define.
func DTypeSize(dtype string) (int, error) {
	s, ok := dtypeSizes[dtype]
	if !ok {
		return 0, fmt.Errorf("unknown dtype %q", dtype)
	}
	return s, nil
}

// Tensor is one tensor: its dtype name (F32, BF16, U8, ...), its shape and
// its raw little-endian bytes.
type Tensor struct {
	DType string
	Shape []int
	Data  []byte
}

// Named is a tensor with its name, the unit Write takes.
type Named struct {
	Name string
	Tensor
}

// File is a parsed safetensors file. Tensor data aliases the bytes it was
// parsed from.
type File struct {
	Metadata map[string]string
	tensors  map[string]Tensor
	names    []string
}

// Read reads and parses the safetensors file at path.
func Read(path string) (*File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	f, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}

// Open is Read: the whole file is read into memory.
func Open(path string) (*File, error) { return Read(path) }

// headerEntry is one tensor's JSON description.
type headerEntry struct {
	DType       string   `json:"dtype"`
	Shape       []int64  `json:"shape"`
	DataOffsets []uint64 `json:"data_offsets"`
}

// Parse parses a whole safetensors file held in b.
func Parse(b []byte) (*File, error) {
	if len(b) < 8 {
		return nil, fmt.Errorf("safetensors: truncated: %d bytes, need at least 8 for the header length", len(b))
	}
	n := binary.LittleEndian.Uint64(b)
	if n > MaxHeaderSize {
		return nil, fmt.Errorf("safetensors: header length %d exceeds the %d-byte limit", n, MaxHeaderSize)
	}
	if n > uint64(len(b)-8) {
		return nil, fmt.Errorf("safetensors: header length %d larger than the %d bytes after it (truncated file?)", n, len(b)-8)
	}
	data := b[8+n:]
	h, err := parseHeader(b[8:8+n], uint64(len(data)))
	if err != nil {
		return nil, err
	}
	f := &File{Metadata: h.meta, tensors: make(map[string]Tensor, len(h.entries)), names: h.names}
	for name, e := range h.entries {
		f.tensors[name] = Tensor{DType: e.dtype, Shape: e.shape, Data: data[e.begin:e.end:e.end]}
	}
	return f, nil
}

// entry is one tensor's place in the data section.
type entry struct {
	dtype      string
	shape      []int
	begin, end uint64
}

// header is a parsed, checked safetensors header.
type header struct {
	meta    map[string]string
	entries map[string]entry
	names   []string // sorted
}

// parseHeader parses the JSON header of a file whose data section holds
// dataLen bytes, checking every entry against it.
func parseHeader(hdr []byte, dataLen uint64) (*header, error) {
	if len(bytes.TrimSpace(hdr)) == 0 || bytes.TrimLeft(hdr, " \t\r\n")[0] != '{' {
		return nil, errors.New("safetensors: header is not a JSON object")
	}
	raw, err := decodeObject(hdr)
	if err != nil {
		return nil, fmt.Errorf("safetensors: header: %w", err)
	}
	h := &header{entries: make(map[string]entry, len(raw))}
	type span struct {
		name       string
		begin, end uint64
	}
	spans := make([]span, 0, len(raw))
	for name, msg := range raw {
		if name == "__metadata__" {
			if err := json.Unmarshal(msg, &h.meta); err != nil {
				return nil, fmt.Errorf("safetensors: __metadata__ must map strings to strings: %w", err)
			}
			continue
		}
		var e headerEntry
		dec := json.NewDecoder(bytes.NewReader(msg))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&e); err != nil {
			return nil, fmt.Errorf("safetensors: tensor %q: %w", name, err)
		}
		size, err := DTypeSize(e.DType)
		if err != nil {
			return nil, fmt.Errorf("safetensors: tensor %q: %w", name, err)
		}
		if len(e.DataOffsets) != 2 {
			return nil, fmt.Errorf("safetensors: tensor %q: data_offsets has %d entries, want 2", name, len(e.DataOffsets))
		}
		begin, end := e.DataOffsets[0], e.DataOffsets[1]
		if begin > end || end > dataLen {
			return nil, fmt.Errorf("safetensors: tensor %q: data_offsets [%d, %d] outside the %d-byte data section", name, begin, end, dataLen)
		}
		shape := make([]int, len(e.Shape))
		elems := uint64(1)
		for i, d := range e.Shape {
			if d < 0 {
				return nil, fmt.Errorf("safetensors: tensor %q: negative dimension in shape %v", name, e.Shape)
			}
			hi, lo := bits.Mul64(elems, uint64(d))
			if hi != 0 || lo > math.MaxInt32*uint64(math.MaxInt32) {
				return nil, fmt.Errorf("safetensors: tensor %q: shape %v is too large", name, e.Shape)
			}
			elems = lo
			shape[i] = int(d)
		}
		// The byte count in 128 bits: 2^61 elements of 8 bytes must not
		// wrap to 0 and match an empty range.
		hi, want := bits.Mul64(elems, uint64(size))
		if hi != 0 || want > math.MaxInt64 {
			return nil, fmt.Errorf("safetensors: tensor %q: shape %v of %s is too large (more than 2^63 bytes)", name, e.Shape, e.DType)
		}
		if want != end-begin {
			return nil, fmt.Errorf("safetensors: tensor %q: shape %v of %s needs %d bytes, data_offsets give %d", name, e.Shape, e.DType, want, end-begin)
		}
		h.entries[name] = entry{dtype: e.DType, shape: shape, begin: begin, end: end}
		h.names = append(h.names, name)
		spans = append(spans, span{name, begin, end})
	}
	// The byte ranges must tile the data section: sorted by begin, each
	// starts where the previous ended, and the last ends at the end.
	sort.Slice(spans, func(i, j int) bool {
		if spans[i].begin != spans[j].begin {
			return spans[i].begin < spans[j].begin
		}
		return spans[i].end < spans[j].end
	})
	var at uint64
	for _, s := range spans {
		if s.begin < at {
			return nil, fmt.Errorf("safetensors: tensor %q: data_offsets [%d, %d] overlap the previous tensor (ending at %d)", s.name, s.begin, s.end, at)
		}
		if s.begin > at {
			return nil, fmt.Errorf("safetensors: tensor %q: gap of %d bytes before it in the data section", s.name, s.begin-at)
		}
		at = s.end
	}
	if at != dataLen {
		return nil, fmt.Errorf("safetensors: tensors cover %d of the %d data bytes (trailing or missing data)", at, dataLen)
	}
	sort.Strings(h.names)
	return h, nil
}

// decodeObject decodes a JSON object into its members, rejecting duplicate
// keys (which a plain map would silently merge) and trailing content.
func decodeObject(b []byte) (map[string]json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, errors.New("not a JSON object")
	}
	out := make(map[string]json.RawMessage)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		key, ok := tok.(string)
		if !ok {
			return nil, fmt.Errorf("object key %v is not a string", tok)
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("value of %q: %w", key, err)
		}
		if _, dup := out[key]; dup {
			return nil, fmt.Errorf("duplicate key %q", key)
		}
		out[key] = v
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, err
	}
	// Only the padding spaces the writer adds may follow.
	if rest, err := io.ReadAll(dec.Buffered()); err == nil && len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("trailing bytes after the JSON object")
	}
	return out, nil
}

// Names returns the tensor names in sorted order.
func (f *File) Names() []string { return append([]string(nil), f.names...) }

// Has reports whether the file holds a tensor called name.
func (f *File) Has(name string) bool {
	_, ok := f.tensors[name]
	return ok
}

// Tensor returns the tensor called name.
func (f *File) Tensor(name string) (Tensor, error) {
	t, ok := f.tensors[name]
	if !ok {
		return Tensor{}, fmt.Errorf("safetensors: no tensor %q", name)
	}
	return t, nil
}

// NumElements is the product of the shape.
func (t Tensor) NumElements() int {
	n := 1
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// Float32 converts the tensor's data to float32: F32 as is, F16 and BF16
// widened exactly, F64 rounded. Other dtypes are an error.
func (t Tensor) Float32() ([]float32, error) {
	size, err := DTypeSize(t.DType)
	if err != nil {
		return nil, err
	}
	if len(t.Data) != t.NumElements()*size {
		return nil, fmt.Errorf("safetensors: %d bytes for shape %v of %s", len(t.Data), t.Shape, t.DType)
	}
	out := make([]float32, t.NumElements())
	if err := DecodeFloat32(out, t.DType, t.Data); err != nil {
		return nil, err
	}
	return out, nil
}

// DecodeFloat32 converts len(dst) elements of little-endian dtype bytes in
// d to float32: F32 as is, F16 and BF16 widened exactly, F64 rounded.
func DecodeFloat32(dst []float32, dtype string, d []byte) error {
	size, err := DTypeSize(dtype)
	if err != nil {
		return err
	}
	if len(d) < len(dst)*size {
		return fmt.Errorf("safetensors: %d bytes of %s for %d elements", len(d), dtype, len(dst))
	}
	switch dtype {
	case "F32":
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(d[4*i:]))
		}
	case "F16":
		for i := range dst {
			dst[i] = F16ToF32(binary.LittleEndian.Uint16(d[2*i:]))
		}
	case "BF16":
		for i := range dst {
			dst[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(d[2*i:])) << 16)
		}
	case "F64":
		for i := range dst {
			dst[i] = float32(math.Float64frombits(binary.LittleEndian.Uint64(d[8*i:])))
		}
	default:
		return fmt.Errorf("safetensors: cannot convert %s to float32", dtype)
	}
	return nil
}

// IsFloat reports whether the dtype is one Float32 converts.
func (t Tensor) IsFloat() bool {
	switch t.DType {
	case "F32", "F16", "BF16", "F64":
		return true
	}
	return false
}

// F16ToF32 widens an IEEE half-precision value exactly.
func F16ToF32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1F
	mant := uint32(h) & 0x3FF
	switch {
	case exp == 0x1F: // Inf or NaN
		return math.Float32frombits(sign | 0xFF<<23 | mant<<13)
	case exp != 0: // normal
		return math.Float32frombits(sign | (exp+127-15)<<23 | mant<<13)
	case mant == 0:
		return math.Float32frombits(sign)
	}
	// Subnormal half: normalize.
	e := uint32(127 - 15 + 1)
	for mant&0x400 == 0 {
		mant <<= 1
		e--
	}
	return math.Float32frombits(sign | e<<23 | (mant&0x3FF)<<13)
}

// F32View makes an F32 tensor of shape whose data is v's own memory, not a
// copy, on little-endian machines (safetensors is little-endian; elsewhere
// it copies, as F32Tensor). Writers use it to stream live buffers into a
// file without a second copy of them; v must not change until the tensor
// is written.
func F32View(shape []int, v []float32) Tensor {
	if !littleEndian || len(v) == 0 {
		return F32Tensor(shape, v)
	}
	b := unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v))
	return Tensor{DType: "F32", Shape: append([]int(nil), shape...), Data: b}
}

// littleEndian reports whether this machine stores numbers as safetensors does.
var littleEndian = func() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}()

// F32Tensor makes an F32 tensor of shape from v (copied).
func F32Tensor(shape []int, v []float32) Tensor {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return Tensor{DType: "F32", Shape: append([]int(nil), shape...), Data: b}
}

// BF16Tensor makes a BF16 tensor of shape from raw bfloat16 bits.
func BF16Tensor(shape []int, v []uint16) Tensor {
	b := make([]byte, 2*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint16(b[2*i:], x)
	}
	return Tensor{DType: "BF16", Shape: append([]int(nil), shape...), Data: b}
}

// U8Tensor makes a U8 tensor of shape from v (copied).
func U8Tensor(shape []int, v []byte) Tensor {
	return Tensor{DType: "U8", Shape: append([]int(nil), shape...), Data: append([]byte(nil), v...)}
}

// I64Tensor makes an I64 tensor of shape from v.
func I64Tensor(shape []int, v []int64) Tensor {
	b := make([]byte, 8*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint64(b[8*i:], uint64(x))
	}
	return Tensor{DType: "I64", Shape: append([]int(nil), shape...), Data: b}
}

package safetensors

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func sample() ([]Named, map[string]string) {
	return []Named{
		{"b.weight", F32Tensor([]int{2, 3}, []float32{1, 2, 3, 4, 5, -6})},
		{"a.ids", I64Tensor([]int{2}, []int64{7, -8})},
		{"c.codes", U8Tensor([]int{3, 1}, []byte{1, 2, 3})},
		{"empty", F32Tensor([]int{0, 4}, nil)},
		{"scalar", F32Tensor([]int{}, []float32{2.5})},
	}, map[string]string{"format": "pt", "note": "x"}
}

func TestRoundTrip(t *testing.T) {
	tensors, meta := sample()
	path := filepath.Join(t.TempDir(), "m.safetensors")
	if err := Write(path, tensors, meta); err != nil {
		t.Fatal(err)
	}
	f, err := Read(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.Names(), ","); got != "a.ids,b.weight,c.codes,empty,scalar" {
		t.Fatalf("names = %s", got)
	}
	if f.Metadata["format"] != "pt" || f.Metadata["note"] != "x" {
		t.Fatalf("metadata = %v", f.Metadata)
	}
	w, err := f.Tensor("b.weight")
	if err != nil {
		t.Fatal(err)
	}
	v, err := w.Float32()
	if err != nil || len(v) != 6 || v[5] != -6 || w.Shape[0] != 2 || w.Shape[1] != 3 {
		t.Fatalf("b.weight = %v %v %v", w.Shape, v, err)
	}
	s, _ := f.Tensor("scalar")
	if sv, _ := s.Float32(); len(s.Shape) != 0 || len(sv) != 1 || sv[0] != 2.5 {
		t.Fatalf("scalar = %v %v", s.Shape, sv)
	}
	if _, err := f.Tensor("nope"); err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Fatalf("missing tensor error = %v", err)
	}
	// The header is padded to 8 bytes, so the data section is aligned.
	b, _ := os.ReadFile(path)
	if n := binary.LittleEndian.Uint64(b); n%8 != 0 {
		t.Fatalf("header length %d not a multiple of 8", n)
	}
	// No temp file is left behind.
	ents, _ := os.ReadDir(filepath.Dir(path))
	if len(ents) != 1 {
		t.Fatalf("directory holds %d entries, want 1", len(ents))
	}
}

func TestFloat32Conversions(t *testing.T) {
	f16 := []uint16{0x3C00, 0xC000, 0x0001, 0x7BFF, 0x7C00, 0x8000, 0x3555}
	want := []float32{1, -2, float32(math.Ldexp(1, -24)), 65504, float32(math.Inf(1)), float32(math.Copysign(0, -1)), 0.33325195}
	b := make([]byte, 2*len(f16))
	for i, h := range f16 {
		binary.LittleEndian.PutUint16(b[2*i:], h)
	}
	got, err := Tensor{DType: "F16", Shape: []int{len(f16)}, Data: b}.Float32()
	if err != nil {
		t.Fatal(err)
	}
	for i := range want {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			t.Errorf("F16 %04x = %v, want %v", f16[i], got[i], want[i])
		}
	}
	bf := []byte{0x80, 0x3F, 0x49, 0xC0} // 1.0, -3.140625
	got, err = Tensor{DType: "BF16", Shape: []int{2}, Data: bf}.Float32()
	if err != nil || got[0] != 1 || got[1] != -3.140625 {
		t.Fatalf("BF16 = %v %v", got, err)
	}
	if _, err := (Tensor{DType: "I32", Shape: []int{1}, Data: make([]byte, 4)}).Float32(); err == nil {
		t.Fatal("I32 converted to float32 without complaint")
	}
}

// build makes a file from a raw header and data section.
func build(header string, data []byte) []byte {
	b := make([]byte, 8, 8+len(header)+len(data))
	binary.LittleEndian.PutUint64(b, uint64(len(header)))
	return append(append(b, header...), data...)
}

func TestParseErrors(t *testing.T) {
	valid, _ := Marshal(sample())
	cases := []struct {
		name string
		file []byte
		want string
	}{
		{"empty", nil, "truncated"},
		{"short length", []byte{1, 2, 3}, "truncated"},
		{"header past end", valid[:40], "larger than"},
		{"huge header", append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}, valid[8:]...), "limit"},
		{"bad json", build(`{"a":`, nil), "header"},
		{"not object", build(`[1,2]   `, nil), "not a JSON object"},
		{"truncated data", valid[:len(valid)-1], "outside the 46-byte data section"},
		{"trailing data", append(append([]byte(nil), valid...), 0), "cover"},
		{"unknown dtype", build(`{"a":{"dtype":"F12","shape":[1],"data_offsets":[0,4]}}`, make([]byte, 4)), `"a": unknown dtype "F12"`},
		{"size mismatch", build(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}`, make([]byte, 4)), `"a": shape [2] of F32 needs 8 bytes`},
		{"offsets reversed", build(`{"a":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}}`, make([]byte, 4)), `"a": data_offsets [4, 0]`},
		{"offsets out of range", build(`{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}}`, make([]byte, 4)), "outside"},
		{"overlap", build(`{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}`, make([]byte, 4)), "overlap"},
		{"gap", build(`{"a":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}`, make([]byte, 4)), "gap"},
		{"duplicate", build(`{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"a":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}`, make([]byte, 4)), "duplicate"},
		{"negative dim", build(`{"a":{"dtype":"U8","shape":[-2],"data_offsets":[0,2]}}`, make([]byte, 2)), "negative"},
		{"huge shape", build(`{"a":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,2]}}`, make([]byte, 2)), "too large"},
		// 2^61 elements of 8 bytes: the byte count wraps to 0 in 64 bits,
		// which used to match an empty data range and then panic in quantize.
		{"byte count wraps", build(`{"a":{"dtype":"F64","shape":[2147483648,1073741824],"data_offsets":[0,0]}}`, nil), "too large"},
		{"byte count wraps, 4-byte", build(`{"a":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]}}`, nil), "too large"},
		{"three offsets", build(`{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,1,2]}}`, make([]byte, 2)), "3 entries"},
		{"extra field", build(`{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2],"x":1}}`, make([]byte, 2)), "unknown field"},
		{"bad metadata", build(`{"__metadata__":{"a":1}}`, nil), "__metadata__"},
		{"trailing json", build(`{}{}`, nil), "trailing"},
	}
	dir := t.TempDir()
	for i, c := range cases {
		_, err := Parse(c.file)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want it to mention %q", c.name, err, c.want)
		}
		// The streaming reader checks the header as strictly, and names the file.
		path := filepath.Join(dir, fmt.Sprintf("case%d.safetensors", i))
		if err := os.WriteFile(path, c.file, 0o600); err != nil {
			t.Fatal(err)
		}
		r, err := OpenReader(path)
		if err == nil {
			r.Close()
		}
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: OpenReader err = %v, want it to mention %q and the path", c.name, err, c.want)
		}
	}
}

func TestWriteErrors(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name string
		ts   []Named
		want string
	}{
		{"size", []Named{{"a", Tensor{DType: "F32", Shape: []int{2}, Data: make([]byte, 4)}}}, `"a": shape [2] of F32 needs 8 bytes`},
		{"dtype", []Named{{"a", Tensor{DType: "Q4", Shape: []int{1}, Data: make([]byte, 1)}}}, "unknown dtype"},
		{"dup", []Named{{"a", U8Tensor([]int{1}, []byte{1})}, {"a", U8Tensor([]int{1}, []byte{1})}}, "twice"},
		{"empty name", []Named{{"", U8Tensor([]int{1}, []byte{1})}}, "invalid tensor name"},
	}
	for _, c := range cases {
		path := filepath.Join(dir, c.name+".safetensors")
		err := Write(path, c.ts, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want it to mention %q", c.name, err, c.want)
		}
		if _, serr := os.Stat(path); !os.IsNotExist(serr) {
			t.Errorf("%s: a failed write left %s behind", c.name, path)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("failed writes left %d temp files", len(ents))
	}
	// A write into a missing directory fails cleanly.
	if err := Write(filepath.Join(dir, "no", "x.safetensors"), nil, nil); err == nil {
		t.Error("write into a missing directory succeeded")
	}
}

// Models, checkpoints and adapters are written 0644: they are not secrets
// (they used to inherit CreateTemp's 0600).
func TestWriteMode(t *testing.T) {
	p := filepath.Join(t.TempDir(), "m.safetensors")
	ts, md := sample()
	if err := Write(p, ts, md); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o644 {
		t.Fatalf("mode %v (%v), want 0644", fi.Mode().Perm(), err)
	}
}

func TestWriteReplacesAtomically(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.safetensors")
	if err := Write(path, []Named{{"a", U8Tensor([]int{1}, []byte{1})}}, nil); err != nil {
		t.Fatal(err)
	}
	// A failing second write must leave the first file intact.
	bad := []Named{{"a", Tensor{DType: "F32", Shape: []int{3}, Data: nil}}}
	if err := Write(path, bad, nil); err == nil {
		t.Fatal("bad write succeeded")
	}
	f, err := Read(path)
	if err != nil || !f.Has("a") {
		t.Fatalf("original file damaged: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	valid, _ := Marshal(sample())
	f.Add(valid)
	f.Add(valid[:len(valid)/2])
	f.Add(build(`{"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}}`, make([]byte, 4)))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		file, err := Parse(b)
		if err != nil {
			return
		}
		// Whatever parses must be internally consistent and re-encodable.
		var ts []Named
		for _, name := range file.Names() {
			tn, err := file.Tensor(name)
			if err != nil {
				t.Fatal(err)
			}
			size, _ := DTypeSize(tn.DType)
			if tn.NumElements()*size != len(tn.Data) {
				t.Fatalf("tensor %q: %d bytes for shape %v", name, len(tn.Data), tn.Shape)
			}
			if tn.IsFloat() {
				if _, err := tn.Float32(); err != nil {
					t.Fatal(err)
				}
			}
			ts = append(ts, Named{name, tn})
		}
		again, err := Marshal(ts, file.Metadata)
		if err != nil {
			t.Fatalf("re-encoding a parsed file: %v", err)
		}
		if _, err := Parse(again); err != nil {
			t.Fatalf("re-parsing: %v", err)
		}
	})
}

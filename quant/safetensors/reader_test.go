package safetensors

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// TestReaderMatchesRead reads every tensor of a file both ways: whole, and
// with the streaming reader (at once and in small pieces).
func TestReaderMatchesRead(t *testing.T) {
	tensors, meta := sample()
	bf := make([]uint16, 37)
	for i := range bf {
		bf[i] = uint16(0x3F80 + 3*i)
	}
	tensors = append(tensors, Named{"d.bf16", BF16Tensor([]int{37}, bf)})
	path := filepath.Join(t.TempDir(), "m.safetensors")
	if err := Write(path, tensors, meta); err != nil {
		t.Fatal(err)
	}
	f, err := Read(path)
	if err != nil {
		t.Fatal(err)
	}
	r, err := OpenReader(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if !reflect.DeepEqual(r.Names(), f.Names()) || !reflect.DeepEqual(r.Metadata, f.Metadata) {
		t.Fatalf("names %v meta %v, want %v %v", r.Names(), r.Metadata, f.Names(), f.Metadata)
	}
	for _, name := range f.Names() {
		want, _ := f.Tensor(name)
		got, err := r.Tensor(name)
		if err != nil {
			t.Fatal(err)
		}
		if got.DType != want.DType || !reflect.DeepEqual(got.Shape, want.Shape) || !bytes.Equal(got.Data, want.Data) {
			t.Errorf("%s: reader gave %s %v %d bytes, want %s %v %d", name, got.DType, got.Shape, len(got.Data), want.DType, want.Shape, len(want.Data))
		}
		dt, sh, err := r.Info(name)
		if err != nil || dt != want.DType || !reflect.DeepEqual(sh, want.Shape) {
			t.Errorf("%s: Info = %s %v %v", name, dt, sh, err)
		}
		// 5 bytes hold two bf16 or one f32 element: pieces are whole elements.
		var joined []byte
		next := 0
		err = r.ReadChunks(name, make([]byte, 5), func(first int, data []byte) error {
			size, _ := DTypeSize(want.DType)
			if first != next || len(data)%size != 0 {
				t.Errorf("%s: piece at element %d (%d bytes), want element %d", name, first, len(data), next)
			}
			next += len(data) / size
			joined = append(joined, data...)
			return nil
		})
		if err != nil && !strings.Contains(err.Error(), "holds no") {
			t.Fatal(err)
		}
		if err == nil && !bytes.Equal(joined, want.Data) {
			t.Errorf("%s: pieces join to %v, want %v", name, joined, want.Data)
		}
	}
	if _, err := r.Tensor("nope"); err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("missing tensor: %v", err)
	}
	if err := r.ReadChunks("b.weight", make([]byte, 3), func(int, []byte) error { return nil }); err == nil || !strings.Contains(err.Error(), "holds no F32") {
		t.Errorf("a buffer smaller than one element: %v", err)
	}
}

// TestReaderFileShrinks: a file cut short after the header was read is an
// error naming the tensor, not a short tensor.
func TestReaderFileShrinks(t *testing.T) {
	tensors, meta := sample()
	path := filepath.Join(t.TempDir(), "m.safetensors")
	if err := Write(path, tensors, meta); err != nil {
		t.Fatal(err)
	}
	r, err := OpenReader(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	st, _ := os.Stat(path)
	if err := os.Truncate(path, st.Size()-10); err != nil {
		t.Fatal(err)
	}
	var failed bool
	for _, n := range r.Names() {
		if _, err := r.Tensor(n); err != nil {
			failed = true
			if !strings.Contains(err.Error(), n) || !strings.Contains(err.Error(), "unexpected EOF") {
				t.Errorf("error %v does not name %s and the short read", err, n)
			}
		}
	}
	if !failed {
		t.Error("every tensor read fine from a truncated file")
	}
}

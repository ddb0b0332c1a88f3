package safetensors

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Write writes tensors and metadata to path atomically: everything goes to a
// temp file in the same directory, which is fsynced and then renamed over
// path, so a killed process or a full disk leaves either the old file or the
// new one, never half of one. Tensors are laid out in sorted name order.
func Write(path string, tensors []Named, metadata map[string]string) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	// Models, checkpoints and adapters are not secrets (CreateTemp makes
	// 0600 files); keys are written elsewhere, 0600.
	if err = tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	w := bufio.NewWriterSize(tmp, 1<<20)
	if err = Encode(w, tensors, metadata); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if err = w.Flush(); err != nil {
		return fmt.Errorf("safetensors: writing %s: %w", path, err)
	}
	if err = tmp.Sync(); err != nil {
		return fmt.Errorf("safetensors: syncing %s: %w", path, err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("safetensors: closing %s: %w", path, err)
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	// Make the rename itself durable; not every system can sync a directory.
	if d, derr := os.Open(dir); derr == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// Marshal returns the bytes of a safetensors file holding tensors and
// metadata, laid out as Write lays them out.
func Marshal(tensors []Named, metadata map[string]string) ([]byte, error) {
	var b strings.Builder
	if err := Encode(&b, tensors, metadata); err != nil {
		return nil, err
	}
	return []byte(b.String()), nil
}

// Encode writes a safetensors file to w: the header length, the JSON header
// (keys sorted, "__metadata__" first, padded with spaces to a multiple of 8
// bytes as the reference writer does, so the data section stays aligned),
// then each tensor's bytes in sorted name order. Each tensor's data must match
// its shape and dtype, and names must be unique and non-empty.
func Encode(w io.Writer, tensors []Named, metadata map[string]string) error {
	sorted := append([]Named(nil), tensors...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	var hdr strings.Builder
	hdr.WriteByte('{')
	first := true
	sep := func() {
		if !first {
			hdr.WriteByte(',')
		}
		first = false
	}
	if len(metadata) > 0 {
		m, err := json.Marshal(metadata) // encoding/json sorts map keys
		if err != nil {
			return fmt.Errorf("safetensors: __metadata__: %w", err)
		}
		sep()
		hdr.WriteString(`"__metadata__":`)
		hdr.Write(m)
	}
	var off uint64
	for i, t := range sorted {
		if t.Name == "" || t.Name == "__metadata__" {
			return fmt.Errorf("safetensors: invalid tensor name %q", t.Name)
		}
		if i > 0 && sorted[i-1].Name == t.Name {
			return fmt.Errorf("safetensors: tensor %q given twice", t.Name)
		}
		size, err := DTypeSize(t.DType)
		if err != nil {
			return fmt.Errorf("safetensors: tensor %q: %w", t.Name, err)
		}
		n := 1
		for _, d := range t.Shape {
			if d < 0 {
				return fmt.Errorf("safetensors: tensor %q: negative dimension in shape %v", t.Name, t.Shape)
			}
			n *= d
		}
		if n*size != len(t.Data) {
			return fmt.Errorf("safetensors: tensor %q: shape %v of %s needs %d bytes, has %d", t.Name, t.Shape, t.DType, n*size, len(t.Data))
		}
		name, _ := json.Marshal(t.Name)
		shape := t.Shape
		if shape == nil {
			shape = []int{}
		}
		sh, _ := json.Marshal(shape)
		sep()
		fmt.Fprintf(&hdr, `%s:{"dtype":%q,"shape":%s,"data_offsets":[%d,%d]}`, name, t.DType, sh, off, off+uint64(len(t.Data)))
		off += uint64(len(t.Data))
	}
	hdr.WriteByte('}')
	for hdr.Len()%8 != 0 {
		hdr.WriteByte(' ')
	}
	var lenBuf [8]byte
	binary.LittleEndian.PutUint64(lenBuf[:], uint64(hdr.Len()))
	if _, err := w.Write(lenBuf[:]); err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	if _, err := io.WriteString(w, hdr.String()); err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	for _, t := range sorted {
		if _, err := w.Write(t.Data); err != nil {
			return fmt.Errorf("safetensors: writing tensor %q: %w", t.Name, err)
		}
	}
	return nil
}

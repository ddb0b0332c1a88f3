package quant

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/opencluster/opencluster/quant/safetensors"
)

// The Hugging Face bitsandbytes 4-bit layout. A Linear4bit module saves its
// weight as Params4bit data plus QuantState.as_dict(packed=True) under the
// weight's name (bitsandbytes/nn/modules.py _save_to_state_dict and
// bitsandbytes/functional.py QuantState.as_dict / from_dict):
//
//	NAME                       U8  [(n+1)/2, 1]  packed codes
//	NAME.absmax                F32 [blocks]      (U8 [blocks] when nested)
//	NAME.quant_map             F32 [16]
//	NAME.nested_absmax         F32 [ceil(blocks/256)]     nested only
//	NAME.nested_quant_map      F32 [256]                  nested only
//	NAME.quant_state.bitsandbytes__nf4 (or __fp4)  U8 [len]: the UTF-8 bytes
//	    of json.dumps({"quant_type", "blocksize", "dtype", "shape",
//	    and when nested "nested_blocksize", "nested_dtype", "nested_offset"})
//
// NAME is the full weight name, e.g. "model.layers.0.self_attn.q_proj.weight".

// bnbState is the JSON that pack_dict_to_tensor stores.
type bnbState struct {
	QuantType       string   `json:"quant_type"`
	BlockSize       int      `json:"blocksize"`
	DType           string   `json:"dtype"`
	Shape           []int    `json:"shape"`
	NestedBlockSize *int     `json:"nested_blocksize"`
	NestedDType     string   `json:"nested_dtype"`
	NestedOffset    *float64 `json:"nested_offset"`
}

// stateKey is the name of the packed quant-state tensor for format f.
func stateKey(name string, f Format) string {
	return name + ".quant_state.bitsandbytes__" + f.String()
}

// IsBnb reports whether f holds name in the bitsandbytes 4-bit layout (its
// packed quant-state tensor is present).
func IsBnb(f safetensors.Source, name string) bool {
	return f.Has(stateKey(name, NF4)) || f.Has(stateKey(name, FP4))
}

// IsBnbCompanion reports whether a tensor name is one of the extra tensors
// the bitsandbytes layout stores beside a weight (absmax, quant_map, ...).
func IsBnbCompanion(name string) bool {
	for _, s := range []string{".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map",
		".quant_state.bitsandbytes__nf4", ".quant_state.bitsandbytes__fp4"} {
		if strings.HasSuffix(name, s) {
			return true
		}
	}
	return false
}

// AppendBnb appends t to dst in the bitsandbytes layout under name and
// returns the extended slice. The JSON state is written byte for byte as
// Python's json.dumps writes it (", " and ": " separators, insertion order).
func AppendBnb(dst []safetensors.Named, name string, t *Tensor4) []safetensors.Named {
	qm := QuantMap(t.Format)
	dst = append(dst,
		safetensors.Named{Name: name, Tensor: safetensors.U8Tensor([]int{len(t.Packed), 1}, t.Packed)},
		safetensors.Named{Name: name + ".quant_map", Tensor: safetensors.F32Tensor([]int{16}, qm[:])},
	)
	var js strings.Builder
	fmt.Fprintf(&js, `{"quant_type": "%s", "blocksize": %d, "dtype": "float32", "shape": [`, t.Format, t.BlockSize)
	for i, d := range t.Shape {
		if i > 0 {
			js.WriteString(", ")
		}
		js.WriteString(strconv.Itoa(d))
	}
	js.WriteString("]")
	if nd := t.Nested; nd != nil {
		fmt.Fprintf(&js, `, "nested_blocksize": %d, "nested_dtype": "float32", "nested_offset": %s`, nd.BlockSize, pyFloatRepr(float64(nd.Offset)))
		dst = append(dst,
			safetensors.Named{Name: name + ".absmax", Tensor: safetensors.U8Tensor([]int{len(nd.Codes)}, nd.Codes)},
			safetensors.Named{Name: name + ".nested_absmax", Tensor: safetensors.F32Tensor([]int{len(nd.Absmax)}, nd.Absmax)},
			safetensors.Named{Name: name + ".nested_quant_map", Tensor: safetensors.F32Tensor([]int{256}, nd.Map[:])},
		)
	} else {
		dst = append(dst, safetensors.Named{Name: name + ".absmax", Tensor: safetensors.F32Tensor([]int{len(t.Absmax)}, t.Absmax)})
	}
	js.WriteString("}")
	state := []byte(js.String())
	return append(dst, safetensors.Named{Name: stateKey(name, t.Format), Tensor: safetensors.U8Tensor([]int{len(state)}, state)})
}

// pyFloatRepr formats v as Python's repr(float) does: the shortest digits
// that round-trip, in positional notation for exponents -4..15 (always with a
// decimal point) and as d.ddde-XX otherwise.
func pyFloatRepr(v float64) string {
	switch {
	case math.IsNaN(v):
		return "NaN"
	case math.IsInf(v, 1):
		return "Infinity"
	case math.IsInf(v, -1):
		return "-Infinity"
	}
	s := strconv.FormatFloat(v, 'e', -1, 64) // d.ddde±XX
	mant, expStr, _ := strings.Cut(s, "e")
	exp, _ := strconv.Atoi(expStr)
	if exp < -4 || exp >= 16 {
		sign := "+"
		if exp < 0 {
			sign, exp = "-", -exp
		}
		return fmt.Sprintf("%se%s%02d", mant, sign, exp)
	}
	f := strconv.FormatFloat(v, 'f', -1, 64)
	if !strings.ContainsAny(f, ".") {
		f += ".0"
	}
	return f
}

// ReadBnb reads the 4-bit tensor stored under name in the bitsandbytes
// layout, checking every companion tensor; errors name the tensor at fault.
func ReadBnb(f safetensors.Source, name string) (*Tensor4, error) {
	var format Format
	switch {
	case f.Has(stateKey(name, NF4)):
		format = NF4
	case f.Has(stateKey(name, FP4)):
		format = FP4
	default:
		return nil, fmt.Errorf("quant: %s: no %s.quant_state.bitsandbytes__nf4 or __fp4 tensor", name, name)
	}
	key := stateKey(name, format)
	stT, err := f.Tensor(key)
	if err != nil {
		return nil, fmt.Errorf("quant: %w", err)
	}
	if stT.DType != "U8" {
		return nil, fmt.Errorf("quant: %s: dtype %s, want U8", key, stT.DType)
	}
	var st bnbState
	if err := json.Unmarshal(stT.Data, &st); err != nil {
		return nil, fmt.Errorf("quant: %s: bad quant state JSON: %w", key, err)
	}
	if st.QuantType != format.String() {
		return nil, fmt.Errorf("quant: %s: quant_type %q does not match the tensor name", key, st.QuantType)
	}
	if err := checkBlockSize(st.BlockSize); err != nil {
		return nil, fmt.Errorf("%s: blocksize: %w", key, err)
	}
	n, err := shapeLen(st.Shape)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	t := &Tensor4{Format: format, BlockSize: st.BlockSize, Shape: st.Shape}
	nb := (n + st.BlockSize - 1) / st.BlockSize

	w, err := f.Tensor(name)
	if err != nil {
		return nil, fmt.Errorf("quant: %w", err)
	}
	if w.DType != "U8" {
		return nil, fmt.Errorf("quant: %s: packed weight has dtype %s; only uint8 quant_storage is supported", name, w.DType)
	}
	if len(w.Data) != (n+1)/2 {
		return nil, fmt.Errorf("quant: %s: %d packed bytes, shape %v needs %d", name, len(w.Data), st.Shape, (n+1)/2)
	}
	t.Packed = w.Data

	qm, err := floatTensor(f, name+".quant_map", 16)
	if err != nil {
		return nil, err
	}
	want := QuantMap(format)
	for i, v := range qm {
		if math.Abs(float64(v-want[i])) > 1e-6 {
			return nil, fmt.Errorf("quant: %s.quant_map[%d] = %v, bitsandbytes' %s value is %v: custom code books are not supported", name, i, v, format, want[i])
		}
	}

	if st.NestedOffset == nil {
		if t.Absmax, err = floatTensor(f, name+".absmax", nb); err != nil {
			return nil, err
		}
	} else {
		nd := &Nested{Offset: float32(*st.NestedOffset), BlockSize: NestedBlockSize}
		if st.NestedBlockSize != nil {
			nd.BlockSize = *st.NestedBlockSize
		}
		if err := checkBlockSize(nd.BlockSize); err != nil {
			return nil, fmt.Errorf("%s: nested_blocksize: %w", key, err)
		}
		codes, err := f.Tensor(name + ".absmax")
		if err != nil {
			return nil, fmt.Errorf("quant: %s: nested state needs %s.absmax: %w", name, name, err)
		}
		if codes.DType != "U8" || len(codes.Data) != nb {
			return nil, fmt.Errorf("quant: %s.absmax: %s with %d elements, nested state needs U8 with %d", name, codes.DType, codes.NumElements(), nb)
		}
		nd.Codes = codes.Data
		if nd.Absmax, err = floatTensor(f, name+".nested_absmax", (nb+nd.BlockSize-1)/nd.BlockSize); err != nil {
			return nil, err
		}
		m, err := floatTensor(f, name+".nested_quant_map", 256)
		if err != nil {
			return nil, err
		}
		copy(nd.Map[:], m)
		t.Nested = nd
	}
	if err := t.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return t, nil
}

// floatTensor reads a float tensor of exactly n elements.
func floatTensor(f safetensors.Source, name string, n int) ([]float32, error) {
	t, err := f.Tensor(name)
	if err != nil {
		return nil, fmt.Errorf("quant: %w", err)
	}
	if t.NumElements() != n {
		return nil, fmt.Errorf("quant: %s has %d elements (shape %v), want %d", name, t.NumElements(), t.Shape, n)
	}
	v, err := t.Float32()
	if err != nil {
		return nil, fmt.Errorf("quant: %s: %w", name, err)
	}
	if i, bad := firstNonFinite(v); bad {
		return nil, fmt.Errorf("quant: %s[%d] is %v", name, i, v[i])
	}
	return v, nil
}

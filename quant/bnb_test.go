package quant

import (
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencluster/opencluster/quant/safetensors"
)

// bnbFile quantizes data, stores it in the bitsandbytes layout with a
// neighbour tensor, and parses the bytes back.
func bnbFile(t *testing.T, q *Tensor4) *safetensors.File {
	t.Helper()
	ts := AppendBnb(nil, "layer.q_proj.weight", q)
	ts = append(ts, safetensors.Named{Name: "layer.q_proj.bias", Tensor: safetensors.F32Tensor([]int{2}, []float32{1, 2})})
	b, err := safetensors.Marshal(ts, map[string]string{"format": "pt"})
	if err != nil {
		t.Fatal(err)
	}
	f, err := safetensors.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestBnbLayoutRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 3))
	for _, f := range []Format{NF4, FP4} {
		for _, double := range []bool{false, true} {
			data := randNormal(rng, 48*100)
			q, err := Quantize4(data, []int{48, 100}, f, 64, double)
			if err != nil {
				t.Fatal(err)
			}
			file := bnbFile(t, q)
			if !IsBnb(file, "layer.q_proj.weight") || IsBnb(file, "layer.q_proj.bias") {
				t.Fatal("IsBnb wrong")
			}
			// Names and shapes as QuantState.as_dict(packed=True) stores them.
			want := map[string]string{
				"layer.q_proj.weight":                                         "U8[2400 1]",
				"layer.q_proj.weight.quant_map":                               "F32[16]",
				"layer.q_proj.weight.absmax":                                  "F32[75]",
				"layer.q_proj.weight.quant_state.bitsandbytes__" + f.String(): "U8[",
			}
			if double {
				want["layer.q_proj.weight.absmax"] = "U8[75]"
				want["layer.q_proj.weight.nested_absmax"] = "F32[1]"
				want["layer.q_proj.weight.nested_quant_map"] = "F32[256]"
			}
			for name, w := range want {
				tn, err := file.Tensor(name)
				if err != nil {
					t.Fatalf("%v double=%v: %v", f, double, err)
				}
				got := tn.DType + fmt.Sprint(tn.Shape)
				if !strings.HasPrefix(got, w) {
					t.Errorf("%s = %s, want %s", name, got, w)
				}
			}
			back, err := ReadBnb(file, "layer.q_proj.weight")
			if err != nil {
				t.Fatal(err)
			}
			a, b := make([]float32, q.Len()), make([]float32, q.Len())
			q.Dequantize(a)
			back.Dequantize(b)
			assertBits(t, "bnb round trip", b, a)
			if back.Format != f || back.BlockSize != 64 || back.Shape[0] != 48 || back.Shape[1] != 100 {
				t.Fatalf("read back %v %d %v", back.Format, back.BlockSize, back.Shape)
			}
		}
	}
}

func TestBnbStateJSON(t *testing.T) {
	// pack_dict_to_tensor(json.dumps(non-tensor items of as_dict)), in the
	// order as_dict inserts them.
	q, _ := Quantize4(make([]float32, 6), []int{2, 3}, NF4, 64, false)
	ts := AppendBnb(nil, "w", q)
	got := string(ts[len(ts)-1].Data)
	want := `{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [2, 3]}`
	if got != want || ts[len(ts)-1].Name != "w.quant_state.bitsandbytes__nf4" {
		t.Fatalf("state %s = %s, want %s", ts[len(ts)-1].Name, got, want)
	}
	q.Nested = &Nested{Offset: 0.0123, BlockSize: 256, Codes: []byte{0}, Absmax: []float32{0}}
	q.Absmax = nil
	ts = AppendBnb(nil, "w", q)
	got = string(ts[len(ts)-1].Data)
	want = `{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [2, 3], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.012299999594688416}`
	if got != want {
		t.Fatalf("nested state = %s\nwant           %s", got, want)
	}
}

func TestPyFloatRepr(t *testing.T) {
	for _, c := range []struct {
		v    float64
		want string
	}{{1, "1.0"}, {0.5, "0.5"}, {1e-5, "1e-05"}, {0.0001, "0.0001"}, {1234567.0, "1234567.0"}, {1e16, "1e+16"}, {-2.5e-7, "-2.5e-07"}, {0, "0.0"}} {
		if got := pyFloatRepr(c.v); got != c.want {
			t.Errorf("pyFloatRepr(%v) = %s, want %s", c.v, got, c.want)
		}
	}
}

func TestReadBnbErrors(t *testing.T) {
	q, _ := Quantize4(randNormal(rand.New(rand.NewPCG(4, 4)), 640), []int{10, 64}, NF4, 64, true)
	base := AppendBnb(nil, "w", q)
	replace := func(name string, tn safetensors.Tensor) []safetensors.Named {
		out := append([]safetensors.Named(nil), base...)
		for i := range out {
			if out[i].Name == name {
				out[i].Tensor = tn
			}
		}
		return out
	}
	drop := func(name string) []safetensors.Named {
		var out []safetensors.Named
		for _, n := range base {
			if n.Name != name {
				out = append(out, n)
			}
		}
		return out
	}
	state := func(s string) safetensors.Tensor { return safetensors.U8Tensor([]int{len(s)}, []byte(s)) }
	qm := QuantMap(FP4)
	cases := []struct {
		name string
		ts   []safetensors.Named
		want string
	}{
		{"no state", drop("w.quant_state.bitsandbytes__nf4"), "no w.quant_state"},
		{"bad json", replace("w.quant_state.bitsandbytes__nf4", state("{")), "bad quant state JSON"},
		{"wrong type", replace("w.quant_state.bitsandbytes__nf4", state(`{"quant_type": "fp4", "blocksize": 64, "shape": [10, 64]}`)), `quant_type "fp4"`},
		{"bad block", replace("w.quant_state.bitsandbytes__nf4", state(`{"quant_type": "nf4", "blocksize": 60, "shape": [10, 64], "nested_offset": 0.1}`)), "block size 60"},
		{"shape mismatch", replace("w.quant_state.bitsandbytes__nf4", state(`{"quant_type": "nf4", "blocksize": 64, "shape": [10, 65], "nested_offset": 0.1}`)), "w: 320 packed bytes"},
		{"packed dtype", replace("w", safetensors.F32Tensor([]int{80}, make([]float32, 80))), "w: packed weight has dtype F32"},
		{"quant map", replace("w.quant_map", safetensors.F32Tensor([]int{16}, qm[:])), "w.quant_map[0]"},
		{"nested absmax missing", drop("w.nested_absmax"), `"w.nested_absmax"`},
		{"nested map short", replace("w.nested_quant_map", safetensors.F32Tensor([]int{3}, make([]float32, 3))), "w.nested_quant_map has 3 elements"},
		{"codes dtype", replace("w.absmax", safetensors.F32Tensor([]int{10}, make([]float32, 10))), "w.absmax: F32"},
		{"nan absmax", replace("w.nested_absmax", safetensors.F32Tensor([]int{1}, []float32{float32(math.NaN())})), "w.nested_absmax[0] is NaN"},
	}
	for _, c := range cases {
		b, err := safetensors.Marshal(c.ts, nil)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		f, err := safetensors.Parse(b)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		_, err = ReadBnb(f, "w")
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want it to mention %q", c.name, err, c.want)
		}
	}
}

func TestQuantizeFile(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(8, 8))
	in := filepath.Join(dir, "in.safetensors")
	ts := []safetensors.Named{
		{Name: "model.embed_tokens.weight", Tensor: safetensors.F32Tensor([]int{16, 64}, randNormal(rng, 1024))},
		{Name: "model.layers.0.self_attn.q_proj.weight", Tensor: safetensors.F32Tensor([]int{64, 64}, randNormal(rng, 4096))},
		{Name: "model.layers.0.mlp.down_proj.weight", Tensor: safetensors.F32Tensor([]int{64, 33}, randNormal(rng, 64*33))},
		{Name: "model.layers.0.input_layernorm.weight", Tensor: safetensors.F32Tensor([]int{64}, randNormal(rng, 64))},
		{Name: "model.norm.weight", Tensor: safetensors.F32Tensor([]int{64}, randNormal(rng, 64))},
		{Name: "lm_head.weight", Tensor: safetensors.F32Tensor([]int{16, 64}, randNormal(rng, 1024))},
		{Name: "model.layers.0.self_attn.q_proj.bias", Tensor: safetensors.F32Tensor([]int{64}, randNormal(rng, 64))},
	}
	if err := safetensors.Write(in, ts, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out.safetensors")
	rep, err := QuantizeFile(in, out, Options{Format: NF4, DoubleQuant: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Quantized != 2 || rep.Copied != 5 || rep.Params != 4096+64*33 || rep.BytesAfter >= rep.BytesBefore {
		t.Fatalf("report %+v", rep)
	}
	f, err := safetensors.Read(out)
	if err != nil {
		t.Fatal(err)
	}
	if f.Metadata["format"] != "pt" {
		t.Fatalf("metadata lost: %v", f.Metadata)
	}
	for _, name := range []string{"model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight"} {
		q, err := ReadBnb(f, name)
		if err != nil {
			t.Fatal(err)
		}
		orig, _ := ts[1].Float32()
		if name != ts[1].Name {
			orig, _ = ts[2].Float32()
		}
		checkRoundTrip(t, q, orig)
	}
	for _, name := range []string{"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight", "model.layers.0.self_attn.q_proj.bias"} {
		if IsBnb(f, name) {
			t.Errorf("%s was quantized", name)
		}
		tn, _ := f.Tensor(name)
		if tn.DType != "F32" {
			t.Errorf("%s changed dtype to %s", name, tn.DType)
		}
	}

	// With the options, lm_head and embeddings are quantized too; running on
	// an already quantized file copies the quantized tensors.
	out2 := filepath.Join(dir, "out2.safetensors")
	rep, err = QuantizeFile(out, out2, Options{Format: FP4, BlockSize: 128, IncludeLMHead: true, IncludeEmbeddings: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Quantized != 2 {
		t.Fatalf("second pass quantized %d tensors, want 2 (lm_head, embed_tokens)", rep.Quantized)
	}
	f2, _ := safetensors.Read(out2)
	if q, err := ReadBnb(f2, "model.layers.0.self_attn.q_proj.weight"); err != nil || q.Format != NF4 {
		t.Fatalf("already quantized tensor changed: %v", err)
	}
	if q, err := ReadBnb(f2, "lm_head.weight"); err != nil || q.Format != FP4 || q.BlockSize != 128 {
		t.Fatalf("lm_head: %v", err)
	}
}

func TestQuantizeFileErrors(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "nan.safetensors")
	bad := make([]float32, 64)
	bad[5] = float32(math.Inf(1))
	if err := safetensors.Write(in, []safetensors.Named{{Name: "x.proj.weight", Tensor: safetensors.F32Tensor([]int{8, 8}, bad)}}, nil); err != nil {
		t.Fatal(err)
	}
	_, err := QuantizeFile(in, filepath.Join(dir, "out.safetensors"), Options{})
	if err == nil || !strings.Contains(err.Error(), `"x.proj.weight"`) || !strings.Contains(err.Error(), "element 5") {
		t.Fatalf("err = %v, want it to name the tensor and element", err)
	}
	if _, err := QuantizeFile(filepath.Join(dir, "missing"), filepath.Join(dir, "o"), Options{}); err == nil {
		t.Fatal("missing input accepted")
	}
	if _, err := QuantizeFile(in, filepath.Join(dir, "o"), Options{BlockSize: 33}); err == nil {
		t.Fatal("block size 33 accepted")
	}
}

func TestShouldQuantize(t *testing.T) {
	cases := []struct {
		name  string
		shape []int
		opts  Options
		want  bool
	}{
		{"model.layers.3.mlp.gate_proj.weight", []int{8, 4}, Options{}, true},
		{"transformer.h.0.attn.c_attn.weight", []int{8, 24}, Options{}, true},
		{"model.layers.3.mlp.gate_proj.bias", []int{8}, Options{}, false},
		{"model.layers.3.post_attention_layernorm.weight", []int{8}, Options{}, false},
		{"transformer.h.0.ln_1.weight", []int{8, 8}, Options{}, false},
		{"model.embed_tokens.weight", []int{8, 4}, Options{}, false},
		{"transformer.wte.weight", []int{8, 4}, Options{IncludeEmbeddings: true}, true},
		{"transformer.wpe.weight", []int{8, 4}, Options{}, false},
		{"lm_head.weight", []int{8, 4}, Options{}, false},
		{"lm_head.weight", []int{8, 4}, Options{IncludeLMHead: true}, true},
		{"conv.weight", []int{8, 4, 3}, Options{}, false},
	}
	for _, c := range cases {
		if got := ShouldQuantize(c.name, c.shape, c.opts); got != c.want {
			t.Errorf("ShouldQuantize(%s, %v, %+v) = %v", c.name, c.shape, c.opts, got)
		}
	}
}

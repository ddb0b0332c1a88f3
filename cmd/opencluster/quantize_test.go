package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencluster/opencluster/quant"
	"github.com/opencluster/opencluster/quant/safetensors"
)

func TestQuantizeCommand(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "in.safetensors")
	out := filepath.Join(dir, "out.safetensors")
	w := make([]float32, 64*128)
	for i := range w {
		w[i] = float32(i%37-18) / 100
	}
	err := safetensors.Write(in, []safetensors.Named{
		{Name: "model.layers.0.mlp.up_proj.weight", Tensor: safetensors.F32Tensor([]int{64, 128}, w)},
		{Name: "model.norm.weight", Tensor: safetensors.F32Tensor([]int{4}, []float32{1, 1, 1, 1})},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	line, _, err := execute(t, "quantize", "--in", in, "--out", out, "--double-quant", "--block-size", "64")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(line, "quantized 1 tensors (nf4, block 64, double quant), copied 1") || !strings.Contains(line, "bits/param") {
		t.Fatalf("summary = %q", line)
	}
	f, err := safetensors.Read(out)
	if err != nil {
		t.Fatal(err)
	}
	q, err := quant.ReadBnb(f, "model.layers.0.mlp.up_proj.weight")
	if err != nil || q.Nested == nil || q.Format != quant.NF4 {
		t.Fatalf("output tensor: %v", err)
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"quantize", "--out", out}, "--in and --out are required"},
		{[]string{"quantize", "--in", in, "--out", out, "--format", "int4"}, "--format"},
		{[]string{"quantize", "--in", in, "--out", out, "--block-size", "100"}, "--block-size 100"},
		{[]string{"quantize", "--in", in, "--out", in}, "is the input file"},
	} {
		_, _, err := execute(t, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: err = %v, want it to mention %q", c.args, err, c.want)
		}
	}
}

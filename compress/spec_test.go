package compress

import (
	"errors"
	"testing"
)

func TestParseCanonical(t *testing.T) {
	tests := []struct {
		spec, canon string
		want        Codec
	}{
		{"dense", "dense", Codec{}},
		{"fp32", "dense", Codec{}},
		{"dense+fp32", "dense", Codec{}},
		{"int8", "int8:256", Codec{Quantizer: Int8, Block: 256}},
		{"dense+int8:128", "int8:128", Codec{Quantizer: Int8, Block: 128}},
		{"q4", "q4:64", Codec{Quantizer: Q4, Block: 64}},
		{"int16", "int16:256", Codec{Quantizer: Int16, Block: 256}},
		{"randk:0.05+int16:128", "randk:0.05+int16:128", Codec{Sparsifier: RandK, Fraction: 0.05, Quantizer: Int16, Block: 128}},
		{"topk:0.01", "topk:0.01", Codec{Sparsifier: TopK, Fraction: 0.01}},
		{"topk:0.01+int8:256", "topk:0.01+int8:256", Codec{Sparsifier: TopK, Fraction: 0.01, Quantizer: Int8, Block: 256}},
		{"randk:0.02+q4:64", "randk:0.02+q4:64", Codec{Sparsifier: RandK, Fraction: 0.02, Quantizer: Q4, Block: 64}},
		{"randk:1e-3:scaled", "randk:0.001:scaled", Codec{Sparsifier: RandK, Fraction: 0.001, Scaled: true}},
		{"topk:1+fp32", "topk:1", Codec{Sparsifier: TopK, Fraction: 1}},
	}
	for _, tt := range tests {
		c, err := Parse(tt.spec)
		if err != nil {
			t.Errorf("Parse(%q): %v", tt.spec, err)
			continue
		}
		if c != tt.want {
			t.Errorf("Parse(%q) = %+v, want %+v", tt.spec, c, tt.want)
		}
		if got := c.String(); got != tt.canon {
			t.Errorf("Parse(%q).String() = %q, want %q", tt.spec, got, tt.canon)
		}
		if again, err := Parse(c.String()); err != nil || again != c {
			t.Errorf("Parse(%q) does not round-trip: %+v, %v", c.String(), again, err)
		}
		if err := c.Validate(); err != nil {
			t.Errorf("Validate(%q): %v", tt.spec, err)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, spec := range []string{
		"", "topk", "topk:", "topk:0", "topk:-0.1", "topk:1.5", "topk:NaN", "topk:inf",
		"topk:abc", "topk:0.1:scaled", "randk:0.1:unbiased", "randk:0.1:scaled:x",
		"int8:100", "int8:8", "int8:8192", "int8:x", "int8:64:1", "q4:0", "fp32:1", "int16:100", "int16+int8",
		"dense:1", "int8+topk:0.1", "topk:0.1+randk:0.1", "int8+q4", "topk:0.1+int8+q4",
		"zstd", "topk:0.1++int8", "+", "TOPK:0.1", " topk:0.1",
	} {
		c, err := Parse(spec)
		if err == nil {
			t.Errorf("Parse(%q) = %+v, want an error", spec, c)
			continue
		}
		if !errors.Is(err, ErrSpec) {
			t.Errorf("Parse(%q) error %v does not wrap ErrSpec", spec, err)
		}
	}
}

func TestValidateRejects(t *testing.T) {
	for _, c := range []Codec{
		{Sparsifier: 7},
		{Quantizer: 9, Block: 64},
		{Fraction: 0.5},
		{Sparsifier: TopK},
		{Sparsifier: TopK, Fraction: 0.1, Scaled: true},
		{Quantizer: Int8},
		{Quantizer: Int8, Block: 100},
		{Block: 64},
	} {
		if err := c.Validate(); !errors.Is(err, ErrSpec) {
			t.Errorf("Validate(%+v) = %v, want ErrSpec", c, err)
		}
	}
}

func TestK(t *testing.T) {
	tests := []struct {
		spec string
		n, k int
	}{
		{"dense", 10, 10},
		{"dense", 0, 0},
		{"topk:0.01", 1000000, 10000},
		{"topk:0.01", 10, 1}, // at least one
		{"topk:0.01", 0, 0},
		{"randk:0.5", 3, 2}, // 1.5 rounds to 2
		{"topk:1", 7, 7},
	}
	for _, tt := range tests {
		if got := MustParse(tt.spec).K(tt.n); got != tt.k {
			t.Errorf("%s.K(%d) = %d, want %d", tt.spec, tt.n, got, tt.k)
		}
	}
}

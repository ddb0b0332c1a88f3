package compress

import (
	"fmt"
	"testing"
)

// Encode and decode throughput at n = 1M (a small LoRA adapter). The
// reported MB/s is over the dense fp32 input (4 MB).
func BenchmarkEncode(b *testing.B) {
	const n = 1 << 20
	x := randVec(n, 1)
	for _, spec := range []string{"dense", "int8:256", "q4:64", "topk:0.01", "topk:0.01+int8:256", "randk:0.01+q4:64"} {
		c := MustParse(spec)
		b.Run(spec, func(b *testing.B) {
			b.SetBytes(4 * n)
			var size int
			for b.Loop() {
				p, err := c.Encode(x, nil, 1)
				if err != nil {
					b.Fatal(err)
				}
				size = len(p.Bytes)
			}
			b.ReportMetric(float64(4*n)/float64(size), "ratio")
		})
	}
	b.Run("topk:0.01+int8:256/feedback", func(b *testing.B) {
		c := MustParse("topk:0.01+int8:256")
		st, _ := NewState(n, 0.9)
		b.SetBytes(4 * n)
		for b.Loop() {
			if _, err := c.Encode(x, st, 1); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkDecode(b *testing.B) {
	const n = 1 << 20
	x := randVec(n, 1)
	for _, spec := range []string{"dense", "int8:256", "q4:64", "topk:0.01", "topk:0.01+int8:256", "randk:0.01+q4:64"} {
		c := MustParse(spec)
		p, err := c.Encode(x, nil, 1)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(spec, func(b *testing.B) {
			b.SetBytes(4 * n)
			for b.Loop() {
				if _, err := c.DecodeSparse(p.Bytes, n); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkTopKSelect(b *testing.B) {
	for _, n := range []int{1 << 16, 1 << 20} {
		x := randVec(n, 1)
		keys := make([]uint32, n)
		dst := make([]uint32, 0, n/100+1)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			for b.Loop() {
				dst = topKIndices(x, n/100, keys, dst)
			}
		})
	}
}

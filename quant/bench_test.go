package quant

import (
	"math/rand/v2"
	"testing"
)

// The dequantize benchmarks report GB/s of memory traffic: the packed codes
// and absmax (or nested codes + nested absmax) read, plus the fp32 output
// written. b.SetBytes counts exactly those bytes per call.

func benchTensor(b *testing.B, n int, double bool) *Tensor4 {
	data := randNormal(rand.New(rand.NewPCG(1, 1)), n)
	q, err := Quantize4(data, []int{n}, NF4, 64, double)
	if err != nil {
		b.Fatal(err)
	}
	return q
}

func benchDequant(b *testing.B, n int, double, whole bool) {
	q := benchTensor(b, n, double)
	dst := make([]float32, n)
	b.SetBytes(q.StorageBytes() + 4*int64(n))
	b.ResetTimer()
	for b.Loop() {
		if whole {
			q.Dequantize(dst)
		} else {
			q.DequantizeRange(dst, 0)
		}
	}
}

// One 4096x4096 weight's worth of rows on one goroutine: the CPU backend's path.
func BenchmarkDequantizeRange16M(b *testing.B)       { benchDequant(b, 1<<24, false, false) }
func BenchmarkDequantizeRange16MNested(b *testing.B) { benchDequant(b, 1<<24, true, false) }

// A single 4096-element row (L1-resident), as the matmul sees it.
func BenchmarkDequantizeRangeRow4096(b *testing.B) { benchDequant(b, 4096, false, false) }

// The whole tensor over GOMAXPROCS goroutines.
func BenchmarkDequantize16MParallel(b *testing.B) { benchDequant(b, 1<<24, false, true) }

func BenchmarkDequantizeReference16M(b *testing.B) {
	q := benchTensor(b, 1<<24, false)
	dst := make([]float32, 1<<24)
	b.SetBytes(q.StorageBytes() + 4<<24)
	b.ResetTimer()
	for b.Loop() {
		q.DequantizeReference(dst)
	}
}

// Quantize4 throughput in bytes of fp32 input read.
func BenchmarkQuantize4_16M(b *testing.B) {
	data := randNormal(rand.New(rand.NewPCG(1, 1)), 1<<24)
	b.SetBytes(4 << 24)
	b.ResetTimer()
	for b.Loop() {
		if _, err := Quantize4(data, []int{1 << 24}, NF4, 64, true); err != nil {
			b.Fatal(err)
		}
	}
}

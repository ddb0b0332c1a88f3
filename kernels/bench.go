//go:build cuda

package kernels

import (
	"fmt"
	"math/rand/v2"

	"gorgonia.org/cu"

	"github.com/opencluster/opencluster/quant"
)

// The Bench helpers measure this package's kernels for `opencluster bench`:
// each allocates its own operands, runs one warm-up call, then times iters
// calls between two CUDA events on the context's stream. They return an
// error (never panic) for bad sizes, a precision the device lacks, or a
// driver failure.

// timed runs f once to warm up, then iters times between two events, and
// returns the seconds per call. It runs on the context thread.
func (c *CUDA) timed(iters int, f func() error) (float64, error) {
	if iters < 1 {
		return 0, fmt.Errorf("iterations must be positive, got %d", iters)
	}
	if err := f(); err != nil {
		return 0, err
	}
	start, err := cu.MakeEvent(cu.DefaultEvent)
	if err != nil {
		return 0, err
	}
	defer cu.DestroyEvent(&start)
	end, err := cu.MakeEvent(cu.DefaultEvent)
	if err != nil {
		return 0, err
	}
	defer cu.DestroyEvent(&end)
	if err := start.Record(cu.Stream{}); err != nil {
		return 0, err
	}
	for i := 0; i < iters; i++ {
		if err := f(); err != nil {
			return 0, err
		}
	}
	if err := end.Record(cu.Stream{}); err != nil {
		return 0, err
	}
	if err := end.Synchronize(); err != nil {
		return 0, err
	}
	ms, err := start.Elapsed(end)
	if err != nil {
		return 0, err
	}
	return ms / 1e3 / float64(iters), nil
}

// randomDev allocates n float32s of N(0,1) noise (fixed seed) on the device.
func (c *CUDA) randomDev(n int, seed uint64) (*devAlloc, error) {
	host := make([]float32, n)
	r := rand.New(rand.NewPCG(seed, 1))
	for i := range host {
		host[i] = float32(r.NormFloat64())
	}
	return c.uploadFloats(host)
}

// BenchGEMM times C[m,n] = A[m,k]·B[k,n] and returns TFLOPS (2mnk per
// call). dtype is "fp32" (SIMT), "tf32" (tensor cores, fp32 in memory,
// sm_80+), "bf16" (sm_80+) or "fp16" (bf16/fp16: 16-bit operands in memory,
// fp32 output). "int8" is not implemented and is an error.
func (c *CUDA) BenchGEMM(dtype string, m, n, k int, iters int) (tflops float64, err error) {
	if m <= 0 || n <= 0 || k <= 0 {
		return 0, fmt.Errorf("kernels: BenchGEMM: sizes %dx%dx%d must be positive", m, n, k)
	}
	var name string
	block := threads128
	switch dtype {
	case "fp32":
		name, block = "gemm_f32", threads256
	case "tf32":
		name = "gemm_tf32"
	case "bf16":
		name = "gemm_bf16_native"
	case "fp16":
		name = "gemm_fp16_native"
	case "int8":
		return 0, fmt.Errorf("kernels: BenchGEMM: int8 GEMM is not implemented")
	default:
		return 0, fmt.Errorf("kernels: BenchGEMM: unknown dtype %q: want fp32, tf32, bf16 or fp16", dtype)
	}
	if (dtype == "tf32" || dtype == "bf16") && c.arch < 80 {
		return 0, fmt.Errorf("kernels: BenchGEMM: %s needs compute capability 8.0, %s has %d.%d", dtype, c.Name(), c.major, c.minor)
	}
	var sec float64
	err = c.do(func() error {
		a, err := c.randomDev(m*k, 1)
		if err != nil {
			return err
		}
		b, err := c.randomDev(k*n, 2)
		if err != nil {
			return err
		}
		out, err := c.allocBytes(4 * int64(m) * int64(n))
		if err != nil {
			return err
		}
		pa, pb := a.ptr, b.ptr
		if dtype == "bf16" || dtype == "fp16" { // round the operands to 16 bits once, outside the timing
			conv := "convert_f32_bf16"
			if dtype == "fp16" {
				conv = "convert_f32_fp16"
			}
			a16, err := c.allocBytes(2 * int64(m*k))
			if err != nil {
				return err
			}
			b16, err := c.allocBytes(2 * int64(k*n))
			if err != nil {
				return err
			}
			if err := c.launchOn(conv, elems(m*k), threads256, a16.ptr, pa, int64(m*k)); err != nil {
				return err
			}
			if err := c.launchOn(conv, elems(k*n), threads256, b16.ptr, pb, int64(k*n)); err != nil {
				return err
			}
			pa, pb = a16.ptr, b16.ptr
		}
		grid := dim3{(n + 63) / 64, (m + 63) / 64, 1}
		sec, err = c.timed(iters, func() error {
			return c.launchOn(name, grid, block, pa, pb, out.ptr, m, n, k, k, n, n, false, false, float32(1), float32(0))
		})
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("kernels: %s: BenchGEMM %s %dx%dx%d: %w", c.Name(), dtype, m, n, k, err)
	}
	return 2 * float64(m) * float64(n) * float64(k) / sec / 1e12, nil
}

// BenchCopy times a device-to-device copy of bytes and returns GB/s counting
// the bytes read and written (2*bytes per copy), as bandwidth tests do.
func (c *CUDA) BenchCopy(bytes int) (gbps float64, err error) {
	if bytes <= 0 {
		return 0, fmt.Errorf("kernels: BenchCopy: %d bytes must be positive", bytes)
	}
	var sec float64
	err = c.do(func() error {
		src, err := c.allocBytes(int64(bytes))
		if err != nil {
			return err
		}
		dst, err := c.allocBytes(int64(bytes))
		if err != nil {
			return err
		}
		sec, err = c.timed(20, func() error { return cu.MemcpyDtoD(dst.ptr, src.ptr, int64(bytes)) })
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("kernels: %s: BenchCopy %d bytes: %w", c.Name(), bytes, err)
	}
	return 2 * float64(bytes) / sec / 1e9, nil
}

// benchQ4 quantizes n N(0,1) values to double-quantized NF4 (block 64) and
// uploads them.
func (c *CUDA) benchQ4(n int, shape []int) (*Q4, error) {
	host := make([]float32, n)
	r := rand.New(rand.NewPCG(3, 4))
	for i := range host {
		host[i] = float32(r.NormFloat64())
	}
	t, err := quant.Quantize4(host, shape, quant.NF4, quant.DefaultBlockSize, true)
	if err != nil {
		return nil, err
	}
	var q *Q4
	err = func() (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("%v", r)
			}
		}()
		q = c.UploadQ4(t).(*Q4)
		return nil
	}()
	return q, err
}

// BenchNF4Dequant times dequantizing n double-quantized NF4 elements to bf16
// and returns GB/s over the bytes moved: packed codes and scales read, 2n
// bytes written.
func (c *CUDA) BenchNF4Dequant(n int) (gbps float64, err error) {
	if n <= 0 {
		return 0, fmt.Errorf("kernels: BenchNF4Dequant: %d elements must be positive", n)
	}
	q, err := c.benchQ4(n, []int{n})
	if err != nil {
		return 0, fmt.Errorf("kernels: BenchNF4Dequant: %w", err)
	}
	var sec float64
	err = c.do(func() error {
		out, err := c.allocBytes(2 * int64(n))
		if err != nil {
			return err
		}
		args := append([]any{out.ptr}, q.args()...)
		args = append(args, int64(n))
		sec, err = c.timed(20, func() error { return c.launchOn("nf4_dequantize_bf16", elems((n+31)/32), threads256, args...) })
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("kernels: %s: BenchNF4Dequant %d: %w", c.Name(), n, err)
	}
	blocks := (n + q.bs - 1) / q.bs
	moved := float64((n+1)/2) + float64(blocks) + 4*float64((blocks+q.nbs-1)/q.nbs) + 2*float64(n)
	return moved / sec / 1e9, nil
}

// BenchNF4Matmul times the fused forward y[m,n] = x[m,k]·dequant(W[n,k])ᵀ
// with tensor cores (bf16 on sm_80+, fp16 on Turing) and returns TFLOPS.
func (c *CUDA) BenchNF4Matmul(m, n, k int) (tflops float64, err error) {
	if m <= 0 || n <= 0 || k <= 0 {
		return 0, fmt.Errorf("kernels: BenchNF4Matmul: sizes %dx%dx%d must be positive", m, n, k)
	}
	q, err := c.benchQ4(n*k, []int{n, k})
	if err != nil {
		return 0, fmt.Errorf("kernels: BenchNF4Matmul: %w", err)
	}
	name := "nf4_matmul_fwd_bf16"
	if c.arch < 80 {
		name = "nf4_matmul_fwd_fp16"
	}
	var sec float64
	err = c.do(func() error {
		x, err := c.randomDev(m*k, 5)
		if err != nil {
			return err
		}
		out, err := c.allocBytes(4 * int64(m) * int64(n))
		if err != nil {
			return err
		}
		args := append([]any{out.ptr, x.ptr}, q.args()...)
		args = append(args, m, k, n)
		sec, err = c.timed(10, func() error { return c.launchOn(name, dim3{(n + 63) / 64, (m + 63) / 64, 1}, threads128, args...) })
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("kernels: %s: BenchNF4Matmul %dx%dx%d: %w", c.Name(), m, n, k, err)
	}
	return 2 * float64(m) * float64(n) * float64(k) / sec / 1e12, nil
}

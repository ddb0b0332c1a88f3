// Package sgemm is the CPU's single-precision matrix product.
//
// Sgemm follows the GotoBLAS/BLIS design: op(B) is packed into NR-wide
// column panels one KC-deep slice at a time, op(A) into MR-tall row panels
// one MC x KC block at a time, and a register-blocked MR x NR micro-kernel
// multiplies panel pairs. On x86-64 with cgo the kernels are C with SIMD
// intrinsics (AVX-512 12x32 or AVX2+FMA 6x16 tiles, chosen at run time from
// what the CPU supports, see kernel_x86.h); elsewhere, or on CPUs without
// AVX2, a pure-Go kernel with the same structure runs (gosgemm.go).
// Reference is the plain triple loop every fast path is tested against.
//
// Threads split C at panel boundaries, by rows or by columns, and never
// along k, so every element is summed in the same order whatever the
// thread count: results repeat bit for bit. The threads are pool helpers
// that spin briefly between calls (pool.go), because waking a parked OS
// thread on every product costs a visible share of a mid-sized one.
package sgemm

import (
	"fmt"
	"runtime"
	"sync/atomic"
	"unsafe"
)

// Sgemm computes C = alpha*op(A)*op(B) + beta*C for row-major matrices, where
// op(A) is m x k (A is k x m when transA), op(B) is k x n (n x k when transB),
// and lda, ldb, ldc are the row strides. beta == 0 overwrites C (NaNs in C
// do not propagate); alpha == 0 or k == 0 only scales C by beta.
//
// Sgemm panics, with a message naming the bad argument, when a dimension is
// negative, a stride is smaller than its row, or a slice is too short; such
// calls are programming errors, like an out-of-range index. Callers that
// take shapes from input should check them first with Check.
func Sgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	if err := Check(transA, transB, m, n, k, len(a), lda, len(b), ldb, len(c), ldc); err != nil {
		panic(err)
	}
	if trivial(m, n, k, alpha, beta, c, ldc) {
		return
	}
	if m*n*k <= tinyWork {
		// Packing and a cgo crossing cost more than the product itself.
		small(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
		return
	}
	run(int(impl.Load()), threadsFor(m, n, k), transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}

// Serial is Sgemm on the calling goroutine alone, for callers that run
// independent products side by side on their own threads (attention's
// heads). Its results are Sgemm's, bit for bit.
func Serial(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	if err := Check(transA, transB, m, n, k, len(a), lda, len(b), ldb, len(c), ldc); err != nil {
		panic(err)
	}
	if trivial(m, n, k, alpha, beta, c, ldc) {
		return
	}
	if m*n*k <= tinyWork {
		small(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
		return
	}
	run(int(impl.Load()), 1, transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}

// trivial finishes a product with no multiply-adds to do (an empty C, or
// k or alpha zero: C = beta*C) and reports whether it did.
func trivial(m, n, k int, alpha, beta float32, c []float32, ldc int) bool {
	if m == 0 || n == 0 {
		return true
	}
	if k == 0 || alpha == 0 {
		scaleC(m, n, beta, c, ldc)
		return true
	}
	return false
}

// threadsFor is how many threads an m x n x k product runs on.
func threadsFor(m, n, k int) int {
	if m*n*k < parallelWork {
		return 1
	}
	return Threads()
}

// run computes the product with the kernel family kind on t threads. The
// arguments are checked, and m, n, k and alpha are non-zero.
func run(kind, t int, transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	switch kind {
	case implAVX512, implAVX2:
		sgemmC(kind, transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, t)
	default:
		sgemmGo(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, t)
	}
}

// Products smaller than tinyWork multiply-adds run as a direct loop in Go;
// those smaller than parallelWork run on one thread.
const (
	tinyWork     = 16 * 16 * 16
	parallelWork = 96 * 96 * 96
)

// Check reports whether the arguments describe a valid Sgemm call on slices
// of the given lengths; the error names the argument that is wrong.
func Check(transA, transB bool, m, n, k int, lenA, lda, lenB, ldb, lenC, ldc int) error {
	if m < 0 || n < 0 || k < 0 {
		return fmt.Errorf("sgemm: negative dimension m=%d n=%d k=%d", m, n, k)
	}
	ar, ac := m, k
	if transA {
		ar, ac = k, m
	}
	br, bc := k, n
	if transB {
		br, bc = n, k
	}
	if err := checkMatrix("A", ar, ac, lenA, lda); err != nil {
		return err
	}
	if err := checkMatrix("B", br, bc, lenB, ldb); err != nil {
		return err
	}
	return checkMatrix("C", m, n, lenC, ldc)
}

func checkMatrix(name string, rows, cols, length, ld int) error {
	if ld < max(1, cols) {
		return fmt.Errorf("sgemm: %s is %dx%d but its stride ld%s=%d is smaller than a row", name, rows, cols, lowerName(name), ld)
	}
	if rows == 0 || cols == 0 {
		return nil
	}
	if need := (rows-1)*ld + cols; length < need {
		return fmt.Errorf("sgemm: %s is %dx%d with stride %d and needs %d elements, has %d", name, rows, cols, ld, need, length)
	}
	return nil
}

func lowerName(s string) string { return string(rune(s[0]) + ('a' - 'A')) }

// scaleC sets C = beta*C, writing zeros when beta == 0 so NaNs do not survive.
func scaleC(m, n int, beta float32, c []float32, ldc int) {
	for i := 0; i < m; i++ {
		row := c[i*ldc : i*ldc+n]
		if beta == 0 {
			clear(row)
			continue
		}
		if beta == 1 {
			continue
		}
		for j := range row {
			row[j] *= beta
		}
	}
}

// small is the direct loop for tiny products: no packing, no threads.
func small(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			var s float32
			for p := 0; p < k; p++ {
				var av, bv float32
				if transA {
					av = a[p*lda+i]
				} else {
					av = a[i*lda+p]
				}
				if transB {
					bv = b[j*ldb+p]
				} else {
					bv = b[p*ldb+j]
				}
				s += av * bv
			}
			if beta == 0 {
				c[i*ldc+j] = alpha * s
			} else {
				c[i*ldc+j] = alpha*s + beta*c[i*ldc+j]
			}
		}
	}
}

// Reference is the plain triple loop, accumulating in float64: the answer
// the fast paths are checked against. It has Sgemm's semantics and checks.
func Reference(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	if err := Check(transA, transB, m, n, k, len(a), lda, len(b), ldb, len(c), ldc); err != nil {
		panic(err)
	}
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			var s float64
			for p := 0; p < k; p++ {
				var av, bv float32
				if transA {
					av = a[p*lda+i]
				} else {
					av = a[i*lda+p]
				}
				if transB {
					bv = b[j*ldb+p]
				} else {
					bv = b[p*ldb+j]
				}
				s += float64(av) * float64(bv)
			}
			v := float64(alpha) * s
			if beta != 0 {
				v += float64(beta) * float64(c[i*ldc+j])
			}
			c[i*ldc+j] = float32(v)
		}
	}
}

var threads atomic.Int32

// SetThreads sets how many goroutines Sgemm uses (0 means every core).
func SetThreads(n int) {
	if n < 0 {
		n = 0
	}
	threads.Store(int32(n))
}

// Threads reports how many threads Sgemm will use.
func Threads() int {
	if t := int(threads.Load()); t > 0 {
		return t
	}
	return max(1, min(runtime.NumCPU(), runtime.GOMAXPROCS(0)))
}

// Implementation names which kernel Sgemm runs: "avx512", "avx2" or "go".
func Implementation() string { return implName(int(impl.Load())) }

// SetImplementation makes Sgemm run the named kernel family ("avx512",
// "avx2" or "go"), for measuring a narrower path on a wider CPU (the AVX2
// kernels on an AVX-512 machine); "" or "auto" restores the best the CPU
// supports. Asking for a wider family than the CPU has is an error. The bf16
// products (GemmBF16) run only on the AVX-512 family (see BF16Supported).
func SetImplementation(name string) error {
	want := -1
	switch name {
	case "", "auto":
		want = archBest()
	case "go":
		want = implGo
	case "avx2":
		want = implAVX2
	case "avx512":
		want = implAVX512
	default:
		return fmt.Errorf("sgemm: unknown kernel %q (want auto, avx512, avx2 or go)", name)
	}
	if want > archBest() {
		return fmt.Errorf("sgemm: kernel %s is not available on this CPU or build (best: %s)", name, implName(archBest()))
	}
	impl.Store(int32(want))
	return nil
}

func implName(k int) string {
	switch k {
	case implAVX512:
		return "avx512"
	case implAVX2:
		return "avx2"
	}
	return "go"
}

// The kernels, in the order of the C side's OC_ISA_* values.
const (
	implGo     = 0
	implAVX2   = 1
	implAVX512 = 2
)

// impl is the kernel in use: the best the CPU has (archBest), or a narrower
// one forced by tests.
var impl atomic.Int32

func init() { impl.Store(int32(archBest())) }

// Blocking: KC x NC of B (L2/L3, shared by the threads), MC x KC of A per
// thread (L2), and KC x NR of B per micro-panel (32 KiB with the AVX-512
// tile at KC = 256: L1). MC is a multiple of every MR, NC of every NR.
// When C itself is too big for the caches (blockKCLargeC elements and
// up), every KC slice re-reads and re-writes all of C from memory, so the
// deeper blockKCLarge halves that traffic; measured at 2048 on the
// 2-core Xeon this was about 5% faster, at 1024 no better.
const (
	blockMC      = 192
	blockKC      = 256
	blockKCLarge = 512
	blockNC      = 4096
)

// blockKCLargeC is the size of C (elements) from which blockKCLarge is
// used; a variable so tests can reach that path with small matrices.
var blockKCLargeC = 2 << 20

// depthBlock is the KC for an m x n product.
func depthBlock(m, n int) int {
	if m*n >= blockKCLargeC {
		return blockKCLarge
	}
	return blockKC
}

// split cuts units into t contiguous ranges as even as they go, returning
// range i's [lo, hi).
func split(units, t, i int) (lo, hi int) {
	q, r := units/t, units%t
	lo = i*q + min(i, r)
	hi = lo + q
	if i < r {
		hi++
	}
	return lo, hi
}

// alignedFloats returns n float32s starting on a 64-byte boundary.
func alignedFloats(n int) []float32 {
	s := make([]float32, n+16)
	off := 0
	for uintptr(unsafe.Pointer(&s[off]))%64 != 0 {
		off++
	}
	return s[off : off+n : off+n]
}

//go:build !cgo || !amd64

package sgemm

// Without cgo on x86-64 there are no bf16 kernels.
const bf16OK = false

func gemmBF16(transW bool, m, n, k int, alpha float32, a []float32, lda int, w Weight, beta float32, c []float32, ldc int, t int) {
	panic("sgemm: no bf16 kernels in this build")
}

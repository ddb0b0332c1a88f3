//go:build !cgo || !amd64

package sgemm

// archBest: without cgo on x86-64 only the Go kernel is built.
func archBest() int { return implGo }

func sgemmC(isa int, transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int, t int) {
	sgemmGo(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, t)
}

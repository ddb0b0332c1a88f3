//go:build !cgo || !amd64

package sgemm

// Without cgo on x86-64 only the Go kernel is built (archBest is implGo).
func gemvC(isa, m int, a []float32, lda int, w Weight, hv *halves, r0, r1 int, c []float32, ldc int) {
	gemvGo(m, a, lda, w, r0, r1, c, ldc)
}

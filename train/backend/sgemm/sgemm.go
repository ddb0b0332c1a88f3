// Package sgemm is the CPU's single-precision matrix product.
//
// CONTRACT (skeleton): the gemm helper replaces the body with cache-blocked
// SIMD kernels; callers rely on the signature and on results that repeat bit
// for bit for the same inputs and thread count.
package sgemm

// Sgemm computes C = alpha*op(A)*op(B) + beta*C for row-major matrices, where
// op(A) is m x k (A is k x m when transA), op(B) is k x n (n x k when transB),
// and lda, ldb, ldc are the row strides. beta == 0 overwrites C (NaNs in C
// do not propagate).
func Sgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			var s float32
			for p := 0; p < k; p++ {
				av := a[i*lda+p]
				if transA {
					av = a[p*lda+i]
				}
				bv := b[p*ldb+j]
				if transB {
					bv = b[j*ldb+p]
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

// SetThreads sets how many goroutines Sgemm uses (0 means every core).
func SetThreads(n int) {}

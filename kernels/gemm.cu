// gemm.cu: dense matrix products for MatmulForward and MatmulBackward.
//
// Every kernel computes, row-major, C[M,N] = alpha*op(A)·op(B) + beta*C with
// op(X) = X or Xᵀ (transA, transB), on a grid of ceil(N/64) x ceil(M/64)
// blocks. gemm_f32 is the exact fp32 path (256 threads); the tensor-core
// kernels use 128 threads and differ only in the type the tiles are rounded
// to: tf32 and bf16 need sm_80 (below it they run the plain fp32 fallback),
// fp16 runs on Turing. The Backend maps
//
//	forward   out[N,OC]  = beta*out + alpha*inp[N,C]·w[OC,C]ᵀ  (transB)
//	backward  dinp[N,C] += alpha*dout[N,OC]·w[OC,C]
//	          dw[OC,C]  += alpha*dout[N,OC]ᵀ·inp[N,C]          (transA)
#include "gemm.cuh"

KERNEL void gemm_f32(const float* A, const float* B, float* C, int M, int N, int K,
                     int lda, int ldb, int ldc, int transA, int transB, float alpha, float beta) {
    simt_gemm(DenseA{A, lda, transA}, DenseB{B, ldb, transB}, C, M, N, K, ldc, alpha, beta);
}

KERNEL void gemm_tf32(const float* A, const float* B, float* C, int M, int N, int K,
                      int lda, int ldb, int ldc, int transA, int transB, float alpha, float beta) {
#if HAVE_SM80
    wmma_gemm<float>(DenseA{A, lda, transA}, DenseB{B, ldb, transB}, C, M, N, K, ldc, alpha, beta);
#else
    plain_gemm(DenseA{A, lda, transA}, DenseB{B, ldb, transB}, C, M, N, K, ldc, alpha, beta);
#endif
}

KERNEL void gemm_bf16(const float* A, const float* B, float* C, int M, int N, int K,
                      int lda, int ldb, int ldc, int transA, int transB, float alpha, float beta) {
#if HAVE_SM80
    wmma_gemm<__nv_bfloat16>(DenseA{A, lda, transA}, DenseB{B, ldb, transB}, C, M, N, K, ldc, alpha, beta);
#else
    plain_gemm(DenseA{A, lda, transA}, DenseB{B, ldb, transB}, C, M, N, K, ldc, alpha, beta);
#endif
}

KERNEL void gemm_fp16(const float* A, const float* B, float* C, int M, int N, int K,
                      int lda, int ldb, int ldc, int transA, int transB, float alpha, float beta) {
    wmma_gemm<__half>(DenseA{A, lda, transA}, DenseB{B, ldb, transB}, C, M, N, K, ldc, alpha, beta);
}

// gemm_bf16_native and gemm_fp16_native take 16-bit inputs already in device
// memory (the benchmark's like-for-like comparison with cuBLAS), fp32 output.
KERNEL void gemm_bf16_native(const __nv_bfloat16* A, const __nv_bfloat16* B, float* C, int M, int N, int K,
                             int lda, int ldb, int ldc, int transA, int transB, float alpha, float beta) {
#if HAVE_SM80
    wmma_gemm<__nv_bfloat16>(LowA<__nv_bfloat16>{A, lda, transA}, LowB<__nv_bfloat16>{B, ldb, transB}, C, M, N, K, ldc, alpha, beta);
#else
    plain_gemm(LowA<__nv_bfloat16>{A, lda, transA}, LowB<__nv_bfloat16>{B, ldb, transB}, C, M, N, K, ldc, alpha, beta);
#endif
}

KERNEL void gemm_fp16_native(const __half* A, const __half* B, float* C, int M, int N, int K,
                             int lda, int ldb, int ldc, int transA, int transB, float alpha, float beta) {
    wmma_gemm<__half>(LowA<__half>{A, lda, transA}, LowB<__half>{B, ldb, transB}, C, M, N, K, ldc, alpha, beta);
}

// convert_f32_bf16 and convert_f32_fp16 round n floats to 16 bits (nearest even).
KERNEL void convert_f32_bf16(__nv_bfloat16* out, const float* in, long long n) {
    FOR_EACH(i, n) out[i] = __float2bfloat16_rn(in[i]);
}

KERNEL void convert_f32_fp16(__half* out, const float* in, long long n) {
    FOR_EACH(i, n) out[i] = __float2half_rn(in[i]);
}

// widen_bf16_f32 widens n bfloat16 values (raw bits) to fp32, exactly: the
// tile a frozen bf16 weight (embedding, lm_head) is multiplied from.
KERNEL void widen_bf16_f32(float* out, const unsigned short* in, long long n) {
    FOR_EACH(i, n) out[i] = __uint_as_float((unsigned int)in[i] << 16);
}

// gemm.cuh: the tiled matrix-product bodies shared by gemm.cu (dense
// weights) and nf4.cu (4-bit weights dequantized on the fly). Both compute,
// row-major,
//
//	C[M,N] = alpha * sum_k A(m,k)*B(k,n) + beta*C      (beta == 0 overwrites)
//
// where A and B are "loaders": small structs whose at(r, c) returns the
// logical element of op(A) or op(B) in fp32, and whose kfast says whether
// consecutive k are adjacent in memory (so tile loads can be coalesced).
// The SIMT body is the fp32-exact reference path; the wmma body stages the
// tiles in shared memory in the tensor-core input type (fp16, bf16, or fp32
// rounded to tf32 at fragment load) and accumulates in fp32.
#pragma once
#include "common.cuh"
#include <mma.h>

// HAVE_SM80 guards what needs Ampere: bf16 and tf32 mma.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define HAVE_SM80 1
#else
#define HAVE_SM80 0
#endif

// DenseA reads op(A)(m,k) from fp32 memory: A[m*ld+k], or A[k*ld+m] when trans.
struct DenseA {
    const float* p; int ld; int trans;
    __device__ __forceinline__ float at(int m, int k) const { return trans ? p[(long long)k * ld + m] : p[(long long)m * ld + k]; }
    __device__ __forceinline__ bool kfast() const { return !trans; }
};

// DenseB reads op(B)(k,n) from fp32 memory: B[k*ld+n], or B[n*ld+k] when trans.
struct DenseB {
    const float* p; int ld; int trans;
    __device__ __forceinline__ float at(int k, int n) const { return trans ? p[(long long)n * ld + k] : p[(long long)k * ld + n]; }
    __device__ __forceinline__ bool kfast() const { return trans; }
};

// HalfA/HalfB and Bf16A/Bf16B read 16-bit inputs (the benchmark's native
// tensor-core GEMM; the training path keeps fp32 in memory).
template <typename T> __device__ __forceinline__ float tof(T x);
template <> __device__ __forceinline__ float tof<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float tof<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> struct LowA {
    const T* p; int ld; int trans;
    __device__ __forceinline__ float at(int m, int k) const { return tof(trans ? p[(long long)k * ld + m] : p[(long long)m * ld + k]); }
    __device__ __forceinline__ bool kfast() const { return !trans; }
};
template <typename T> struct LowB {
    const T* p; int ld; int trans;
    __device__ __forceinline__ float at(int k, int n) const { return tof(trans ? p[(long long)n * ld + k] : p[(long long)k * ld + n]); }
    __device__ __forceinline__ bool kfast() const { return trans; }
};

// ---------------------------------------------------------------------------
// SIMT fp32 body: 64x64 output tile per block of 256 threads, 16-deep k
// slices staged in shared memory, each thread owning a 4x4 strided patch.
// Each output is one fp32 sum over k in increasing order.

#define SG_BM 64
#define SG_BN 64
#define SG_BK 16

template <class LA, class LB>
__device__ __forceinline__ void simt_gemm(LA A, LB B, float* Cm, int M, int N, int K, int ldc, float alpha, float beta) {
    __shared__ float As[SG_BK][SG_BM + 1];
    __shared__ float Bs[SG_BK][SG_BN + 1];
    int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    int m0 = blockIdx.y * SG_BM, n0 = blockIdx.x * SG_BN;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.f;
    for (int k0 = 0; k0 < K; k0 += SG_BK) {
#pragma unroll
        for (int l = 0; l < 4; l++) {
            int idx = tid + l * 256, m, k;
            if (A.kfast()) { k = idx % SG_BK; m = idx / SG_BK; } else { m = idx % SG_BM; k = idx / SG_BM; }
            int gm = m0 + m, gk = k0 + k;
            As[k][m] = (gm < M && gk < K) ? A.at(gm, gk) : 0.f;
            int n;
            if (B.kfast()) { k = idx % SG_BK; n = idx / SG_BK; } else { n = idx % SG_BN; k = idx / SG_BN; }
            int gn = n0 + n;
            gk = k0 + k;
            Bs[k][n] = (gn < N && gk < K) ? B.at(gk, gn) : 0.f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < SG_BK; kk++) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; i++) a[i] = As[kk][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; j++) b[j] = Bs[kk][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int m = m0 + ty + 16 * i;
        if (m >= M) continue;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int n = n0 + tx + 16 * j;
            if (n >= N) continue;
            float* c = Cm + (long long)m * ldc + n;
            *c = beta == 0.f ? alpha * acc[i][j] : alpha * acc[i][j] + beta * *c;
        }
    }
}

// ---------------------------------------------------------------------------
// Tensor-core body (wmma): 64x64 output tile per block of 128 threads (four
// warps in 2x2, each 32x32 = 2x2 fragments of 16x16), 32-deep k slices.
// T is the shared-memory element type: __half, __nv_bfloat16, or float for
// tf32 (rounded when a fragment is loaded). FK is the fragment depth (16, or
// 8 for tf32).

#define WM_BM 64
#define WM_BN 64
#define WM_BK 32
#define WM_PADK 8
#define WM_PADN 8

template <typename T> __device__ __forceinline__ T fromf(float x);
template <> __device__ __forceinline__ __half fromf<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 fromf<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ float fromf<float>(float x) { return x; }

// WmmaTraits maps T to the wmma fragment types.
template <typename T> struct WmmaTraits;
template <> struct WmmaTraits<__half> { typedef __half In; static const int FK = 16; };
template <> struct WmmaTraits<__nv_bfloat16> { typedef __nv_bfloat16 In; static const int FK = 16; };
#if HAVE_SM80
template <> struct WmmaTraits<float> { typedef nvcuda::wmma::precision::tf32 In; static const int FK = 8; };
#endif

template <typename T, class LA, class LB>
__device__ __forceinline__ void wmma_gemm(LA A, LB B, float* Cm, int M, int N, int K, int ldc, float alpha, float beta) {
    using namespace nvcuda;
    typedef typename WmmaTraits<T>::In In;
    const int FK = WmmaTraits<T>::FK;
    __shared__ __align__(32) T As[WM_BM][WM_BK + WM_PADK];
    __shared__ __align__(32) T Bs[WM_BK][WM_BN + WM_PADN];
    __shared__ __align__(32) float Cs[WM_BM][WM_BN + 4];
    int tid = threadIdx.x, warp = tid / 32;
    int wm = (warp / 2) * 32, wn = (warp % 2) * 32;
    int m0 = blockIdx.y * WM_BM, n0 = blockIdx.x * WM_BN;
    wmma::fragment<wmma::accumulator, 16, 16, FK, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++) wmma::fill_fragment(acc[i][j], 0.f);
    for (int k0 = 0; k0 < K; k0 += WM_BK) {
        // 64x32 elements of each tile, 16 per thread.
        for (int idx = tid; idx < WM_BM * WM_BK; idx += 128) {
            int m, k;
            if (A.kfast()) { k = idx % WM_BK; m = idx / WM_BK; } else { m = idx % WM_BM; k = idx / WM_BM; }
            int gm = m0 + m, gk = k0 + k;
            As[m][k] = fromf<T>((gm < M && gk < K) ? A.at(gm, gk) : 0.f);
            int n;
            if (B.kfast()) { k = idx % WM_BK; n = idx / WM_BK; } else { n = idx % WM_BN; k = idx / WM_BN; }
            int gn = n0 + n;
            gk = k0 + k;
            Bs[k][n] = fromf<T>((gn < N && gk < K) ? B.at(gk, gn) : 0.f);
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < WM_BK; kk += FK) {
            wmma::fragment<wmma::matrix_a, 16, 16, FK, In, wmma::row_major> a[2];
            wmma::fragment<wmma::matrix_b, 16, 16, FK, In, wmma::row_major> b[2];
#pragma unroll
            for (int i = 0; i < 2; i++) {
                wmma::load_matrix_sync(a[i], &As[wm + 16 * i][kk], WM_BK + WM_PADK);
                wmma::load_matrix_sync(b[i], &Bs[kk][wn + 16 * i], WM_BN + WM_PADN);
#if HAVE_SM80
                if (FK == 8) { // tf32: round the fp32 values held in the fragments
#pragma unroll
                    for (int t = 0; t < a[i].num_elements; t++) a[i].x[t] = wmma::__float_to_tf32(a[i].x[t]);
#pragma unroll
                    for (int t = 0; t < b[i].num_elements; t++) b[i].x[t] = wmma::__float_to_tf32(b[i].x[t]);
                }
#endif
            }
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int j = 0; j < 2; j++) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++)
            wmma::store_matrix_sync(&Cs[wm + 16 * i][wn + 16 * j], acc[i][j], WM_BN + 4, wmma::mem_row_major);
    __syncthreads();
    for (int idx = tid; idx < WM_BM * WM_BN; idx += 128) {
        int m = idx / WM_BN, n = idx % WM_BN, gm = m0 + m, gn = n0 + n;
        if (gm < M && gn < N) {
            float* c = Cm + (long long)gm * ldc + gn;
            float v = alpha * Cs[m][n];
            *c = beta == 0.f ? v : v + beta * *c;
        }
    }
}

// plain_gemm is the fallback body a tensor-core kernel runs where its input
// type has no mma on the target (bf16 and tf32 below sm_80): the same
// 64x64 tile over 128 threads, one plain fp32 dot product per output.
template <class LA, class LB>
__device__ __forceinline__ void plain_gemm(LA A, LB B, float* Cm, int M, int N, int K, int ldc, float alpha, float beta) {
    int m0 = blockIdx.y * WM_BM, n0 = blockIdx.x * WM_BN;
    for (int idx = threadIdx.x; idx < WM_BM * WM_BN; idx += blockDim.x) {
        int gm = m0 + idx / WM_BN, gn = n0 + idx % WM_BN;
        if (gm >= M || gn >= N) continue;
        float s = 0.f;
        for (int k = 0; k < K; k++) s = fmaf(A.at(gm, k), B.at(k, gn), s);
        float* c = Cm + (long long)gm * ldc + gn;
        *c = beta == 0.f ? alpha * s : alpha * s + beta * *c;
    }
}


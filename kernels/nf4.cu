// nf4.cu: 4-bit (NF4/FP4) weights as bitsandbytes stores them, used in
// place: dequantization, and the fused matmuls of the QLoRA linear layers.
//
// A weight [OC, C] is packed two codes per byte, element 2i in the high
// nibble of byte i, one scale per block of bs elements. The scale is either
// an fp32 absmax (absmax != NULL) or double-quantized: an 8-bit code per
// block into the 256-entry map nmap, times the fp32 nested absmax of its
// group of nbs blocks, plus offset, rounded to fp32 exactly as
// quant.Tensor4.AbsmaxAt does.
//
//	nf4_dequantize       out[i] = code_value[code(i)] * absmax(i/bs)  (fp32 out)
//	nf4_dequantize_bf16  the same, bf16 out (what the benchmark times)
//	nf4_matmul_fwd_*     out[N,OC]  = x[N,C]·dequant(W)ᵀ
//	nf4_matmul_bwd_*     dinp[N,C] += dout[N,OC]·dequant(W)
//
// The matmuls dequantize tiles of W into shared memory inside the gemm.cuh
// bodies: _f32 is exact fp32 (SIMT), _bf16 and _fp16 use tensor-core mma
// with fp32 accumulation (bf16 needs sm_80; below it _bf16 runs the plain
// fp32 fallback).
#include "gemm.cuh"

// Code books (quant.CodeValues): format 0 = NF4, 1 = FP4.
__constant__ float kCodeValues[2][16] = {
    {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
     -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
     0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
     0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f},
    {0.0f, 5.208333333e-03f, 0.66666667f, 1.0f, 0.33333333f, 0.5f, 0.16666667f, 0.25f,
     -0.0f, -5.208333333e-03f, -0.66666667f, -1.0f, -0.33333333f, -0.5f, -0.16666667f, -0.25f},
};

// Q4 is a 4-bit weight in device memory.
struct Q4 {
    const uint8_t* packed;
    const float* absmax;   // fp32 scales, or NULL when nested
    const uint8_t* ncodes; // nested: one code per block
    const float* nabsmax;  // nested: one fp32 per nbs blocks
    const float* nmap;     // nested: the 256-entry signed dynamic map
    float offset;
    int nbs, bs, fmt;

    __device__ __forceinline__ float scale(long long b) const {
        if (absmax) return absmax[b];
        return __fmul_rn(nmap[ncodes[b]], nabsmax[b / nbs]) + offset;
    }
    __device__ __forceinline__ float at(long long e) const {
        uint8_t byte = packed[e >> 1];
        int code = (e & 1) ? (byte & 0x0F) : (byte >> 4);
        return kCodeValues[fmt][code] * scale(e / bs);
    }
};

// Q4Fwd reads op(B)(k,n) = W[n,k] (the forward: k runs along a row of W).
struct Q4Fwd {
    Q4 q; int C;
    __device__ __forceinline__ float at(int k, int n) const { return q.at((long long)n * C + k); }
    __device__ __forceinline__ bool kfast() const { return true; }
};

// Q4Bwd reads op(B)(k,n) = W[k,n] (dX = dY·W: k runs over the OC rows).
struct Q4Bwd {
    Q4 q; int C;
    __device__ __forceinline__ float at(int k, int n) const { return q.at((long long)k * C + n); }
    __device__ __forceinline__ bool kfast() const { return false; }
};

#define Q4_PARAMS const uint8_t *packed, const float *absmax, const uint8_t *ncodes, const float *nabsmax, \
                  const float *nmap, float offset, int nbs, int bs, int fmt
#define Q4_ARGS Q4{packed, absmax, ncodes, nabsmax, nmap, offset, nbs, bs, fmt}

// nf4_dequantize writes n elements. Each thread takes 32 elements through one
// 16-byte load of packed codes (block sizes are >= 32, so the 32 share one
// scale); the tail past the last whole group of 32 goes byte by byte.
KERNEL void nf4_dequantize(float* out, Q4_PARAMS, long long n) {
    Q4 q = Q4_ARGS;
    long long groups = n / 32;
    FOR_EACH(g, groups) {
        uint4 w = reinterpret_cast<const uint4*>(packed)[g];
        float s = q.scale(g * 32 / bs);
        const float* cv = kCodeValues[fmt];
        uint32_t words[4] = {w.x, w.y, w.z, w.w};
        float4* o = reinterpret_cast<float4*>(out + g * 32);
#pragma unroll
        for (int j = 0; j < 4; j++) {
            uint32_t x = words[j]; // bytes in memory order, little endian
            float v[8];
#pragma unroll
            for (int b = 0; b < 4; b++) {
                uint32_t byte = (x >> (8 * b)) & 0xFF;
                v[2 * b] = cv[byte >> 4] * s;
                v[2 * b + 1] = cv[byte & 0x0F] * s;
            }
            o[2 * j] = make_float4(v[0], v[1], v[2], v[3]);
            o[2 * j + 1] = make_float4(v[4], v[5], v[6], v[7]);
        }
    }
    FOR_EACH(i, n - groups * 32) {
        long long e = groups * 32 + i;
        out[e] = q.at(e);
    }
}

KERNEL void nf4_dequantize_bf16(__nv_bfloat16* out, Q4_PARAMS, long long n) {
    Q4 q = Q4_ARGS;
    long long groups = n / 32;
    FOR_EACH(g, groups) {
        uint4 w = reinterpret_cast<const uint4*>(packed)[g];
        float s = q.scale(g * 32 / bs);
        const float* cv = kCodeValues[fmt];
        uint32_t words[4] = {w.x, w.y, w.z, w.w};
        __nv_bfloat162* o = reinterpret_cast<__nv_bfloat162*>(out + g * 32);
#pragma unroll
        for (int j = 0; j < 4; j++) {
            uint32_t x = words[j];
#pragma unroll
            for (int b = 0; b < 4; b++) {
                uint32_t byte = (x >> (8 * b)) & 0xFF;
                __nv_bfloat162 pair;
                pair.x = __float2bfloat16_rn(cv[byte >> 4] * s);
                pair.y = __float2bfloat16_rn(cv[byte & 0x0F] * s);
                o[4 * j + b] = pair;
            }
        }
    }
    FOR_EACH(i, n - groups * 32) {
        long long e = groups * 32 + i;
        out[e] = __float2bfloat16_rn(q.at(e));
    }
}

// Forward: M = N rows, N = OC, K = C; out is overwritten.
KERNEL void nf4_matmul_fwd_f32(float* out, const float* x, Q4_PARAMS, int N, int C, int OC) {
    simt_gemm(DenseA{x, C, 0}, Q4Fwd{Q4_ARGS, C}, out, N, OC, C, OC, 1.f, 0.f);
}

// Backward: M = N rows, N = C, K = OC; dinp is accumulated into.
KERNEL void nf4_matmul_bwd_f32(float* dinp, const float* dout, Q4_PARAMS, int N, int C, int OC) {
    simt_gemm(DenseA{dout, OC, 0}, Q4Bwd{Q4_ARGS, C}, dinp, N, C, OC, C, 1.f, 1.f);
}

KERNEL void nf4_matmul_fwd_bf16(float* out, const float* x, Q4_PARAMS, int N, int C, int OC) {
#if HAVE_SM80
    wmma_gemm<__nv_bfloat16>(DenseA{x, C, 0}, Q4Fwd{Q4_ARGS, C}, out, N, OC, C, OC, 1.f, 0.f);
#else
    plain_gemm(DenseA{x, C, 0}, Q4Fwd{Q4_ARGS, C}, out, N, OC, C, OC, 1.f, 0.f);
#endif
}

KERNEL void nf4_matmul_bwd_bf16(float* dinp, const float* dout, Q4_PARAMS, int N, int C, int OC) {
#if HAVE_SM80
    wmma_gemm<__nv_bfloat16>(DenseA{dout, OC, 0}, Q4Bwd{Q4_ARGS, C}, dinp, N, C, OC, C, 1.f, 1.f);
#else
    plain_gemm(DenseA{dout, OC, 0}, Q4Bwd{Q4_ARGS, C}, dinp, N, C, OC, C, 1.f, 1.f);
#endif
}

KERNEL void nf4_matmul_fwd_fp16(float* out, const float* x, Q4_PARAMS, int N, int C, int OC) {
    wmma_gemm<__half>(DenseA{x, C, 0}, Q4Fwd{Q4_ARGS, C}, out, N, OC, C, OC, 1.f, 0.f);
}

KERNEL void nf4_matmul_bwd_fp16(float* dinp, const float* dout, Q4_PARAMS, int N, int C, int OC) {
    wmma_gemm<__half>(DenseA{dout, OC, 0}, Q4Bwd{Q4_ARGS, C}, dinp, N, C, OC, C, 1.f, 1.f);
}

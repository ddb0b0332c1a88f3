// reduce.cu: the small elementwise and reduction ops: add, accumulate,
// scale, fill, the sum of squares for global-norm clipping, and dropout with
// the counter-based mask of backend.DropoutMask (ported bit for bit).
#include "common.cuh"

KERNEL void add_forward(float* out, const float* a, const float* b, long long n) {
    FOR_EACH(i, n) out[i] = a[i] + b[i];
}

KERNEL void accumulate(float* dst, const float* src, long long n) {
    FOR_EACH(i, n) dst[i] += src[i];
}

KERNEL void scale_inplace(float* x, float s, long long n) {
    FOR_EACH(i, n) x[i] *= s;
}

KERNEL void fill(float* x, float v, long long n) {
    FOR_EACH(i, n) x[i] = v;
}

// sumsq_chunks writes partial[c] = sum of x[i]² over chunk c of `chunk`
// elements, accumulated in fp64, one block per chunk. The host adds the
// partials in order, so the total does not depend on scheduling.
KERNEL void sumsq_chunks(double* partial, const float* x, long long n, int chunk) {
    long long c0 = (long long)blockIdx.x * chunk;
    long long c1 = c0 + chunk < n ? c0 + chunk : n;
    double acc = 0.0;
    for (long long i = c0 + threadIdx.x; i < c1; i += blockDim.x) acc += (double)x[i] * (double)x[i];
    acc = block_sum_d(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// mix64 is the SplitMix64 finaliser (backend.Mix64).
__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {
    z ^= z >> 30;
    z *= 0xBF58476D1CE4E5B9ull;
    z ^= z >> 27;
    z *= 0x94D049BB133111EBull;
    z ^= z >> 31;
    return z;
}

// keep is backend.DropoutMask: element i of stream key survives when the top
// 24 bits of its hash, as a float in [0,1), are >= p.
__device__ __forceinline__ bool keep(unsigned long long key, long long i, float p) {
    unsigned long long u = mix64(key + (unsigned long long)i * 0x9E3779B97F4A7C15ull);
    return (float)(u >> 40) * (1.0f / 16777216.0f) >= p;
}

KERNEL void dropout_forward(float* out, const float* inp, float p, float s, unsigned long long key, long long n) {
    FOR_EACH(i, n) out[i] = keep(key, i, p) ? inp[i] * s : 0.f;
}

KERNEL void dropout_backward(float* dinp, const float* dout, float p, float s, unsigned long long key, long long n) {
    FOR_EACH(i, n) if (keep(key, i, p)) dinp[i] += dout[i] * s;
}

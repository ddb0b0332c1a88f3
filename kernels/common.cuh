// common.cuh: helpers shared by every kernel family: the extern "C" kernel
// marker (the Go side looks kernels up by these unmangled names), warp and
// block reductions, and grid-stride loops.
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

#define KERNEL extern "C" __global__

// warp_sum adds v over the 32 lanes of a warp; every lane gets the total.
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// block_sum adds v over the block (blockDim.x a multiple of 32); every
// thread gets the total. The reduction tree depends only on blockDim, so
// results repeat bit for bit.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float s[32];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads(); // s may still be read by a previous call
    if (lane == 0) s[w] = v;
    __syncthreads();
    return warp_sum(lane < nw ? s[lane] : 0.f);
}

__device__ __forceinline__ double block_sum_d(double v) {
    __shared__ double s[32];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum_d(v);
    __syncthreads();
    if (lane == 0) s[w] = v;
    __syncthreads();
    return warp_sum_d(lane < nw ? s[lane] : 0.0);
}

__device__ __forceinline__ float block_max(float v) {
    __shared__ float s[32];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) s[w] = v;
    __syncthreads();
    return warp_max(lane < nw ? s[lane] : -INFINITY);
}

// Grid-stride loop over [0, n).
#define FOR_EACH(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (long long)(n); i += (long long)gridDim.x * blockDim.x)

// decode.cu: attention of one new position against the KV cache, the
// inner loop of generation.
//
// q and out are [H*hd]; k and v are the cache rows [L, KVH*hd] (query head
// h reads kv head h/(H/KVH)); att [H, L] receives the probabilities, as
// attention_forward keeps its row. Every cached position is visible (the
// cache holds the past and the position itself). One block per query head:
// threads stride over the cached positions for the scores and the softmax,
// then over hd for the weighted sum of values.
#include "common.cuh"

KERNEL void attention_decode(float* out, float* att, const float* q, const float* k, const float* v,
                             int L, int H, int KVH, int hd) {
    int h = blockIdx.x, kh = h / (H / KVH);
    long long KC = (long long)KVH * hd;
    float scale = (float)(1.0 / sqrt((double)hd));
    const float* qh = q + (long long)h * hd;
    float* row = att + (long long)h * L;
    float mx = -INFINITY;
    for (int t = threadIdx.x; t < L; t += blockDim.x) {
        const float* kt = k + (long long)t * KC + (long long)kh * hd;
        float s = 0.f;
        for (int i = 0; i < hd; i++) s += qh[i] * kt[i];
        s *= scale;
        row[t] = s;
        mx = fmaxf(mx, s);
    }
    mx = block_max(mx);
    float sum = 0.f;
    for (int t = threadIdx.x; t < L; t += blockDim.x) {
        float e = expf(row[t] - mx);
        row[t] = e;
        sum += e;
    }
    sum = block_sum(sum);
    float inv = 1.f / sum;
    for (int t = threadIdx.x; t < L; t += blockDim.x) row[t] *= inv;
    __syncthreads(); // the whole row is written before any thread reads it
    float* o = out + (long long)h * hd;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) {
        float acc = 0.f;
        for (int t = 0; t < L; t++) acc += row[t] * v[(long long)t * KC + (long long)kh * hd + i];
        o[i] = acc;
    }
}

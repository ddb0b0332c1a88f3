// rope.cu: rotary position embeddings (Hugging Face rotate_half), in place.
// Forward rotates by +angle, backward by -angle (the transpose). One thread
// per (row, head, pair); position = row mod T; cos and sin are [maxT, hd/2].
#include "common.cuh"

__device__ __forceinline__ void rope_pair(float* x, const float* cosv, const float* sinv, int N, int T, int nh, int hd, float dir) {
    int half = hd / 2;
    FOR_EACH(idx, (long long)N * nh * half) {
        int i = idx % half;
        long long nhh = idx / half; // n*nh + h
        int n = nhh / nh;
        int t = n % T;
        float* v = x + nhh * hd;
        float c = cosv[t * half + i], s = dir * sinv[t * half + i];
        float x1 = v[i], x2 = v[i + half];
        v[i] = x1 * c - x2 * s;
        v[i + half] = x2 * c + x1 * s;
    }
}

KERNEL void rope_forward(float* x, const float* cosv, const float* sinv, int N, int T, int nh, int hd) {
    rope_pair(x, cosv, sinv, N, T, nh, hd, 1.f);
}

KERNEL void rope_backward(float* dx, const float* cosv, const float* sinv, int N, int T, int nh, int hd) {
    rope_pair(dx, cosv, sinv, N, T, nh, hd, -1.f);
}

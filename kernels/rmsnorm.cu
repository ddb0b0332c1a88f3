// rmsnorm.cu: RMSNorm, forward beside backward. One block per row.
//
//	forward   rstd = 1/sqrt(mean(x²) + eps);  out = x * rstd * w
//	backward  dx += rstd*(dy*w - xhat*mean(dy*w*xhat));  dw += sum_n dy*xhat
#include "common.cuh"

KERNEL void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* w, int N, int C, double eps) {
    int n = blockIdx.x;
    if (n >= N) return;
    const float* x = inp + (long long)n * C;
    float ss = 0.f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) ss += x[i] * x[i];
    ss = block_sum(ss);
    float r = (float)(1.0 / sqrt((double)(ss / (float)C) + eps));
    if (threadIdx.x == 0) rstd[n] = r;
    float* o = out + (long long)n * C;
    for (int i = threadIdx.x; i < C; i += blockDim.x) o[i] = x[i] * r * w[i];
}

// rmsnorm_backward accumulates dinp, one block per row.
KERNEL void rmsnorm_backward(float* dinp, const float* dout, const float* inp, const float* w, const float* rstd, int N, int C) {
    int n = blockIdx.x;
    if (n >= N) return;
    const float *x = inp + (long long)n * C, *dy = dout + (long long)n * C;
    float* dx = dinp + (long long)n * C;
    float r = rstd[n];
    float dot = 0.f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) dot += dy[i] * w[i] * x[i] * r;
    dot = block_sum(dot) / (float)C;
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        float xhat = x[i] * r;
        dx[i] += r * (dy[i] * w[i] - xhat * dot);
    }
}

// rmsnorm_backward_dw accumulates the weight gradient: one thread per column
// sums over the rows in order (deterministic, no atomics).
KERNEL void rmsnorm_backward_dw(float* dw, const float* dout, const float* inp, const float* rstd, int N, int C) {
    FOR_EACH(c, C) {
        float s = 0.f;
        for (int n = 0; n < N; n++) s += dout[(long long)n * C + c] * inp[(long long)n * C + c] * rstd[n];
        dw[c] += s;
    }
}

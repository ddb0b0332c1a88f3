// crossentropy.cu: fused softmax + loss + dlogits, one block per row.
// losses[n] = logsumexp(row) - row[target] (fp64 out); with grad, the row is
// overwritten by dscale*(softmax - onehot). A negative target is padding:
// zero loss, zero gradient.
#include "common.cuh"

KERNEL void crossentropy_forward_backward(float* logits, double* losses, const int* targets, int N, int V, float dscale, int grad) {
    int n = blockIdx.x;
    if (n >= N) return;
    float* row = logits + (long long)n * V;
    int tgt = targets[n];
    if (tgt < 0) {
        if (threadIdx.x == 0) losses[n] = 0.0;
        if (grad)
            for (int i = threadIdx.x; i < V; i += blockDim.x) row[i] = 0.f;
        return;
    }
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < V; i += blockDim.x) mx = fmaxf(mx, row[i]);
    mx = block_max(mx);
    double sum = 0.0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) sum += (double)expf(row[i] - mx);
    sum = block_sum_d(sum);
    double lse = (double)mx + log(sum);
    float tv = row[tgt];
    __syncthreads(); // every thread has read row[tgt] before it is overwritten
    if (threadIdx.x == 0) losses[n] = lse - (double)tv;
    if (!grad) return;
    float flse = (float)lse;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float p = expf(row[i] - flse);
        if (i == tgt) p -= 1.f;
        row[i] = dscale * p;
    }
}

// attention.cu: causal grouped-query attention, forward beside backward.
//
// q and out are [B*T, H*hd], k and v are [B*T, KVH*hd]; query head h reads kv
// head h/(H/KVH). att [B,H,T,T] keeps the softmax probabilities (zero above
// the diagonal), as the CPU reference does, so either backend's backward
// reads either backend's forward.
//
// This is the plain, correct version: one block per (query row, b*h),
// scores staged in the att row itself. The backward runs in three passes so
// that no two threads ever add into the same gradient element:
//
//	attention_backward_dpre  dpre[t,t2] = p*(dout_t·v_t2 - sum p*(dout_t·v))*scale
//	attention_backward_dq    dq_t  += sum_t2 dpre[t,t2] * k_t2
//	attention_backward_dkv   dk_t2 += sum_h sum_t dpre[h,t,t2] * q_t,h
//	                         dv_t2 += sum_h sum_t p[h,t,t2] * dout_t,h
//
// dpre is scratch the size of att.
#include "common.cuh"

KERNEL void attention_forward(float* out, float* att, const float* q, const float* k, const float* v,
                              int B, int T, int H, int KVH, int hd) {
    int t = blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H, kh = h / (H / KVH);
    long long C = (long long)H * hd, KC = (long long)KVH * hd;
    float scale = (float)(1.0 / sqrt((double)hd));
    const float* qt = q + ((long long)b * T + t) * C + (long long)h * hd;
    float* row = att + ((long long)bh * T + t) * T;
    float mx = -INFINITY;
    for (int t2 = threadIdx.x; t2 <= t; t2 += blockDim.x) {
        const float* kt = k + ((long long)b * T + t2) * KC + (long long)kh * hd;
        float s = 0.f;
        for (int i = 0; i < hd; i++) s += qt[i] * kt[i];
        s *= scale;
        row[t2] = s;
        mx = fmaxf(mx, s);
    }
    mx = block_max(mx);
    float sum = 0.f;
    for (int t2 = threadIdx.x; t2 <= t; t2 += blockDim.x) {
        float e = expf(row[t2] - mx);
        row[t2] = e;
        sum += e;
    }
    sum = block_sum(sum);
    float inv = 1.f / sum;
    for (int t2 = threadIdx.x; t2 < T; t2 += blockDim.x) row[t2] = t2 <= t ? row[t2] * inv : 0.f;
    __syncthreads(); // the whole row is written before any thread reads it
    float* o = out + ((long long)b * T + t) * C + (long long)h * hd;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) {
        float acc = 0.f;
        for (int t2 = 0; t2 <= t; t2++) acc += row[t2] * v[((long long)b * T + t2) * KC + (long long)kh * hd + i];
        o[i] = acc;
    }
}

KERNEL void attention_backward_dpre(float* dpre, const float* dout, const float* att, const float* v,
                                    int B, int T, int H, int KVH, int hd) {
    int t = blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H, kh = h / (H / KVH);
    long long C = (long long)H * hd, KC = (long long)KVH * hd;
    float scale = (float)(1.0 / sqrt((double)hd));
    const float* row = att + ((long long)bh * T + t) * T;
    float* drow = dpre + ((long long)bh * T + t) * T;
    const float* do_ = dout + ((long long)b * T + t) * C + (long long)h * hd;
    float dot = 0.f;
    for (int t2 = threadIdx.x; t2 <= t; t2 += blockDim.x) {
        const float* vt = v + ((long long)b * T + t2) * KC + (long long)kh * hd;
        float s = 0.f;
        for (int i = 0; i < hd; i++) s += do_[i] * vt[i];
        drow[t2] = s;
        dot += s * row[t2];
    }
    dot = block_sum(dot);
    for (int t2 = threadIdx.x; t2 < T; t2 += blockDim.x) drow[t2] = t2 <= t ? row[t2] * (drow[t2] - dot) * scale : 0.f;
}

KERNEL void attention_backward_dq(float* dq, const float* dpre, const float* k, int B, int T, int H, int KVH, int hd) {
    int t = blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H, kh = h / (H / KVH);
    long long C = (long long)H * hd, KC = (long long)KVH * hd;
    const float* drow = dpre + ((long long)bh * T + t) * T;
    float* dqt = dq + ((long long)b * T + t) * C + (long long)h * hd;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) {
        float acc = 0.f;
        for (int t2 = 0; t2 <= t; t2++) acc += drow[t2] * k[((long long)b * T + t2) * KC + (long long)kh * hd + i];
        dqt[i] += acc;
    }
}

// attention_backward_dkv: one block per (key row t2, b*KVH); threads over hd.
KERNEL void attention_backward_dkv(float* dk, float* dv, const float* dpre, const float* att, const float* q,
                                   const float* dout, int B, int T, int H, int KVH, int hd) {
    int t2 = blockIdx.x, bk = blockIdx.y, b = bk / KVH, kh = bk % KVH, grp = H / KVH;
    long long C = (long long)H * hd, KC = (long long)KVH * hd;
    long long off = ((long long)b * T + t2) * KC + (long long)kh * hd;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) {
        float ak = 0.f, av = 0.f;
        for (int h = kh * grp; h < (kh + 1) * grp; h++) {
            long long bh = (long long)b * H + h;
            for (int t = t2; t < T; t++) {
                long long a = (bh * T + t) * T + t2;
                long long qo = ((long long)b * T + t) * C + (long long)h * hd + i;
                ak += dpre[a] * q[qo];
                av += att[a] * dout[qo];
            }
        }
        dk[off + i] += ak;
        dv[off + i] += av;
    }
}

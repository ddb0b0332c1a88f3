// swiglu.cu: out = silu(gate)*up, forward beside backward, elementwise.
// silu(x) = x*s, s = sigmoid(x); silu'(x) = s*(1 + x*(1-s)).
#include "common.cuh"

__device__ __forceinline__ float sigmoidf(float x) { return 1.f / (1.f + expf(-x)); }

KERNEL void swiglu_forward(float* out, const float* gate, const float* up, long long n) {
    FOR_EACH(i, n) {
        float g = gate[i];
        out[i] = g * sigmoidf(g) * up[i];
    }
}

KERNEL void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, long long n) {
    FOR_EACH(i, n) {
        float g = gate[i], s = sigmoidf(g);
        dgate[i] += dout[i] * up[i] * s * (1.f + g * (1.f - s));
        dup[i] += dout[i] * g * s;
    }
}

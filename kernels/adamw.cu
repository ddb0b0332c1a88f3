// adamw.cu: AdamW with decoupled weight decay and bias correction, the
// reference's arithmetic (moments in fp32, the update in fp64):
//
//	m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g²
//	p -= lr * (m/bc1 / (sqrt(v/bc2) + eps) + wd*p)
//
// bc1 = 1-b1^t and bc2 = 1-b2^t are computed once on the host.
#include "common.cuh"

KERNEL void adamw_update(float* params, const float* grads, float* m, float* v, long long n,
                         float beta1, float beta2, double lr, double eps, double wd, double bc1, double bc2) {
    FOR_EACH(i, n) {
        float g = grads[i];
        // explicit roundings, no fma: the same fp32 values as the reference
        float mi = __fadd_rn(__fmul_rn(beta1, m[i]), __fmul_rn(1.f - beta1, g));
        float vi = __fadd_rn(__fmul_rn(beta2, v[i]), __fmul_rn(__fmul_rn(1.f - beta2, g), g));
        m[i] = mi;
        v[i] = vi;
        double mhat = (double)mi / bc1, vhat = (double)vi / bc2;
        double p = (double)params[i];
        params[i] = (float)(p - lr * (mhat / (sqrt(vhat) + eps) + wd * p));
    }
}

// vecmath.h: the elementwise functions of a training step that are bound by
// exp (SwiGLU's sigmoid, attention's softmax), in AVX-512 with a float32
// exp, included by vecmath_cgo_amd64.go. Each function's result depends
// only on its inputs, never on how the caller split the work, so results
// repeat bit for bit.

#include <immintrin.h>
#include <math.h>

static int vm_ok(void) {
	__builtin_cpu_init();
	return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
}

// vm_exp is exp(x) in float32: x = k*ln2 + r with |r| <= ln2/2, exp(r) by a
// degree-6 polynomial (Taylor coefficients; error under 2 ulp on the
// range), times 2^k by vscalefps, which also gives 0 below about -103 and
// +inf above about 89.
__attribute__((target("avx512f,fma")))
static inline __m512 vm_exp(__m512 x) {
	x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(89.0f));
	__m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	__m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693145751953125f), x);
	r = _mm512_fnmadd_ps(k, _mm512_set1_ps(1.42860682030941723212e-6f), r);
	__m512 p = _mm512_set1_ps(1.0f / 720);
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
	return _mm512_scalef_ps(p, k);
}

// vm_sigmoid is 1 / (1 + exp(-g)).
__attribute__((target("avx512f,fma")))
static inline __m512 vm_sigmoid(__m512 g) {
	__m512 one = _mm512_set1_ps(1.0f);
	return _mm512_div_ps(one, _mm512_add_ps(one, vm_exp(_mm512_sub_ps(_mm512_setzero_ps(), g))));
}

static inline __mmask16 vm_tail(long n, long i) {
	long left = n - i;
	return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
}

// vm_swiglu_fwd: out = silu(gate) * up = gate * sigmoid(gate) * up.
__attribute__((target("avx512f,fma")))
static void vm_swiglu_fwd(float *out, const float *gate, const float *up, long n) {
	for (long i = 0; i < n; i += 16) {
		__mmask16 m = vm_tail(n, i);
		__m512 g = _mm512_maskz_loadu_ps(m, gate + i);
		__m512 u = _mm512_maskz_loadu_ps(m, up + i);
		__m512 s = vm_sigmoid(g);
		_mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(_mm512_mul_ps(g, s), u));
	}
}

// vm_swiglu_bwd: dgate += dout*up*s*(1 + g*(1-s)), dup += dout*g*s, with
// s = sigmoid(gate).
__attribute__((target("avx512f,fma")))
static void vm_swiglu_bwd(float *dgate, float *dup, const float *dout, const float *gate, const float *up, long n) {
	__m512 one = _mm512_set1_ps(1.0f);
	for (long i = 0; i < n; i += 16) {
		__mmask16 m = vm_tail(n, i);
		__m512 g = _mm512_maskz_loadu_ps(m, gate + i);
		__m512 u = _mm512_maskz_loadu_ps(m, up + i);
		__m512 d = _mm512_maskz_loadu_ps(m, dout + i);
		__m512 s = vm_sigmoid(g);
		__m512 dsilu = _mm512_mul_ps(s, _mm512_add_ps(one, _mm512_mul_ps(g, _mm512_sub_ps(one, s))));
		__m512 dg = _mm512_add_ps(_mm512_maskz_loadu_ps(m, dgate + i), _mm512_mul_ps(_mm512_mul_ps(d, u), dsilu));
		__m512 du = _mm512_add_ps(_mm512_maskz_loadu_ps(m, dup + i), _mm512_mul_ps(d, _mm512_mul_ps(g, s)));
		_mm512_mask_storeu_ps(dgate + i, m, dg);
		_mm512_mask_storeu_ps(dup + i, m, du);
	}
}

// vm_causal_softmax turns row[0..t] into probabilities and zeroes the rest
// of the n-long row: max, then exp(x - max) summed lane by lane (a fixed
// order), then a scale by 1/sum.
__attribute__((target("avx512f,fma")))
static void vm_causal_softmax(float *row, long t, long n) {
	long len = t + 1;
	__m512 mx = _mm512_set1_ps(-INFINITY);
	for (long i = 0; i < len; i += 16)
		mx = _mm512_mask_max_ps(mx, vm_tail(len, i), mx, _mm512_maskz_loadu_ps(vm_tail(len, i), row + i));
	__m512 vmax = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
	__m512 sum = _mm512_setzero_ps();
	for (long i = 0; i < len; i += 16) {
		__mmask16 m = vm_tail(len, i);
		__m512 e = _mm512_maskz_mov_ps(m, vm_exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, row + i), vmax)));
		sum = _mm512_add_ps(sum, e);
		_mm512_mask_storeu_ps(row + i, m, e);
	}
	__m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
	for (long i = 0; i < len; i += 16) {
		__mmask16 m = vm_tail(len, i);
		_mm512_mask_storeu_ps(row + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, row + i), inv));
	}
	for (long i = len; i < n; i++)
		row[i] = 0;
}

// kernel_bf16.h: products with bfloat16 operands and fp32 accumulation on
// CPUs with AVX512_BF16 (vdpbf16ps), included by sgemm_cgo_amd64.go's cgo
// preamble after kernel_x86.h.
//
// C (fp32) = alpha * A . op(W) + beta * C, where A is fp32 (activations,
// rounded to bf16 as it is packed) and W is a frozen weight held as NF4/FP4
// codes, bf16 or fp32, turned into bf16 as it is packed: NF4 tiles go
// straight to bf16, never through an fp32 copy. vdpbf16ps multiplies pairs
// of bf16 along k and adds both products into one fp32 lane, so the packed
// operands hold k in pairs: a packed A panel has, for each pair p, MR
// dwords (A[r][2p], A[r][2p+1]); a packed W panel has, for each pair, NR
// dwords (W'[2p][j], W'[2p+1][j]) for its NR columns j. An odd k is padded
// with a zero. The blocking and threading are sgemm's (driver.go).
//
// Rounding: fp32 to bf16 is round-to-nearest-even with denormals flushed to
// zero, as vcvtneps2bf16 does; oc_bf16 is the same in scalar code for the
// edges, so every path gives the same bits.

#include <stdint.h>

#define OC_MRB 12
#define OC_NRB 32
_Static_assert(OC_MRB == OC_MR512 && OC_NRB == OC_NR512, "the bf16 tile ends with oc_store512");

// oc_bf16_ok reports whether the CPU runs vdpbf16ps and the AVX-512 BW
// word permutes the packing uses.
static int oc_bf16_ok(void) {
	__builtin_cpu_init();
	return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
	       __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
}

// oc_bf16 rounds x to bfloat16 as vcvtneps2bf16 does.
static inline uint16_t oc_bf16(float x) {
	uint32_t b;
	memcpy(&b, &x, 4);
	if ((b & 0x7fffffffu) > 0x7f800000u)
		return (uint16_t)((b >> 16) | 0x40); // NaN stays a quiet NaN
	if ((b & 0x7f800000u) == 0)
		return (uint16_t)((b >> 16) & 0x8000); // zero or denormal: signed zero
	b += 0x7fffu + ((b >> 16) & 1);
	return (uint16_t)(b >> 16);
}

static inline uint32_t oc_pair(uint16_t lo, uint16_t hi) { return (uint32_t)lo | ((uint32_t)hi << 16); }

// oc_wsrc is a frozen weight W, rows x cols, row-major, in one of three
// forms. For 4-bit codes the scale of block b is absmax[b], or, with double
// quantization, nmap[ncodes[b]] * nabsmax[b / nbs] + noffset, computed in
// float32 as the Go side does.
enum { OC_W_Q4 = 0, OC_W_BF16 = 1, OC_W_F32 = 2 };

typedef struct {
	int kind;
	long rows, cols;
	const uint8_t *packed;  // Q4: two codes per byte, the first in the high nibble
	const float *absmax;    // Q4: one per block, or NULL when nested
	const uint8_t *ncodes;  // Q4 nested: 8-bit codes of the absmax values
	const float *nabsmax;   // Q4 nested: one per nbs blocks
	const float *nmap;      // Q4 nested: the 256-entry code map
	float noffset;          // Q4 nested: added after decoding
	int nbs;                // Q4 nested: block size of the nested codes
	int bs;                 // Q4: block size
	const float *values;    // Q4: the 16 code values
	const uint16_t *bf16;   // BF16: the bits
	const float *f32;       // F32: the values
} oc_wsrc;

static inline float oc_absmax(const oc_wsrc *w, long b) {
	if (w->absmax)
		return w->absmax[b];
	volatile float scaled = w->nmap[w->ncodes[b]] * w->nabsmax[b / w->nbs]; // rounded to float32 first, as in Go
	return scaled + w->noffset;
}

// oc_welem is W[r][c] in bf16 (the scalar path for edges).
static inline uint16_t oc_welem(const oc_wsrc *w, long r, long c) {
	long e = r * w->cols + c;
	switch (w->kind) {
	case OC_W_BF16:
		return w->bf16[e];
	case OC_W_F32:
		return oc_bf16(w->f32[e]);
	}
	uint8_t byte = w->packed[e >> 1];
	int code = (e & 1) ? (byte & 0x0f) : (byte >> 4);
	return oc_bf16(w->values[code] * oc_absmax(w, e / w->bs));
}

// oc_wrun32 writes W[r][c:c+32] as 32 bf16 words in element order and
// returns 1, or returns 0 when the run cannot take the vector path (a 4-bit
// run that starts on an odd element or crosses a block); the caller then
// goes element by element.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
static inline int oc_wrun32(const oc_wsrc *w, long r, long c, __m512i *out) {
	long e = r * w->cols + c;
	switch (w->kind) {
	case OC_W_BF16:
		*out = _mm512_loadu_si512((const void *)(w->bf16 + e));
		return 1;
	case OC_W_F32: {
		__m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(w->f32 + e + 16), _mm512_loadu_ps(w->f32 + e));
		*out = (__m512i)v;
		return 1;
	}
	}
	if ((e & 1) || e / w->bs != (e + 31) / w->bs)
		return 0;
	__m512 vals = _mm512_mul_ps(_mm512_loadu_ps(w->values), _mm512_set1_ps(oc_absmax(w, e / w->bs)));
	__m512i table = _mm512_castsi256_si512((__m256i)_mm512_cvtneps_pbh(vals));
	__m512i d = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(w->packed + (e >> 1))));
	__m512i nib = _mm512_set1_epi32(0x0f);
	__m512i hi = _mm512_and_si512(_mm512_srli_epi32(d, 4), nib);
	__m512i lo = _mm512_slli_epi32(_mm512_and_si512(d, nib), 16);
	*out = _mm512_permutexvar_epi16(_mm512_or_si512(hi, lo), table);
	return 1;
}

// oc_wrow32 is oc_wrun32 with the element-by-element fallback, for the
// columns [c, c+n) (n <= 32; the rest zero).
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
static inline __m512i oc_wrow32(const oc_wsrc *w, long r, long c, int n) {
	__m512i v;
	if (n == 32 && oc_wrun32(w, r, c, &v))
		return v;
	uint16_t t[32] __attribute__((aligned(64)));
	int i = 0;
	for (; i < n; i++)
		t[i] = oc_welem(w, r, c + i);
	for (; i < 32; i++)
		t[i] = 0;
	return _mm512_load_si512((const void *)t);
}

// oc_packw_t packs op(W) = W^T (B[k][j] = W[j][k]: the forward product
// X . W^T) for depth [k0, k0+kc) and columns [j0, j0+nc): each 32-column
// panel is two sets of 16 rows of W, decoded 32 values of k at a time into
// 16 dwords of pairs each and transposed with oc_tr16.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
static void oc_packw_t(const oc_wsrc *w, int k0, int kc, int j0, int nc, uint32_t *dst) {
	int kcp = (kc + 1) / 2;
	for (int jr = 0; jr < nc; jr += OC_NRB) {
		int nr = nc - jr < OC_NRB ? nc - jr : OC_NRB;
		uint32_t *d = dst + (long)jr * kcp;
		for (int h = 0; h < OC_NRB; h += 16) {
			int rows = nr - h;
			rows = rows < 0 ? 0 : rows > 16 ? 16 : rows;
			for (int p = 0; p < kc; p += 32) {
				int n = kc - p < 32 ? kc - p : 32;
				__m512 r[16], out[16];
				for (int i = 0; i < 16; i++)
					r[i] = i < rows ? (__m512)oc_wrow32(w, j0 + jr + h + i, k0 + p, n) : _mm512_setzero_ps();
				oc_tr16x16(r, out);
				int pairs = (n + 1) / 2;
				for (int q = 0; q < pairs; q++)
					_mm512_store_ps((float *)(d + (long)(p / 2 + q) * OC_NRB + h), out[q]);
			}
		}
	}
}

// oc_packw_n packs op(W) = W (B[k][j] = W[k][j]: the input-gradient product
// dY . W) for depth [k0, k0+kc) and columns [j0, j0+nc): each pair of rows
// of W is decoded 32 columns at a time and interleaved word by word.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
static void oc_packw_n(const oc_wsrc *w, int k0, int kc, int j0, int nc, uint32_t *dst) {
	int kcp = (kc + 1) / 2;
	const __m512i lo_idx = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
	                                        39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
	const __m512i hi_idx = _mm512_add_epi16(lo_idx, _mm512_set1_epi16(16));
	for (int jr = 0; jr < nc; jr += OC_NRB) {
		int nr = nc - jr < OC_NRB ? nc - jr : OC_NRB;
		uint32_t *d = dst + (long)jr * kcp;
		for (int p = 0; p < kcp; p++) {
			int r0 = k0 + 2 * p;
			__m512i v0 = oc_wrow32(w, r0, j0 + jr, nr);
			__m512i v1 = 2 * p + 1 < kc ? oc_wrow32(w, r0 + 1, j0 + jr, nr) : _mm512_setzero_si512();
			_mm512_store_si512((void *)(d + (long)p * OC_NRB), _mm512_permutex2var_epi16(v0, lo_idx, v1));
			_mm512_store_si512((void *)(d + (long)p * OC_NRB + 16), _mm512_permutex2var_epi16(v0, hi_idx, v1));
		}
	}
}

// oc_packa_bf16 packs rows [i0, i0+mc) and depth [k0, k0+kc) of A (fp32,
// row-major) into 12-row panels of bf16 pairs: 32 values of k of up to 16
// rows are rounded into 16 dwords each and transposed with oc_tr16.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
static void oc_packa_bf16(const float *a, long lda, int i0, int mc, int k0, int kc, uint32_t *dst) {
	int kcp = (kc + 1) / 2;
	__mmask16 m12 = (1u << OC_MRB) - 1;
	for (int ir = 0; ir < mc; ir += OC_MRB) {
		int mr = mc - ir < OC_MRB ? mc - ir : OC_MRB;
		const float *src = a + (long)(i0 + ir) * lda + k0;
		uint32_t *d = dst + (long)ir * kcp;
		int p = 0;
		for (; p + 32 <= kc; p += 32) {
			__m512 r[16], out[16];
			for (int i = 0; i < 16; i++)
				r[i] = i < mr ? (__m512)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + (long)i * lda + p + 16),
				                                            _mm512_loadu_ps(src + (long)i * lda + p))
				              : _mm512_setzero_ps();
			oc_tr16x16(r, out);
			for (int q = 0; q < 16; q++)
				_mm512_mask_storeu_ps((float *)(d + (long)(p / 2 + q) * OC_MRB), m12, out[q]);
		}
		for (; p < kc; p += 2) {
			uint32_t *dp = d + (long)(p / 2) * OC_MRB;
			int r = 0;
			for (; r < mr; r++) {
				const float *s = src + (long)r * lda + p;
				dp[r] = oc_pair(oc_bf16(s[0]), p + 1 < kc ? oc_bf16(s[1]) : 0);
			}
			for (; r < OC_MRB; r++)
				dp[r] = 0;
		}
	}
}

// oc_kernel_bf16: C[0:12, 0:32] = alpha * (Apanel . Bpanel) + beta * C over
// kcp pairs of k, beta == 0 meaning C is only written.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,fma")))
static void oc_kernel_bf16(int kcp, const uint32_t *restrict a, const uint32_t *restrict b,
                           float *c, long ldc, float alpha, float beta) {
	__m512 acc[OC_MRB][2];
#pragma GCC unroll 12
	for (int r = 0; r < OC_MRB; r++) {
		acc[r][0] = _mm512_setzero_ps();
		acc[r][1] = _mm512_setzero_ps();
	}
	for (int p = 0; p < kcp; p++) {
		__m512bh b0 = (__m512bh)_mm512_load_si512((const void *)b);
		__m512bh b1 = (__m512bh)_mm512_load_si512((const void *)(b + 16));
		_mm_prefetch((const char *)(a + 8 * OC_MRB), _MM_HINT_T0);
		oc_prefetch_c(c, ldc, p, kcp);
#pragma GCC unroll 12
		for (int r = 0; r < OC_MRB; r++) {
			__m512bh av = (__m512bh)_mm512_set1_epi32((int)a[r]);
			acc[r][0] = _mm512_dpbf16_ps(acc[r][0], av, b0);
			acc[r][1] = _mm512_dpbf16_ps(acc[r][1], av, b1);
		}
		a += OC_MRB;
		b += OC_NRB;
	}
	oc_store512(acc, c, ldc, alpha, beta);
}

// oc_macro_bf16 computes C[i0:i1, j0:j1] (+)= alpha * A[i0:i1, k0:k0+kc] .
// packedW, where packedW holds the panels of op(W)[k0:k0+kc, j0:j1]. It
// packs A in MC-row blocks into abuf (MC * kcp dwords, 64-byte aligned);
// edge tiles go through a scratch tile.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
static void oc_macro_bf16(const float *a, long lda, int i0, int i1, int k0, int kc,
                          const uint32_t *packedW, int j0, int j1,
                          float alpha, float beta, float *c, long ldc, uint32_t *abuf, int MC) {
	int kcp = (kc + 1) / 2;
	for (int ic = i0; ic < i1; ic += MC) {
		int mc = i1 - ic < MC ? i1 - ic : MC;
		oc_packa_bf16(a, lda, ic, mc, k0, kc, abuf);
		for (int jr = j0; jr < j1; jr += OC_NRB) {
			int nr = j1 - jr < OC_NRB ? j1 - jr : OC_NRB;
			const uint32_t *bp = packedW + (long)(jr - j0) * kcp;
			for (int ir = 0; ir < mc; ir += OC_MRB) {
				int mr = mc - ir < OC_MRB ? mc - ir : OC_MRB;
				const uint32_t *ap = abuf + (long)ir * kcp;
				float *cp = c + (long)(ic + ir) * ldc + jr;
				if (mr == OC_MRB && nr == OC_NRB) {
					oc_kernel_bf16(kcp, ap, bp, cp, ldc, alpha, beta);
					continue;
				}
				float t[OC_MRB * OC_NRB] __attribute__((aligned(64)));
				oc_kernel_bf16(kcp, ap, bp, t, OC_NRB, 1, 0);
				oc_store_edge(t, OC_NRB, cp, ldc, mr, nr, alpha, beta);
			}
		}
	}
}

// oc_packw dispatches to the transposed or plain W packer.
static void oc_packw(const oc_wsrc *w, int transW, int k0, int kc, int j0, int nc, uint32_t *dst) {
	if (transW)
		oc_packw_t(w, k0, kc, j0, nc, dst);
	else
		oc_packw_n(w, k0, kc, j0, nc, dst);
}

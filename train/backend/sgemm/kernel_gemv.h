// kernel_gemv.h: C = A . W^T for a few rows of A (m <= 4: the decode step of
// generation) with a frozen W read once, straight from how it is held (4-bit
// codes with their absmax, or bf16 bits), included by gemv_cgo_amd64.go's
// cgo preamble after kernel_x86.h and kernel_bf16.h (for oc_wsrc).
//
// A matrix-vector product does one multiply-add per weight it reads, so
// reading fewer bytes per weight is the gain: 0.5 instead of the 4 of an
// fp32 copy. Nothing is packed or dequantized into a buffer: per block the
// 16 code values are scaled by the block's absmax once (the same float32
// products quant.DequantizeRange makes), and each byte of codes turns into
// two weights through a register table lookup (vpermps), so the cost per
// weight is a few vector instructions on 16 at a time.
//
// The codes of a byte are elements 2j (high nibble) and 2j+1 (low nibble).
// Rather than interleave the two nibble vectors, the caller passes each row
// of A split into its even and odd elements (de-interleaved once per call):
// the high nibbles multiply the even elements, the low ones the odd ones.
// When a row of W starts on an odd element (an odd number of columns), the
// split starts one element later (parity 1).
//
// Each output is summed by one thread in a fixed order, so results repeat
// bit for bit whatever the thread count.

// oc_gemv_split locates the split rows of A: for row i and parity p the
// even elements start at de + ((i*2 + p)*2) * h and the odd ones h further.
typedef struct {
	const float *de; // de-interleaved rows of A
	long h;          // length of one half-row (padded)
} oc_gemv_split;

static inline const float *oc_even(const oc_gemv_split *s, int i, int p) { return s->de + (long)((i * 2 + p) * 2) * s->h; }
static inline const float *oc_odd(const oc_gemv_split *s, int i, int p) { return oc_even(s, i, p) + s->h; }

static inline int oc_code(const uint8_t *packed, long e) {
	uint8_t b = packed[e >> 1];
	return (e & 1) ? (b & 0x0f) : (b >> 4);
}

// oc_gemv_absmax is oc_absmax without its divisions (block sizes are
// powers of two: shifts), which would otherwise cost more than the block's
// 64 multiply-adds. The nested product is rounded to float32 before the
// offset is added, as the Go side does (the empty asm keeps the compiler
// from fusing the two into one multiply-add).
static inline float oc_gemv_absmax(const oc_wsrc *w, long b, int nshift) {
	if (w->absmax)
		return w->absmax[b];
	float scaled = w->nmap[w->ncodes[b]] * w->nabsmax[b >> nshift];
	__asm__("" : "+x"(scaled));
	return scaled + w->noffset;
}

static inline int oc_log2(long x) { return 63 - __builtin_clzl((unsigned long)x); }

// oc_gemv_q4_scalar adds the columns [c0, c1) of row r (all in one block
// whose scaled code values are tab) to acc[i], element by element.
static inline void oc_gemv_q4_scalar(const oc_wsrc *w, int m, const float *a, long lda, long r, long c0, long c1,
                                     const float *tab, float *acc) {
	long e0 = r * w->cols;
	for (long c = c0; c < c1; c++) {
		float v = tab[oc_code(w->packed, e0 + c)];
		for (int i = 0; i < m; i++)
			acc[i] += v * a[i * lda + c];
	}
}

// ---------------------------------------------------------------------------
// AVX-512: 64 weights (32 bytes of codes) per step on whole blocks, 32 on
// the rest.

// oc_gemv_q4_blocks512 is oc_gemv_q4_row512 for the common case of rows
// made of whole blocks of a multiple of 64 elements (every Llama-family
// shape at block size 64): no element-wise head or tail, and the branches
// per block reduced to the loop's.
__attribute__((target("avx512f"), always_inline))
static inline void oc_gemv_q4_blocks512(const oc_wsrc *w, const int m, const oc_gemv_split *s, long r, float *out) {
	const long cols = w->cols, bs = w->bs, e0 = r * cols;
	const __m512 vals = _mm512_loadu_ps(w->values);
	const __m512i nib = _mm512_set1_epi32(0x0f);
	const int nshift = w->absmax ? 0 : oc_log2(w->nbs);
	const uint8_t *src = w->packed + (e0 >> 1);
	__m512 acc[4][4];
	for (int i = 0; i < m; i++)
		for (int q = 0; q < 4; q++)
			acc[i][q] = _mm512_setzero_ps();
	// The scales of a run of blocks first, in a loop of their own: a
	// double-quantized absmax is two dependent loads and a multiply-add.
	float scale[256];
	long b = e0 / bs;
	for (long c = 0; c < cols;) {
		long nb = (cols - c) / bs < 256 ? (cols - c) / bs : 256;
		for (long k = 0; k < nb; k++)
			scale[k] = oc_gemv_absmax(w, b + k, nshift);
		for (long k = 0; k < nb; k++, b++) {
			__m512 tab = _mm512_mul_ps(vals, _mm512_set1_ps(scale[k]));
			for (long end = c + bs; c < end; c += 64, src += 32) {
				__m512i d0 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)src));
				__m512i d1 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(src + 16)));
				__m512 h0 = _mm512_permutexvar_ps(_mm512_srli_epi32(d0, 4), tab);
				__m512 l0 = _mm512_permutexvar_ps(_mm512_and_si512(d0, nib), tab);
				__m512 h1 = _mm512_permutexvar_ps(_mm512_srli_epi32(d1, 4), tab);
				__m512 l1 = _mm512_permutexvar_ps(_mm512_and_si512(d1, nib), tab);
				long j = c >> 1;
				for (int i = 0; i < m; i++) {
					const float *ev = oc_even(s, i, 0) + j, *od = oc_odd(s, i, 0) + j;
					acc[i][0] = _mm512_fmadd_ps(h0, _mm512_loadu_ps(ev), acc[i][0]);
					acc[i][1] = _mm512_fmadd_ps(l0, _mm512_loadu_ps(od), acc[i][1]);
					acc[i][2] = _mm512_fmadd_ps(h1, _mm512_loadu_ps(ev + 16), acc[i][2]);
					acc[i][3] = _mm512_fmadd_ps(l1, _mm512_loadu_ps(od + 16), acc[i][3]);
				}
			}
		}
	}
	for (int i = 0; i < m; i++) {
		__m512 t = _mm512_add_ps(_mm512_add_ps(acc[i][0], acc[i][1]), _mm512_add_ps(acc[i][2], acc[i][3]));
		out[i] = _mm512_reduce_add_ps(t);
	}
}

__attribute__((target("avx512f"), always_inline))
static inline void oc_gemv_q4_row512(const oc_wsrc *w, const int m, const float *a, long lda, const oc_gemv_split *s,
                                     long r, float *out) {
	if (w->cols % w->bs == 0 && w->bs % 64 == 0) {
		oc_gemv_q4_blocks512(w, m, s, r, out);
		return;
	}
	const long cols = w->cols, e0 = r * cols;
	const int p = (int)(e0 & 1);
	const __m512 vals = _mm512_loadu_ps(w->values);
	const __m512i nib = _mm512_set1_epi32(0x0f);
	__m512 acc[4][2];
	float sacc[4] = {0, 0, 0, 0};
	for (int i = 0; i < m; i++)
		acc[i][0] = acc[i][1] = _mm512_setzero_ps();
	const int bshift = oc_log2(w->bs), nshift = w->absmax ? 0 : oc_log2(w->nbs);
	for (long c = 0, b = e0 >> bshift; c < cols; b++) {
		long end = ((b + 1) << bshift) - e0;
		if (end > cols)
			end = cols;
		__m512 tab = _mm512_mul_ps(vals, _mm512_set1_ps(oc_gemv_absmax(w, b, nshift)));
		float stab[16]; // for the elements before and after the vector steps
		int head = (int)((e0 + c) & 1);
		if (head || ((end - c - head) & 31))
			_mm512_storeu_ps(stab, tab);
		if (head) { // a row that starts on a low nibble
			oc_gemv_q4_scalar(w, m, a, lda, r, c, c + 1, stab, sacc);
			c++;
		}
		// From here e0 + c is even: c - p indexes the split halves.
		for (; c + 32 <= end; c += 32) {
			__m512i d = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(w->packed + ((e0 + c) >> 1))));
			__m512 h = _mm512_permutexvar_ps(_mm512_srli_epi32(d, 4), tab);
			__m512 l = _mm512_permutexvar_ps(_mm512_and_si512(d, nib), tab);
			long j = (c - p) >> 1;
			for (int i = 0; i < m; i++) {
				acc[i][0] = _mm512_fmadd_ps(h, _mm512_loadu_ps(oc_even(s, i, p) + j), acc[i][0]);
				acc[i][1] = _mm512_fmadd_ps(l, _mm512_loadu_ps(oc_odd(s, i, p) + j), acc[i][1]);
			}
		}
		if (c < end) {
			oc_gemv_q4_scalar(w, m, a, lda, r, c, end, stab, sacc);
			c = end;
		}
	}
	for (int i = 0; i < m; i++)
		out[i] = _mm512_reduce_add_ps(_mm512_add_ps(acc[i][0], acc[i][1])) + sacc[i];
}

__attribute__((target("avx512f"), always_inline))
static inline void oc_gemv_bf16_row512(const oc_wsrc *w, const int m, const float *a, long lda, const oc_gemv_split *s,
                                       long r, float *out) {
	const long cols = w->cols;
	const uint16_t *src = w->bf16 + r * cols;
	__m512 acc[4][4];
	float sacc[4] = {0, 0, 0, 0};
	for (int i = 0; i < m; i++)
		for (int q = 0; q < 4; q++)
			acc[i][q] = _mm512_setzero_ps();
	long c = 0;
	for (; c + 64 <= cols; c += 64) {
		__m512 v[4];
		for (int q = 0; q < 4; q++)
			v[q] = _mm512_castsi512_ps(
			    _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(src + c + 16 * q))), 16));
		for (int i = 0; i < m; i++)
			for (int q = 0; q < 4; q++)
				acc[i][q] = _mm512_fmadd_ps(v[q], _mm512_loadu_ps(a + i * lda + c + 16 * q), acc[i][q]);
	}
	for (; c + 16 <= cols; c += 16) {
		__m512 v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(src + c))), 16));
		for (int i = 0; i < m; i++)
			acc[i][0] = _mm512_fmadd_ps(v, _mm512_loadu_ps(a + i * lda + c), acc[i][0]);
	}
	for (; c < cols; c++) {
		uint32_t bits = (uint32_t)src[c] << 16;
		float v;
		memcpy(&v, &bits, 4);
		for (int i = 0; i < m; i++)
			sacc[i] += v * a[i * lda + c];
	}
	for (int i = 0; i < m; i++) {
		__m512 t = _mm512_add_ps(_mm512_add_ps(acc[i][0], acc[i][1]), _mm512_add_ps(acc[i][2], acc[i][3]));
		out[i] = _mm512_reduce_add_ps(t) + sacc[i];
	}
}

// ---------------------------------------------------------------------------
// AVX2: 32 weights (16 bytes of codes) per step; the 16-entry table is two
// 8-entry halves, picked by bit 3 of the code.

__attribute__((target("avx2,fma"), always_inline))
static inline __m256 oc_lookup16(__m256 lo, __m256 hi, __m256i idx) {
	__m256 mask = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));
	return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx), mask);
}

__attribute__((target("avx2,fma"))) static inline float oc_hsum256(__m256 v) {
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

// oc_gemv_q4_blocks256 is oc_gemv_q4_blocks512 in AVX2.
__attribute__((target("avx2,fma"), always_inline))
static inline void oc_gemv_q4_blocks256(const oc_wsrc *w, const int m, const oc_gemv_split *s, long r, float *out) {
	const long cols = w->cols, bs = w->bs, e0 = r * cols;
	const __m256 vlo = _mm256_loadu_ps(w->values), vhi = _mm256_loadu_ps(w->values + 8);
	const __m256i nib = _mm256_set1_epi32(0x0f);
	const int nshift = w->absmax ? 0 : oc_log2(w->nbs);
	const uint8_t *src = w->packed + (e0 >> 1);
	__m256 acc[4][4];
	for (int i = 0; i < m; i++)
		for (int q = 0; q < 4; q++)
			acc[i][q] = _mm256_setzero_ps();
	float scale[256];
	long b = e0 / bs;
	for (long c = 0; c < cols;) {
		long nb = (cols - c) / bs < 256 ? (cols - c) / bs : 256;
		for (long k = 0; k < nb; k++)
			scale[k] = oc_gemv_absmax(w, b + k, nshift);
		for (long k = 0; k < nb; k++, b++) {
			__m256 am = _mm256_set1_ps(scale[k]);
			__m256 tlo = _mm256_mul_ps(vlo, am), thi = _mm256_mul_ps(vhi, am);
			for (long end = c + bs; c < end; c += 32, src += 16) {
				__m256i d0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)src));
				__m256i d1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(src + 8)));
				__m256 h0 = oc_lookup16(tlo, thi, _mm256_srli_epi32(d0, 4));
				__m256 l0 = oc_lookup16(tlo, thi, _mm256_and_si256(d0, nib));
				__m256 h1 = oc_lookup16(tlo, thi, _mm256_srli_epi32(d1, 4));
				__m256 l1 = oc_lookup16(tlo, thi, _mm256_and_si256(d1, nib));
				long j = c >> 1;
				for (int i = 0; i < m; i++) {
					const float *ev = oc_even(s, i, 0) + j, *od = oc_odd(s, i, 0) + j;
					acc[i][0] = _mm256_fmadd_ps(h0, _mm256_loadu_ps(ev), acc[i][0]);
					acc[i][1] = _mm256_fmadd_ps(l0, _mm256_loadu_ps(od), acc[i][1]);
					acc[i][2] = _mm256_fmadd_ps(h1, _mm256_loadu_ps(ev + 8), acc[i][2]);
					acc[i][3] = _mm256_fmadd_ps(l1, _mm256_loadu_ps(od + 8), acc[i][3]);
				}
			}
		}
	}
	for (int i = 0; i < m; i++) {
		__m256 t = _mm256_add_ps(_mm256_add_ps(acc[i][0], acc[i][1]), _mm256_add_ps(acc[i][2], acc[i][3]));
		out[i] = oc_hsum256(t);
	}
}

__attribute__((target("avx2,fma"), always_inline))
static inline void oc_gemv_q4_row256(const oc_wsrc *w, const int m, const float *a, long lda, const oc_gemv_split *s,
                                     long r, float *out) {
	if (w->cols % w->bs == 0 && w->bs % 64 == 0) {
		oc_gemv_q4_blocks256(w, m, s, r, out);
		return;
	}
	const long cols = w->cols, e0 = r * cols;
	const int p = (int)(e0 & 1);
	const __m256 vlo = _mm256_loadu_ps(w->values), vhi = _mm256_loadu_ps(w->values + 8);
	const __m256i nib = _mm256_set1_epi32(0x0f);
	__m256 acc[4][4];
	float sacc[4] = {0, 0, 0, 0};
	for (int i = 0; i < m; i++)
		for (int q = 0; q < 4; q++)
			acc[i][q] = _mm256_setzero_ps();
	const int bshift = oc_log2(w->bs), nshift = w->absmax ? 0 : oc_log2(w->nbs);
	for (long c = 0, b = e0 >> bshift; c < cols; b++) {
		long end = ((b + 1) << bshift) - e0;
		if (end > cols)
			end = cols;
		__m256 am = _mm256_set1_ps(oc_gemv_absmax(w, b, nshift));
		__m256 tlo = _mm256_mul_ps(vlo, am), thi = _mm256_mul_ps(vhi, am);
		float stab[16];
		int head = (int)((e0 + c) & 1);
		if (head || ((end - c - head) & 31)) {
			_mm256_storeu_ps(stab, tlo);
			_mm256_storeu_ps(stab + 8, thi);
		}
		if (head) {
			oc_gemv_q4_scalar(w, m, a, lda, r, c, c + 1, stab, sacc);
			c++;
		}
		for (; c + 32 <= end; c += 32) {
			const uint8_t *src = w->packed + ((e0 + c) >> 1);
			__m256i d0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)src));
			__m256i d1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(src + 8)));
			__m256 h0 = oc_lookup16(tlo, thi, _mm256_srli_epi32(d0, 4));
			__m256 l0 = oc_lookup16(tlo, thi, _mm256_and_si256(d0, nib));
			__m256 h1 = oc_lookup16(tlo, thi, _mm256_srli_epi32(d1, 4));
			__m256 l1 = oc_lookup16(tlo, thi, _mm256_and_si256(d1, nib));
			long j = (c - p) >> 1;
			for (int i = 0; i < m; i++) {
				const float *ev = oc_even(s, i, p) + j, *od = oc_odd(s, i, p) + j;
				acc[i][0] = _mm256_fmadd_ps(h0, _mm256_loadu_ps(ev), acc[i][0]);
				acc[i][1] = _mm256_fmadd_ps(l0, _mm256_loadu_ps(od), acc[i][1]);
				acc[i][2] = _mm256_fmadd_ps(h1, _mm256_loadu_ps(ev + 8), acc[i][2]);
				acc[i][3] = _mm256_fmadd_ps(l1, _mm256_loadu_ps(od + 8), acc[i][3]);
			}
		}
		if (c < end) {
			oc_gemv_q4_scalar(w, m, a, lda, r, c, end, stab, sacc);
			c = end;
		}
	}
	for (int i = 0; i < m; i++) {
		__m256 t = _mm256_add_ps(_mm256_add_ps(acc[i][0], acc[i][1]), _mm256_add_ps(acc[i][2], acc[i][3]));
		out[i] = oc_hsum256(t) + sacc[i];
	}
}

__attribute__((target("avx2,fma"), always_inline))
static inline void oc_gemv_bf16_row256(const oc_wsrc *w, const int m, const float *a, long lda, const oc_gemv_split *s,
                                       long r, float *out) {
	const long cols = w->cols;
	const uint16_t *src = w->bf16 + r * cols;
	__m256 acc[4][4];
	float sacc[4] = {0, 0, 0, 0};
	for (int i = 0; i < m; i++)
		for (int q = 0; q < 4; q++)
			acc[i][q] = _mm256_setzero_ps();
	long c = 0;
	for (; c + 32 <= cols; c += 32) {
		__m256 v[4];
		for (int q = 0; q < 4; q++)
			v[q] = _mm256_castsi256_ps(
			    _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + c + 8 * q))), 16));
		for (int i = 0; i < m; i++)
			for (int q = 0; q < 4; q++)
				acc[i][q] = _mm256_fmadd_ps(v[q], _mm256_loadu_ps(a + i * lda + c + 8 * q), acc[i][q]);
	}
	for (; c < cols; c++) {
		uint32_t bits = (uint32_t)src[c] << 16;
		float v;
		memcpy(&v, &bits, 4);
		for (int i = 0; i < m; i++)
			sacc[i] += v * a[i * lda + c];
	}
	for (int i = 0; i < m; i++) {
		__m256 t = _mm256_add_ps(_mm256_add_ps(acc[i][0], acc[i][1]), _mm256_add_ps(acc[i][2], acc[i][3]));
		out[i] = oc_hsum256(t) + sacc[i];
	}
}

// ---------------------------------------------------------------------------
// Drivers: rows [r0, r1) of W, the row loop instantiated per m so the loops
// over the rows of A unroll.

#define OC_GEMV_ROWS(ISA, ROW)                                                                                 \
	__attribute__((target(ISA))) static void ROW##s(const oc_wsrc *w, int m, const float *a, long lda,          \
	                                                const oc_gemv_split *s, long r0, long r1, float *c, long ldc) { \
		float out[4];                                                                                       \
		for (long r = r0; r < r1; r++) {                                                                    \
			switch (m) {                                                                                    \
			case 1: ROW(w, 1, a, lda, s, r, out); break;                                                   \
			case 2: ROW(w, 2, a, lda, s, r, out); break;                                                   \
			case 3: ROW(w, 3, a, lda, s, r, out); break;                                                   \
			default: ROW(w, 4, a, lda, s, r, out); break;                                                  \
			}                                                                                               \
			for (int i = 0; i < m; i++)                                                                     \
				c[i * ldc + r] = out[i];                                                                    \
		}                                                                                                   \
	}

OC_GEMV_ROWS("avx512f", oc_gemv_q4_row512)
OC_GEMV_ROWS("avx512f", oc_gemv_bf16_row512)
OC_GEMV_ROWS("avx2,fma", oc_gemv_q4_row256)
OC_GEMV_ROWS("avx2,fma", oc_gemv_bf16_row256)

// oc_gemv computes rows [r0, r1) of C^T = W . A^T with the kernels of isa.
static void oc_gemv(int isa, const oc_wsrc *w, int m, const float *a, long lda, const float *de, long h, long r0,
                    long r1, float *c, long ldc) {
	oc_gemv_split s = {de, h};
	if (w->kind == OC_W_Q4) {
		if (isa == OC_ISA_AVX512)
			oc_gemv_q4_row512s(w, m, a, lda, &s, r0, r1, c, ldc);
		else
			oc_gemv_q4_row256s(w, m, a, lda, &s, r0, r1, c, ldc);
	} else {
		if (isa == OC_ISA_AVX512)
			oc_gemv_bf16_row512s(w, m, a, lda, &s, r0, r1, c, ldc);
		else
			oc_gemv_bf16_row256s(w, m, a, lda, &s, r0, r1, c, ldc);
	}
}

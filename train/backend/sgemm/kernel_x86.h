// kernel_x86.h: the x86-64 single-precision GEMM kernels, included by
// sgemm_cgo_amd64.go's cgo preamble (a header rather than a .c file so that
// CGO_ENABLED=0 builds of the package still compile, using the Go kernels).
//
// The structure is GotoBLAS/BLIS: C (m x n) is cut into NC-wide column
// blocks and KC-deep slices of k; for each slice the KC x NC block of op(B)
// is packed into NR-wide column panels (shared by the threads, lives in
// L2/L3), then each thread packs MC x KC blocks of op(A) into MR-tall row
// panels (lives in L2) and runs the register-blocked MR x NR micro-kernel
// over every (row panel, column panel) pair. The B micro-panel (KC x NR)
// stays in L1 while the A panels stream past it.
//
// Each ISA's functions carry their own target attribute, so the binary runs
// on any x86-64 CPU and oc_isa() picks the widest one the CPU and OS allow.
// Every element of C is summed in the same order whatever the thread split
// (threads split at panel boundaries, never along k), so results repeat
// bit for bit.

#include <immintrin.h>
#include <math.h>
#include <stddef.h>
#include <string.h>

enum { OC_ISA_NONE = 0, OC_ISA_AVX2 = 1, OC_ISA_AVX512 = 2 };

// Register tiles: AVX-512 keeps a 12 x 32 tile of C in 24 zmm registers;
// AVX2 keeps 6 x 16 in 12 ymm registers.
#define OC_MR512 12
#define OC_NR512 32
#define OC_MR256 6
#define OC_NR256 16

// oc_isa reports the widest kernel this CPU and OS support.
static int oc_isa(void) {
	__builtin_cpu_init();
	if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma"))
		return OC_ISA_AVX512;
	if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
		return OC_ISA_AVX2;
	return OC_ISA_NONE;
}

static int oc_mr(int isa) { return isa == OC_ISA_AVX512 ? OC_MR512 : OC_MR256; }
static int oc_nr(int isa) { return isa == OC_ISA_AVX512 ? OC_NR512 : OC_NR256; }

// ---------------------------------------------------------------------------
// Packing. Panels are zero-padded to a whole MR or NR so the micro-kernel
// never branches on the edge; the edge tile is written through a scratch tile.

// oc_tr16x16 transposes 16 vectors of 16 32-bit lanes: out[q] holds lane q
// of every r[i]. oc_tr16 loads rows x 16 floats (rows <= 16, the rest zero)
// from src with stride lds and transposes them.
// Packing uses it where a panel runs across the source's rows (A not
// transposed, B transposed), so those gathers become whole-vector moves.
__attribute__((target("avx512f")))
static inline void oc_tr16x16(__m512 r[16], __m512 out[16]) {
	__m512 t[16];
	for (int i = 0; i < 16; i += 2) {
		t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
		t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
	}
	for (int i = 0; i < 16; i += 4) {
		r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
		r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
		r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
		r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
	}
	for (int h = 0; h < 16; h += 8) {
		for (int i = 0; i < 4; i++) {
			t[h + i] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0x88);
			t[h + i + 4] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0xdd);
		}
	}
	for (int i = 0; i < 8; i++) {
		out[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
		out[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
	}
}

__attribute__((target("avx512f")))
static inline void oc_tr16(const float *src, long lds, int rows, __m512 out[16]) {
	__m512 r[16];
	for (int i = 0; i < 16; i++)
		r[i] = i < rows ? _mm512_loadu_ps(src + i * lds) : _mm512_setzero_ps();
	oc_tr16x16(r, out);
}

// oc_pack_a512 is oc_pack_a for the AVX-512 tile with A not transposed:
// each 12-row panel is moved 16 values of k at a time through oc_tr16.
__attribute__((target("avx512f")))
static void oc_pack_a512(const float *a, long lda, int i0, int mc, int k0, int kc, float *dst) {
	__mmask16 m12 = (1u << OC_MR512) - 1;
	for (int ir = 0; ir < mc; ir += OC_MR512) {
		int mr = mc - ir < OC_MR512 ? mc - ir : OC_MR512;
		const float *src = a + (long)(i0 + ir) * lda + k0;
		float *d = dst + (long)ir * kc;
		int p = 0;
		for (; p + 16 <= kc; p += 16) {
			__m512 out[16];
			oc_tr16(src + p, lda, mr, out);
			for (int q = 0; q < 16; q++)
				_mm512_mask_storeu_ps(d + (long)(p + q) * OC_MR512, m12, out[q]);
		}
		for (; p < kc; p++) {
			float *dp = d + (long)p * OC_MR512;
			int r = 0;
			for (; r < mr; r++)
				dp[r] = src[(long)r * lda + p];
			for (; r < OC_MR512; r++)
				dp[r] = 0;
		}
	}
}

// oc_pack_bt512 is oc_pack_b for the AVX-512 tile with B transposed: each
// 32-column panel is two 16-row blocks of b moved through oc_tr16.
__attribute__((target("avx512f")))
static void oc_pack_bt512(const float *b, long ldb, int k0, int kc, int j0, int nc, float *dst) {
	for (int jr = 0; jr < nc; jr += OC_NR512) {
		int nr = nc - jr < OC_NR512 ? nc - jr : OC_NR512;
		float *d = dst + (long)jr * kc;
		for (int h = 0; h < OC_NR512; h += 16) {
			int rows = nr - h;
			rows = rows < 0 ? 0 : rows > 16 ? 16 : rows;
			const float *src = b + (long)(j0 + jr + h) * ldb + k0;
			int p = 0;
			for (; p + 16 <= kc; p += 16) {
				__m512 out[16];
				oc_tr16(src + p, ldb, rows, out);
				for (int q = 0; q < 16; q++)
					_mm512_store_ps(d + (long)(p + q) * OC_NR512 + h, out[q]);
			}
			for (; p < kc; p++) {
				float *dp = d + (long)p * OC_NR512 + h;
				int c = 0;
				for (; c < rows; c++)
					dp[c] = src[(long)c * ldb + p];
				for (; c < 16; c++)
					dp[c] = 0;
			}
		}
	}
}

// oc_pack_a packs rows [i0, i0+mc) and depth [k0, k0+kc) of op(A) into
// MR-tall panels: panel r holds, for each p, the MR values A(i0+r*MR.., k0+p).
// oc_pack_at512 is oc_pack_a for the AVX-512 tile with A transposed: each
// p of a panel is a contiguous run of 12 values, moved with one masked
// load and store (a memcpy call per 48 bytes cost more than the copy).
__attribute__((target("avx512f")))
static void oc_pack_at512(const float *a, long lda, int i0, int mc, int k0, int kc, float *dst) {
	__mmask16 m12 = (1u << OC_MR512) - 1;
	for (int ir = 0; ir < mc; ir += OC_MR512) {
		int mr = mc - ir < OC_MR512 ? mc - ir : OC_MR512;
		__mmask16 m = (__mmask16)((1u << mr) - 1);
		float *d = dst + (long)ir * kc;
		const float *s = a + (long)k0 * lda + i0 + ir;
		for (int p = 0; p < kc; p++)
			_mm512_mask_storeu_ps(d + (long)p * OC_MR512, m12, _mm512_maskz_loadu_ps(m, s + (long)p * lda));
	}
}

static void oc_pack_a(int mr_tile, int trans, const float *a, long lda,
                      int i0, int mc, int k0, int kc, float *dst) {
	if (mr_tile == OC_MR512) {
		if (trans)
			oc_pack_at512(a, lda, i0, mc, k0, kc, dst);
		else
			oc_pack_a512(a, lda, i0, mc, k0, kc, dst);
		return;
	}
	for (int ir = 0; ir < mc; ir += mr_tile) {
		int mr = mc - ir < mr_tile ? mc - ir : mr_tile;
		float *d = dst + (long)ir * kc;
		if (!trans) {
			// A(i, p) = a[i*lda + p]: read mr rows in step.
			const float *rows[OC_MR512];
			for (int r = 0; r < mr; r++)
				rows[r] = a + (long)(i0 + ir + r) * lda + k0;
			for (int p = 0; p < kc; p++) {
				int r = 0;
				for (; r < mr; r++)
					d[r] = rows[r][p];
				for (; r < mr_tile; r++)
					d[r] = 0;
				d += mr_tile;
			}
		} else {
			// A(i, p) = a[p*lda + i]: each p is a contiguous run of mr values.
			for (int p = 0; p < kc; p++) {
				const float *s = a + (long)(k0 + p) * lda + i0 + ir;
				memcpy(d, s, (size_t)mr * sizeof(float));
				for (int r = mr; r < mr_tile; r++)
					d[r] = 0;
				d += mr_tile;
			}
		}
	}
}

// oc_pack_b packs depth [k0, k0+kc) and columns [j0, j0+nc) of op(B) into
// NR-wide panels: panel c holds, for each p, the NR values B(k0+p, j0+c*NR..).
// oc_pack_bn512 is oc_pack_b for the AVX-512 tile with B not transposed:
// each p of a panel is a run of up to 32 values, two masked loads and
// stores (a memcpy call per 128 bytes cost more than the copy).
__attribute__((target("avx512f")))
static void oc_pack_bn512(const float *b, long ldb, int k0, int kc, int j0, int nc, float *dst) {
	for (int jr = 0; jr < nc; jr += OC_NR512) {
		int nr = nc - jr < OC_NR512 ? nc - jr : OC_NR512;
		__mmask16 m0 = nr >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << nr) - 1);
		__mmask16 m1 = nr >= 32 ? (__mmask16)0xffff : nr > 16 ? (__mmask16)((1u << (nr - 16)) - 1) : 0;
		float *d = dst + (long)jr * kc;
		const float *s = b + (long)k0 * ldb + j0 + jr;
		for (int p = 0; p < kc; p++) {
			_mm512_store_ps(d + (long)p * OC_NR512, _mm512_maskz_loadu_ps(m0, s + (long)p * ldb));
			_mm512_store_ps(d + (long)p * OC_NR512 + 16, _mm512_maskz_loadu_ps(m1, s + (long)p * ldb + 16));
		}
	}
}

static void oc_pack_b(int nr_tile, int trans, const float *b, long ldb,
                      int k0, int kc, int j0, int nc, float *dst) {
	if (nr_tile == OC_NR512) {
		if (trans)
			oc_pack_bt512(b, ldb, k0, kc, j0, nc, dst);
		else
			oc_pack_bn512(b, ldb, k0, kc, j0, nc, dst);
		return;
	}
	for (int jr = 0; jr < nc; jr += nr_tile) {
		int nr = nc - jr < nr_tile ? nc - jr : nr_tile;
		float *d = dst + (long)jr * kc;
		if (!trans) {
			// B(p, j) = b[p*ldb + j]: each p is a contiguous run.
			for (int p = 0; p < kc; p++) {
				const float *s = b + (long)(k0 + p) * ldb + j0 + jr;
				memcpy(d, s, (size_t)nr * sizeof(float));
				for (int c = nr; c < nr_tile; c++)
					d[c] = 0;
				d += nr_tile;
			}
		} else {
			// B(p, j) = b[j*ldb + p]: read nr rows of b in step, in blocks
			// of 8 along p so the reads stay in a few cache lines.
			if (nr < nr_tile)
				memset(d, 0, (size_t)kc * nr_tile * sizeof(float));
			for (int c = 0; c < nr; c++) {
				const float *s = b + (long)(j0 + jr + c) * ldb + k0;
				float *dc = d + c;
				for (int p = 0; p < kc; p++)
					dc[(long)p * nr_tile] = s[p];
			}
		}
	}
}

// ---------------------------------------------------------------------------
// Micro-kernels: C[0:MR, 0:NR] = alpha * (Apanel . Bpanel) + beta * C, with
// beta == 0 meaning C is only written (a NaN already there cannot leak).

// oc_prefetch_c fetches the 24 cache lines of a 12 x 32 tile of C while
// the k loop runs, one every other step of k: this tile's in the last 48
// steps (so they are in L1 when the tile is stored, not evicted by the A
// and B panels streaming past), and the next tile down's (12 rows on, the
// one the caller does next) into L2 in the first 48. Issuing all 24 at the
// start of the loop instead stalled the loop's own loads behind the misses:
// on a Zen 5 core that cost a third of the 1024^3 product's speed. A
// prefetch past the end of C does not fault.
static inline __attribute__((always_inline)) void oc_prefetch_c(const float *c, long ldc, int p, int kc) {
	if (p & 1)
		return;
	if (p >= kc - 48) {
		int q = (p - (kc - 48)) >> 1;
		_mm_prefetch((const char *)(c + (q >> 1) * ldc + (q & 1) * 16), _MM_HINT_T0);
	} else if (p < 48) {
		int q = p >> 1;
		_mm_prefetch((const char *)(c + (12 + (q >> 1)) * ldc + (q & 1) * 16), _MM_HINT_T1);
	}
}

// oc_store512 writes a 12 x 32 tile of accumulators: C = alpha*acc +
// beta*C, with beta == 0 meaning C is only written (a NaN already there
// cannot leak). The bf16 kernel ends the same way.
__attribute__((target("avx512f,fma")))
static inline void oc_store512(__m512 acc[OC_MR512][2], float *c, long ldc, float alpha, float beta) {
	__m512 va = _mm512_set1_ps(alpha);
	if (beta == 0) {
#pragma GCC unroll 12
		for (int r = 0; r < OC_MR512; r++) {
			_mm512_storeu_ps(c + r * ldc, _mm512_mul_ps(va, acc[r][0]));
			_mm512_storeu_ps(c + r * ldc + 16, _mm512_mul_ps(va, acc[r][1]));
		}
		return;
	}
	__m512 vb = _mm512_set1_ps(beta);
#pragma GCC unroll 12
	for (int r = 0; r < OC_MR512; r++) {
		float *cr = c + r * ldc;
		_mm512_storeu_ps(cr, _mm512_fmadd_ps(vb, _mm512_loadu_ps(cr), _mm512_mul_ps(va, acc[r][0])));
		_mm512_storeu_ps(cr + 16, _mm512_fmadd_ps(vb, _mm512_loadu_ps(cr + 16), _mm512_mul_ps(va, acc[r][1])));
	}
}

// oc_store_edge copies the mr x nr corner of a scratch tile t (row stride
// NR) into C with the same arithmetic as the full-tile stores.
static inline void oc_store_edge(const float *t, int NR, float *c, long ldc, int mr, int nr, float alpha, float beta) {
	for (int r = 0; r < mr; r++) {
		float *cr = c + r * ldc;
		const float *tr = t + r * NR;
		if (beta == 0) {
			for (int j = 0; j < nr; j++)
				cr[j] = alpha * tr[j];
		} else {
			for (int j = 0; j < nr; j++)
				cr[j] = fmaf(beta, cr[j], alpha * tr[j]);
		}
	}
}

__attribute__((target("avx512f,fma")))
static void oc_kernel512(int kc, const float *restrict a, const float *restrict b,
                         float *c, long ldc, float alpha, float beta) {
	__m512 acc[OC_MR512][2];
#pragma GCC unroll 12
	for (int r = 0; r < OC_MR512; r++) {
		acc[r][0] = _mm512_setzero_ps();
		acc[r][1] = _mm512_setzero_ps();
	}
	for (int p = 0; p < kc; p++) {
		__m512 b0 = _mm512_load_ps(b);
		__m512 b1 = _mm512_load_ps(b + 16);
		_mm_prefetch((const char *)(a + 8 * OC_MR512), _MM_HINT_T0);
		oc_prefetch_c(c, ldc, p, kc);
#pragma GCC unroll 12
		for (int r = 0; r < OC_MR512; r++) {
			__m512 av = _mm512_set1_ps(a[r]);
			acc[r][0] = _mm512_fmadd_ps(av, b0, acc[r][0]);
			acc[r][1] = _mm512_fmadd_ps(av, b1, acc[r][1]);
		}
		a += OC_MR512;
		b += OC_NR512;
	}
	oc_store512(acc, c, ldc, alpha, beta);
}

__attribute__((target("avx2,fma")))
static void oc_kernel256(int kc, const float *restrict a, const float *restrict b,
                         float *c, long ldc, float alpha, float beta) {
	__m256 acc[OC_MR256][2];
#pragma GCC unroll 6
	for (int r = 0; r < OC_MR256; r++) {
		acc[r][0] = _mm256_setzero_ps();
		acc[r][1] = _mm256_setzero_ps();
	}
	for (int p = 0; p < kc; p++) {
		__m256 b0 = _mm256_load_ps(b);
		__m256 b1 = _mm256_load_ps(b + 8);
#pragma GCC unroll 6
		for (int r = 0; r < OC_MR256; r++) {
			__m256 av = _mm256_broadcast_ss(a + r);
			acc[r][0] = _mm256_fmadd_ps(av, b0, acc[r][0]);
			acc[r][1] = _mm256_fmadd_ps(av, b1, acc[r][1]);
		}
		a += OC_MR256;
		b += OC_NR256;
	}
	__m256 va = _mm256_set1_ps(alpha);
	if (beta == 0) {
#pragma GCC unroll 6
		for (int r = 0; r < OC_MR256; r++) {
			_mm256_storeu_ps(c + r * ldc, _mm256_mul_ps(va, acc[r][0]));
			_mm256_storeu_ps(c + r * ldc + 8, _mm256_mul_ps(va, acc[r][1]));
		}
	} else {
		__m256 vb = _mm256_set1_ps(beta);
#pragma GCC unroll 6
		for (int r = 0; r < OC_MR256; r++) {
			float *cr = c + r * ldc;
			_mm256_storeu_ps(cr, _mm256_fmadd_ps(vb, _mm256_loadu_ps(cr), _mm256_mul_ps(va, acc[r][0])));
			_mm256_storeu_ps(cr + 8, _mm256_fmadd_ps(vb, _mm256_loadu_ps(cr + 8), _mm256_mul_ps(va, acc[r][1])));
		}
	}
}

// oc_kernel runs one tile; an edge tile (mr < MR or nr < NR) goes through a
// scratch tile so the kernel itself never reads or writes outside C.
// oc_edge512 is oc_kernel512 for an edge tile (mr <= 12 rows, nr <= 32
// columns): it computes the tile's rows (the packed panels are zero-padded)
// with one zmm of accumulators per row when nr <= 16 (a LoRA product's
// rank-16 side wastes no multiply-adds), two otherwise, and stores only the
// tile's part of C through masks. Each element's arithmetic is the full
// tile's, so results do not depend on where tiles fall.
__attribute__((target("avx512f,fma")))
static void oc_edge512(int kc, const float *restrict a, const float *restrict b,
                       float *c, long ldc, int mr, int nr, float alpha, float beta) {
	__mmask16 m0 = nr >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << nr) - 1);
	__mmask16 m1 = nr >= 32 ? (__mmask16)0xffff : nr > 16 ? (__mmask16)((1u << (nr - 16)) - 1) : 0;
	__m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
	if (nr <= 16) {
		__m512 acc[OC_MR512];
#pragma GCC unroll 12
		for (int r = 0; r < OC_MR512; r++)
			acc[r] = _mm512_setzero_ps();
		for (int p = 0; p < kc; p++) {
			__m512 b0 = _mm512_load_ps(b);
#pragma GCC unroll 12
			for (int r = 0; r < OC_MR512; r++)
				acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(a[r]), b0, acc[r]);
			a += OC_MR512;
			b += OC_NR512;
		}
		for (int r = 0; r < mr; r++) {
			__m512 v = _mm512_mul_ps(va, acc[r]);
			if (beta != 0)
				v = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m0, c + r * ldc), v);
			_mm512_mask_storeu_ps(c + r * ldc, m0, v);
		}
		return;
	}
	__m512 acc[OC_MR512][2];
#pragma GCC unroll 12
	for (int r = 0; r < OC_MR512; r++) {
		acc[r][0] = _mm512_setzero_ps();
		acc[r][1] = _mm512_setzero_ps();
	}
	for (int p = 0; p < kc; p++) {
		__m512 b0 = _mm512_load_ps(b);
		__m512 b1 = _mm512_load_ps(b + 16);
#pragma GCC unroll 12
		for (int r = 0; r < OC_MR512; r++) {
			__m512 av = _mm512_set1_ps(a[r]);
			acc[r][0] = _mm512_fmadd_ps(av, b0, acc[r][0]);
			acc[r][1] = _mm512_fmadd_ps(av, b1, acc[r][1]);
		}
		a += OC_MR512;
		b += OC_NR512;
	}
	for (int r = 0; r < mr; r++) {
		__m512 v0 = _mm512_mul_ps(va, acc[r][0]), v1 = _mm512_mul_ps(va, acc[r][1]);
		if (beta != 0) {
			v0 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m0, c + r * ldc), v0);
			v1 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m1, c + r * ldc + 16), v1);
		}
		_mm512_mask_storeu_ps(c + r * ldc, m0, v0);
		_mm512_mask_storeu_ps(c + r * ldc + 16, m1, v1);
	}
}

static void oc_kernel(int isa, int kc, const float *a, const float *b, float *c, long ldc,
                      int mr, int nr, float alpha, float beta) {
	int MR = oc_mr(isa), NR = oc_nr(isa);
	if (mr == MR && nr == NR) {
		if (isa == OC_ISA_AVX512)
			oc_kernel512(kc, a, b, c, ldc, alpha, beta);
		else
			oc_kernel256(kc, a, b, c, ldc, alpha, beta);
		return;
	}
	if (isa == OC_ISA_AVX512) {
		oc_edge512(kc, a, b, c, ldc, mr, nr, alpha, beta);
		return;
	}
	float t[OC_MR512 * OC_NR512] __attribute__((aligned(64)));
	if (isa == OC_ISA_AVX512)
		oc_kernel512(kc, a, b, t, NR, 1, 0);
	else
		oc_kernel256(kc, a, b, t, NR, 1, 0);
	oc_store_edge(t, NR, c, ldc, mr, nr, alpha, beta);
}

// ---------------------------------------------------------------------------
// Drivers.

// oc_macro computes C[i0:i1, j0:j1] (+)= alpha * op(A)[i0:i1, k0:k0+kc] .
// packedB, where packedB holds the panels of op(B)[k0:k0+kc, j0:j1] (j0 a
// multiple of NR from the start of the packed block). It packs A in MC-row
// blocks into abuf (MC*kc floats, 64-byte aligned).
static void oc_macro(int isa, int transA, const float *a, long lda,
                     int i0, int i1, int k0, int kc,
                     const float *packedB, int j0, int j1,
                     float alpha, float beta, float *c, long ldc,
                     float *abuf, int MC) {
	int MR = oc_mr(isa), NR = oc_nr(isa);
	for (int ic = i0; ic < i1; ic += MC) {
		int mc = i1 - ic < MC ? i1 - ic : MC;
		oc_pack_a(MR, transA, a, lda, ic, mc, k0, kc, abuf);
		for (int jr = j0; jr < j1; jr += NR) {
			int nr = j1 - jr < NR ? j1 - jr : NR;
			const float *bp = packedB + (long)(jr - j0) * kc;
			for (int ir = 0; ir < mc; ir += MR) {
				int mr = mc - ir < MR ? mc - ir : MR;
				oc_kernel(isa, kc, abuf + (long)ir * kc, bp,
				          c + (long)(ic + ir) * ldc + jr, ldc, mr, nr, alpha, beta);
			}
		}
	}
}

// oc_sgemm_serial is the whole product on one thread in one call, so small
// matrices pay for a single cgo crossing. bbuf holds KC*roundup(NC, NR)
// floats and abuf MC*KC floats, both 64-byte aligned.
static void oc_sgemm_serial(int isa, int transA, int transB, int m, int n, int k,
                            float alpha, const float *a, long lda, const float *b, long ldb,
                            float beta, float *c, long ldc,
                            float *abuf, float *bbuf, int MC, int KC, int NC) {
	int NR = oc_nr(isa);
	for (int jc = 0; jc < n; jc += NC) {
		int nc = n - jc < NC ? n - jc : NC;
		for (int pc = 0; pc < k; pc += KC) {
			int kc = k - pc < KC ? k - pc : KC;
			oc_pack_b(NR, transB, b, ldb, pc, kc, jc, nc, bbuf);
			oc_macro(isa, transA, a, lda, 0, m, pc, kc, bbuf, jc, jc + nc,
			         alpha, pc == 0 ? beta : 1.0f, c, ldc, abuf, MC);
		}
	}
}

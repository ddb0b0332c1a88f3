package backend

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/opencluster/opencluster/quant"
)

func randF32(rng *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(rng.NormFloat64())
	}
	return v
}

func up(be Backend, v []float32) Buf {
	b := be.Alloc(len(v))
	be.Upload(b, v)
	return b
}

func closeTo(t *testing.T, what string, got, want []float32, tol float64) {
	t.Helper()
	for i := range want {
		if math.Abs(float64(got[i]-want[i])) > tol*(1+math.Abs(float64(want[i]))) {
			t.Fatalf("%s[%d] = %v, reference %v", what, i, got[i], want[i])
		}
	}
}

// TestCPUMatchesReference runs the CPU backend's parallel ops (3 workers, so
// partitions are uneven) against the single-threaded reference kernels.
func TestCPUMatchesReference(t *testing.T) {
	be := NewCPU(3)
	rng := rand.New(rand.NewPCG(1, 1))
	const B, T, H, KVH, hd, OC = 2, 7, 4, 2, 8, 9
	N, C, KC := B*T, H*hd, KVH*hd

	x, w, dy := randF32(rng, N*C), randF32(rng, C), randF32(rng, N*C)
	// RMSNorm
	out, rs := make([]float32, N*C), make([]float32, N)
	RMSNormForward(out, rs, x, w, N, C, 1e-5)
	dx, dw := make([]float32, N*C), make([]float32, C)
	RMSNormBackward(dx, dw, dy, x, w, rs, N, C)
	bo, br, bdx, bdw := be.Alloc(N*C), be.Alloc(N), be.Alloc(N*C), be.Alloc(C)
	bx, bw, bdy := up(be, x), up(be, w), up(be, dy)
	be.RMSNormForward(bo, br, bx, bw, N, C, 1e-5)
	be.RMSNormBackward(bdx, bdw, bdy, bx, bw, br, N, C)
	closeTo(t, "rmsnorm out", HostSlice(bo), out, 0)
	closeTo(t, "rmsnorm dx", HostSlice(bdx), dx, 0)
	closeTo(t, "rmsnorm dw", HostSlice(bdw), dw, 1e-5)

	// matmul through sgemm
	wm := randF32(rng, OC*C)
	mo := make([]float32, N*OC)
	MatmulForward(mo, x, wm, N, C, OC, 1, 0)
	bmo := be.Alloc(N * OC)
	be.MatmulForward(bmo, bx, up(be, wm), N, C, OC, 1, 0)
	closeTo(t, "matmul", HostSlice(bmo), mo, 1e-5)

	// attention
	q, k, v := randF32(rng, N*C), randF32(rng, N*KC), randF32(rng, N*KC)
	ao, att := make([]float32, N*C), make([]float32, B*H*T*T)
	AttentionForward(ao, att, q, k, v, B, T, H, KVH, hd, 0, B*H)
	dq, dk, dv := make([]float32, N*C), make([]float32, N*KC), make([]float32, N*KC)
	AttentionBackward(dq, dk, dv, make([]float32, T), dy, att, q, k, v, B, T, H, KVH, hd, 0, B*KVH)
	bao, batt := be.Alloc(N*C), be.Alloc(B*H*T*T)
	bq, bk, bv := up(be, q), up(be, k), up(be, v)
	be.AttentionForward(bao, batt, bq, bk, bv, B, T, H, KVH, hd)
	bdq, bdk, bdv := be.Alloc(N*C), be.Alloc(N*KC), be.Alloc(N*KC)
	be.AttentionBackward(bdq, bdk, bdv, bdy, batt, bq, bk, bv, B, T, H, KVH, hd)
	// The backend runs attention as sgemm products (another summation order
	// than the reference's loops), so it agrees to rounding, not bit for bit.
	closeTo(t, "attention out", HostSlice(bao), ao, 1e-5)
	closeTo(t, "dq", HostSlice(bdq), dq, 1e-5)
	closeTo(t, "dk", HostSlice(bdk), dk, 1e-5)
	closeTo(t, "dv", HostSlice(bdv), dv, 1e-5)

	// RoPE on a row range that does not start at position 0
	cos64, sin64 := RoPETables(T, hd, 10000)
	cos, sin := toF32(cos64), toF32(sin64)
	r := append([]float32(nil), q...)
	RoPEForward(r, cos, sin, N, T, H, hd)
	br2 := up(be, q)
	be.RoPEForward(br2, up(be, cos), up(be, sin), N, T, H, hd)
	closeTo(t, "rope", HostSlice(br2), r, 0)

	// encoder backward with repeated tokens
	const V = 5
	tokens := make([]int32, N)
	for i := range tokens {
		tokens[i] = int32(rng.IntN(V))
	}
	de := make([]float32, V*C)
	EncoderBackward(de, dy, tokens, N, C, 0, C)
	bde := be.Alloc(V * C)
	be.EncoderBackward(bde, bdy, tokens, N, C)
	closeTo(t, "encoder backward", HostSlice(bde), de, 0)

	// sum of squares
	var ss float64
	for _, x := range dy {
		ss += float64(x) * float64(x)
	}
	if got := be.SumSquares(bdy); math.Abs(got-ss) > 1e-9*ss {
		t.Errorf("SumSquares %v, want %v", got, ss)
	}
}

func toF32(x []float64) []float32 {
	out := make([]float32, len(x))
	for i, v := range x {
		out[i] = float32(v)
	}
	return out
}

// TestMatmulQ4MatchesDequantized checks the tiled 4-bit matmul against an
// fp32 matmul with the fully dequantized weight, for widths that split the
// weight into several tiles with a ragged last one; forward products of up
// to sgemm.GemvMaxRows rows take sgemm.Gemv.
func TestMatmulQ4MatchesDequantized(t *testing.T) {
	be := NewCPU(2)
	rng := rand.New(rand.NewPCG(2, 2))
	// N <= 4 goes to sgemm.Gemv; the wider products to the widened tiles
	// (600 rows of 2048 or 4096: several tiles, the last one ragged).
	for _, sh := range []struct{ N, C, OC int }{{3, 64, 5}, {4, 1 << 12, 37}, {2, 96, 1500}, {2, 1 << 12, 600}, {1, 200, 33},
		{9, 64, 5}, {5, 1 << 12, 37}, {6, 96, 1500}, {6, 1 << 11, 600}} {
		w := randF32(rng, sh.OC*sh.C)
		q, err := quant.Quantize4(w, []int{sh.OC, sh.C}, quant.NF4, 64, true)
		if err != nil {
			t.Fatal(err)
		}
		wd := make([]float32, len(w))
		q.Dequantize(wd)
		x, dy := randF32(rng, sh.N*sh.C), randF32(rng, sh.N*sh.OC)
		want, wantDx := make([]float32, sh.N*sh.OC), make([]float32, sh.N*sh.C)
		MatmulForward(want, x, wd, sh.N, sh.C, sh.OC, 1, 0)
		MatmulBackward(wantDx, nil, dy, x, wd, sh.N, sh.C, sh.OC, 1)
		qb := be.UploadQ4(q)
		got, dx := be.Alloc(sh.N*sh.OC), be.Alloc(sh.N*sh.C)
		be.MatmulQ4Forward(got, up(be, x), qb, sh.N, sh.C, sh.OC)
		be.MatmulQ4Backward(dx, up(be, dy), qb, sh.N, sh.C, sh.OC)
		closeTo(t, "q4 forward", HostSlice(got), want, 1e-4)
		closeTo(t, "q4 backward", HostSlice(dx), wantDx, 1e-4)
	}
}

// TestBF16OpsMatchWidened checks the bfloat16 embedding gather and the tiled
// bf16 matmuls against the reference kernels on the exactly widened weight.
func TestBF16OpsMatchWidened(t *testing.T) {
	be := NewCPU(2)
	rng := rand.New(rand.NewPCG(4, 4))
	// N <= 4 goes to sgemm.Gemv; the wider products to the widened tiles
	// (600 rows of 2048 or 4096: several tiles, the last one ragged).
	for _, sh := range []struct{ N, C, OC int }{{3, 64, 5}, {4, 1 << 12, 37}, {2, 96, 1500}, {2, 1 << 12, 600}, {1, 200, 33},
		{9, 64, 5}, {5, 1 << 12, 37}, {6, 96, 1500}, {6, 1 << 11, 600}} {
		w := randF32(rng, sh.OC*sh.C)
		h := make([]uint16, len(w))
		quant.NarrowBF16(h, w)
		wide := make([]float32, len(w))
		quant.WidenBF16(wide, h)
		x, dy := randF32(rng, sh.N*sh.C), randF32(rng, sh.N*sh.OC)
		want, wantDx := make([]float32, sh.N*sh.OC), make([]float32, sh.N*sh.C)
		MatmulForward(want, x, wide, sh.N, sh.C, sh.OC, 1, 0)
		MatmulBackward(wantDx, nil, dy, x, wide, sh.N, sh.C, sh.OC, 1)
		hb := be.UploadBF16(h)
		got, dx := be.Alloc(sh.N*sh.OC), be.Alloc(sh.N*sh.C)
		be.MatmulBF16Forward(got, up(be, x), hb, sh.N, sh.C, sh.OC)
		be.MatmulBF16Backward(dx, up(be, dy), hb, sh.N, sh.C, sh.OC)
		closeTo(t, "bf16 forward", HostSlice(got), want, 1e-4)
		closeTo(t, "bf16 backward", HostSlice(dx), wantDx, 1e-4)

		tokens := []int32{int32(sh.OC - 1), 0, int32(sh.OC / 2)}
		emb := be.Alloc(len(tokens) * sh.C)
		be.EncoderForwardBF16(emb, hb, tokens, len(tokens), sh.C)
		wantEmb := make([]float32, len(tokens)*sh.C)
		EncoderForward(wantEmb, wide, tokens, len(tokens), sh.C)
		for i, v := range HostSlice(emb) {
			if v != wantEmb[i] {
				t.Fatalf("embedding element %d = %v, want %v (widening is exact)", i, v, wantEmb[i])
			}
		}
	}
	defer func() {
		if r := recover(); r == nil {
			t.Error("a token outside the bf16 table did not panic")
		}
	}()
	be.EncoderForwardBF16(be.Alloc(4), be.UploadBF16(make([]uint16, 8)), []int32{2}, 1, 4)
}

// AttentionDecode of the last position over the cache equals the last row
// of causal attention over the whole sequence, on the CPU backend and in
// the float64 reference.
func TestAttentionDecodeIsTheLastCausalRow(t *testing.T) {
	be := NewCPU(3)
	rng := rand.New(rand.NewPCG(5, 5))
	const T, H, KVH, hd = 9, 6, 2, 8
	C, KC := H*hd, KVH*hd
	q, k, v := randF32(rng, T*C), randF32(rng, T*KC), randF32(rng, T*KC)
	out, att := be.Alloc(T*C), be.Alloc(H*T*T)
	be.AttentionForward(out, att, up(be, q), up(be, k), up(be, v), 1, T, H, KVH, hd)
	full := make([]float32, T*C)
	be.Download(full, out)
	for L := 1; L <= T; L++ {
		dec, datt := be.Alloc(C), be.Alloc(H*L)
		be.AttentionDecode(dec, datt, up(be, q[(L-1)*C:L*C]), up(be, k[:L*KC]), up(be, v[:L*KC]), L, H, KVH, hd)
		got := make([]float32, C)
		be.Download(got, dec)
		if L == T {
			closeTo(t, "decode vs causal row", got, full[(T-1)*C:], 1e-5)
		}
		p := make([]float32, H*L)
		be.Download(p, datt)
		for h := 0; h < H; h++ {
			var sum float64
			for _, x := range p[h*L : (h+1)*L] {
				sum += float64(x)
			}
			if math.Abs(sum-1) > 1e-5 {
				t.Fatalf("L=%d head %d: probabilities sum to %v", L, h, sum)
			}
		}
		// the float64 reference agrees
		q64, k64, v64 := widen(q[(L-1)*C:L*C]), widen(k[:L*KC]), widen(v[:L*KC])
		o64, a64 := make([]float64, C), make([]float64, H*L)
		AttentionDecode(o64, a64, q64, k64, v64, L, H, KVH, hd, 0, H)
		closeTo(t, "decode vs float64 reference", got, toF32(o64), 1e-5)
	}
}

func widen(x []float32) []float64 {
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = float64(v)
	}
	return out
}

package backend

import (
	"fmt"
	"math"
	"runtime"
	"sync"

	"github.com/opencluster/opencluster/quant"
	"github.com/opencluster/opencluster/train/backend/sgemm"
	"github.com/opencluster/opencluster/train/backend/vecmath"
)

// NewCPU returns the CPU reference backend using threads workers for the
// matrix products and the row-parallel loops (0 means every core).
func NewCPU(threads int) Backend {
	if threads <= 0 {
		threads = runtime.NumCPU()
	}
	sgemm.SetThreads(threads)
	return &cpu{threads: threads}
}

// cpuBuf is the CPU backend's buffer: a plain float32 slice.
type cpuBuf []float32

func (b cpuBuf) Len() int { return len(b) }

// cpuQ4 is the CPU backend's frozen 4-bit weight: the quant tensor itself.
type cpuQ4 struct{ t *quant.Tensor4 }

func (q cpuQ4) Len() int { return q.t.Len() }

// cpuBF16 is the CPU backend's frozen bfloat16 matrix: the bits themselves.
type cpuBF16 []uint16

func (h cpuBF16) Len() int { return len(h) }

// HostBF16 returns the bits behind a CPU bfloat16 matrix (nil otherwise).
func HostBF16(h HBuf) []uint16 {
	if c, ok := h.(cpuBF16); ok {
		return c
	}
	return nil
}

// HostSlice returns the memory behind a CPU buffer (nil for other backends'
// buffers). Writes through it are visible to the backend.
func HostSlice(b Buf) []float32 {
	if c, ok := b.(cpuBuf); ok {
		return c
	}
	return nil
}

// HostQ4 returns the quant tensor behind a CPU 4-bit weight (nil otherwise).
func HostQ4(q QBuf) *quant.Tensor4 {
	if c, ok := q.(cpuQ4); ok {
		return c.t
	}
	return nil
}

type cpu struct {
	threads    int
	frozenBF16 bool // MatmulQ4* in bf16 (see SetFrozenDType)

	mu      sync.Mutex // guards scratch
	scratch []float32  // dequantized weight tiles

	attMu sync.Mutex // guards attDS
	attDS []float32  // AttentionBackward's T x T scratch, reused: no garbage per call
}

func (c *cpu) Name() string { return "cpu" }

// s unwraps a buffer; a nil Buf gives a nil slice.
func s(b Buf) []float32 {
	if b == nil {
		return nil
	}
	c, ok := b.(cpuBuf)
	if !ok {
		panic(fmt.Sprintf("backend cpu: buffer of type %T does not belong to the CPU backend", b))
	}
	return c
}

func (c *cpu) Alloc(n int) Buf { return cpuBuf(make([]float32, n)) }

func (c *cpu) View(b Buf, off, n int) Buf {
	x := s(b)
	return cpuBuf(x[off : off+n : off+n])
}

func (c *cpu) Upload(dst Buf, src []float32) {
	d := s(dst)
	if len(d) != len(src) {
		panic(fmt.Sprintf("backend cpu: Upload of %d values into a buffer of %d", len(src), len(d)))
	}
	copy(d, src)
}

func (c *cpu) Download(dst []float32, src Buf) {
	x := s(src)
	if len(x) != len(dst) {
		panic(fmt.Sprintf("backend cpu: Download of %d values into %d", len(x), len(dst)))
	}
	copy(dst, x)
}

func (c *cpu) Zero(b Buf) { clear(s(b)) }

func (c *cpu) Copy(dst, src Buf) { copy(s(dst), s(src)) }

func (c *cpu) UploadQ4(t *quant.Tensor4) QBuf { return cpuQ4{t} }

func (c *cpu) UploadBF16(src []uint16) HBuf { return cpuBF16(src) }

// Free does nothing on the CPU: the garbage collector reclaims the memory
// once the model drops its last reference.
func (c *cpu) Free(Buf) {}

// bf16 unwraps a bfloat16 matrix of this backend.
func bf16(h HBuf) []uint16 {
	b, ok := h.(cpuBF16)
	if !ok {
		panic(fmt.Sprintf("backend cpu: bf16 matrix of type %T does not belong to the CPU backend", h))
	}
	return b
}

// parallel runs f over [0,n) split into at most c.threads contiguous chunks.
// The split depends only on n and the thread count, so every reduction that
// follows it repeats bit for bit.
func (c *cpu) parallel(n int, f func(part, lo, hi int)) {
	parts := c.parts(n)
	if parts == 1 {
		f(0, 0, n)
		return
	}
	sgemm.Parallel(parts, func(p int) {
		f(p, p*n/parts, (p+1)*n/parts)
	})
}

func (c *cpu) parts(n int) int {
	return max(1, min(c.threads, n))
}

func (c *cpu) EncoderForward(out, wte Buf, tokens []int32, N, C int) {
	o, w := s(out), s(wte)
	c.parallel(N, func(_, lo, hi int) {
		EncoderForward(o[lo*C:hi*C], w, tokens[lo:hi], hi-lo, C)
	})
}

func (c *cpu) EncoderForwardBF16(out Buf, wte HBuf, tokens []int32, N, C int) {
	o, w := s(out), bf16(wte)
	V := len(w) / max(C, 1)
	for i, t := range tokens[:N] {
		if t < 0 || int(t) >= V {
			panic(fmt.Sprintf("backend cpu: EncoderForwardBF16: token %d at position %d is outside the vocabulary [0,%d)", t, i, V))
		}
	}
	c.parallel(N, func(_, lo, hi int) {
		for n := lo; n < hi; n++ {
			t := int(tokens[n])
			quant.WidenBF16(o[n*C:(n+1)*C], w[t*C:(t+1)*C])
		}
	})
}

func (c *cpu) EncoderBackward(dwte, dout Buf, tokens []int32, N, C int) {
	dw, d := s(dwte), s(dout)
	c.parallel(C, func(_, lo, hi int) {
		EncoderBackward(dw, d, tokens, N, C, lo, hi)
	})
}

func (c *cpu) RMSNormForward(out, rstd, inp, w Buf, N, C int, eps float64) {
	o, r, x, ws := s(out), s(rstd), s(inp), s(w)
	c.parallel(N, func(_, lo, hi int) {
		RMSNormForward(o[lo*C:hi*C], r[lo:hi], x[lo*C:hi*C], ws, hi-lo, C, eps)
	})
}

func (c *cpu) RMSNormBackward(dinp, dw, dout, inp, w, rstd Buf, N, C int) {
	dx, dws, dy, x, ws, r := s(dinp), s(dw), s(dout), s(inp), s(w), s(rstd)
	parts := c.parts(N)
	var partial [][]float32
	if dws != nil {
		partial = make([][]float32, parts)
	}
	c.parallel(N, func(p, lo, hi int) {
		var pdw []float32
		if dws != nil {
			pdw = make([]float32, C)
			partial[p] = pdw
		}
		RMSNormBackward(dx[lo*C:hi*C], pdw, dy[lo*C:hi*C], x[lo*C:hi*C], ws, r[lo:hi], hi-lo, C)
	})
	for _, pdw := range partial { // fixed order: deterministic
		Accumulate(dws, pdw)
	}
}

func (c *cpu) MatmulForward(out, inp, w Buf, N, C, OC int, alpha, beta float32) {
	sgemm.Sgemm(false, true, N, OC, C, alpha, s(inp), C, s(w), C, beta, s(out), OC)
}

func (c *cpu) MatmulBackward(dinp, dw, dout, inp, w Buf, N, C, OC int, alpha float32) {
	if dinp != nil {
		sgemm.Sgemm(false, false, N, C, OC, alpha, s(dout), OC, s(w), C, 1, s(dinp), C)
	}
	if dw != nil {
		sgemm.Sgemm(true, false, OC, C, N, alpha, s(dout), OC, s(inp), C, 1, s(dw), C)
	}
}

// tileElems bounds the widened scratch tile (rows of a frozen weight): 4
// MiB, 512 rows of a 2048-wide lm_head. The product packs the tile into
// cache-sized panels itself; what the tile's size decides is how many
// products a frozen weight takes, and every product has a fixed cost in
// time and in garbage (a 128k-vocabulary lm_head in 256 KiB tiles was 4,000
// products per chunk of rows, a few hundred MiB of garbage a step).
const tileElems = 1 << 20

// frozenTiles widens a frozen weight [OC,C] a tile of rows at a time into a
// small scratch buffer (widen(dst, off) fills dst from element off) and
// calls f(tile, r0, nr) for rows [r0, r0+nr): no whole fp32 copy.
func (c *cpu) frozenTiles(widen func(dst []float32, off int), C, OC int, f func(tile []float32, r0, nr int)) {
	rows := max(1, tileElems/C)
	c.mu.Lock()
	defer c.mu.Unlock()
	if cap(c.scratch) < rows*C {
		c.scratch = make([]float32, rows*C)
	}
	for r0 := 0; r0 < OC; r0 += rows {
		nr := min(rows, OC-r0)
		tile := c.scratch[:nr*C]
		widen(tile, r0*C)
		f(tile, r0, nr)
	}
}

// q4Widen and bf16Widen check a frozen weight and return its tile filler.
func q4Widen(q QBuf, op string, n int) func([]float32, int) {
	t := HostQ4(q)
	if t == nil {
		panic(fmt.Sprintf("backend cpu: %s: 4-bit weight of type %T does not belong to the CPU backend", op, q))
	}
	if t.Len() < n {
		panic(fmt.Sprintf("backend cpu: %s: 4-bit weight has %d elements, need %d", op, t.Len(), n))
	}
	return t.DequantizeRange
}

func bf16Widen(h HBuf, op string, n int) func([]float32, int) {
	w := bf16(h)
	if len(w) < n {
		panic(fmt.Sprintf("backend cpu: %s: bf16 weight has %d elements, need %d", op, len(w), n))
	}
	return func(dst []float32, off int) { quant.WidenBF16(dst, w[off:off+len(dst)]) }
}

// frozenForward: out[N,OC] = inp·Wᵀ over widened tiles of W's rows.
func (c *cpu) frozenForward(out, inp Buf, widen func([]float32, int), N, C, OC int) {
	o, x := s(out), s(inp)
	c.frozenTiles(widen, C, OC, func(tile []float32, r0, nr int) {
		sgemm.Sgemm(false, true, N, nr, C, 1, x, C, tile, C, 0, o[r0:], OC)
	})
}

// frozenBackward: dinp += dout·W over widened tiles of W's rows.
func (c *cpu) frozenBackward(dinp, dout Buf, widen func([]float32, int), N, C, OC int) {
	dx, dy := s(dinp), s(dout)
	c.frozenTiles(widen, C, OC, func(tile []float32, r0, nr int) {
		sgemm.Sgemm(false, false, N, C, nr, 1, dy[r0:], OC, tile, C, 1, dx, C)
	})
}

// With the frozen products in bf16 (SetFrozenDType), a frozen weight goes
// to sgemm.GemmBF16 as it is held (4-bit codes or bf16 bits), which turns
// it into bf16 panels inside its packing; otherwise it is widened to fp32
// a tile at a time for Sgemm. A forward product of a few rows (a decode
// step of generation) goes to sgemm.Gemv instead, in either mode: it uses
// each weight once per row, so reading the weight is the whole cost, and
// Gemv reads it as held, once, with no tile.

func (c *cpu) MatmulQ4Forward(out, inp Buf, w QBuf, N, C, OC int) {
	widen := q4Widen(w, "MatmulQ4Forward", C*OC)
	if N <= sgemm.GemvMaxRows {
		sgemm.Gemv(N, s(inp), C, sgemm.WeightQ4(HostQ4(w), OC, C), s(out), OC)
		return
	}
	if c.frozenBF16 {
		c.bf16Forward(out, inp, sgemm.WeightQ4(HostQ4(w), OC, C), N, C, OC)
		return
	}
	c.frozenForward(out, inp, widen, N, C, OC)
}

func (c *cpu) MatmulQ4Backward(dinp, dout Buf, w QBuf, N, C, OC int) {
	widen := q4Widen(w, "MatmulQ4Backward", C*OC)
	if c.frozenBF16 {
		c.bf16Backward(dinp, dout, sgemm.WeightQ4(HostQ4(w), OC, C), N, C, OC)
		return
	}
	c.frozenBackward(dinp, dout, widen, N, C, OC)
}

func (c *cpu) MatmulBF16Forward(out, inp Buf, w HBuf, N, C, OC int) {
	widen := bf16Widen(w, "MatmulBF16Forward", C*OC)
	if N <= sgemm.GemvMaxRows {
		sgemm.Gemv(N, s(inp), C, sgemm.WeightBF16(bf16(w)[:OC*C], OC, C), s(out), OC)
		return
	}
	if c.frozenBF16 {
		c.bf16Forward(out, inp, sgemm.WeightBF16(bf16(w)[:OC*C], OC, C), N, C, OC)
		return
	}
	c.frozenForward(out, inp, widen, N, C, OC)
}

func (c *cpu) MatmulBF16Backward(dinp, dout Buf, w HBuf, N, C, OC int) {
	widen := bf16Widen(w, "MatmulBF16Backward", C*OC)
	if c.frozenBF16 {
		c.bf16Backward(dinp, dout, sgemm.WeightBF16(bf16(w)[:OC*C], OC, C), N, C, OC)
		return
	}
	c.frozenBackward(dinp, dout, widen, N, C, OC)
}

// bf16Forward: out[N,OC] = inp·Wᵀ in bf16 with fp32 accumulation.
func (c *cpu) bf16Forward(out, inp Buf, w sgemm.Weight, N, C, OC int) {
	sgemm.GemmBF16(true, N, OC, C, 1, s(inp), C, w, 0, s(out), OC)
}

// bf16Backward: dinp += dout·W in bf16 with fp32 accumulation.
func (c *cpu) bf16Backward(dinp, dout Buf, w sgemm.Weight, N, C, OC int) {
	sgemm.GemmBF16(false, N, C, OC, 1, s(dout), OC, w, 1, s(dinp), C)
}

func (c *cpu) RoPEForward(x, cos, sin Buf, N, T, nh, hd int) {
	xs, cs, sn := s(x), s(cos), s(sin)
	w := nh * hd
	c.parallel(N, func(_, lo, hi int) {
		// rows [lo,hi) start at position lo mod T: shift the tables to match
		for n := lo; n < hi; n++ {
			t := n % T
			half := hd / 2
			RoPEForward(xs[n*w:(n+1)*w], cs[t*half:(t+1)*half], sn[t*half:(t+1)*half], 1, 1, nh, hd)
		}
	})
}

func (c *cpu) RoPEBackward(dx, cos, sin Buf, N, T, nh, hd int) {
	xs, cs, sn := s(dx), s(cos), s(sin)
	w := nh * hd
	c.parallel(N, func(_, lo, hi int) {
		for n := lo; n < hi; n++ {
			t := n % T
			half := hd / 2
			RoPEBackward(xs[n*w:(n+1)*w], cs[t*half:(t+1)*half], sn[t*half:(t+1)*half], 1, 1, nh, hd)
		}
	})
}

// AttentionForward runs the reference's arithmetic as matrix products, one
// (batch, head) at a time: S = scale·Q·Kᵀ into att (strided views of q and
// k, no copies), the causal softmax row by row, then out = P·V. The
// products cover the full T x T square (the masked half is computed and
// then zeroed): twice the causal work, but at sgemm's speed rather than a
// scalar loop's. With at least two (batch, kv head) groups per thread the
// threads take whole groups, each running its products on one thread (no
// synchronisation inside a product of a few hundred microseconds);
// otherwise the pairs run in order and Sgemm splits each product. A
// product's result does not depend on how many threads ran it, so every
// sum has a fixed order either way: results repeat bit for bit.
func (c *cpu) AttentionForward(out, att, q, k, v Buf, B, T, H, KVH, hd int) {
	o, a, qs, ks, vs := s(out), s(att), s(q), s(k), s(v)
	scale := float32(1 / math.Sqrt(float64(hd)))
	C, KC, grp := H*hd, KVH*hd, H/KVH
	head := func(gemm gemmFunc, rows func(int, func(lo, hi int)), bh int) {
		b, h := bh/H, bh%H
		kh := h / grp
		p := a[bh*T*T : (bh+1)*T*T]
		gemm(false, true, T, T, hd, scale, qs[b*T*C+h*hd:], C, ks[b*T*KC+kh*hd:], KC, 0, p, T)
		rows(T, func(lo, hi int) {
			for t := lo; t < hi; t++ {
				vecmath.CausalSoftmax(p[t*T:(t+1)*T], t)
			}
		})
		gemm(false, false, T, hd, T, 1, p, T, vs[b*T*KC+kh*hd:], KC, 0, o[b*T*C+h*hd:], C)
	}
	if c.byGroups(B * KVH) {
		c.parallel(B*KVH, func(_, lo, hi int) {
			for g := lo; g < hi; g++ {
				b, kh := g/KVH, g%KVH
				for h := kh * grp; h < (kh+1)*grp; h++ {
					head(sgemm.Serial, serialRows, b*H+h)
				}
			}
		})
		return
	}
	for bh := 0; bh < B*H; bh++ {
		head(sgemm.Sgemm, c.rows, bh)
	}
}

// serialRows runs f over [0,n) on the calling goroutine; rows runs it in
// parallel chunks.
func serialRows(n int, f func(lo, hi int)) { f(0, n) }

func (c *cpu) rows(n int, f func(lo, hi int)) { c.parallel(n, func(_, lo, hi int) { f(lo, hi) }) }

// gemmFunc is sgemm.Sgemm's signature (or sgemm.Serial's).
type gemmFunc func(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int)

// byGroups reports whether attention's (batch, kv head) groups are enough
// to share between the threads whole: two per thread at least.
func (c *cpu) byGroups(groups int) bool { return c.threads > 1 && groups >= 2*c.threads }

// AttentionBackward is the reference's backward as products per (batch,
// head), accumulating into dq, dk, dv (beta 1) in a fixed order:
//
//	dP = dO·Vᵀ, dV += Pᵀ·dO, dS = P∘(dP - rowsum(dP∘P))·scale,
//	dQ += dS·K, dK += dSᵀ·Q.
//
// Query heads that share a kv head add into the same dk and dv one after
// another, in head order, so the sums repeat bit for bit; the threads take
// whole (batch, kv head) groups as in AttentionForward.
func (c *cpu) AttentionBackward(dq, dk, dv, dout, att, q, k, v Buf, B, T, H, KVH, hd int) {
	dqs, dks, dvs, do, a, qs, ks, vs := s(dq), s(dk), s(dv), s(dout), s(att), s(q), s(k), s(v)
	scale := float32(1 / math.Sqrt(float64(hd)))
	C, KC, grp := H*hd, KVH*hd, H/KVH
	groups := byGroupsParts(c, B*KVH)
	c.attMu.Lock()
	defer c.attMu.Unlock()
	if cap(c.attDS) < groups*T*T {
		c.attDS = make([]float32, groups*T*T)
	}
	head := func(gemm gemmFunc, rows func(int, func(lo, hi int)), bh int, ds []float32) {
		b, h := bh/H, bh%H
		kh := h / grp
		qo, ko := b*T*C+h*hd, b*T*KC+kh*hd
		p := a[bh*T*T : (bh+1)*T*T]
		gemm(false, true, T, T, hd, 1, do[qo:], C, vs[ko:], KC, 0, ds, T)
		gemm(true, false, T, hd, T, 1, p, T, do[qo:], C, 1, dvs[ko:], KC)
		rows(T, func(lo, hi int) {
			for t := lo; t < hi; t++ {
				softmaxBackwardRow(ds[t*T:(t+1)*T], p[t*T:(t+1)*T], t, scale)
			}
		})
		gemm(false, false, T, hd, T, 1, ds, T, ks[ko:], KC, 1, dqs[qo:], C)
		gemm(true, false, T, hd, T, 1, ds, T, qs[qo:], C, 1, dks[ko:], KC)
	}
	if groups > 1 {
		c.parallel(B*KVH, func(part, lo, hi int) {
			ds := c.attDS[part*T*T : (part+1)*T*T]
			for g := lo; g < hi; g++ {
				b, kh := g/KVH, g%KVH
				for h := kh * grp; h < (kh+1)*grp; h++ {
					head(sgemm.Serial, serialRows, b*H+h, ds)
				}
			}
		})
		return
	}
	for bh := 0; bh < B*H; bh++ {
		head(sgemm.Sgemm, c.rows, bh, c.attDS[:T*T])
	}
}

// byGroupsParts is how many workers attention's backward uses: the
// threads when they take whole groups, else 1 (Sgemm splits each product).
func byGroupsParts(c *cpu, groups int) int {
	if c.byGroups(groups) {
		return c.parts(groups)
	}
	return 1
}

// AttentionDecode runs the reference a range of query heads per worker.
func (c *cpu) AttentionDecode(out, att, q, k, v Buf, L, H, KVH, hd int) {
	o, a, qs, ks, vs := s(out), s(att), s(q), s(k), s(v)
	c.parallel(H, func(_, h0, h1 int) {
		AttentionDecode(o, a, qs, ks, vs, L, H, KVH, hd, h0, h1)
	})
}

// softmaxBackwardRow turns dP into dS = P∘(dP - Σ dP∘P)·scale in place for
// query position t; entries past t (masked) become zero.
func softmaxBackwardRow(d, p []float32, t int, scale float32) {
	var dot float32
	for i := range d[:t+1] {
		dot += d[i] * p[i]
	}
	for i := range d[:t+1] {
		d[i] = p[i] * (d[i] - dot) * scale
	}
	clear(d[t+1:])
}

// elementwise runs f over [0,n) in chunks.
func (c *cpu) elementwise(n int, f func(lo, hi int)) {
	if n < 1<<14 {
		f(0, n)
		return
	}
	c.parallel(n, func(_, lo, hi int) { f(lo, hi) })
}

func (c *cpu) SwiGLUForward(out, gate, up Buf) {
	o, g, u := s(out), s(gate), s(up)
	c.elementwise(len(o), func(lo, hi int) { vecmath.SwiGLUForward(o[lo:hi], g[lo:hi], u[lo:hi]) })
}

func (c *cpu) SwiGLUBackward(dgate, dup, dout, gate, up Buf) {
	dg, du, d, g, u := s(dgate), s(dup), s(dout), s(gate), s(up)
	c.elementwise(len(g), func(lo, hi int) {
		vecmath.SwiGLUBackward(dg[lo:hi], du[lo:hi], d[lo:hi], g[lo:hi], u[lo:hi])
	})
}

func (c *cpu) Add(out, a, b Buf) {
	o, x, y := s(out), s(a), s(b)
	c.elementwise(len(o), func(lo, hi int) { Add(o[lo:hi], x[lo:hi], y[lo:hi]) })
}

func (c *cpu) Accumulate(dst, src Buf) {
	d, x := s(dst), s(src)
	c.elementwise(len(d), func(lo, hi int) { Accumulate(d[lo:hi], x[lo:hi]) })
}

func (c *cpu) CrossEntropy(logits Buf, losses []float64, targets []int32, N, V int, dscale float32, grad bool) {
	l := s(logits)
	c.parallel(N, func(_, lo, hi int) {
		CrossEntropy(l[lo*V:hi*V], losses[lo:hi], targets[lo:hi], hi-lo, V, dscale, grad)
	})
}

func (c *cpu) DropoutForward(out, inp Buf, p float32, key uint64) {
	o, x := s(out), s(inp)
	c.elementwise(len(o), func(lo, hi int) { DropoutForward(o, x, p, key, lo, hi) })
}

func (c *cpu) DropoutBackward(dinp, dout Buf, p float32, key uint64) {
	dx, d := s(dinp), s(dout)
	c.elementwise(len(dx), func(lo, hi int) { DropoutBackward(dx, d, p, key, lo, hi) })
}

func (c *cpu) AdamW(params, grads, m, v Buf, lr, beta1, beta2, eps, wd float64, step int) {
	p, g, ms, vs := s(params), s(grads), s(m), s(v)
	c.elementwise(len(p), func(lo, hi int) {
		AdamW(p[lo:hi], g[lo:hi], ms[lo:hi], vs[lo:hi], lr, beta1, beta2, eps, wd, step)
	})
}

// sumChunk fixes the reduction tree of SumSquares independently of the thread count.
const sumChunk = 1 << 14

func (c *cpu) SumSquares(b Buf) float64 {
	x := s(b)
	nchunks := (len(x) + sumChunk - 1) / sumChunk
	partial := make([]float64, nchunks)
	c.parallel(nchunks, func(_, lo, hi int) {
		for ch := lo; ch < hi; ch++ {
			var acc float64
			for _, v := range x[ch*sumChunk : min(len(x), (ch+1)*sumChunk)] {
				acc += float64(v) * float64(v)
			}
			partial[ch] = acc
		}
	})
	var total float64
	for _, p := range partial {
		total += p
	}
	return total
}

func (c *cpu) Scale(b Buf, f float32) {
	x := s(b)
	c.elementwise(len(x), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			x[i] *= f
		}
	})
}

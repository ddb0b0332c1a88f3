//go:build cuda

package kernels

import (
	"fmt"
	"math"
	"unsafe"

	"gorgonia.org/cu"

	"github.com/opencluster/opencluster/train/backend"
)

// This file maps each backend.Backend op onto its kernels, in the order of
// the interface. Shapes are checked on the host before anything is queued:
// a kernel handed a short buffer would read or write past it.

var _ backend.Backend = (*CUDA)(nil)

// EncoderForward gathers rows of wte [V,C]: out[n] = wte[tokens[n]].
func (c *CUDA) EncoderForward(out, wte backend.Buf, tokens []int32, N, C int) {
	o, w := c.buf(out), c.buf(wte)
	c.need("EncoderForward", "out", o, N*C)
	c.checkTokens("EncoderForward", tokens, N, w.n/max(C, 1))
	c.must("EncoderForward", c.do(func() error {
		tp, err := c.uploadInts("tokens", tokens[:N])
		if err != nil {
			return err
		}
		return c.launchOn("encoder_forward", elems(N*C), threads256, o, w, tp, N, C)
	}))
}

// EncoderForwardBF16 gathers rows of a bfloat16 table, widened exactly.
func (c *CUDA) EncoderForwardBF16(out backend.Buf, wte backend.HBuf, tokens []int32, N, C int) {
	o, w := c.buf(out), c.bf16(wte)
	c.need("EncoderForwardBF16", "out", o, N*C)
	c.checkTokens("EncoderForwardBF16", tokens, N, w.n/max(C, 1))
	c.must("EncoderForwardBF16", c.do(func() error {
		tp, err := c.uploadInts("tokens", tokens[:N])
		if err != nil {
			return err
		}
		return c.launchOn("encoder_forward_bf16", elems(N*C), threads256, o, w.ptr(), tp, N, C)
	}))
}

// EncoderBackward scatters dout into dwte rows.
func (c *CUDA) EncoderBackward(dwte, dout backend.Buf, tokens []int32, N, C int) {
	dw, d := c.buf(dwte), c.buf(dout)
	c.need("EncoderBackward", "dout", d, N*C)
	c.checkTokens("EncoderBackward", tokens, N, dw.n/max(C, 1))
	c.must("EncoderBackward", c.do(func() error {
		tp, err := c.uploadInts("tokens", tokens[:N])
		if err != nil {
			return err
		}
		return c.launchOn("encoder_backward", elems(C), threads256, dw, d, tp, N, C)
	}))
}

// checkTokens rejects ids outside the embedding's V rows: on the device they
// would read or write outside it.
func (c *CUDA) checkTokens(op string, tokens []int32, N, V int) {
	if len(tokens) < N {
		panic(fmt.Sprintf("kernels: %s: %s: %d tokens for %d rows", c.Name(), op, len(tokens), N))
	}
	for i, t := range tokens[:N] {
		if t < 0 || int(t) >= V {
			panic(fmt.Sprintf("kernels: %s: %s: token %d at position %d is outside the vocabulary [0,%d)", c.Name(), op, t, i, V))
		}
	}
}

// RMSNormForward normalises rows and saves rstd [N].
func (c *CUDA) RMSNormForward(out, rstd, inp, w backend.Buf, N, C int, eps float64) {
	o, r, x, ws := c.buf(out), c.buf(rstd), c.buf(inp), c.buf(w)
	c.need("RMSNormForward", "out", o, N*C)
	c.need("RMSNormForward", "rstd", r, N)
	c.need("RMSNormForward", "inp", x, N*C)
	c.need("RMSNormForward", "w", ws, C)
	c.launch("RMSNormForward", "rmsnorm_forward", dim3{N, 1, 1}, threads256, o, r, x, ws, N, C, eps)
}

// RMSNormBackward accumulates dinp and dw (dw nil when frozen).
func (c *CUDA) RMSNormBackward(dinp, dw, dout, inp, w, rstd backend.Buf, N, C int) {
	dx, dws, dy, x, ws, r := c.buf(dinp), c.buf(dw), c.buf(dout), c.buf(inp), c.buf(w), c.buf(rstd)
	for _, b := range []struct {
		name string
		b    *Buffer
		n    int
	}{{"dinp", dx, N * C}, {"dout", dy, N * C}, {"inp", x, N * C}, {"w", ws, C}, {"rstd", r, N}} {
		c.need("RMSNormBackward", b.name, b.b, b.n)
	}
	c.must("RMSNormBackward", c.do(func() error {
		if dws != nil {
			c.need("RMSNormBackward", "dw", dws, C)
			// dw first: it reads nothing dinp's kernel writes.
			if err := c.launchOn("rmsnorm_backward_dw", elems(C), threads256, dws, dy, x, r, N, C); err != nil {
				return err
			}
		}
		return c.launchOn("rmsnorm_backward", dim3{N, 1, 1}, threads256, dx, dy, x, ws, r, N, C)
	}))
}

// gemmKernel picks the dense GEMM kernel and block size for the precision.
func (c *CUDA) gemmKernel(backward bool) (string, dim3) {
	switch c.precFor(backward) {
	case TF32:
		return "gemm_tf32", threads128
	case BF16:
		return "gemm_bf16", threads128
	case FP16:
		return "gemm_fp16", threads128
	}
	return "gemm_f32", threads256
}

// precFor is the precision of a forward or backward product: the set
// precision, except that with fp32 backward (fp16 training on Turing) the
// gradients' products stay fp32, where fp16 would underflow them.
func (c *CUDA) precFor(backward bool) Precision {
	if backward && c.fp32Backward {
		return FP32
	}
	return c.prec
}

// gemmOn queues C[M,N] = alpha*op(A)·op(B) + beta*C (row-major), a
// forward product at the set precision.
func (c *CUDA) gemmOn(A, B, Cm any, M, N, K, lda, ldb, ldc int, transA, transB bool, alpha, beta float32) error {
	return c.gemmDirOn(false, A, B, Cm, M, N, K, lda, ldb, ldc, transA, transB, alpha, beta)
}

// gemmDirOn is gemmOn for a forward or backward product.
func (c *CUDA) gemmDirOn(backward bool, A, B, Cm any, M, N, K, lda, ldb, ldc int, transA, transB bool, alpha, beta float32) error {
	if M == 0 || N == 0 {
		return nil
	}
	name, block := c.gemmKernel(backward)
	grid := dim3{(N + 63) / 64, (M + 63) / 64, 1}
	return c.launchOn(name, grid, block, A, B, Cm, M, N, K, lda, ldb, ldc, transA, transB, alpha, beta)
}

// MatmulForward: out[N,OC] = beta*out + alpha*inp[N,C]·w[OC,C]ᵀ.
func (c *CUDA) MatmulForward(out, inp, w backend.Buf, N, C, OC int, alpha, beta float32) {
	o, x, ws := c.buf(out), c.buf(inp), c.buf(w)
	c.need("MatmulForward", "out", o, N*OC)
	c.need("MatmulForward", "inp", x, N*C)
	c.need("MatmulForward", "w", ws, OC*C)
	c.must("MatmulForward", c.do(func() error {
		return c.gemmOn(x, ws, o, N, OC, C, C, C, OC, false, true, alpha, beta)
	}))
}

// MatmulBackward: dinp += alpha*dout·w; dw += alpha*doutᵀ·inp (either may be nil).
func (c *CUDA) MatmulBackward(dinp, dw, dout, inp, w backend.Buf, N, C, OC int, alpha float32) {
	dx, dws, dy, x, ws := c.buf(dinp), c.buf(dw), c.buf(dout), c.buf(inp), c.buf(w)
	c.need("MatmulBackward", "dout", dy, N*OC)
	c.must("MatmulBackward", c.do(func() error {
		if dx != nil {
			c.need("MatmulBackward", "dinp", dx, N*C)
			c.need("MatmulBackward", "w", ws, OC*C)
			if err := c.gemmDirOn(true, dy, ws, dx, N, C, OC, OC, C, C, false, false, alpha, 1); err != nil {
				return err
			}
		}
		if dws != nil {
			c.need("MatmulBackward", "dw", dws, OC*C)
			c.need("MatmulBackward", "inp", x, N*C)
			return c.gemmDirOn(true, dy, x, dws, OC, C, N, OC, C, C, true, false, alpha, 1)
		}
		return nil
	}))
}

// q4Kernel picks the fused NF4 matmul for the precision ("fwd" or "bwd").
func (c *CUDA) q4Kernel(dir string) (string, dim3) {
	switch c.precFor(dir == "bwd") {
	case BF16:
		return "nf4_matmul_" + dir + "_bf16", threads128
	case FP16:
		return "nf4_matmul_" + dir + "_fp16", threads128
	}
	return "nf4_matmul_" + dir + "_f32", threads256
}

func (c *CUDA) checkQ4(op string, q *Q4, C, OC int) {
	if q.n != C*OC {
		panic(fmt.Sprintf("kernels: %s: %s: 4-bit weight has %d elements, want %dx%d", c.Name(), op, q.n, OC, C))
	}
}

// MatmulQ4Forward: out[N,OC] = inp·dequant(w)ᵀ, dequantizing tiles in shared memory.
func (c *CUDA) MatmulQ4Forward(out, inp backend.Buf, w backend.QBuf, N, C, OC int) {
	o, x, q := c.buf(out), c.buf(inp), c.q4(w)
	c.need("MatmulQ4Forward", "out", o, N*OC)
	c.need("MatmulQ4Forward", "inp", x, N*C)
	c.checkQ4("MatmulQ4Forward", q, C, OC)
	if N == 0 || OC == 0 {
		return
	}
	name, block := c.q4Kernel("fwd")
	args := append([]any{o, x}, q.args()...)
	args = append(args, N, C, OC)
	c.launch("MatmulQ4Forward", name, dim3{(OC + 63) / 64, (N + 63) / 64, 1}, block, args...)
}

// MatmulQ4Backward: dinp += dout·dequant(w).
func (c *CUDA) MatmulQ4Backward(dinp, dout backend.Buf, w backend.QBuf, N, C, OC int) {
	dx, dy, q := c.buf(dinp), c.buf(dout), c.q4(w)
	c.need("MatmulQ4Backward", "dinp", dx, N*C)
	c.need("MatmulQ4Backward", "dout", dy, N*OC)
	c.checkQ4("MatmulQ4Backward", q, C, OC)
	if N == 0 || C == 0 {
		return
	}
	name, block := c.q4Kernel("bwd")
	args := append([]any{dx, dy}, q.args()...)
	args = append(args, N, C, OC)
	c.launch("MatmulQ4Backward", name, dim3{(C + 63) / 64, (N + 63) / 64, 1}, block, args...)
}

// bf16TileElems bounds the fp32 tile a bfloat16 weight is widened into (64
// MiB): a 32000 x 4096 lm_head goes in eight tiles, and the whole weight
// never exists in fp32.
const bf16TileElems = 1 << 24

// bf16Tiles widens w [OC,C] a tile of rows at a time into device scratch and
// calls f(tile, r0, nr) for rows [r0, r0+nr), all on the context thread.
func (c *CUDA) bf16Tiles(op string, w *BF16Weight, C, OC int, f func(tile cu.DevicePtr, r0, nr int) error) {
	if w.n != C*OC {
		panic(fmt.Sprintf("kernels: %s: %s: bf16 weight has %d elements, want %dx%d", c.Name(), op, w.n, OC, C))
	}
	rows := max(1, min(OC, bf16TileElems/max(C, 1)))
	c.must(op, c.do(func() error {
		tile, err := c.scratchBytes("bf16tile", 4*int64(rows*C))
		if err != nil {
			return err
		}
		for r0 := 0; r0 < OC; r0 += rows {
			nr := min(rows, OC-r0)
			src := w.ptr() + cu.DevicePtr(2*r0*C)
			if err := c.launchOn("widen_bf16_f32", elems(nr*C), threads256, tile, src, int64(nr*C)); err != nil {
				return err
			}
			if err := f(tile, r0, nr); err != nil {
				return err
			}
		}
		return nil
	}))
}

// MatmulBF16Forward: out[N,OC] = inp·widen(w)ᵀ over widened tiles of w's rows.
func (c *CUDA) MatmulBF16Forward(out, inp backend.Buf, w backend.HBuf, N, C, OC int) {
	o, x, h := c.buf(out), c.buf(inp), c.bf16(w)
	c.need("MatmulBF16Forward", "out", o, N*OC)
	c.need("MatmulBF16Forward", "inp", x, N*C)
	if N == 0 || OC == 0 {
		return
	}
	c.bf16Tiles("MatmulBF16Forward", h, C, OC, func(tile cu.DevicePtr, r0, nr int) error {
		return c.gemmOn(x, tile, o.Ptr()+cu.DevicePtr(4*r0), N, nr, C, C, C, OC, false, true, 1, 0)
	})
}

// MatmulBF16Backward: dinp += dout·widen(w) over widened tiles of w's rows.
func (c *CUDA) MatmulBF16Backward(dinp, dout backend.Buf, w backend.HBuf, N, C, OC int) {
	dx, dy, h := c.buf(dinp), c.buf(dout), c.bf16(w)
	c.need("MatmulBF16Backward", "dinp", dx, N*C)
	c.need("MatmulBF16Backward", "dout", dy, N*OC)
	if N == 0 || C == 0 {
		return
	}
	c.bf16Tiles("MatmulBF16Backward", h, C, OC, func(tile cu.DevicePtr, r0, nr int) error {
		return c.gemmDirOn(true, dy.Ptr()+cu.DevicePtr(4*r0), tile, dx, N, C, nr, OC, C, C, false, false, 1, 1)
	})
}

func (c *CUDA) rope(op, kernel string, x, cos, sin backend.Buf, N, T, nh, hd int) {
	xs, cs, sn := c.buf(x), c.buf(cos), c.buf(sin)
	c.need(op, "x", xs, N*nh*hd)
	maxT := min(N, T)
	c.need(op, "cos", cs, maxT*hd/2)
	c.need(op, "sin", sn, maxT*hd/2)
	c.launch(op, kernel, elems(N*nh*hd/2), threads256, xs, cs, sn, N, T, nh, hd)
}

// RoPEForward rotates x [N, nh*hd] in place.
func (c *CUDA) RoPEForward(x, cos, sin backend.Buf, N, T, nh, hd int) {
	c.rope("RoPEForward", "rope_forward", x, cos, sin, N, T, nh, hd)
}

// RoPEBackward applies the inverse rotation to dx in place.
func (c *CUDA) RoPEBackward(dx, cos, sin backend.Buf, N, T, nh, hd int) {
	c.rope("RoPEBackward", "rope_backward", dx, cos, sin, N, T, nh, hd)
}

func (c *CUDA) checkAttention(op string, B, T, H, KVH, hd int) {
	if H <= 0 || KVH <= 0 || H%KVH != 0 {
		panic(fmt.Sprintf("kernels: %s: %s: %d query heads are not a multiple of %d kv heads", c.Name(), op, H, KVH))
	}
	if B*H > 65535 {
		panic(fmt.Sprintf("kernels: %s: %s: B*H = %d exceeds the grid's 65535", c.Name(), op, B*H))
	}
}

// AttentionForward: causal grouped-query attention; att [B,H,T,T] keeps
// the probabilities, as on the CPU.
func (c *CUDA) AttentionForward(out, att, q, k, v backend.Buf, B, T, H, KVH, hd int) {
	o, a, qs, ks, vs := c.buf(out), c.buf(att), c.buf(q), c.buf(k), c.buf(v)
	c.checkAttention("AttentionForward", B, T, H, KVH, hd)
	c.need("AttentionForward", "out", o, B*T*H*hd)
	c.need("AttentionForward", "att", a, B*H*T*T)
	c.need("AttentionForward", "q", qs, B*T*H*hd)
	c.need("AttentionForward", "k", ks, B*T*KVH*hd)
	c.need("AttentionForward", "v", vs, B*T*KVH*hd)
	if B*T == 0 {
		return
	}
	c.launch("AttentionForward", "attention_forward", dim3{T, B * H, 1}, threads128, o, a, qs, ks, vs, B, T, H, KVH, hd)
}

// AttentionBackward accumulates dq, dk, dv.
func (c *CUDA) AttentionBackward(dq, dk, dv, dout, att, q, k, v backend.Buf, B, T, H, KVH, hd int) {
	dqs, dks, dvs, do, a := c.buf(dq), c.buf(dk), c.buf(dv), c.buf(dout), c.buf(att)
	qs, ks, vs := c.buf(q), c.buf(k), c.buf(v)
	op := "AttentionBackward"
	c.checkAttention(op, B, T, H, KVH, hd)
	for _, b := range []struct {
		name string
		b    *Buffer
		n    int
	}{{"dq", dqs, B * T * H * hd}, {"dk", dks, B * T * KVH * hd}, {"dv", dvs, B * T * KVH * hd},
		{"dout", do, B * T * H * hd}, {"att", a, B * H * T * T}, {"q", qs, B * T * H * hd},
		{"k", ks, B * T * KVH * hd}, {"v", vs, B * T * KVH * hd}} {
		c.need(op, b.name, b.b, b.n)
	}
	if B*T == 0 {
		return
	}
	c.must(op, c.do(func() error {
		dpre, err := c.scratchBytes("dpre", 4*int64(B*H*T*T))
		if err != nil {
			return err
		}
		if err := c.launchOn("attention_backward_dpre", dim3{T, B * H, 1}, threads128, dpre, do, a, vs, B, T, H, KVH, hd); err != nil {
			return err
		}
		if err := c.launchOn("attention_backward_dq", dim3{T, B * H, 1}, threads128, dqs, dpre, ks, B, T, H, KVH, hd); err != nil {
			return err
		}
		return c.launchOn("attention_backward_dkv", dim3{T, B * KVH, 1}, threads128, dks, dvs, dpre, a, qs, do, B, T, H, KVH, hd)
	}))
}

// AttentionDecode attends one position to L cached ones: one block per
// query head.
func (c *CUDA) AttentionDecode(out, att, q, k, v backend.Buf, L, H, KVH, hd int) {
	o, a, qs, ks, vs := c.buf(out), c.buf(att), c.buf(q), c.buf(k), c.buf(v)
	op := "AttentionDecode"
	c.checkAttention(op, 1, L, H, KVH, hd)
	if L <= 0 {
		panic(fmt.Sprintf("kernels: %s: %s: no cached position (L = %d)", c.Name(), op, L))
	}
	c.need(op, "out", o, H*hd)
	c.need(op, "att", a, H*L)
	c.need(op, "q", qs, H*hd)
	c.need(op, "k", ks, L*KVH*hd)
	c.need(op, "v", vs, L*KVH*hd)
	c.launch(op, "attention_decode", dim3{H, 1, 1}, threads128, o, a, qs, ks, vs, L, H, KVH, hd)
}

// elementwise checks that every buffer has n = first's length elements.
func (c *CUDA) sameLen(op string, names []string, bufs ...*Buffer) int {
	n := bufs[0].n
	for i, b := range bufs {
		if b == nil {
			panic(fmt.Sprintf("kernels: %s: %s: buffer %s is nil", c.Name(), op, names[i]))
		}
		if b.n != n {
			panic(fmt.Sprintf("kernels: %s: %s: buffer %s has %d elements, %s has %d", c.Name(), op, names[i], b.n, names[0], n))
		}
	}
	return n
}

// SwiGLUForward: out = silu(gate) * up.
func (c *CUDA) SwiGLUForward(out, gate, up backend.Buf) {
	o, g, u := c.buf(out), c.buf(gate), c.buf(up)
	n := c.sameLen("SwiGLUForward", []string{"out", "gate", "up"}, o, g, u)
	c.launch("SwiGLUForward", "swiglu_forward", elems(n), threads256, o, g, u, int64(n))
}

// SwiGLUBackward accumulates dgate and dup.
func (c *CUDA) SwiGLUBackward(dgate, dup, dout, gate, up backend.Buf) {
	dg, du, d, g, u := c.buf(dgate), c.buf(dup), c.buf(dout), c.buf(gate), c.buf(up)
	n := c.sameLen("SwiGLUBackward", []string{"dgate", "dup", "dout", "gate", "up"}, dg, du, d, g, u)
	c.launch("SwiGLUBackward", "swiglu_backward", elems(n), threads256, dg, du, d, g, u, int64(n))
}

// Add: out = a + b.
func (c *CUDA) Add(out, a, b backend.Buf) {
	o, x, y := c.buf(out), c.buf(a), c.buf(b)
	n := c.sameLen("Add", []string{"out", "a", "b"}, o, x, y)
	c.launch("Add", "add_forward", elems(n), threads256, o, x, y, int64(n))
}

// Accumulate: dst += src.
func (c *CUDA) Accumulate(dst, src backend.Buf) {
	d, s := c.buf(dst), c.buf(src)
	n := c.sameLen("Accumulate", []string{"dst", "src"}, d, s)
	c.launch("Accumulate", "accumulate", elems(n), threads256, d, s, int64(n))
}

// CrossEntropy fills losses (host) and, when grad, overwrites logits with
// dscale*(softmax - onehot). A target outside [0,V) other than a negative
// (padding) one panics naming the row.
func (c *CUDA) CrossEntropy(logits backend.Buf, losses []float64, targets []int32, N, V int, dscale float32, grad bool) {
	l := c.buf(logits)
	op := "CrossEntropy"
	c.need(op, "logits", l, N*V)
	if len(losses) < N || len(targets) < N {
		panic(fmt.Sprintf("kernels: %s: %s: %d losses and %d targets for %d rows", c.Name(), op, len(losses), len(targets), N))
	}
	for i, t := range targets[:N] {
		if int(t) >= V {
			panic(fmt.Sprintf("kernels: %s: %s: target %d at row %d is outside the vocabulary [0,%d)", c.Name(), op, t, i, V))
		}
	}
	if N == 0 {
		return
	}
	c.must(op, c.do(func() error {
		tp, err := c.uploadInts("targets", targets[:N])
		if err != nil {
			return err
		}
		lp, err := c.scratchBytes("losses", 8*int64(N))
		if err != nil {
			return err
		}
		if err := c.launchOn("crossentropy_forward_backward", dim3{N, 1, 1}, threads256, l, lp, tp, N, V, dscale, grad); err != nil {
			return err
		}
		return cu.MemcpyDtoH(unsafe.Pointer(&losses[0]), lp, 8*int64(N))
	}))
}

// dropoutScale is the reference's 1/(1-p), rounded to float32.
func dropoutScale(p float32) float32 { return float32(1 / (1 - float64(p))) }

// DropoutForward: out = inp*mask/(1-p), the mask backend.DropoutMask(key, i, p).
func (c *CUDA) DropoutForward(out, inp backend.Buf, p float32, key uint64) {
	o, x := c.buf(out), c.buf(inp)
	n := c.sameLen("DropoutForward", []string{"out", "inp"}, o, x)
	c.launch("DropoutForward", "dropout_forward", elems(n), threads256, o, x, p, dropoutScale(p), key, int64(n))
}

// DropoutBackward: dinp += dout*mask/(1-p).
func (c *CUDA) DropoutBackward(dinp, dout backend.Buf, p float32, key uint64) {
	dx, d := c.buf(dinp), c.buf(dout)
	n := c.sameLen("DropoutBackward", []string{"dinp", "dout"}, dx, d)
	c.launch("DropoutBackward", "dropout_backward", elems(n), threads256, dx, d, p, dropoutScale(p), key, int64(n))
}

// AdamW updates params in place (see backend.AdamW).
func (c *CUDA) AdamW(params, grads, m, v backend.Buf, lr, beta1, beta2, eps, wd float64, step int) {
	p, g, ms, vs := c.buf(params), c.buf(grads), c.buf(m), c.buf(v)
	n := c.sameLen("AdamW", []string{"params", "grads", "m", "v"}, p, g, ms, vs)
	bc1 := 1 - math.Pow(beta1, float64(step))
	bc2 := 1 - math.Pow(beta2, float64(step))
	c.launch("AdamW", "adamw_update", elems(n), threads256, p, g, ms, vs, int64(n),
		float32(beta1), float32(beta2), lr, eps, wd, bc1, bc2)
}

// sumChunk is the number of elements one block of sumsq_chunks reduces.
const sumChunk = 1 << 14

// SumSquares returns the sum of squares of b in float64: per-chunk partials
// on the device, added on the host in chunk order (the result does not
// depend on scheduling).
func (c *CUDA) SumSquares(b backend.Buf) float64 {
	x := c.buf(b)
	if x.n == 0 {
		return 0
	}
	chunks := (x.n + sumChunk - 1) / sumChunk
	partial := make([]float64, chunks)
	c.must("SumSquares", c.do(func() error {
		pp, err := c.scratchBytes("sumsq", 8*int64(chunks))
		if err != nil {
			return err
		}
		if err := c.launchOn("sumsq_chunks", dim3{chunks, 1, 1}, threads256, pp, x, int64(x.n), sumChunk); err != nil {
			return err
		}
		return cu.MemcpyDtoH(unsafe.Pointer(&partial[0]), pp, 8*int64(chunks))
	}))
	var total float64
	for _, p := range partial {
		total += p
	}
	return total
}

// Scale multiplies b by s in place.
func (c *CUDA) Scale(b backend.Buf, s float32) {
	x := c.buf(b)
	if x.n == 0 {
		return
	}
	c.launch("Scale", "scale_inplace", elems(x.n), threads256, x, s, int64(x.n))
}

// DequantizeQ4 writes every element of w into out (fp32, out.Len() ==
// w.Len()): the plain dequantizer, with 16-byte loads of the packed codes.
// It is not a Backend op (the matmuls dequantize on the fly); tests and
// tools use it. out must start on a 16-byte boundary (a view at an element
// offset that is a multiple of 4).
func (c *CUDA) DequantizeQ4(out backend.Buf, w backend.QBuf) {
	o, q := c.buf(out), c.q4(w)
	if o.n != q.n {
		panic(fmt.Sprintf("kernels: %s: DequantizeQ4: out has %d elements, the weight %d", c.Name(), o.n, q.n))
	}
	if o.off%4 != 0 {
		panic(fmt.Sprintf("kernels: %s: DequantizeQ4: out starts at element %d, not on a 16-byte boundary", c.Name(), o.off))
	}
	if q.n == 0 {
		return
	}
	args := append([]any{o}, q.args()...)
	args = append(args, int64(q.n))
	c.launch("DequantizeQ4", "nf4_dequantize", elems((q.n+31)/32), threads256, args...)
}

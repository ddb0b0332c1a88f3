// Package backend defines the Backend interface every model op goes through,
// and the CPU reference implementation the CUDA backend is tested against.
//
// Ops take backend-owned buffers (Buf, from Alloc or View), never host
// slices, so a device backend can keep parameters, gradients and activations
// in device memory for the whole run; Upload and Download are the only
// host<->device copies. Token ids and targets are small and passed as host
// slices. The plain generic kernels in ref.go are the specification; the CPU
// backend runs them on fixed partitions of rows over goroutines (so results
// repeat bit for bit for a given thread count) and sends matrix products to
// sgemm.
package backend

import "github.com/opencluster/opencluster/quant"

// Buf is a backend-owned float32 buffer or a view into one.
type Buf interface {
	// Len is the number of float32 elements.
	Len() int
}

// QBuf is a backend-owned frozen 4-bit weight.
type QBuf interface {
	// Len is the number of (logical) elements.
	Len() int
}

// HBuf is a backend-owned frozen bfloat16 matrix: the embedding and lm_head
// of a quantized base, at half the memory of fp32, widened to fp32 a tile at
// a time inside the ops that read it.
type HBuf interface {
	// Len is the number of elements.
	Len() int
}

// Backend runs the model's ops on one device. Shapes follow llm.c: N rows
// (B*T) of width C. Backward ops accumulate (+=) into their gradient
// buffers; a nil gradient buffer means "frozen, skip".
type Backend interface {
	// Name is "cpu" or "cuda:N".
	Name() string

	// Alloc returns a zeroed buffer of n float32s.
	Alloc(n int) Buf
	// View returns elements [off, off+n) of b, sharing its memory.
	View(b Buf, off, n int) Buf
	// Upload copies src into dst (len(src) == dst.Len()).
	Upload(dst Buf, src []float32)
	// Download copies src into dst (len(dst) == src.Len()).
	Download(dst []float32, src Buf)
	// Zero sets every element of b to 0.
	Zero(b Buf)
	// Copy copies src into dst (same length).
	Copy(dst, src Buf)
	// UploadQ4 makes a frozen 4-bit weight usable by MatmulQ4*. The CPU
	// backend keeps t itself (no copy, no dequantized copy).
	UploadQ4(t *quant.Tensor4) QBuf
	// UploadBF16 makes a frozen bfloat16 matrix (raw bits, row-major)
	// usable by the BF16 ops. The CPU backend keeps src itself (no copy).
	UploadBF16(src []uint16) HBuf
	// Free releases the memory of a buffer Alloc, UploadQ4 or UploadBF16
	// returned (not a view): on a device at once, rather than when the
	// garbage collector finds it unreachable. The buffer and every view of
	// it must not be used again. The CPU backend leaves it to the collector.
	Free(b Buf)

	// EncoderForward gathers rows of wte [V,C]: out[n] = wte[tokens[n]].
	EncoderForward(out, wte Buf, tokens []int32, N, C int)
	// EncoderForwardBF16 is EncoderForward from a bfloat16 table, widened.
	EncoderForwardBF16(out Buf, wte HBuf, tokens []int32, N, C int)
	// EncoderBackward scatters dout into dwte rows.
	EncoderBackward(dwte, dout Buf, tokens []int32, N, C int)
	// RMSNormForward normalises rows and saves rstd [N].
	RMSNormForward(out, rstd, inp, w Buf, N, C int, eps float64)
	// RMSNormBackward accumulates dinp and dw (dw nil when frozen).
	RMSNormBackward(dinp, dw, dout, inp, w, rstd Buf, N, C int)
	// MatmulForward: out[N,OC] = beta*out + alpha*inp[N,C]·w[OC,C]ᵀ.
	MatmulForward(out, inp, w Buf, N, C, OC int, alpha, beta float32)
	// MatmulBackward: dinp += alpha*dout·w; dw += alpha*doutᵀ·inp (either may be nil).
	MatmulBackward(dinp, dw, dout, inp, w Buf, N, C, OC int, alpha float32)
	// MatmulQ4Forward: out[N,OC] = inp·dequant(w)ᵀ, dequantizing tiles of rows.
	MatmulQ4Forward(out, inp Buf, w QBuf, N, C, OC int)
	// MatmulQ4Backward: dinp += dout·dequant(w) (a frozen weight has no dw).
	MatmulQ4Backward(dinp, dout Buf, w QBuf, N, C, OC int)
	// MatmulBF16Forward: out[N,OC] = inp·widen(w)ᵀ, widening tiles of rows.
	MatmulBF16Forward(out, inp Buf, w HBuf, N, C, OC int)
	// MatmulBF16Backward: dinp += dout·widen(w) (a frozen weight has no dw).
	MatmulBF16Backward(dinp, dout Buf, w HBuf, N, C, OC int)
	// RoPEForward rotates x [N, nh*hd] in place (rotate_half convention);
	// cos and sin are [maxT, hd/2], position = row mod T.
	RoPEForward(x, cos, sin Buf, N, T, nh, hd int)
	// RoPEBackward applies the inverse rotation to dx in place.
	RoPEBackward(dx, cos, sin Buf, N, T, nh, hd int)
	// AttentionForward: causal grouped-query attention; att [B,H,T,T] keeps probabilities.
	AttentionForward(out, att, q, k, v Buf, B, T, H, KVH, hd int)
	// AttentionBackward accumulates dq, dk, dv.
	AttentionBackward(dq, dk, dv, dout, att, q, k, v Buf, B, T, H, KVH, hd int)
	// AttentionDecode attends one new position to L cached ones (itself
	// included, so no mask): q and out are [H*hd], k and v the cache rows
	// [L, KVH*hd]; att [H, L] receives the probabilities. Generation with a
	// KV cache runs it once per layer and token.
	AttentionDecode(out, att, q, k, v Buf, L, H, KVH, hd int)
	// SwiGLUForward: out = silu(gate) * up.
	SwiGLUForward(out, gate, up Buf)
	// SwiGLUBackward accumulates dgate and dup.
	SwiGLUBackward(dgate, dup, dout, gate, up Buf)
	// Add: out = a + b.
	Add(out, a, b Buf)
	// Accumulate: dst += src.
	Accumulate(dst, src Buf)
	// CrossEntropy fills losses[n] (host, len N) with each row's loss and,
	// when grad, overwrites logits with dscale*(softmax - onehot).
	CrossEntropy(logits Buf, losses []float64, targets []int32, N, V int, dscale float32, grad bool)
	// DropoutForward: out = inp*mask/(1-p), the mask a pure function of (key, index).
	DropoutForward(out, inp Buf, p float32, key uint64)
	// DropoutBackward: dinp += dout*mask/(1-p).
	DropoutBackward(dinp, dout Buf, p float32, key uint64)
	// AdamW updates params in place (see the reference AdamW).
	AdamW(params, grads, m, v Buf, lr, beta1, beta2, eps, wd float64, step int)
	// SumSquares returns the sum of squares of b, accumulated in float64 in a fixed order.
	SumSquares(b Buf) float64
	// Scale multiplies b by s in place.
	Scale(b Buf, s float32)
}

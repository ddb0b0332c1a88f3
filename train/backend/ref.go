package backend

import "math"

// This file holds the plain reference kernels: every layer of the decoder as
// a forward function beside its backward function, generic over float32 and
// float64 so the very same code runs in float64 for finite-difference checks.
// They are single-threaded and take host slices; the CPU backend calls them
// on fixed row ranges from its worker goroutines.
//
// Conventions (llm.c): N is the number of rows (B*T), C the row width.
// Backward functions ACCUMULATE (+=) into their gradient outputs, so the
// caller zeroes gradients once and residual branches simply add up.

// Float is the element type of the reference kernels.
type Float interface{ ~float32 | ~float64 }

// EncoderForward gathers token embeddings: out[n,:] = wte[tokens[n],:].
func EncoderForward[T Float](out, wte []T, tokens []int32, N, C int) {
	for n := 0; n < N; n++ {
		tok := int(tokens[n])
		copy(out[n*C:(n+1)*C], wte[tok*C:(tok+1)*C])
	}
}

// EncoderBackward scatters into the embedding gradient: dwte[tokens[n],:] += dout[n,:].
// Columns [c0,c1) only, so workers owning disjoint columns never collide and
// the sum order over n is fixed.
func EncoderBackward[T Float](dwte, dout []T, tokens []int32, N, C, c0, c1 int) {
	for n := 0; n < N; n++ {
		tok := int(tokens[n])
		d, s := dwte[tok*C:], dout[n*C:]
		for c := c0; c < c1; c++ {
			d[c] += s[c]
		}
	}
}

// RMSNormForward computes out = inp / rms(inp) * w per row, where
// rms = sqrt(mean(inp^2) + eps), and saves rstd = 1/rms for the backward.
func RMSNormForward[T Float](out, rstd, inp, w []T, N, C int, eps float64) {
	for n := 0; n < N; n++ {
		x := inp[n*C : (n+1)*C]
		var ss T
		for _, v := range x {
			ss += v * v
		}
		r := T(1 / math.Sqrt(float64(ss/T(C))+eps))
		rstd[n] = r
		o := out[n*C : (n+1)*C]
		for i, v := range x {
			o[i] = v * r * w[i]
		}
	}
}

// RMSNormBackward accumulates dinp and dw (dw may be nil: a frozen norm).
// With xhat = x*rstd: dw += dout*xhat, dx += rstd*(dout*w - xhat*mean(dout*w*xhat)).
func RMSNormBackward[T Float](dinp, dw, dout, inp, w, rstd []T, N, C int) {
	for n := 0; n < N; n++ {
		x, dy, dx := inp[n*C:(n+1)*C], dout[n*C:(n+1)*C], dinp[n*C:(n+1)*C]
		r := rstd[n]
		var dot T
		for i := range x {
			dot += dy[i] * w[i] * x[i] * r
		}
		dot /= T(C)
		for i := range x {
			xhat := x[i] * r
			if dw != nil {
				dw[i] += dy[i] * xhat
			}
			dx[i] += r * (dy[i]*w[i] - xhat*dot)
		}
	}
}

// MatmulForward computes out[N,OC] = beta*out + alpha*inp[N,C]·w[OC,C]ᵀ
// (y = x·Wᵀ, Hugging Face's [out,in] weight layout). beta == 0 overwrites.
func MatmulForward[T Float](out, inp, w []T, N, C, OC int, alpha, beta T) {
	for n := 0; n < N; n++ {
		x := inp[n*C : (n+1)*C]
		for o := 0; o < OC; o++ {
			wr := w[o*C : (o+1)*C]
			var s T
			for i, v := range x {
				s += v * wr[i]
			}
			if beta == 0 {
				out[n*OC+o] = alpha * s
			} else {
				out[n*OC+o] = alpha*s + beta*out[n*OC+o]
			}
		}
	}
}

// MatmulBackward accumulates dinp += alpha*dout·w and dw += alpha*doutᵀ·inp.
// Either gradient may be nil (a frozen weight has no dw).
func MatmulBackward[T Float](dinp, dw, dout, inp, w []T, N, C, OC int, alpha T) {
	for n := 0; n < N; n++ {
		dy := dout[n*OC : (n+1)*OC]
		if dinp != nil {
			dx := dinp[n*C : (n+1)*C]
			for o, g := range dy {
				g *= alpha
				wr := w[o*C : (o+1)*C]
				for i := range dx {
					dx[i] += g * wr[i]
				}
			}
		}
		if dw != nil {
			x := inp[n*C : (n+1)*C]
			for o, g := range dy {
				g *= alpha
				dr := dw[o*C : (o+1)*C]
				for i := range dr {
					dr[i] += g * x[i]
				}
			}
		}
	}
}

// RoPETables returns cos and sin [maxT, hd/2] for rotary embeddings with
// inverse frequencies theta^(-2i/hd), computed in float64.
func RoPETables(maxT, hd int, theta float64) (cos, sin []float64) {
	return RoPETablesFreq(maxT, RoPEInvFreq(hd, theta))
}

// RoPEInvFreq returns the hd/2 inverse frequencies theta^(-2i/hd).
func RoPEInvFreq(hd int, theta float64) []float64 {
	f := make([]float64, hd/2)
	for i := range f {
		f[i] = 1 / math.Pow(theta, float64(2*i)/float64(hd))
	}
	return f
}

// RoPETablesFreq returns cos and sin [maxT, len(invFreq)] of the angles
// t*invFreq[i], computed in float64.
func RoPETablesFreq(maxT int, invFreq []float64) (cos, sin []float64) {
	half := len(invFreq)
	cos, sin = make([]float64, maxT*half), make([]float64, maxT*half)
	for t := 0; t < maxT; t++ {
		for i, f := range invFreq {
			a := float64(t) * f
			cos[t*half+i], sin[t*half+i] = math.Cos(a), math.Sin(a)
		}
	}
	return cos, sin
}

// RoPEForward rotates x [B*T, nh*hd] in place with Hugging Face's
// rotate_half convention: within each head, element i pairs with i+hd/2,
// x1' = x1*cos - x2*sin, x2' = x2*cos + x1*sin, at position t (mod T).
func RoPEForward[T Float](x, cos, sin []T, N, T_, nh, hd int) {
	rope(x, cos, sin, N, T_, nh, hd, 1)
}

// RoPEBackward applies the transposed rotation to dx in place (rotation by -angle).
func RoPEBackward[T Float](dx, cos, sin []T, N, T_, nh, hd int) {
	rope(dx, cos, sin, N, T_, nh, hd, -1)
}

func rope[T Float](x, cos, sin []T, N, T_, nh, hd int, dir T) {
	half := hd / 2
	for n := 0; n < N; n++ {
		t := n % T_
		c, s := cos[t*half:(t+1)*half], sin[t*half:(t+1)*half]
		for h := 0; h < nh; h++ {
			v := x[(n*nh+h)*hd : (n*nh+h+1)*hd]
			for i := 0; i < half; i++ {
				x1, x2 := v[i], v[i+half]
				si := dir * s[i]
				v[i] = x1*c[i] - x2*si
				v[i+half] = x2*c[i] + x1*si
			}
		}
	}
}

// AttentionForward is causal grouped-query attention. q is [B*T, H*hd], k
// and v are [B*T, KVH*hd] (query head h reads kv head h/(H/KVH)), out is
// [B*T, H*hd], and att [B, H, T, T] keeps the softmax probabilities (zero
// above the diagonal) for the backward. It covers (b,h) pairs [bh0,bh1).
func AttentionForward[T Float](out, att, q, k, v []T, B, T_, H, KVH, hd, bh0, bh1 int) {
	scale := T(1 / math.Sqrt(float64(hd)))
	C, KC, grp := H*hd, KVH*hd, H/KVH
	for bh := bh0; bh < bh1; bh++ {
		b, h := bh/H, bh%H
		kh := h / grp
		for t := 0; t < T_; t++ {
			qt := q[(b*T_+t)*C+h*hd : (b*T_+t)*C+(h+1)*hd]
			row := att[(bh*T_+t)*T_ : (bh*T_+t+1)*T_]
			maxv := T(math.Inf(-1))
			for t2 := 0; t2 <= t; t2++ {
				kt := k[(b*T_+t2)*KC+kh*hd : (b*T_+t2)*KC+(kh+1)*hd]
				var s T
				for i := range qt {
					s += qt[i] * kt[i]
				}
				s *= scale
				row[t2] = s
				if s > maxv {
					maxv = s
				}
			}
			var sum T
			for t2 := 0; t2 <= t; t2++ {
				e := T(math.Exp(float64(row[t2] - maxv)))
				row[t2] = e
				sum += e
			}
			inv := 1 / sum
			for t2 := 0; t2 <= t; t2++ {
				row[t2] *= inv
			}
			for t2 := t + 1; t2 < T_; t2++ {
				row[t2] = 0
			}
			o := out[(b*T_+t)*C+h*hd : (b*T_+t)*C+(h+1)*hd]
			for i := range o {
				o[i] = 0
			}
			for t2 := 0; t2 <= t; t2++ {
				vt := v[(b*T_+t2)*KC+kh*hd : (b*T_+t2)*KC+(kh+1)*hd]
				p := row[t2]
				for i := range o {
					o[i] += p * vt[i]
				}
			}
		}
	}
}

// AttentionBackward accumulates dq, dk, dv from dout. It covers (b, kv head)
// pairs [bk0,bk1): all query heads sharing a kv head are done by the same
// caller in a fixed order, so dk and dv are written without races and the
// sums repeat bit for bit. datt is scratch of at least T values.
func AttentionBackward[T Float](dq, dk, dv, datt, dout, att, q, k, v []T, B, T_, H, KVH, hd, bk0, bk1 int) {
	scale := T(1 / math.Sqrt(float64(hd)))
	C, KC, grp := H*hd, KVH*hd, H/KVH
	for bk := bk0; bk < bk1; bk++ {
		b, kh := bk/KVH, bk%KVH
		for h := kh * grp; h < (kh+1)*grp; h++ {
			bh := b*H + h
			for t := 0; t < T_; t++ {
				row := att[(bh*T_+t)*T_ : (bh*T_+t+1)*T_]
				do := dout[(b*T_+t)*C+h*hd : (b*T_+t)*C+(h+1)*hd]
				// datt = dout·v, dv += p*dout
				var dot T
				for t2 := 0; t2 <= t; t2++ {
					off := (b*T_+t2)*KC + kh*hd
					vt, dvt := v[off:off+hd], dv[off:off+hd]
					var s T
					p := row[t2]
					for i := range do {
						s += do[i] * vt[i]
						dvt[i] += p * do[i]
					}
					datt[t2] = s
					dot += s * p
				}
				// softmax backward, then the scaled q·k product
				qoff := (b*T_+t)*C + h*hd
				qt, dqt := q[qoff:qoff+hd], dq[qoff:qoff+hd]
				for t2 := 0; t2 <= t; t2++ {
					g := row[t2] * (datt[t2] - dot) * scale
					off := (b*T_+t2)*KC + kh*hd
					kt, dkt := k[off:off+hd], dk[off:off+hd]
					for i := range qt {
						dqt[i] += g * kt[i]
						dkt[i] += g * qt[i]
					}
				}
			}
		}
	}
}

// AttentionDecode attends the query heads [h0,h1) of one position, q
// [H*hd], to L cached keys and values k, v [L, KVH*hd] (query head h reads
// kv head h/(H/KVH)); out [H*hd] gets the result and att [H, L] the
// softmax probabilities. Every cached position is visible: the cache holds
// only the past and the position itself.
func AttentionDecode[T Float](out, att, q, k, v []T, L, H, KVH, hd, h0, h1 int) {
	scale := T(1 / math.Sqrt(float64(hd)))
	KC, grp := KVH*hd, H/KVH
	for h := h0; h < h1; h++ {
		kh := h / grp
		qh := q[h*hd : (h+1)*hd]
		row := att[h*L : (h+1)*L]
		maxv := T(math.Inf(-1))
		for t := 0; t < L; t++ {
			kt := k[t*KC+kh*hd : t*KC+(kh+1)*hd]
			var s T
			for i := range qh {
				s += qh[i] * kt[i]
			}
			s *= scale
			row[t] = s
			maxv = max(maxv, s)
		}
		var sum T
		for t := range row {
			e := T(math.Exp(float64(row[t] - maxv)))
			row[t] = e
			sum += e
		}
		inv := 1 / sum
		o := out[h*hd : (h+1)*hd]
		clear(o)
		for t, p := range row {
			p *= inv
			row[t] = p
			vt := v[t*KC+kh*hd : t*KC+(kh+1)*hd]
			for i := range o {
				o[i] += p * vt[i]
			}
		}
	}
}

// SwiGLUForward computes out = silu(gate) * up elementwise, silu(x) = x*sigmoid(x).
func SwiGLUForward[T Float](out, gate, up []T) {
	for i, g := range gate {
		s := T(1 / (1 + math.Exp(-float64(g))))
		out[i] = g * s * up[i]
	}
}

// SwiGLUBackward accumulates dgate += dout*up*silu'(gate) and dup += dout*silu(gate),
// silu'(x) = s*(1 + x*(1-s)) with s = sigmoid(x).
func SwiGLUBackward[T Float](dgate, dup, dout, gate, up []T) {
	for i, g := range gate {
		s := T(1 / (1 + math.Exp(-float64(g))))
		dgate[i] += dout[i] * up[i] * s * (1 + g*(1-s))
		dup[i] += dout[i] * g * s
	}
}

// Add computes out = a + b (the residual connection; its backward is two Accumulates).
func Add[T Float](out, a, b []T) {
	for i := range out {
		out[i] = a[i] + b[i]
	}
}

// Accumulate computes dst += src.
func Accumulate[T Float](dst, src []T) {
	for i := range dst {
		dst[i] += src[i]
	}
}

// CrossEntropy is the fused softmax + loss + dlogits. For each row n of
// logits [N,V] it stores the loss -log softmax(logits)[targets[n]] in
// losses[n] and, when grad, overwrites the row with dscale*(softmax - onehot).
// A negative target marks a padded position: zero loss, zero gradient.
// The log-sum-exp is taken in float64 so the loss is exact to float32 inputs.
func CrossEntropy[T Float](logits []T, losses []float64, targets []int32, N, V int, dscale T, grad bool) {
	for n := 0; n < N; n++ {
		row := logits[n*V : (n+1)*V]
		tgt := int(targets[n])
		if tgt < 0 {
			losses[n] = 0
			if grad {
				for i := range row {
					row[i] = 0
				}
			}
			continue
		}
		maxv := math.Inf(-1)
		for _, v := range row {
			maxv = math.Max(maxv, float64(v))
		}
		var sum float64
		for _, v := range row {
			sum += math.Exp(float64(v) - maxv)
		}
		lse := maxv + math.Log(sum)
		losses[n] = lse - float64(row[tgt])
		if grad {
			for i, v := range row {
				p := math.Exp(float64(v) - lse)
				if i == tgt {
					p--
				}
				row[i] = dscale * T(p)
			}
		}
	}
}

// DropoutMask reports whether element i of the stream keyed by key is kept
// when dropping with probability p. It is a pure function of (key, i): a
// counter-based generator, so masks can be recomputed in the backward and
// there is no RNG state to checkpoint.
func DropoutMask(key uint64, i int, p float32) bool {
	u := Mix64(key + uint64(i)*0x9E3779B97F4A7C15)
	return float32(u>>40)*(1.0/(1<<24)) >= p
}

// Mix64 is the SplitMix64 finaliser, a strong 64-bit bijective hash.
func Mix64(z uint64) uint64 {
	z ^= z >> 30
	z *= 0xBF58476D1CE4E5B9
	z ^= z >> 27
	z *= 0x94D049BB133111EB
	z ^= z >> 31
	return z
}

// DropoutForward computes out = inp*mask/(1-p), elements [i0,i1).
func DropoutForward[T Float](out, inp []T, p float32, key uint64, i0, i1 int) {
	s := T(1 / (1 - float64(p)))
	for i := i0; i < i1; i++ {
		if DropoutMask(key, i, p) {
			out[i] = inp[i] * s
		} else {
			out[i] = 0
		}
	}
}

// DropoutBackward accumulates dinp += dout*mask/(1-p), elements [i0,i1).
func DropoutBackward[T Float](dinp, dout []T, p float32, key uint64, i0, i1 int) {
	s := T(1 / (1 - float64(p)))
	for i := i0; i < i1; i++ {
		if DropoutMask(key, i, p) {
			dinp[i] += dout[i] * s
		}
	}
}

// AdamW updates params in place with decoupled weight decay and bias
// correction (step counts from 1):
//
//	m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g²
//	p -= lr * (m/(1-b1^t) / (sqrt(v/(1-b2^t)) + eps) + wd*p)
func AdamW[T Float](params, grads, m, v []T, lr, beta1, beta2, eps, wd float64, step int) {
	bc1 := 1 - math.Pow(beta1, float64(step))
	bc2 := 1 - math.Pow(beta2, float64(step))
	b1, b2 := T(beta1), T(beta2)
	for i, g := range grads {
		mi := b1*m[i] + (1-b1)*g
		vi := b2*v[i] + (1-b2)*g*g
		m[i], v[i] = mi, vi
		mhat := float64(mi) / bc1
		vhat := float64(vi) / bc2
		p := float64(params[i])
		params[i] = T(p - lr*(mhat/(math.Sqrt(vhat)+eps)+wd*p))
	}
}

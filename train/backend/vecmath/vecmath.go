// Package vecmath runs the exp-bound elementwise functions of a training
// step (SwiGLU's sigmoid, attention's causal softmax) with AVX-512 and a
// float32 exp where the CPU has it, and in plain Go (float64 exp, the
// reference's arithmetic) elsewhere. Results differ from the reference by
// the float32 exp's rounding (a few ulp) and repeat bit for bit on one
// machine.
package vecmath

import "math"

// Implementation is "avx512" or "go": which path runs here.
func Implementation() string {
	if fast {
		return "avx512"
	}
	return "go"
}

// SwiGLUForward sets out = silu(gate) * up.
func SwiGLUForward(out, gate, up []float32) {
	if len(gate) == 0 {
		return
	}
	_, _ = out[len(gate)-1], up[len(gate)-1]
	if fast {
		swigluFwd(out, gate, up)
		return
	}
	for i, g := range gate {
		s := float32(1 / (1 + math.Exp(-float64(g))))
		out[i] = g * s * up[i]
	}
}

// SwiGLUBackward accumulates dgate += dout*up*silu'(gate) and
// dup += dout*silu(gate).
func SwiGLUBackward(dgate, dup, dout, gate, up []float32) {
	if len(gate) == 0 {
		return
	}
	_, _, _, _ = dgate[len(gate)-1], dup[len(gate)-1], dout[len(gate)-1], up[len(gate)-1]
	if fast {
		swigluBwd(dgate, dup, dout, gate, up)
		return
	}
	for i, g := range gate {
		s := float32(1 / (1 + math.Exp(-float64(g))))
		dgate[i] += dout[i] * up[i] * s * (1 + g*(1-s))
		dup[i] += dout[i] * g * s
	}
}

// CausalSoftmax turns the scores row[0..t] of query position t into
// probabilities and zeroes row[t+1:].
func CausalSoftmax(row []float32, t int) {
	_ = row[t]
	if fast {
		causalSoftmax(row, t)
		return
	}
	maxv := float32(math.Inf(-1))
	for _, x := range row[:t+1] {
		maxv = max(maxv, x)
	}
	var sum float32
	for i, x := range row[:t+1] {
		e := float32(math.Exp(float64(x - maxv)))
		row[i] = e
		sum += e
	}
	inv := 1 / sum
	for i := range row[:t+1] {
		row[i] *= inv
	}
	clear(row[t+1:])
}

package backend

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// These tests check each reference layer's backward against gorgonia's
// symbolic autodiff on the same float64 inputs. They use the LispMachine:
// the TapeMachine can reuse registers wrongly (gorgonia issue 576).

// gnode makes a named float64 input of the given shape holding data (copied).
func gnode(g *G.ExprGraph, name string, data []float64, shape ...int) *G.Node {
	t := tensor.New(tensor.WithShape(shape...), tensor.WithBacking(append([]float64(nil), data...)))
	return G.NewTensor(g, tensor.Float64, len(shape), G.WithShape(shape...), G.WithName(name), G.WithValue(t))
}

func gconst(data []float64, shape ...int) *G.Node {
	return G.NewConstant(tensor.New(tensor.WithShape(shape...), tensor.WithBacking(append([]float64(nil), data...))))
}

func must(n *G.Node, err error) *G.Node {
	if err != nil {
		panic(err)
	}
	return n
}

// runGorgonia builds loss = Σ out ⊙ r (or out itself when r is nil, for a
// scalar out), runs forward and backward, and returns each input's gradient.
func runGorgonia(t *testing.T, g *G.ExprGraph, out *G.Node, r []float64, inputs ...*G.Node) [][]float64 {
	t.Helper()
	loss := out
	if r != nil {
		loss = must(G.Sum(must(G.HadamardProd(out, gconst(r, out.Shape()...)))))
	}
	_ = loss // the LispMachine differentiates from the graph's scalar root itself
	m := G.NewLispMachine(g)
	defer m.Close()
	if err := m.RunAll(); err != nil {
		t.Fatal(err)
	}
	var grads [][]float64
	for _, in := range inputs {
		gv, err := in.Grad()
		if err != nil {
			t.Fatalf("gradient of %s: %v", in.Name(), err)
		}
		grads = append(grads, append([]float64(nil), gv.Data().([]float64)...))
	}
	return grads
}

func compareGrads(t *testing.T, what string, got, want []float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d gradient values, gorgonia has %d", what, len(got), len(want))
	}
	for i := range got {
		if math.Abs(got[i]-want[i]) > 1e-9*(1+math.Abs(want[i])) {
			t.Fatalf("%s[%d]: backward %.12g, gorgonia %.12g", what, i, got[i], want[i])
		}
	}
}

func TestLayersAgainstGorgonia(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	const N, C, OC = 6, 8, 5

	t.Run("matmul", func(t *testing.T) {
		x, w, r := randVec(rng, N*C, 1), randVec(rng, OC*C, 1), randVec(rng, N*OC, 1)
		g := G.NewGraph()
		xn, wn := gnode(g, "x", x, N, C), gnode(g, "w", w, OC, C)
		y := must(G.Mul(xn, must(G.Transpose(wn))))
		want := runGorgonia(t, g, y, r, xn, wn)
		dx, dw := make([]float64, len(x)), make([]float64, len(w))
		MatmulBackward(dx, dw, r, x, w, N, C, OC, 1)
		compareGrads(t, "dx", dx, want[0])
		compareGrads(t, "dw", dw, want[1])
	})

	t.Run("rmsnorm", func(t *testing.T) {
		const eps = 1e-5
		x, w, r := randVec(rng, N*C, 1), randVec(rng, C, 1), randVec(rng, N*C, 1)
		g := G.NewGraph()
		xn, wn := gnode(g, "x", x, N, C), gnode(g, "w", w, 1, C)
		ms := must(G.Mean(must(G.Square(xn)), 1))
		epsv := make([]float64, N)
		for i := range epsv {
			epsv[i] = eps
		}
		rstd := must(G.Inverse(must(G.Sqrt(must(G.Add(ms, gconst(epsv, N)))))))
		rstd = must(G.Reshape(rstd, tensor.Shape{N, 1}))
		xhat := must(G.BroadcastHadamardProd(xn, rstd, nil, []byte{1}))
		y := must(G.BroadcastHadamardProd(xhat, wn, nil, []byte{0}))
		want := runGorgonia(t, g, y, r, xn, wn)
		out, rs := make([]float64, N*C), make([]float64, N)
		RMSNormForward(out, rs, x, w, N, C, eps)
		dx, dw := make([]float64, len(x)), make([]float64, len(w))
		RMSNormBackward(dx, dw, r, x, w, rs, N, C)
		compareGrads(t, "dx", dx, want[0])
		compareGrads(t, "dw", dw, want[1])
	})

	t.Run("swiglu", func(t *testing.T) {
		gt, u, r := randVec(rng, N*C, 2), randVec(rng, N*C, 1), randVec(rng, N*C, 1)
		g := G.NewGraph()
		gn, un := gnode(g, "gate", gt, N, C), gnode(g, "up", u, N, C)
		silu := must(G.HadamardProd(gn, must(G.Sigmoid(gn))))
		y := must(G.HadamardProd(silu, un))
		want := runGorgonia(t, g, y, r, gn, un)
		dg, du := make([]float64, len(gt)), make([]float64, len(u))
		SwiGLUBackward(dg, du, r, gt, u)
		compareGrads(t, "dgate", dg, want[0])
		compareGrads(t, "dup", du, want[1])
	})

	t.Run("crossentropy", func(t *testing.T) {
		const V = 7
		logits := randVec(rng, N*V, 2)
		targets := []int32{0, 6, 2, 3, 3, 1}
		onehot := make([]float64, N*V)
		for n, tg := range targets {
			onehot[n*V+int(tg)] = 1
		}
		g := G.NewGraph()
		ln := gnode(g, "logits", logits, N, V)
		logp := must(G.Log(must(G.SoftMax(ln))))
		loss := must(G.Neg(must(G.Sum(must(G.HadamardProd(logp, gconst(onehot, N, V)))))))
		want := runGorgonia(t, g, loss, nil, ln)
		d := append([]float64(nil), logits...)
		CrossEntropy(d, make([]float64, N), targets, N, V, 1, true)
		compareGrads(t, "dlogits", d, want[0])
	})

	t.Run("rope", func(t *testing.T) {
		const T, hd = 5, 6
		x, r := randVec(rng, T*hd, 1), randVec(rng, T*hd, 1)
		cos, sin := RoPETables(T, hd, 10000)
		full := func(tab []float64) []float64 { // [T, hd]: the half table repeated, as HF does
			out := make([]float64, T*hd)
			for t := 0; t < T; t++ {
				for i := 0; i < hd; i++ {
					out[t*hd+i] = tab[t*hd/2+i%(hd/2)]
				}
			}
			return out
		}
		g := G.NewGraph()
		xn := gnode(g, "x", x, T, hd)
		// rotate_half(x) = cat(-x2, x1) as x·P (gorgonia's Slice/Concat
		// gradients are unreliable in the LispMachine, so avoid them)
		P := make([]float64, hd*hd)
		for i := 0; i < hd/2; i++ {
			P[(i+hd/2)*hd+i] = -1 // out[i] = -x[i+hd/2]
			P[i*hd+i+hd/2] = 1    // out[i+hd/2] = x[i]
		}
		rot := must(G.Mul(xn, gconst(P, hd, hd)))
		y := must(G.Add(must(G.HadamardProd(xn, gconst(full(cos), T, hd))), must(G.HadamardProd(rot, gconst(full(sin), T, hd)))))
		want := runGorgonia(t, g, y, r, xn)
		dx := append([]float64(nil), r...)
		RoPEBackward(dx, cos, sin, T, T, 1, hd)
		compareGrads(t, "dx", dx, want[0])
	})

	t.Run("attention/gqa", func(t *testing.T) {
		// one sequence, two query heads sharing one kv head
		const T, H, hd = 5, 2, 4
		q, k, v := randVec(rng, T*H*hd, 1), randVec(rng, T*hd, 1), randVec(rng, T*hd, 1)
		r := randVec(rng, T*H*hd, 1)
		mask := make([]float64, T*T)
		for i := 0; i < T; i++ {
			for j := i + 1; j < T; j++ {
				mask[i*T+j] = -1e30
			}
		}
		// per-head query inputs and losses: no Slice/Concat (see rope)
		g := G.NewGraph()
		kn, vn := gnode(g, "k", k, T, hd), gnode(g, "v", v, T, hd)
		var qs []*G.Node
		var loss *G.Node
		for h := 0; h < H; h++ {
			qh, rh := make([]float64, T*hd), make([]float64, T*hd)
			for t := 0; t < T; t++ {
				copy(qh[t*hd:(t+1)*hd], q[t*H*hd+h*hd:])
				copy(rh[t*hd:(t+1)*hd], r[t*H*hd+h*hd:])
			}
			qn := gnode(g, fmt.Sprintf("q%d", h), qh, T, hd)
			qs = append(qs, qn)
			s := must(G.Mul(qn, must(G.Transpose(kn))))
			s = must(G.HadamardProd(s, gconst(fill(T*T, 1/math.Sqrt(hd)), T, T)))
			s = must(G.Add(s, gconst(mask, T, T)))
			o := must(G.Mul(must(G.SoftMax(s)), vn))
			l := must(G.Sum(must(G.HadamardProd(o, gconst(rh, T, hd)))))
			if loss == nil {
				loss = l
			} else {
				loss = must(G.Add(loss, l))
			}
		}
		want := runGorgonia(t, g, loss, nil, append(qs, kn, vn)...)
		out, att := make([]float64, T*H*hd), make([]float64, H*T*T)
		AttentionForward(out, att, q, k, v, 1, T, H, 1, hd, 0, H)
		dq, dk, dv := make([]float64, len(q)), make([]float64, len(k)), make([]float64, len(v))
		AttentionBackward(dq, dk, dv, make([]float64, T), r, att, q, k, v, 1, T, H, 1, hd, 0, 1)
		for h := 0; h < H; h++ {
			dqh := make([]float64, T*hd)
			for t := 0; t < T; t++ {
				copy(dqh[t*hd:(t+1)*hd], dq[t*H*hd+h*hd:])
			}
			compareGrads(t, fmt.Sprintf("dq head %d", h), dqh, want[h])
		}
		compareGrads(t, "dk", dk, want[H])
		compareGrads(t, "dv", dv, want[H+1])
	})
}

func fill(n int, v float64) []float64 {
	out := make([]float64, n)
	for i := range out {
		out[i] = v
	}
	return out
}

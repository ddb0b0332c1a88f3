//go:build cuda

package kernels

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencluster/opencluster/quant"
	"github.com/opencluster/opencluster/train"
	"github.com/opencluster/opencluster/train/backend"
)

// Every op of the CUDA backend against the CPU reference on fresh random
// inputs with odd sizes. Outputs that an op overwrites are poisoned with NaN
// first, so an element the kernel forgets to write fails the comparison;
// gradients that an op accumulates into start from the same random values on
// both sides. This binary only links where the CUDA toolkit is installed and
// only starts where a GPU is (gorgonia.org/cu exits without one), so it is
// built here with `go test -c -tags cuda -o bin/kernels.test ./kernels` and
// run on the GPU machine by bench/gpu-check.sh.

const (
	tolFP32 = 1e-5
	tolBF16 = 2e-2
)

// Odd sizes: no tile, warp or vector width divides them (tN, tC, tOC are in
// tolerance_test.go, shared with the plain build).
const (
	tB, tT   = 3, 13
	tH, tKVH = 4, 2
	tHD      = 6
	tV       = 259
)

func newGPU(t *testing.T) *CUDA {
	t.Helper()
	c, err := NewCUDA(0)
	if err != nil {
		t.Skipf("no usable GPU: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return c
}

var seedCounter uint64

func randn(n int, std float64) []float32 {
	seedCounter++
	r := rand.New(rand.NewPCG(seedCounter, 7))
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(r.NormFloat64() * std)
	}
	return x
}

func nans(n int) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(math.NaN())
	}
	return x
}

// pair holds the same tensor on both backends.
type pair struct {
	cpu, gpu backend.Buf
	n        int
}

type env struct {
	t   *testing.T
	cpu backend.Backend
	gpu *CUDA
}

func newEnv(t *testing.T) *env {
	return &env{t: t, cpu: backend.NewCPU(2), gpu: newGPU(t)}
}

// in uploads the same values to both backends.
func (e *env) in(x []float32) pair {
	p := pair{e.cpu.Alloc(len(x)), e.gpu.Alloc(len(x)), len(x)}
	e.cpu.Upload(p.cpu, x)
	e.gpu.Upload(p.gpu, x)
	return p
}

// out is an overwritten output: zero on the CPU, NaN on the GPU.
func (e *env) out(n int) pair {
	p := pair{e.cpu.Alloc(n), e.gpu.Alloc(n), n}
	e.gpu.Upload(p.gpu, nans(n))
	return p
}

// check compares the GPU tensor with the CPU one: |g-c| <= tol*max(|c|, mean|c|).
func (e *env) check(name string, p pair, tol float64) {
	e.t.Helper()
	want, got := make([]float32, p.n), make([]float32, p.n)
	e.cpu.Download(want, p.cpu)
	e.gpu.Download(got, p.gpu)
	compare(e.t, name, got, want, tol)
}

func compare(t *testing.T, name string, got, want []float32, tol float64) {
	t.Helper()
	bad := outOfTol(got, want, tol)
	for _, i := range bad[:min(len(bad), 5)] {
		t.Errorf("%s[%d] = %g on the GPU, %g on the CPU (tolerance %g)", name, i, got[i], want[i], tol)
	}
	if len(bad) > 0 {
		t.Errorf("%s: %d of %d elements differ", name, len(bad), len(want))
	}
}

func TestEncoder(t *testing.T) {
	e := newEnv(t)
	tokens := make([]int32, tN)
	for i := range tokens {
		tokens[i] = int32((i * 97) % tV)
	}
	tokens[5] = tokens[6] // a repeated token: the backward must add both rows
	wte := e.in(randn(tV*tC, 1))
	out := e.out(tN * tC)
	e.cpu.EncoderForward(out.cpu, wte.cpu, tokens, tN, tC)
	e.gpu.EncoderForward(out.gpu, wte.gpu, tokens, tN, tC)
	e.check("encoder out", out, 0)
	dwte, dout := e.in(randn(tV*tC, 1)), e.in(randn(tN*tC, 1))
	e.cpu.EncoderBackward(dwte.cpu, dout.cpu, tokens, tN, tC)
	e.gpu.EncoderBackward(dwte.gpu, dout.gpu, tokens, tN, tC)
	e.check("encoder dwte", dwte, 0) // same sum order: bit for bit
}

func TestRMSNorm(t *testing.T) {
	e := newEnv(t)
	inp, w := e.in(randn(tN*tC, 1)), e.in(randn(tC, 1))
	out, rstd := e.out(tN*tC), e.out(tN)
	e.cpu.RMSNormForward(out.cpu, rstd.cpu, inp.cpu, w.cpu, tN, tC, 1e-5)
	e.gpu.RMSNormForward(out.gpu, rstd.gpu, inp.gpu, w.gpu, tN, tC, 1e-5)
	e.check("rmsnorm out", out, tolFP32)
	e.check("rmsnorm rstd", rstd, tolFP32)
	for _, frozen := range []bool{false, true} {
		dinp, dout := e.in(randn(tN*tC, 1)), e.in(randn(tN*tC, 1))
		dw := e.in(randn(tC, 1))
		var dwc, dwg backend.Buf = dw.cpu, dw.gpu
		if frozen {
			dwc, dwg = nil, nil
		}
		e.cpu.RMSNormBackward(dinp.cpu, dwc, dout.cpu, inp.cpu, w.cpu, rstd.cpu, tN, tC)
		e.gpu.RMSNormBackward(dinp.gpu, dwg, dout.gpu, inp.gpu, w.gpu, rstd.gpu, tN, tC)
		e.check(fmt.Sprintf("rmsnorm dinp (frozen=%v)", frozen), dinp, tolFP32)
		e.check(fmt.Sprintf("rmsnorm dw (frozen=%v)", frozen), dw, tolFP32)
	}
}

// precision is a matmul precision the device runs natively and the
// tolerance of a product with inner dimension K at it.
type precision struct {
	p   Precision
	tol func(K int) float64
}

// precisions lists the matmul precisions the device runs natively.
func precisions(c *CUDA) []precision {
	fixed := func(tol float64) func(int) float64 { return func(int) float64 { return tol } }
	ps := []precision{{FP32, fixed(tolFP32)}, {FP16, fixed(tolBF16)}}
	if c.Arch() >= 80 {
		ps = append(ps, precision{TF32, tolTF32}, precision{BF16, fixed(tolBF16)})
	}
	return ps
}

func TestMatmul(t *testing.T) {
	e := newEnv(t)
	for _, pr := range precisions(e.gpu) {
		t.Run(string(pr.p), func(t *testing.T) {
			e.t = t
			if _, err := e.gpu.SetPrecision(pr.p); err != nil {
				t.Fatal(err)
			}
			defer e.gpu.SetPrecision(FP32)
			inp, w := e.in(randn(tN*tC, 1)), e.in(randn(tOC*tC, 0.1))
			out := e.out(tN * tOC)
			e.cpu.MatmulForward(out.cpu, inp.cpu, w.cpu, tN, tC, tOC, 1, 0)
			e.gpu.MatmulForward(out.gpu, inp.gpu, w.gpu, tN, tC, tOC, 1, 0)
			e.check("matmul out", out, pr.tol(tC))
			acc := e.in(randn(tN*tOC, 1)) // alpha and beta
			e.cpu.MatmulForward(acc.cpu, inp.cpu, w.cpu, tN, tC, tOC, 0.5, 1)
			e.gpu.MatmulForward(acc.gpu, inp.gpu, w.gpu, tN, tC, tOC, 0.5, 1)
			e.check("matmul out beta=1", acc, pr.tol(tC))
			dout := e.in(randn(tN*tOC, 1))
			dinp, dw := e.in(randn(tN*tC, 1)), e.in(randn(tOC*tC, 1))
			e.cpu.MatmulBackward(dinp.cpu, dw.cpu, dout.cpu, inp.cpu, w.cpu, tN, tC, tOC, 0.75)
			e.gpu.MatmulBackward(dinp.gpu, dw.gpu, dout.gpu, inp.gpu, w.gpu, tN, tC, tOC, 0.75)
			e.check("matmul dinp", dinp, pr.tol(tOC))
			e.check("matmul dw", dw, pr.tol(tN))
		})
	}
}

func TestNF4(t *testing.T) {
	e := newEnv(t)
	for _, f := range []quant.Format{quant.NF4, quant.FP4} {
		for _, double := range []bool{false, true} {
			host := randn(tOC*tC, 0.05)
			q, err := quant.Quantize4(host, []int{tOC, tC}, f, 64, double)
			if err != nil {
				t.Fatal(err)
			}
			name := fmt.Sprintf("%v double=%v", f, double)
			qc, qg := e.cpu.UploadQ4(q), e.gpu.UploadQ4(q)
			// The plain dequantizer: bit for bit the reference.
			want := make([]float32, q.Len())
			q.DequantizeReference(want)
			d := e.gpu.Alloc(q.Len())
			e.gpu.Upload(d, nans(q.Len()))
			e.gpu.DequantizeQ4(d, qg)
			got := make([]float32, q.Len())
			e.gpu.Download(got, d)
			compare(t, name+" dequantize", got, want, 0)
			for _, pr := range precisions(e.gpu) {
				if pr.p == TF32 {
					continue // no tf32 NF4 kernel: TF32 runs the fp32 one
				}
				e.t = t
				e.gpu.SetPrecision(pr.p)
				inp := e.in(randn(tN*tC, 1))
				out := e.out(tN * tOC)
				e.cpu.MatmulQ4Forward(out.cpu, inp.cpu, qc, tN, tC, tOC)
				e.gpu.MatmulQ4Forward(out.gpu, inp.gpu, qg, tN, tC, tOC)
				e.check(name+" "+string(pr.p)+" forward", out, pr.tol(tC))
				dinp, dout := e.in(randn(tN*tC, 1)), e.in(randn(tN*tOC, 1))
				e.cpu.MatmulQ4Backward(dinp.cpu, dout.cpu, qc, tN, tC, tOC)
				e.gpu.MatmulQ4Backward(dinp.gpu, dout.gpu, qg, tN, tC, tOC)
				e.check(name+" "+string(pr.p)+" backward", dinp, pr.tol(tOC))
			}
			e.gpu.SetPrecision(FP32)
		}
	}
}

// TestBF16 checks the bfloat16 embedding gather (bit for bit: widening is
// exact) and the tiled bf16 matmuls against the CPU backend.
func TestBF16(t *testing.T) {
	e := newEnv(t)
	host := randn(tOC*tC, 0.05)
	bits := make([]uint16, len(host))
	quant.NarrowBF16(bits, host)
	hc, hg := e.cpu.UploadBF16(bits), e.gpu.UploadBF16(bits)
	tokens := make([]int32, tN)
	for i := range tokens {
		tokens[i] = int32((i * 31) % tOC)
	}
	emb := e.out(tN * tC)
	e.cpu.EncoderForwardBF16(emb.cpu, hc, tokens, tN, tC)
	e.gpu.EncoderForwardBF16(emb.gpu, hg, tokens, tN, tC)
	e.check("bf16 embedding", emb, 0)
	for _, pr := range precisions(e.gpu) {
		e.t = t
		e.gpu.SetPrecision(pr.p)
		inp := e.in(randn(tN*tC, 1))
		out := e.out(tN * tOC)
		e.cpu.MatmulBF16Forward(out.cpu, inp.cpu, hc, tN, tC, tOC)
		e.gpu.MatmulBF16Forward(out.gpu, inp.gpu, hg, tN, tC, tOC)
		e.check("bf16 "+string(pr.p)+" forward", out, pr.tol(tC))
		dinp, dout := e.in(randn(tN*tC, 1)), e.in(randn(tN*tOC, 1))
		e.cpu.MatmulBF16Backward(dinp.cpu, dout.cpu, hc, tN, tC, tOC)
		e.gpu.MatmulBF16Backward(dinp.gpu, dout.gpu, hg, tN, tC, tOC)
		e.check("bf16 "+string(pr.p)+" backward", dinp, pr.tol(tOC))
	}
	e.gpu.SetPrecision(FP32)
}

func TestRoPE(t *testing.T) {
	e := newEnv(t)
	N := tB * tT
	cos64, sin64 := backend.RoPETables(tT+3, tHD, 10000)
	cs, sn := make([]float32, len(cos64)), make([]float32, len(sin64))
	for i := range cos64 {
		cs[i], sn[i] = float32(cos64[i]), float32(sin64[i])
	}
	cos, sin := e.in(cs), e.in(sn)
	x := e.in(randn(N*tH*tHD, 1))
	e.cpu.RoPEForward(x.cpu, cos.cpu, sin.cpu, N, tT, tH, tHD)
	e.gpu.RoPEForward(x.gpu, cos.gpu, sin.gpu, N, tT, tH, tHD)
	e.check("rope forward", x, tolFP32)
	e.cpu.RoPEBackward(x.cpu, cos.cpu, sin.cpu, N, tT, tH, tHD)
	e.gpu.RoPEBackward(x.gpu, cos.gpu, sin.gpu, N, tT, tH, tHD)
	e.check("rope backward", x, tolFP32)
}

func TestAttention(t *testing.T) {
	e := newEnv(t)
	N := tB * tT
	q, k, v := e.in(randn(N*tH*tHD, 1)), e.in(randn(N*tKVH*tHD, 1)), e.in(randn(N*tKVH*tHD, 1))
	out, att := e.out(N*tH*tHD), e.out(tB*tH*tT*tT)
	e.cpu.AttentionForward(out.cpu, att.cpu, q.cpu, k.cpu, v.cpu, tB, tT, tH, tKVH, tHD)
	e.gpu.AttentionForward(out.gpu, att.gpu, q.gpu, k.gpu, v.gpu, tB, tT, tH, tKVH, tHD)
	e.check("attention out", out, tolFP32)
	e.check("attention probabilities", att, tolFP32)
	dout := e.in(randn(N*tH*tHD, 1))
	dq, dk, dv := e.in(randn(N*tH*tHD, 1)), e.in(randn(N*tKVH*tHD, 1)), e.in(randn(N*tKVH*tHD, 1))
	e.cpu.AttentionBackward(dq.cpu, dk.cpu, dv.cpu, dout.cpu, att.cpu, q.cpu, k.cpu, v.cpu, tB, tT, tH, tKVH, tHD)
	e.gpu.AttentionBackward(dq.gpu, dk.gpu, dv.gpu, dout.gpu, att.gpu, q.gpu, k.gpu, v.gpu, tB, tT, tH, tKVH, tHD)
	e.check("attention dq", dq, tolFP32)
	e.check("attention dk", dk, tolFP32)
	e.check("attention dv", dv, tolFP32)
}

// TestAttentionDecode checks generation's attention against the CPU for
// every cache length up to tT.
func TestAttentionDecode(t *testing.T) {
	e := newEnv(t)
	q := e.in(randn(tH*tHD, 1))
	k, v := e.in(randn(tT*tKVH*tHD, 1)), e.in(randn(tT*tKVH*tHD, 1))
	for L := 1; L <= tT; L++ {
		out, att := e.out(tH*tHD), e.out(tH*L)
		kv := func(p pair) pair {
			n := L * tKVH * tHD
			return pair{e.cpu.View(p.cpu, 0, n), e.gpu.View(p.gpu, 0, n), n}
		}
		kL, vL := kv(k), kv(v)
		e.cpu.AttentionDecode(out.cpu, att.cpu, q.cpu, kL.cpu, vL.cpu, L, tH, tKVH, tHD)
		e.gpu.AttentionDecode(out.gpu, att.gpu, q.gpu, kL.gpu, vL.gpu, L, tH, tKVH, tHD)
		e.check(fmt.Sprintf("decode out L=%d", L), out, tolFP32)
		e.check(fmt.Sprintf("decode probabilities L=%d", L), att, tolFP32)
	}
}

func TestElementwise(t *testing.T) {
	e := newEnv(t)
	const n = 4099
	gate, up := e.in(randn(n, 2)), e.in(randn(n, 1))
	out := e.out(n)
	e.cpu.SwiGLUForward(out.cpu, gate.cpu, up.cpu)
	e.gpu.SwiGLUForward(out.gpu, gate.gpu, up.gpu)
	e.check("swiglu out", out, tolFP32)
	dg, du, dout := e.in(randn(n, 1)), e.in(randn(n, 1)), e.in(randn(n, 1))
	e.cpu.SwiGLUBackward(dg.cpu, du.cpu, dout.cpu, gate.cpu, up.cpu)
	e.gpu.SwiGLUBackward(dg.gpu, du.gpu, dout.gpu, gate.gpu, up.gpu)
	e.check("swiglu dgate", dg, tolFP32)
	e.check("swiglu dup", du, tolFP32)

	sum := e.out(n)
	e.cpu.Add(sum.cpu, gate.cpu, up.cpu)
	e.gpu.Add(sum.gpu, gate.gpu, up.gpu)
	e.check("add", sum, 0)
	e.cpu.Accumulate(sum.cpu, dout.cpu)
	e.gpu.Accumulate(sum.gpu, dout.gpu)
	e.check("accumulate", sum, 0)
	e.cpu.Scale(sum.cpu, 0.37)
	e.gpu.Scale(sum.gpu, 0.37)
	e.check("scale", sum, 0)
	c, g := e.cpu.SumSquares(sum.cpu), e.gpu.SumSquares(sum.gpu)
	if math.Abs(c-g) > 1e-12*c {
		t.Errorf("SumSquares = %v on the GPU, %v on the CPU", g, c)
	}
	cp := e.out(n)
	e.cpu.Copy(cp.cpu, sum.cpu)
	e.gpu.Copy(cp.gpu, sum.gpu)
	e.check("copy", cp, 0)
	e.gpu.Zero(cp.gpu)
	e.cpu.Zero(cp.cpu)
	e.check("zero", cp, 0)

	for _, p := range []float32{0, 0.1, 0.5} {
		key := uint64(12345) + uint64(p*100)
		dr := e.out(n)
		e.cpu.DropoutForward(dr.cpu, gate.cpu, p, key)
		e.gpu.DropoutForward(dr.gpu, gate.gpu, p, key)
		e.check(fmt.Sprintf("dropout p=%g", p), dr, 0) // the same mask bit for bit
		dx := e.in(randn(n, 1))
		e.cpu.DropoutBackward(dx.cpu, dout.cpu, p, key)
		e.gpu.DropoutBackward(dx.gpu, dout.gpu, p, key)
		e.check(fmt.Sprintf("dropout backward p=%g", p), dx, 0)
	}

	params, grads := e.in(randn(n, 1)), e.in(randn(n, 0.01))
	m, v := e.in(randn(n, 0.01)), e.in(randn(n, 0.0001))
	// v must be non-negative, as Adam keeps it.
	vh := make([]float32, n)
	e.cpu.Download(vh, v.cpu)
	for i := range vh {
		vh[i] = float32(math.Abs(float64(vh[i])))
	}
	e.cpu.Upload(v.cpu, vh)
	e.gpu.Upload(v.gpu, vh)
	for step := 1; step <= 3; step++ {
		e.cpu.AdamW(params.cpu, grads.cpu, m.cpu, v.cpu, 1e-3, 0.9, 0.999, 1e-8, 0.01, step)
		e.gpu.AdamW(params.gpu, grads.gpu, m.gpu, v.gpu, 1e-3, 0.9, 0.999, 1e-8, 0.01, step)
	}
	e.check("adamw params", params, tolFP32)
	e.check("adamw m", m, tolFP32)
	e.check("adamw v", v, tolFP32)
}

func TestCrossEntropy(t *testing.T) {
	e := newEnv(t)
	targets := make([]int32, tN)
	for i := range targets {
		targets[i] = int32((i * 31) % tV)
	}
	targets[3] = -1 // padding
	for _, grad := range []bool{false, true} {
		logits := e.in(randn(tN*tV, 3))
		lc, lg := make([]float64, tN), make([]float64, tN)
		for i := range lg {
			lg[i] = math.NaN()
		}
		e.cpu.CrossEntropy(logits.cpu, lc, targets, tN, tV, 0.25, grad)
		e.gpu.CrossEntropy(logits.gpu, lg, targets, tN, tV, 0.25, grad)
		for i := range lc {
			if !(math.Abs(lc[i]-lg[i]) <= 1e-5*math.Max(1, math.Abs(lc[i]))) {
				t.Errorf("grad=%v: loss[%d] = %v on the GPU, %v on the CPU", grad, i, lg[i], lc[i])
			}
		}
		e.check(fmt.Sprintf("crossentropy logits (grad=%v)", grad), logits, tolFP32)
	}
}

// TestBadInputPanicsWithName: misuse is reported with the buffer's name,
// as a panic (the Backend interface has no errors), never a silent wrong
// result.
func TestBadInputPanicsWithName(t *testing.T) {
	c := newGPU(t)
	cases := []struct {
		name string
		f    func()
	}{
		{"short out", func() { c.MatmulForward(c.Alloc(3), c.Alloc(6), c.Alloc(6), 2, 3, 2, 1, 0) }},
		{"token out of range", func() { c.EncoderForward(c.Alloc(4), c.Alloc(8), []int32{0, 9}, 2, 2) }},
		{"cpu buffer", func() { c.Zero(backend.NewCPU(1).Alloc(3)) }},
		{"view past the end", func() { c.View(c.Alloc(4), 2, 3) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			defer func() {
				if r := recover(); r == nil {
					t.Errorf("%s: no panic", tc.name)
				}
			}()
			tc.f()
		})
	}
}

// tinyModel is a small Llama shape with odd sizes and grouped-query attention.
func tinyModel() train.ModelConfig {
	return train.ModelConfig{VocabSize: 67, Dim: 24, Layers: 2, Heads: 4, KVHeads: 2, HiddenDim: 40,
		MaxSeqLen: 16, RopeTheta: 10000, NormEps: 1e-5}
}

func batch(B, T, V int) (tokens, targets []int32) {
	tokens, targets = make([]int32, B*T), make([]int32, B*T)
	for i := range tokens {
		tokens[i] = int32((i*13 + 5) % V)
		targets[i] = int32((i*7 + 3) % V)
	}
	return
}

// TestTrainingStep runs forward, backward, clipping and AdamW through
// train.Model on both backends and compares the loss, the gradients of the
// trainable parameters and the parameters after the step.
func TestTrainingStep(t *testing.T) {
	gpu := newGPU(t)
	// qlora-plan: the base made straight into 4-bit on the host (only NF4
	// and bf16 uploaded), activation checkpointing, AdamW moments on the host.
	for _, mode := range []string{"pretrain", "qlora", "qlora-plan"} {
		t.Run(mode, func(t *testing.T) {
			cfg := tinyModel()
			qc := train.QuantConfig{Format: "nf4", BlockSize: 64, DoubleQuant: true}
			build := func(be backend.Backend) *train.Model {
				var m *train.Model
				var err error
				if mode == "qlora-plan" {
					m, err = train.NewQuantizedModel(cfg, be, 42, qc)
					m.SetCheckpointing(true)
					m.SetHostOptimizer(true)
				} else {
					m, err = train.NewModel(cfg, be, 42)
				}
				if err != nil {
					t.Fatal(err)
				}
				if mode != "pretrain" {
					if mode == "qlora" {
						if err := m.QuantizeBase(qc); err != nil {
							t.Fatal(err)
						}
					}
					lc := train.LoRAConfig{Rank: 4, Alpha: 8, Dropout: 0.1, Targets: train.LinearNames}
					if err := m.EnableLoRA(lc, 7); err != nil {
						t.Fatal(err)
					}
				}
				return m
			}
			mc, mg := build(backend.NewCPU(2)), build(gpu)
			defer mg.Free()
			if mode != "pretrain" { // B starts at zero: step once so the adapters' gradients are all live
				pc := mc.TrainableParams()
				for i := range pc {
					pc[i] += float32(math.Sin(float64(i))) * 0.01
				}
				if err := mc.SetTrainableParams(pc); err != nil {
					t.Fatal(err)
				}
				if err := mg.SetTrainableParams(pc); err != nil {
					t.Fatal(err)
				}
			}
			const B, T = 2, 11
			tokens, targets := batch(B, T, cfg.VocabSize)
			tc := train.TrainConfig{LR: 1e-3, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.01}
			for step := 1; step <= 2; step++ {
				mc.ZeroGrad()
				mg.ZeroGrad()
				lc, err := mc.ForwardBackward(tokens, targets, B, T, 1, step)
				if err != nil {
					t.Fatal(err)
				}
				lg, err := mg.ForwardBackward(tokens, targets, B, T, 1, step)
				if err != nil {
					t.Fatal(err)
				}
				if math.Abs(lc-lg) > 1e-5*math.Abs(lc) {
					t.Errorf("step %d: loss %v on the GPU, %v on the CPU", step, lg, lc)
				}
				compare(t, fmt.Sprintf("step %d grads", step), mg.TrainableGrads(), mc.TrainableGrads(), 1e-4)
				nc, ng := mc.ClipGradNorm(1), mg.ClipGradNorm(1)
				if math.Abs(nc-ng) > 1e-5*nc {
					t.Errorf("step %d: grad norm %v on the GPU, %v on the CPU", step, ng, nc)
				}
				mc.OptimizerStep(tc, tc.LR, step)
				mg.OptimizerStep(tc, tc.LR, step)
				compare(t, fmt.Sprintf("step %d params", step), mg.TrainableParams(), mc.TrainableParams(), 1e-5)
			}
		})
	}
}

// TestFree: Free returns memory at once (the allocator's count shows it),
// refuses a partial view, tolerates a second call, and a freed buffer
// cannot be used.
func TestFree(t *testing.T) {
	c := newGPU(t)
	before := c.CurrentMemory()
	b := c.Alloc(1 << 20)
	q, err := quant.Quantize4(randn(4096, 0.1), []int{64, 64}, quant.NF4, 64, true)
	if err != nil {
		t.Fatal(err)
	}
	qb := c.UploadQ4(q)
	hb := c.UploadBF16(make([]uint16, 1001))
	mustPanic(t, "Free of a view", "view", func() { c.Free(c.View(b, 4, 8)) })
	c.Free(b)
	c.Free(b)
	c.Free(qb)
	c.Free(hb)
	if got := c.CurrentMemory(); got != before {
		t.Errorf("CurrentMemory %d after freeing everything, %d before", got, before)
	}
	mustPanic(t, "Zero of a freed buffer", "freed", func() { c.Zero(b) })
	mustPanic(t, "a freed 4-bit weight", "freed", func() { c.MatmulQ4Forward(c.Alloc(64), c.Alloc(64), qb, 1, 64, 64) })
}

func mustPanic(t *testing.T, what, want string, f func()) {
	t.Helper()
	defer func() {
		r := recover()
		if r == nil || !strings.Contains(fmt.Sprint(r), want) {
			t.Errorf("%s: panic %v, want one mentioning %q", what, r, want)
		}
	}()
	f()
}

// TestOOMRetry: an allocation that only fits once an unreachable buffer is
// released succeeds (collect, free, retry once).
func TestOOMRetry(t *testing.T) {
	c := newGPU(t)
	free, _, err := c.MemInfo()
	if err != nil {
		t.Fatal(err)
	}
	n := int(free / 4 * 6 / 10) // 60% of what is free, in float32s
	b := c.Alloc(n)
	_ = b.Len()
	b = nil // unreachable, not freed
	b2 := c.Alloc(n)
	c.Free(b2)
}

// TestCloseRacingOps: ops on other goroutines while Close runs all return
// (a "closed" panic at worst); none hangs.
func TestCloseRacingOps(t *testing.T) {
	c, err := NewCUDA(0)
	if err != nil {
		t.Skipf("no usable GPU: %v", err)
	}
	buf := c.Alloc(1 << 16)
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				if r := recover(); r != nil && !strings.Contains(fmt.Sprint(r), "closed") {
					t.Errorf("op racing Close panicked with %v", r)
				}
			}()
			for i := 0; i < 10000; i++ {
				c.Scale(buf, 1)
			}
		}()
	}
	time.Sleep(5 * time.Millisecond)
	if err := c.Close(); err != nil {
		t.Error(err)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("ops racing Close hung")
	}
}

// TestMemoryAccounting: Alloc shows in CurrentMemory and PeakMemory, and
// MemInfo answers.
func TestMemoryAccounting(t *testing.T) {
	c := newGPU(t)
	before := c.CurrentMemory()
	b := c.Alloc(1 << 20)
	if got := c.CurrentMemory() - before; got != 4<<20 {
		t.Errorf("CurrentMemory grew by %d after a 4 MiB Alloc", got)
	}
	if c.PeakMemory() < c.CurrentMemory() {
		t.Errorf("PeakMemory %d below CurrentMemory %d", c.PeakMemory(), c.CurrentMemory())
	}
	free, total, err := c.MemInfo()
	if err != nil || free == 0 || free > total {
		t.Errorf("MemInfo = %d free of %d, %v", free, total, err)
	}
	_ = b.Len()
}

// The Bench helpers as Go benchmarks (go test -tags cuda -bench . on a GPU).
func BenchmarkGEMM(b *testing.B) {
	c, err := NewCUDA(0)
	if err != nil {
		b.Skipf("no usable GPU: %v", err)
	}
	defer c.Close()
	for _, dt := range []string{"fp32", "tf32", "bf16", "fp16"} {
		b.Run(dt, func(b *testing.B) {
			tf, err := c.BenchGEMM(dt, 2048, 2048, 2048, max(b.N, 3))
			if err != nil {
				b.Skip(err)
			}
			b.ReportMetric(tf, "TFLOPS")
		})
	}
}

func BenchmarkNF4(b *testing.B) {
	c, err := NewCUDA(0)
	if err != nil {
		b.Skipf("no usable GPU: %v", err)
	}
	defer c.Close()
	copyBW, err := c.BenchCopy(256 << 20)
	if err != nil {
		b.Fatal(err)
	}
	deq, err := c.BenchNF4Dequant(64 << 20)
	if err != nil {
		b.Fatal(err)
	}
	mm, err := c.BenchNF4Matmul(512, 4096, 4096)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(copyBW, "copy-GB/s")
	b.ReportMetric(deq, "dequant-GB/s")
	b.ReportMetric(mm, "nf4mm-TFLOPS")
}

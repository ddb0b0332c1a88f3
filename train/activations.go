package train

import "github.com/opencluster/opencluster/train/backend"

// activations holds every forward tensor of one (B,T) shape in a single
// backend buffer, reused from step to step (llm.c), plus, once a backward has
// run, the activation gradients in a second buffer.
type activations struct {
	B, T  int
	train bool // laid out for ForwardBackward (dropout scratch, gradients)

	buf    backend.Buf
	resid  []backend.Buf // n_layers+1 residual streams [N,D]; resid[0] is the embedding
	layers []layerActs
	tmpD   backend.Buf // [N,D] o_proj and down_proj outputs before the residual add
	lnf    backend.Buf // [N,D]
	rstdf  backend.Buf // [N]
	logits backend.Buf // [N,V]; dlogits after a fused cross-entropy
	xd     backend.Buf // [N,max(D,hidden)] dropout(x) for LoRA; nil without dropout
	losses []float64   // per-row losses (host)

	grads *gradActs
}

// layerActs are the saved activations of one decoder block.
type layerActs struct {
	ln1, rstd1  backend.Buf
	q, k, v     backend.Buf // after RoPE (q, k)
	att         backend.Buf // [B,H,T,T] softmax probabilities
	atty        backend.Buf
	x2          backend.Buf // residual after attention
	ln2, rstd2  backend.Buf
	gate, up, h backend.Buf
	xa          [numLinear]backend.Buf // LoRA x·Aᵀ [N,r] of adapted modules
}

// gradActs are the activation gradients, shared by every layer.
type gradActs struct {
	buf                    backend.Buf
	dres, dlnf, dln, datty backend.Buf // [N,D]
	dq, dk, dv             backend.Buf
	dgate, dup, dh         backend.Buf // [N,hidden]
	dxa                    backend.Buf // [N,r]
	dxd                    backend.Buf // [N,max(D,hidden)]
}

// carve lays tensors out in one buffer: call it once with buf nil to size,
// then with the allocated buffer to take views.
type carver struct {
	be  backend.Backend
	buf backend.Buf
	off int
}

func (c *carver) take(n int) backend.Buf {
	var v backend.Buf
	if c.buf != nil && n > 0 {
		v = c.be.View(c.buf, c.off, n)
	}
	c.off += n
	return v
}

// activations returns buffers for shape (B,T), reusing a cached set.
func (m *Model) activations(B, T int, train bool) *activations {
	for i, a := range m.acts {
		if a != nil && a.B == B && a.T == T && (a.train || !train) {
			if i != 0 && train {
				m.acts[0], m.acts[i] = m.acts[i], m.acts[0]
			}
			return a
		}
	}
	a := m.newActivations(B, T, train)
	if train || m.acts[0] == nil {
		m.acts[0] = a
	} else {
		m.acts[1] = a
	}
	return a
}

// resetActivations drops cached activations after a layout change (LoRA on/off).
func (m *Model) resetActivations() { m.acts = [2]*activations{} }

func (m *Model) newActivations(B, T int, train bool) *activations {
	c := m.Config
	N, D, kvD, Hd, H := B*T, c.Dim, c.KVHeads*c.HeadDim(), c.HiddenDim, c.Heads
	wide := max(D, Hd)
	a := &activations{B: B, T: T, train: train, losses: make([]float64, N)}
	lay := func(cv *carver) {
		a.resid = make([]backend.Buf, c.Layers+1)
		a.layers = make([]layerActs, c.Layers)
		for l := range a.resid {
			a.resid[l] = cv.take(N * D)
		}
		for l := range a.layers {
			la := &a.layers[l]
			la.ln1, la.rstd1 = cv.take(N*D), cv.take(N)
			la.q, la.k, la.v = cv.take(N*D), cv.take(N*kvD), cv.take(N*kvD)
			la.att, la.atty, la.x2 = cv.take(B*H*T*T), cv.take(N*D), cv.take(N*D)
			la.ln2, la.rstd2 = cv.take(N*D), cv.take(N)
			la.gate, la.up, la.h = cv.take(N*Hd), cv.take(N*Hd), cv.take(N*Hd)
			for j := 0; j < numLinear; j++ {
				if m.lora != nil && m.layers[l].ad[j] != nil {
					la.xa[j] = cv.take(N * m.lora.cfg.Rank)
				}
			}
		}
		a.tmpD, a.lnf, a.rstdf, a.logits = cv.take(N*D), cv.take(N*D), cv.take(N), cv.take(N*c.VocabSize)
		if train && m.lora != nil && m.lora.cfg.Dropout > 0 {
			a.xd = cv.take(N * wide)
		}
	}
	size := &carver{be: m.be}
	lay(size)
	a.buf = m.be.Alloc(size.off)
	lay(&carver{be: m.be, buf: a.buf})
	if train {
		g := &gradActs{}
		glay := func(cv *carver) {
			g.dres, g.dlnf, g.dln, g.datty = cv.take(N*D), cv.take(N*D), cv.take(N*D), cv.take(N*D)
			g.dq, g.dk, g.dv = cv.take(N*D), cv.take(N*kvD), cv.take(N*kvD)
			g.dgate, g.dup, g.dh = cv.take(N*Hd), cv.take(N*Hd), cv.take(N*Hd)
			if m.lora != nil {
				g.dxa = cv.take(N * m.lora.cfg.Rank)
				if m.lora.cfg.Dropout > 0 {
					g.dxd = cv.take(N * wide)
				}
			}
		}
		gs := &carver{be: m.be}
		glay(gs)
		g.buf = m.be.Alloc(gs.off)
		glay(&carver{be: m.be, buf: g.buf})
		a.grads = g
	}
	return a
}

package train

import "github.com/opencluster/opencluster/train/backend"

// activations holds every forward tensor of one (B,T) shape in a single
// backend buffer, reused from step to step (llm.c), plus, once a backward has
// run, the activation gradients in a second buffer.
//
// With activation checkpointing (and always for a forward without
// backward) only the residual stream entering each block is kept; the
// block's inner tensors live in one shared set that the backward refills by
// running the block's forward again, so memory holds n_layers+1 [N,D]
// tensors and one block's inner tensors instead of n_layers of them.
type activations struct {
	B, T  int
	row0  int  // the micro-batch's first sequence in the batch (dropout keys)
	train bool // laid out for ForwardBackward (dropout scratch, gradients)
	ckpt  bool // one shared layerActs, recomputed in backward

	buf    backend.Buf
	resid  []backend.Buf // n_layers+1 residual streams [N,D]; resid[0] is the embedding
	layers []layerActs   // n_layers of them, or one shared set when ckpt
	tmpD   backend.Buf   // [N,D] o_proj and down_proj outputs before the residual add
	lnf    backend.Buf   // [N,D]
	rstdf  backend.Buf   // [N]
	logits backend.Buf   // [ceRows,V]: one chunk of rows of logits, then of dlogits
	ceRows int           // rows of logits computed at a time
	xd     backend.Buf   // [N,max(D,hidden)] dropout(x) for LoRA; nil without dropout
	losses []float64     // per-row losses (host)
	ones   backend.Buf   // [N] of 1s: bias adds are rank-1 products; nil without biases

	grads *gradActs
}

// layer returns the saved (or, with checkpointing, shared) tensors of block l.
func (a *activations) layer(l int) *layerActs {
	if a.ckpt {
		return &a.layers[0]
	}
	return &a.layers[l]
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

// ceChunkElems bounds one chunk of logits (and, in place, their gradient):
// 16 MiB of fp32, so a 128k vocabulary is scored 32 rows at a time and the
// [N,V] logits are never held whole. A variable so tests can force chunks.
var ceChunkElems = 1 << 22

// ceRows is how many rows of logits the cross-entropy computes at a time.
func ceRows(N, V int) int { return max(1, min(N, ceChunkElems/V)) }

// activations returns buffers for shape (B,T), reusing a cached set.
func (m *Model) activations(B, T int, train bool) *activations {
	ckpt := !train || m.ckpt
	for i, a := range m.acts {
		if a != nil && a.B == B && a.T == T && (a.train || !train) && (a.ckpt == ckpt || !train) {
			if i != 0 && train {
				m.acts[0], m.acts[i] = m.acts[i], m.acts[0]
			}
			return a
		}
	}
	a := m.newActivations(B, T, train, ckpt)
	if train || m.acts[0] == nil {
		m.freeActivations(m.acts[0])
		m.acts[0] = a
	} else {
		m.freeActivations(m.acts[1])
		m.acts[1] = a
	}
	return a
}

// resetActivations drops cached activations after a layout change (LoRA
// on/off, checkpointing), freeing their memory.
func (m *Model) resetActivations() {
	for i, a := range m.acts {
		m.freeActivations(a)
		m.acts[i] = nil
	}
}

func (m *Model) freeActivations(a *activations) {
	if a == nil {
		return
	}
	m.be.Free(a.buf)
	if a.grads != nil {
		m.be.Free(a.grads.buf)
	}
}

// actSizes are the element counts of one activation set, as newActivations
// lays it out; EstimateMemory reads the same numbers.
type actSizes struct {
	acts, grads int
}

func (m *Model) newActivations(B, T int, train, ckpt bool) *activations {
	c := m.Config
	a := &activations{B: B, T: T, train: train, ckpt: ckpt, losses: make([]float64, B*T)}
	var adapted [numLinear]bool
	rank, dropout := 0, false
	if m.lora != nil {
		rank, dropout = m.lora.cfg.Rank, m.lora.cfg.Dropout > 0
		for l := range m.layers {
			for j := range adapted {
				adapted[j] = adapted[j] || m.layers[l].ad[j] != nil
			}
		}
	}
	sz := layActivations(a, c, adapted, rank, dropout, nil)
	a.buf = m.be.Alloc(sz.acts)
	layActivations(a, c, adapted, rank, dropout, &carver{be: m.be, buf: a.buf})
	if a.ones != nil {
		ones := make([]float32, B*T)
		for i := range ones {
			ones[i] = 1
		}
		m.be.Upload(a.ones, ones)
	}
	if train {
		a.grads = &gradActs{}
		a.grads.buf = m.be.Alloc(sz.grads)
		layGrads(a.grads, c, B*T, rank, dropout, &carver{be: m.be, buf: a.grads.buf})
	}
	return a
}

// layActivations carves a's tensors from cv (nil: only count them) and
// returns the element counts of the activation and gradient buffers.
func layActivations(a *activations, c ModelConfig, adapted [numLinear]bool, rank int, dropout bool, cv *carver) actSizes {
	if cv == nil {
		cv = &carver{}
	}
	B, T := a.B, a.T
	N, D, qD, kvD, Hd, H := B*T, c.Dim, c.QDim(), c.KVDim(), c.HiddenDim, c.Heads
	nl := c.Layers
	if a.ckpt {
		nl = 1
	}
	a.resid = make([]backend.Buf, c.Layers+1)
	a.layers = make([]layerActs, nl)
	for l := range a.resid {
		a.resid[l] = cv.take(N * D)
	}
	for l := range a.layers {
		la := &a.layers[l]
		la.ln1, la.rstd1 = cv.take(N*D), cv.take(N)
		la.q, la.k, la.v = cv.take(N*qD), cv.take(N*kvD), cv.take(N*kvD)
		la.att, la.atty, la.x2 = cv.take(B*H*T*T), cv.take(N*qD), cv.take(N*D)
		la.ln2, la.rstd2 = cv.take(N*D), cv.take(N)
		la.gate, la.up, la.h = cv.take(N*Hd), cv.take(N*Hd), cv.take(N*Hd)
		for j := 0; j < numLinear; j++ {
			if adapted[j] {
				la.xa[j] = cv.take(N * rank)
			}
		}
	}
	a.ceRows = ceRows(N, c.VocabSize)
	a.tmpD, a.lnf, a.rstdf, a.logits = cv.take(N*D), cv.take(N*D), cv.take(N), cv.take(a.ceRows*c.VocabSize)
	if a.train && dropout {
		a.xd = cv.take(N * max(D, Hd, qD))
	}
	if c.anyBias() {
		a.ones = cv.take(N)
	}
	sz := actSizes{acts: cv.off}
	if a.train {
		sz.grads = layGrads(&gradActs{}, c, N, rank, dropout, &carver{})
	}
	return sz
}

// layGrads carves the activation gradients and returns their element count.
func layGrads(g *gradActs, c ModelConfig, N, rank int, dropout bool, cv *carver) int {
	D, qD, kvD, Hd := c.Dim, c.QDim(), c.KVDim(), c.HiddenDim
	g.dres, g.dlnf, g.dln, g.datty = cv.take(N*D), cv.take(N*D), cv.take(N*D), cv.take(N*qD)
	g.dq, g.dk, g.dv = cv.take(N*qD), cv.take(N*kvD), cv.take(N*kvD)
	g.dgate, g.dup, g.dh = cv.take(N*Hd), cv.take(N*Hd), cv.take(N*Hd)
	if rank > 0 {
		g.dxa = cv.take(N * rank)
		if dropout {
			g.dxd = cv.take(N * max(D, Hd, qD))
		}
	}
	return cv.off
}

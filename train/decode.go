package train

import (
	"errors"
	"fmt"
	"slices"

	"github.com/opencluster/opencluster/train/backend"
	"github.com/opencluster/opencluster/train/tokenizer"
)

// Decoder generates with a KV cache. Prefill runs the prompt through the
// model once and keeps every layer's keys (after RoPE) and values; Next
// then runs only the one new token through the blocks, its attention
// reading the cache, so each token costs one position's work instead of the
// whole context's. A Decoder uses the model's inference activations: do not
// interleave it with other calls on the same model.
type Decoder struct {
	m    *Model
	k, v []backend.Buf // per layer [capacity, KVDim]
	att  backend.Buf   // [n_heads, capacity] attention probabilities
	cap  int
	n    int // positions in the cache
}

// NewDecoder allocates a cache of capacity positions (at most the model's
// context: max_seq_len, or the sliding window).
func (m *Model) NewDecoder(capacity int) (*Decoder, error) {
	if capacity <= 0 || capacity > m.Config.Context() {
		return nil, fmt.Errorf("train: KV cache of %d positions: want 1..%d (the model's context)", capacity, m.Config.Context())
	}
	c := m.Config
	d := &Decoder{m: m, cap: capacity, att: m.be.Alloc(c.Heads * capacity)}
	for l := 0; l < c.Layers; l++ {
		d.k = append(d.k, m.be.Alloc(capacity*c.KVDim()))
		d.v = append(d.v, m.be.Alloc(capacity*c.KVDim()))
	}
	return d, nil
}

// Free releases the cache's backend memory.
func (d *Decoder) Free() {
	for l := range d.k {
		d.m.be.Free(d.k[l])
		d.m.be.Free(d.v[l])
	}
	d.m.be.Free(d.att)
	d.k, d.v = nil, nil
}

// Len is the number of positions in the cache; Cap its capacity.
func (d *Decoder) Len() int { return d.n }

// Cap is the capacity of the cache.
func (d *Decoder) Cap() int { return d.cap }

// Prefill empties the cache, runs tokens through the model (position 0
// on), caches their keys and values and returns the next-token logits
// after the last one.
func (d *Decoder) Prefill(tokens []int32) ([]float32, error) {
	m, c := d.m, d.m.Config
	T := len(tokens)
	if T == 0 || T > d.cap {
		return nil, fmt.Errorf("train: prefill of %d tokens into a KV cache of %d", T, d.cap)
	}
	if _, err := m.checkBatch(tokens, nil, 1, T); err != nil {
		return nil, err
	}
	d.n = 0
	a := m.activations(1, T, false)
	m.embed(a.resid[0], tokens, T)
	kvd := c.KVDim()
	for l := range m.layers {
		m.layerForward(a, l, false, 0)
		la := a.layer(l) // the shared set holds this block's tensors until the next one runs
		m.be.Copy(m.be.View(d.k[l], 0, T*kvd), la.k)
		m.be.Copy(m.be.View(d.v[l], 0, T*kvd), la.v)
	}
	d.n = T
	return d.logits(a, T-1)
}

// Next appends tok at the next position and returns the logits after it.
// A full cache is an error: Prefill again with a shorter context.
func (d *Decoder) Next(tok int32) ([]float32, error) {
	m, c := d.m, d.m.Config
	if d.n == 0 {
		return nil, errors.New("train: Next before Prefill")
	}
	if d.n >= d.cap {
		return nil, fmt.Errorf("train: the KV cache is full (%d positions)", d.cap)
	}
	if err := checkTokens("token", []int32{tok}, c.VocabSize); err != nil {
		return nil, err
	}
	pos, hd, kvd := d.n, c.HeadDim(), c.KVDim()
	half := hd / 2
	cos, sin := m.be.View(m.ropeCos, pos*half, half), m.be.View(m.ropeSin, pos*half, half)
	a := m.activations(1, 1, false)
	m.embed(a.resid[0], []int32{tok}, 1)
	for l := range m.layers {
		m.block(a, l, false, 0, func(la *layerActs) {
			be := m.be
			be.RoPEForward(la.q, cos, sin, 1, 1, c.Heads, hd)
			be.RoPEForward(la.k, cos, sin, 1, 1, c.KVHeads, hd)
			be.Copy(be.View(d.k[l], pos*kvd, kvd), la.k)
			be.Copy(be.View(d.v[l], pos*kvd, kvd), la.v)
			L := pos + 1
			be.AttentionDecode(la.atty, be.View(d.att, 0, c.Heads*L), la.q,
				be.View(d.k[l], 0, L*kvd), be.View(d.v[l], 0, L*kvd), L, c.Heads, c.KVHeads, hd)
		})
	}
	d.n++
	return d.logits(a, 0)
}

// logits runs the final norm and lm_head on row r of a's last residual.
func (d *Decoder) logits(a *activations, r int) ([]float32, error) {
	m, c := d.m, d.m.Config
	be, D, V := m.be, c.Dim, c.VocabSize
	x, lnf := be.View(a.resid[c.Layers], r*D, D), be.View(a.lnf, r*D, D)
	be.RMSNormForward(lnf, be.View(a.rstdf, r, 1), x, m.normF, 1, D, c.NormEps)
	out := be.View(a.logits, 0, V)
	m.headForward(out, lnf, 1)
	res := make([]float32, V)
	be.Download(res, out)
	return res, nil
}

// StopTokens are the ids that end generation: config.json's and
// generation_config.json's eos_token_id and the tokenizer's EOS token (tok
// may be nil: the byte-level tokenizer has none).
func (m *Model) StopTokens(tok *tokenizer.Tokenizer) []int32 {
	stop := slices.Clone(m.Info.EOS)
	if tok != nil {
		if _, id, ok := tok.EOS(); ok && !slices.Contains(stop, id) {
			stop = append(stop, id)
		}
	}
	return stop
}

// ChatPrompt renders a conversation of an optional system message and one
// user message with tok's chat template, ready for the assistant's reply
// (add_generation_prompt), and encodes it as transformers'
// apply_chat_template does: the template writes the special tokens itself.
func ChatPrompt(tok *tokenizer.Tokenizer, system, user string) ([]int32, error) {
	tmpl, err := tok.CompileChatTemplate()
	if err != nil {
		return nil, err
	}
	defer tmpl.Close()
	var msgs []tokenizer.Message
	if system != "" {
		msgs = append(msgs, tokenizer.Message{"role": "system", "content": system})
	}
	msgs = append(msgs, tokenizer.Message{"role": "user", "content": user})
	text, err := tmpl.Render(msgs, true)
	if err != nil {
		return nil, err
	}
	return tok.Encode(text, false), nil
}

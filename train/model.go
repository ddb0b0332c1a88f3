package train

// CONTRACT: these are the entry points the training loop, the CLI and later
// the federated worker call. Keep the signatures stable.

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/opencluster/opencluster/quant"
	"github.com/opencluster/opencluster/quant/safetensors"
	"github.com/opencluster/opencluster/train/backend"
)

// Linear module indices, in LinearNames order.
const (
	modQ = iota
	modK
	modV
	modO
	modGate
	modUp
	modDown
	numLinear
)

// Model is a Llama-style decoder: token embedding, per layer RMSNorm ->
// attention (RoPE, causal, grouped-query) -> residual -> RMSNorm -> SwiGLU MLP
// -> residual, then a final RMSNorm and lm_head (tied or untied).
//
// Two modes: full training (every weight fp32 and trainable) and QLoRA (the
// linear weights frozen in packed NF4/FP4, LoRA A/B trainable on the targets).
//
// Parameters live in one contiguous backend buffer and their gradients in
// another (llm.c); every tensor is a view. A Model is not safe for
// concurrent use.
type Model struct {
	Config ModelConfig
	// Info is what the base's config.json said beyond the shape (name,
	// token ids); zero for a model made by NewModel.
	Info HFInfo

	be backend.Backend

	// params holds every fp32 base tensor (all of them in full training;
	// only the norms once the base is quantized).
	params backend.Buf
	specs  []paramSpec
	grads  backend.Buf // gradients of params; nil until full training needs them

	wte, lmHead, normF    backend.Buf // lmHead == wte when tied; nil when quantized
	dwte, dlmHead, dnormF backend.Buf
	layers                []layer

	// The frozen embedding and lm_head of a quantized base in bfloat16
	// (lmHead16 == wte16 when tied), and their host bits for SaveBase (the
	// same memory on the CPU backend).
	wte16, lmHead16         backend.HBuf
	wte16host, lmHead16host []uint16

	quant *QuantConfig // non-nil when the linears are held in 4-bit
	lora  *loraState   // non-nil in LoRA mode (the base is then frozen)

	// AdamW moments for the trainable vector, allocated on the first step:
	// in backend memory, or on the host when hostAdam is set.
	m, v         backend.Buf
	hostAdam     bool
	mHost, vHost []float32
	hostP, hostG []float32 // host copies of params and grads for a host step

	ckpt             bool // activation checkpointing (SetCheckpointing)
	micro            int  // sequences per forward/backward (SetMicroBatch); 0: all
	ropeCos, ropeSin backend.Buf
	acts             [2]*activations // small cache: training shape and inference shape
}

// paramSpec places one named fp32 tensor in the params buffer.
type paramSpec struct {
	name  string
	shape []int
	off   int
	n     int
}

// layer holds views of one decoder block's weights.
type layer struct {
	ln1, ln2   backend.Buf
	dln1, dln2 backend.Buf
	lin        [numLinear]backend.Buf // fp32 [out,in]; nil when quantized
	dlin       [numLinear]backend.Buf
	bias       [numLinear]backend.Buf // fp32 [out]; nil when the module has none
	dbias      [numLinear]backend.Buf
	q4         [numLinear]backend.QBuf // frozen 4-bit weights when quantized
	q4host     [numLinear]*quant.Tensor4
	ad         [numLinear]*adapter // LoRA adapters on the target modules
}

// linShape returns (in, out) of linear module j.
func (c ModelConfig) linShape(j int) (in, out int) {
	switch j {
	case modQ:
		return c.Dim, c.QDim()
	case modO:
		return c.QDim(), c.Dim
	case modK, modV:
		return c.Dim, c.KVDim()
	case modGate, modUp:
		return c.Dim, c.HiddenDim
	default: // modDown
		return c.HiddenDim, c.Dim
	}
}

// LinearShape returns (in, out) of the linear module called name
// ("q_proj"...), as its [out,in] weight and its adapters see it.
func (c ModelConfig) LinearShape(name string) (in, out int, ok bool) {
	j := linearIndex(name)
	if j == numLinear {
		return 0, 0, false
	}
	in, out = c.linShape(j)
	return in, out, true
}

// hasBias reports whether linear module j carries a bias.
func (c ModelConfig) hasBias(j int) bool {
	switch j {
	case modQ, modK, modV:
		return c.QKVBias
	case modO:
		return c.OBias
	}
	return c.MLPBias
}

func (c ModelConfig) anyBias() bool { return c.QKVBias || c.OBias || c.MLPBias }

func layerName(l int, what string) string { return fmt.Sprintf("model.layers.%d.%s", l, what) }

func linearName(l, j int) string { return linearPrefix(l, j) + ".weight" }

func biasName(l, j int) string { return linearPrefix(l, j) + ".bias" }

func linearPrefix(l, j int) string {
	group := "self_attn"
	if j >= modGate {
		group = "mlp"
	}
	return layerName(l, group+"."+LinearNames[j])
}

// baseSpecs lists the fp32 base tensors with Hugging Face names, in buffer
// order; quantized leaves out the decoder linears (4-bit) and the embedding
// and lm_head (bfloat16): only the norms and the biases stay fp32.
func baseSpecs(c ModelConfig, quantized bool) ([]paramSpec, int) {
	withLinear, withEmbed := !quantized, !quantized
	var specs []paramSpec
	off := 0
	add := func(name string, shape ...int) {
		n := 1
		for _, d := range shape {
			n *= d
		}
		specs = append(specs, paramSpec{name: name, shape: shape, off: off, n: n})
		off += n
	}
	if withEmbed {
		add("model.embed_tokens.weight", c.VocabSize, c.Dim)
	}
	linear := func(l, j int) {
		in, out := c.linShape(j)
		if withLinear {
			add(linearName(l, j), out, in)
		}
		if c.hasBias(j) {
			add(biasName(l, j), out)
		}
	}
	for l := 0; l < c.Layers; l++ {
		add(layerName(l, "input_layernorm.weight"), c.Dim)
		for j := modQ; j <= modO; j++ {
			linear(l, j)
		}
		add(layerName(l, "post_attention_layernorm.weight"), c.Dim)
		for j := modGate; j <= modDown; j++ {
			linear(l, j)
		}
	}
	add("model.norm.weight", c.Dim)
	if !c.TiedEmbeddings && withEmbed {
		add("lm_head.weight", c.VocabSize, c.Dim)
	}
	return specs, off
}

// newEmpty allocates a model with zeroed fp32 weights laid out for cfg.
// quantized leaves out what a quantized base holds elsewhere (see baseSpecs).
func newEmpty(cfg ModelConfig, be backend.Backend, quantized bool) (*Model, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if be == nil {
		return nil, errors.New("train: nil backend")
	}
	m := &Model{Config: cfg, be: be, layers: make([]layer, cfg.Layers)}
	specs, total := baseSpecs(cfg, quantized)
	m.specs = specs
	m.params = be.Alloc(total)
	m.bindParams()
	cos, sin := backend.RoPETablesFreq(cfg.Context(), cfg.ropeInvFreq())
	m.ropeCos, m.ropeSin = be.Alloc(len(cos)), be.Alloc(len(sin))
	be.Upload(m.ropeCos, toF32(cos))
	be.Upload(m.ropeSin, toF32(sin))
	return m, nil
}

func toF32(x []float64) []float32 {
	out := make([]float32, len(x))
	for i, v := range x {
		out[i] = float32(v)
	}
	return out
}

// bindParams points the named views at m.params (and m.grads when present).
func (m *Model) bindParams() {
	view := func(buf backend.Buf, sp paramSpec) backend.Buf {
		if buf == nil {
			return nil
		}
		return m.be.View(buf, sp.off, sp.n)
	}
	m.wte, m.dwte, m.normF, m.dnormF, m.lmHead, m.dlmHead = nil, nil, nil, nil, nil, nil
	for l := range m.layers {
		L := &m.layers[l]
		L.ln1, L.dln1, L.ln2, L.dln2 = nil, nil, nil, nil
		L.lin, L.dlin = [numLinear]backend.Buf{}, [numLinear]backend.Buf{}
		L.bias, L.dbias = [numLinear]backend.Buf{}, [numLinear]backend.Buf{}
	}
	for _, sp := range m.specs {
		p, g := view(m.params, sp), view(m.grads, sp)
		var l, j int
		var what string
		switch {
		case sp.name == "model.embed_tokens.weight":
			m.wte, m.dwte = p, g
		case sp.name == "model.norm.weight":
			m.normF, m.dnormF = p, g
		case sp.name == "lm_head.weight":
			m.lmHead, m.dlmHead = p, g
		default:
			if _, err := fmt.Sscanf(sp.name, "model.layers.%d.%s", &l, &what); err != nil {
				panic("train: bad internal tensor name " + sp.name)
			}
			L := &m.layers[l]
			switch what {
			case "input_layernorm.weight":
				L.ln1, L.dln1 = p, g
			case "post_attention_layernorm.weight":
				L.ln2, L.dln2 = p, g
			default:
				for j = 0; j < numLinear; j++ {
					switch sp.name {
					case linearName(l, j):
						L.lin[j], L.dlin[j] = p, g
					case biasName(l, j):
						L.bias[j], L.dbias[j] = p, g
					}
				}
			}
		}
	}
	if m.Config.TiedEmbeddings {
		m.lmHead, m.dlmHead = m.wte, m.dwte
	}
}

// NewModel builds a randomly initialised fp32 model (every weight trainable).
// The same seed gives the same weights bit for bit. Linear and embedding
// weights are N(0, 0.02) (Hugging Face's initializer_range), with the
// residual projections o_proj and down_proj scaled by 1/sqrt(2*n_layers)
// as in GPT-2; norms start at 1 and biases at 0.
func NewModel(cfg ModelConfig, be backend.Backend, seed uint64) (*Model, error) {
	m, err := newEmpty(cfg, be, false)
	if err != nil {
		return nil, err
	}
	for i, sp := range m.specs {
		init := newInit(cfg, sp, seed, i)
		m.fillParam(sp, func(dst []float32) { init.fill(dst) })
	}
	return m, nil
}

// tensorInit draws one tensor's initial values in order; chunks drawn one
// after another equal the whole tensor drawn at once.
type tensorInit struct {
	ones bool // a norm
	zero bool // a bias
	std  float64
	rng  *rand.Rand
}

// newInit starts the values of tensor sp, the i-th of the full fp32 layout
// (baseSpecs(cfg, false)): its stream depends only on (seed, i).
func newInit(cfg ModelConfig, sp paramSpec, seed uint64, i int) *tensorInit {
	if hasSuffix(sp.name, ".bias") {
		return &tensorInit{zero: true}
	}
	if len(sp.shape) == 1 {
		return &tensorInit{ones: true}
	}
	std := 0.02
	if isResidualProj(sp.name) {
		std /= math.Sqrt(2 * float64(cfg.Layers))
	}
	return &tensorInit{std: std, rng: rand.New(rand.NewPCG(seed, uint64(i)))}
}

func (t *tensorInit) fill(dst []float32) {
	for k := range dst {
		if t.ones {
			dst[k] = 1
		} else if t.zero {
			dst[k] = 0
		} else {
			dst[k] = float32(t.rng.NormFloat64() * t.std)
		}
	}
}

// fillParam writes tensor sp of the fp32 parameters: in place on the CPU,
// through one tensor-sized host buffer elsewhere, never a whole-model copy.
func (m *Model) fillParam(sp paramSpec, fill func(dst []float32)) {
	view := m.be.View(m.params, sp.off, sp.n)
	if h := backend.HostSlice(view); h != nil {
		fill(h)
		return
	}
	host := make([]float32, sp.n)
	fill(host)
	m.be.Upload(view, host)
}

func isResidualProj(name string) bool {
	return hasSuffix(name, "o_proj.weight") || hasSuffix(name, "down_proj.weight")
}

func hasSuffix(s, suf string) bool { return len(s) >= len(suf) && s[len(s)-len(suf):] == suf }

// Backend returns the backend the model runs on.
func (m *Model) Backend() backend.Backend { return m.be }

// Quantized reports whether the base is held in 4-bit.
func (m *Model) Quantized() bool { return m.quant != nil }

// LoRAEnabled reports whether the model is in LoRA mode.
func (m *Model) LoRAEnabled() bool { return m.lora != nil }

// fullTraining reports whether every base weight is trainable.
func (m *Model) fullTraining() bool { return m.lora == nil && m.quant == nil }

// trainable returns the trainable parameter and gradient buffers, or nils
// when nothing is trainable (a quantized base without adapters).
func (m *Model) trainable() (params, grads backend.Buf) {
	switch {
	case m.lora != nil:
		return m.lora.params, m.lora.grads
	case m.quant == nil:
		m.ensureGrads()
		return m.params, m.grads
	}
	return nil, nil
}

func (m *Model) ensureGrads() {
	if m.grads == nil {
		m.grads = m.be.Alloc(m.params.Len())
		m.bindParams()
	}
}

// ZeroGrad clears the gradients of the trainable parameters.
func (m *Model) ZeroGrad() {
	if _, g := m.trainable(); g != nil {
		m.be.Zero(g)
	}
}

// TrainableParams returns the trainable parameters as one contiguous vector
// (the adapters in LoRA mode). On the CPU backend the slice aliases the
// model's memory, so federated code reads and writes it in place; on other
// backends it is a copy (write back with SetTrainableParams).
func (m *Model) TrainableParams() []float32 {
	p, _ := m.trainable()
	if p == nil {
		return nil
	}
	if h := backend.HostSlice(p); h != nil {
		return h
	}
	out := make([]float32, p.Len())
	m.be.Download(out, p)
	return out
}

// SetTrainableParams overwrites the trainable vector with p.
func (m *Model) SetTrainableParams(p []float32) error {
	buf, _ := m.trainable()
	if buf == nil {
		return errors.New("train: model has no trainable parameters")
	}
	if len(p) != buf.Len() {
		return fmt.Errorf("train: SetTrainableParams got %d values, model has %d trainable", len(p), buf.Len())
	}
	m.be.Upload(buf, p)
	return nil
}

// TrainableGrads returns the gradients of TrainableParams (aliasing on CPU).
func (m *Model) TrainableGrads() []float32 {
	_, g := m.trainable()
	if g == nil {
		return nil
	}
	if h := backend.HostSlice(g); h != nil {
		return h
	}
	out := make([]float32, g.Len())
	m.be.Download(out, g)
	return out
}

// NumTrainable is len(TrainableParams()).
func (m *Model) NumTrainable() int {
	switch {
	case m.lora != nil:
		return m.lora.params.Len()
	case m.quant == nil:
		return m.params.Len()
	}
	return 0
}

// checkBatch validates a micro-batch and counts the scored targets.
func (m *Model) checkBatch(tokens, targets []int32, B, T int) (int, error) {
	if B <= 0 || T <= 0 {
		return 0, fmt.Errorf("train: batch shape B=%d T=%d must be positive", B, T)
	}
	if T > m.Config.MaxSeqLen {
		return 0, fmt.Errorf("train: sequence length T=%d exceeds max_seq_len %d", T, m.Config.MaxSeqLen)
	}
	if T > m.Config.Context() {
		return 0, fmt.Errorf("train: sequence length T=%d exceeds the sliding window %d; windowed attention is not implemented, so use sequences of at most %d tokens", T, m.Config.SlidingWindow, m.Config.SlidingWindow)
	}
	if len(tokens) != B*T {
		return 0, fmt.Errorf("train: tokens has %d ids, want B*T = %d*%d = %d", len(tokens), B, T, B*T)
	}
	if err := checkTokens("tokens", tokens, m.Config.VocabSize); err != nil {
		return 0, err
	}
	if targets == nil {
		return 0, nil
	}
	if len(targets) != B*T {
		return 0, fmt.Errorf("train: targets has %d ids, want B*T = %d", len(targets), B*T)
	}
	count := 0
	for i, t := range targets {
		if int(t) >= m.Config.VocabSize {
			return 0, fmt.Errorf("train: targets[%d] = %d is outside the vocabulary [0,%d)", i, t, m.Config.VocabSize)
		}
		if t >= 0 {
			count++
		}
	}
	if count == 0 {
		return 0, errors.New("train: every target is negative (padding); nothing to score")
	}
	return count, nil
}

func checkTokens(what string, tokens []int32, V int) error {
	for i, t := range tokens {
		if t < 0 || int(t) >= V {
			return fmt.Errorf("train: %s[%d] = %d is outside the vocabulary [0,%d)", what, i, t, V)
		}
	}
	return nil
}

// ForwardBackward runs one micro-batch of B sequences of T tokens (row-major
// [B*T]) and accumulates the gradient of mean cross-entropy, scaled by
// gradScale (1/grad_accum), into the trainable gradients. step keys the
// dropout masks so runs and resumes repeat bit for bit. A negative target
// is padding: not scored.
func (m *Model) ForwardBackward(tokens, targets []int32, B, T int, gradScale float32, step int) (loss float64, err error) {
	count, err := m.checkBatch(tokens, targets, B, T)
	if err != nil {
		return 0, err
	}
	if targets == nil {
		return 0, errors.New("train: ForwardBackward needs targets")
	}
	if _, g := m.trainable(); g == nil {
		return 0, errors.New("train: the model has no trainable parameters (quantized base without LoRA); call EnableLoRA")
	}
	mb := m.microBatch(B)
	for b0 := 0; b0 < B; b0 += mb {
		nb := min(mb, B-b0)
		tk, tg := tokens[b0*T:(b0+nb)*T], targets[b0*T:(b0+nb)*T]
		if !anyScored(tg) {
			continue
		}
		a := m.activations(nb, T, true)
		a.row0 = b0
		m.forward(a, tk, true, step)
		// Scaled by the whole batch's count, the micro-batches' gradients
		// and loss sums add up to the batch's mean.
		loss += m.headLoss(a, tg, count, gradScale, true)
		m.backward(a, tk, step)
	}
	return loss / float64(count), nil
}

// Loss runs the forward pass only and returns mean cross-entropy (no dropout).
func (m *Model) Loss(tokens, targets []int32, B, T int) (float64, error) {
	sum, count, err := m.LossSum(tokens, targets, B, T)
	if err != nil {
		return 0, err
	}
	return sum / float64(count), nil
}

// LossSum runs the forward pass only and returns the summed cross-entropy
// over the scored targets (those >= 0) and their count.
func (m *Model) LossSum(tokens, targets []int32, B, T int) (sum float64, count int, err error) {
	if targets == nil {
		return 0, 0, errors.New("train: Loss needs targets")
	}
	if count, err = m.checkBatch(tokens, targets, B, T); err != nil {
		return 0, 0, err
	}
	mb := m.microBatch(B)
	for b0 := 0; b0 < B; b0 += mb {
		nb := min(mb, B-b0)
		tk, tg := tokens[b0*T:(b0+nb)*T], targets[b0*T:(b0+nb)*T]
		if !anyScored(tg) {
			continue
		}
		a := m.activations(nb, T, false)
		m.forward(a, tk, false, 0)
		sum += m.headLoss(a, tg, count, 0, false)
	}
	return sum, count, nil
}

// SetMicroBatch makes ForwardBackward and Loss run a batch of B sequences
// as micro-batches of at most n (0: the whole batch at once), so
// activation memory is that of n sequences. The gradient is the batch's
// (each micro-batch weighted by its share of the scored targets); the
// arithmetic differs only in summation order.
func (m *Model) SetMicroBatch(n int) {
	if n < 0 {
		n = 0
	}
	if n != m.micro {
		m.micro = n
		m.resetActivations()
	}
}

// MicroBatch is the SetMicroBatch setting (0: whole batches).
func (m *Model) MicroBatch() int { return m.micro }

func (m *Model) microBatch(B int) int {
	if m.micro <= 0 || m.micro > B {
		return B
	}
	return m.micro
}

// Logits returns the next-token logits [VocabSize] after the last of tokens.
// Only the last max_seq_len (or sliding window) tokens are used.
func (m *Model) Logits(tokens []int32) ([]float32, error) {
	if len(tokens) == 0 {
		return nil, errors.New("train: Logits needs at least one token")
	}
	if n := m.Config.Context(); len(tokens) > n {
		tokens = tokens[len(tokens)-n:]
	}
	T := len(tokens)
	if _, err := m.checkBatch(tokens, nil, 1, T); err != nil {
		return nil, err
	}
	a := m.activations(1, T, false)
	m.forward(a, tokens, false, 0)
	D, V := m.Config.Dim, m.Config.VocabSize
	last := m.be.View(a.lnf, (T-1)*D, D)
	out := m.be.View(a.logits, 0, V)
	m.headForward(out, last, 1)
	res := make([]float32, V)
	m.be.Download(res, out)
	return res, nil
}

// embed gathers the token embeddings into out [N,D].
func (m *Model) embed(out backend.Buf, tokens []int32, N int) {
	if m.wte16 != nil {
		m.be.EncoderForwardBF16(out, m.wte16, tokens, N, m.Config.Dim)
		return
	}
	m.be.EncoderForward(out, m.wte, tokens, N, m.Config.Dim)
}

// headForward computes logits [n,V] = inp [n,D]·lm_headᵀ.
func (m *Model) headForward(logits, inp backend.Buf, n int) {
	D, V := m.Config.Dim, m.Config.VocabSize
	if m.lmHead16 != nil {
		m.be.MatmulBF16Forward(logits, inp, m.lmHead16, n, D, V)
		return
	}
	m.be.MatmulForward(logits, inp, m.lmHead, n, D, V, 1, 0)
}

// headBackward accumulates dinp += dlogits·lm_head and, in full training,
// the lm_head gradient.
func (m *Model) headBackward(dinp, dlogits, inp backend.Buf, n int) {
	D, V := m.Config.Dim, m.Config.VocabSize
	if m.lmHead16 != nil {
		m.be.MatmulBF16Backward(dinp, dlogits, m.lmHead16, n, D, V)
		return
	}
	var dw backend.Buf
	if m.fullTraining() {
		dw = m.dlmHead
	}
	m.be.MatmulBackward(dinp, dw, dlogits, inp, m.lmHead, n, D, V, 1)
}

// headLoss runs lm_head and the fused cross-entropy a chunk of rows at a
// time (a.ceRows), so the [N,V] logits and their gradient are never held
// whole, and returns the sum of the rows' losses. With grad it
// also runs each chunk's lm_head backward at once, leaving dlnf in
// a.grads.dlnf (the loss gradient scaled by gradScale/count). A chunk with
// no scored target (every target negative) is skipped: its loss and
// gradient are zero.
func (m *Model) headLoss(a *activations, targets []int32, count int, gradScale float32, grad bool) float64 {
	be := m.be
	N, D, V := a.B*a.T, m.Config.Dim, m.Config.VocabSize
	if grad {
		be.Zero(a.grads.dlnf)
	}
	losses := a.losses[:N]
	for r0 := 0; r0 < N; r0 += a.ceRows {
		nr := min(a.ceRows, N-r0)
		tg := targets[r0 : r0+nr]
		if !anyScored(tg) {
			clear(losses[r0 : r0+nr])
			continue
		}
		logits, lnf := be.View(a.logits, 0, nr*V), be.View(a.lnf, r0*D, nr*D)
		m.headForward(logits, lnf, nr)
		be.CrossEntropy(logits, losses[r0:r0+nr], tg, nr, V, gradScale/float32(count), grad)
		if grad {
			m.headBackward(be.View(a.grads.dlnf, r0*D, nr*D), logits, lnf, nr)
		}
	}
	var sum float64
	for _, l := range losses {
		sum += l
	}
	return sum
}

func anyScored(targets []int32) bool {
	for _, t := range targets {
		if t >= 0 {
			return true
		}
	}
	return false
}

// forward runs the embedding, the decoder blocks and the final norm.
func (m *Model) forward(a *activations, tokens []int32, train bool, step int) {
	c := m.Config
	N := a.B * a.T
	m.embed(a.resid[0], tokens, N)
	for l := range m.layers {
		m.layerForward(a, l, train, step)
	}
	m.be.RMSNormForward(a.lnf, a.rstdf, a.resid[c.Layers], m.normF, N, c.Dim, c.NormEps)
}

// layerForward runs decoder block l from resid[l] to resid[l+1], saving its
// inner tensors in a.layer(l).
func (m *Model) layerForward(a *activations, l int, train bool, step int) {
	m.block(a, l, train, step, func(la *layerActs) {
		be, c := m.be, m.Config
		N, hd := a.B*a.T, c.HeadDim()
		be.RoPEForward(la.q, m.ropeCos, m.ropeSin, N, a.T, c.Heads, hd)
		be.RoPEForward(la.k, m.ropeCos, m.ropeSin, N, a.T, c.KVHeads, hd)
		be.AttentionForward(la.atty, la.att, la.q, la.k, la.v, a.B, a.T, c.Heads, c.KVHeads, hd)
	})
}

// block runs decoder block l from resid[l] to resid[l+1], with attend
// turning q, k, v into atty: causal attention over the batch for training
// and scoring, attention against the KV cache for generation.
func (m *Model) block(a *activations, l int, train bool, step int, attend func(la *layerActs)) {
	be, c := m.be, m.Config
	N, D := a.B*a.T, c.Dim
	L, la := &m.layers[l], a.layer(l)
	x := a.resid[l]
	be.RMSNormForward(la.ln1, la.rstd1, x, L.ln1, N, D, c.NormEps)
	m.linearForward(a, l, modQ, la.ln1, la.q, N, train, step)
	m.linearForward(a, l, modK, la.ln1, la.k, N, train, step)
	m.linearForward(a, l, modV, la.ln1, la.v, N, train, step)
	attend(la)
	m.linearForward(a, l, modO, la.atty, a.tmpD, N, train, step)
	be.Add(la.x2, x, a.tmpD)
	be.RMSNormForward(la.ln2, la.rstd2, la.x2, L.ln2, N, D, c.NormEps)
	m.linearForward(a, l, modGate, la.ln2, la.gate, N, train, step)
	m.linearForward(a, l, modUp, la.ln2, la.up, N, train, step)
	be.SwiGLUForward(la.h, la.gate, la.up)
	m.linearForward(a, l, modDown, la.h, a.tmpD, N, train, step)
	be.Add(a.resid[l+1], la.x2, a.tmpD)
}

// backward propagates dlnf (from headLoss) to every trainable gradient.
// With checkpointing each block's forward runs again, from the saved
// resid[l], just before its backward: the same ops on the same inputs, so
// the same values bit for bit (dropout masks are a function of the step).
func (m *Model) backward(a *activations, tokens []int32, step int) {
	be, c := m.be, m.Config
	N, D := a.B*a.T, c.Dim
	full := m.fullTraining()
	g := a.grads
	be.Zero(g.dres)
	var dnormF backend.Buf
	if full {
		dnormF = m.dnormF
	}
	be.RMSNormBackward(g.dres, dnormF, g.dlnf, a.resid[c.Layers], m.normF, a.rstdf, N, D)
	for l := c.Layers - 1; l >= 0; l-- {
		if a.ckpt && l != c.Layers-1 { // the shared set still holds the last block
			m.layerForward(a, l, true, step)
		}
		m.layerBackward(a, l, step)
	}
	if full {
		be.EncoderBackward(m.dwte, g.dres, tokens, N, D)
	}
}

// layerBackward propagates g.dres (the gradient at resid[l+1]) through block
// l to the gradient at resid[l], accumulating the weight gradients.
func (m *Model) layerBackward(a *activations, l int, step int) {
	be, c := m.be, m.Config
	B, T := a.B, a.T
	N, D, hd := B*T, c.Dim, c.HeadDim()
	full := m.fullTraining()
	grad := func(g backend.Buf) backend.Buf {
		if full {
			return g
		}
		return nil
	}
	g := a.grads
	L, la := &m.layers[l], a.layer(l)
	// MLP: resid[l+1] = x2 + down(silu(gate(ln2)) * up(ln2))
	be.Zero(g.dh)
	m.linearBackward(a, l, modDown, g.dres, la.h, g.dh, N, step)
	be.Zero(g.dgate)
	be.Zero(g.dup)
	be.SwiGLUBackward(g.dgate, g.dup, g.dh, la.gate, la.up)
	be.Zero(g.dln)
	m.linearBackward(a, l, modGate, g.dgate, la.ln2, g.dln, N, step)
	m.linearBackward(a, l, modUp, g.dup, la.ln2, g.dln, N, step)
	be.RMSNormBackward(g.dres, grad(L.dln2), g.dln, la.x2, L.ln2, la.rstd2, N, D)
	// attention: x2 = x + o(attn(rope(q(ln1)), rope(k(ln1)), v(ln1)))
	be.Zero(g.datty)
	m.linearBackward(a, l, modO, g.dres, la.atty, g.datty, N, step)
	be.Zero(g.dq)
	be.Zero(g.dk)
	be.Zero(g.dv)
	be.AttentionBackward(g.dq, g.dk, g.dv, g.datty, la.att, la.q, la.k, la.v, B, T, c.Heads, c.KVHeads, hd)
	be.RoPEBackward(g.dq, m.ropeCos, m.ropeSin, N, T, c.Heads, hd)
	be.RoPEBackward(g.dk, m.ropeCos, m.ropeSin, N, T, c.KVHeads, hd)
	be.Zero(g.dln)
	m.linearBackward(a, l, modQ, g.dq, la.ln1, g.dln, N, step)
	m.linearBackward(a, l, modK, g.dk, la.ln1, g.dln, N, step)
	m.linearBackward(a, l, modV, g.dv, la.ln1, g.dln, N, step)
	be.RMSNormBackward(g.dres, grad(L.dln1), g.dln, a.resid[l], L.ln1, la.rstd1, N, D)
}

// dropoutKey keys the dropout mask of module j in layer l for the
// micro-batch in a: the batch's key for its first micro-batch, a distinct
// one for each later micro-batch, so their masks are independent.
func (m *Model) dropoutKey(a *activations, step, l, j int) uint64 {
	k := m.lora.key(step, l, j)
	if a.row0 != 0 {
		k = backend.Mix64(k + uint64(a.row0)*0x9E3779B97F4A7C15)
	}
	return k
}

// linearForward computes out = inp·Wᵀ (W fp32 or 4-bit) plus the LoRA branch
// (α/r)·(dropout(inp)·Aᵀ)·Bᵀ when module j of layer l has an adapter.
func (m *Model) linearForward(a *activations, l, j int, inp, out backend.Buf, N int, train bool, step int) {
	be := m.be
	in, outDim := m.Config.linShape(j)
	L := &m.layers[l]
	if L.q4[j] != nil {
		be.MatmulQ4Forward(out, inp, L.q4[j], N, in, outDim)
	} else {
		be.MatmulForward(out, inp, L.lin[j], N, in, outDim, 1, 0)
	}
	if L.bias[j] != nil { // out += 1·biasᵀ: a rank-1 product, so no extra backend op
		be.MatmulForward(out, be.View(a.ones, 0, N), L.bias[j], N, 1, outDim, 1, 1)
	}
	ad := L.ad[j]
	if ad == nil {
		return
	}
	r, p := m.lora.cfg.Rank, m.lora.dropout(train)
	xd := inp
	if p > 0 {
		xd = be.View(a.xd, 0, N*in)
		be.DropoutForward(xd, inp, p, m.dropoutKey(a, step, l, j))
	}
	xa := a.layer(l).xa[j]
	be.MatmulForward(xa, xd, ad.A, N, in, r, 1, 0)
	be.MatmulForward(out, xa, ad.B, N, r, outDim, m.lora.scale(), 1)
}

// linearBackward accumulates dinp and the weight gradients of module j.
func (m *Model) linearBackward(a *activations, l, j int, dout, inp, dinp backend.Buf, N int, step int) {
	be := m.be
	in, outDim := m.Config.linShape(j)
	L := &m.layers[l]
	if ad := L.ad[j]; ad != nil {
		r, p := m.lora.cfg.Rank, m.lora.dropout(true)
		dxa := be.View(a.grads.dxa, 0, N*r)
		be.Zero(dxa)
		be.MatmulBackward(dxa, ad.dB, dout, a.layer(l).xa[j], ad.B, N, r, outDim, m.lora.scale())
		xd, dxd := inp, dinp
		key := m.dropoutKey(a, step, l, j)
		if p > 0 {
			xd = be.View(a.xd, 0, N*in)
			be.DropoutForward(xd, inp, p, key)
			dxd = be.View(a.grads.dxd, 0, N*in)
			be.Zero(dxd)
		}
		be.MatmulBackward(dxd, ad.dA, dxa, xd, ad.A, N, in, r, 1)
		if p > 0 {
			be.DropoutBackward(dinp, dxd, p, key)
		}
	}
	if L.q4[j] != nil {
		be.MatmulQ4Backward(dinp, dout, L.q4[j], N, in, outDim)
		return
	}
	var dw backend.Buf
	if m.fullTraining() {
		dw = L.dlin[j]
		if L.dbias[j] != nil { // dbias += doutᵀ·1
			be.MatmulBackward(nil, L.dbias[j], dout, be.View(a.ones, 0, N), L.bias[j], N, 1, outDim, 1)
		}
	}
	be.MatmulBackward(dinp, dw, dout, inp, L.lin[j], N, in, outDim, 1)
}

// ClipGradNorm scales the gradients so their global L2 norm is at most max
// (max <= 0: no clipping) and returns the norm before clipping. A NaN or
// infinite norm is returned as is and nothing is scaled.
func (m *Model) ClipGradNorm(max float64) float64 {
	_, g := m.trainable()
	if g == nil {
		return 0
	}
	norm := math.Sqrt(m.be.SumSquares(g))
	if max > 0 && norm > max && !math.IsInf(norm, 0) && !math.IsNaN(norm) {
		m.be.Scale(g, float32(max/(norm+1e-6)))
	}
	return norm
}

// OptimizerStep applies one AdamW step (decoupled weight decay) at learning
// rate lr to the trainable parameters; step counts from 1 for bias
// correction. In full training, weight decay skips the norms (1-D tensors).
func (m *Model) OptimizerStep(cfg TrainConfig, lr float64, step int) {
	p, g := m.trainable()
	if p == nil {
		return
	}
	if step < 1 {
		step = 1
	}
	if m.hostAdam {
		m.hostOptimizerStep(cfg, lr, step, p, g)
		return
	}
	if m.m == nil || m.m.Len() != p.Len() {
		m.dropMoments()
		m.m, m.v = m.be.Alloc(p.Len()), m.be.Alloc(p.Len())
	}
	for _, r := range m.decayRuns() {
		wd := 0.0
		if r.decay {
			wd = cfg.WeightDecay
		}
		view := func(b backend.Buf) backend.Buf { return m.be.View(b, r.off, r.n) }
		m.be.AdamW(view(p), view(g), view(m.m), view(m.v), lr, cfg.Beta1, cfg.Beta2, cfg.Eps, wd, step)
	}
}

// hostOptimizerStep is OptimizerStep with the moments in host memory: the
// gradients come down, the reference AdamW (which the device kernels match
// bit for bit) updates host copies, and the parameters go back up. It trades
// two transfers of the trainable vector per step for 8 bytes per trainable
// parameter of device memory.
func (m *Model) hostOptimizerStep(cfg TrainConfig, lr float64, step int, p, g backend.Buf) {
	n := p.Len()
	if len(m.mHost) != n {
		m.mHost, m.vHost = make([]float32, n), make([]float32, n)
	}
	hp, hg := backend.HostSlice(p), backend.HostSlice(g)
	if hp == nil {
		if len(m.hostP) != n {
			m.hostP, m.hostG = make([]float32, n), make([]float32, n)
		}
		hp, hg = m.hostP, m.hostG
		m.be.Download(hp, p)
		m.be.Download(hg, g)
	}
	for _, r := range m.decayRuns() {
		wd := 0.0
		if r.decay {
			wd = cfg.WeightDecay
		}
		lo, hi := r.off, r.off+r.n
		backend.AdamW(hp[lo:hi], hg[lo:hi], m.mHost[lo:hi], m.vHost[lo:hi], lr, cfg.Beta1, cfg.Beta2, cfg.Eps, wd, step)
	}
	if backend.HostSlice(p) == nil {
		m.be.Upload(p, hp)
	}
}

// SetHostOptimizer keeps the AdamW moments in host memory instead of the
// backend's (a GPU's memory then holds no optimizer state). The numbers do
// not change. Switching drops the moments, like EnableLoRA does.
func (m *Model) SetHostOptimizer(on bool) {
	if m.hostAdam == on {
		return
	}
	m.hostAdam = on
	m.dropMoments()
}

// HostOptimizer reports whether the AdamW moments live in host memory.
func (m *Model) HostOptimizer() bool { return m.hostAdam }

// dropMoments frees the AdamW state; the next step starts it from zero.
// ResetOptimizer starts AdamW afresh: the moments are zeroed where they
// are, so a new run of steps (a federated round) keeps every buffer.
func (m *Model) ResetOptimizer() {
	if m.m != nil {
		m.be.Zero(m.m)
		m.be.Zero(m.v)
	}
	clear(m.mHost)
	clear(m.vHost)
}

func (m *Model) dropMoments() {
	if m.m != nil {
		m.be.Free(m.m)
		m.be.Free(m.v)
	}
	m.m, m.v, m.mHost, m.vHost, m.hostP, m.hostG = nil, nil, nil, nil, nil, nil
}

// momentTensors is the AdamW moments as tensors for a writer: views of the live
// moments where they are in host memory (no copy; they must not change
// until written), copies of device buffers, zeros before the first step.
func (m *Model) momentTensors(n int) (mm, vv safetensors.Tensor) {
	shape := []int{n}
	switch {
	case m.hostAdam && len(m.mHost) == n:
		return safetensors.F32View(shape, m.mHost), safetensors.F32View(shape, m.vHost)
	case !m.hostAdam && m.m != nil && m.m.Len() == n:
		return m.tensorOf(shape, m.m), m.tensorOf(shape, m.v)
	}
	zero := make([]float32, n)
	return safetensors.F32View(shape, zero), safetensors.F32View(shape, zero)
}

// setMoments installs AdamW moments read from a checkpoint.
func (m *Model) setMoments(mm, vv []float32) {
	n := len(mm)
	if m.hostAdam {
		m.mHost, m.vHost = mm, vv
		return
	}
	if m.m == nil || m.m.Len() != n {
		m.dropMoments()
		m.m, m.v = m.be.Alloc(n), m.be.Alloc(n)
	}
	m.be.Upload(m.m, mm)
	m.be.Upload(m.v, vv)
}

// SetCheckpointing turns per-layer activation checkpointing on or off. On,
// a training step keeps only each block's input and runs the block's
// forward again just before its backward: activation memory falls from
// n_layers blocks' inner tensors to one, for about a third more compute
// (a second forward). The numbers are the same bit for bit.
func (m *Model) SetCheckpointing(on bool) {
	if m.ckpt != on {
		m.ckpt = on
		m.resetActivations()
	}
}

// Checkpointing reports whether activation checkpointing is on.
func (m *Model) Checkpointing() bool { return m.ckpt }

// Free releases every buffer the model holds on its backend (on a GPU, at
// once rather than when the garbage collector gets to it). The model must
// not be used afterwards.
func (m *Model) Free() {
	m.resetActivations()
	m.dropMoments()
	for _, b := range []backend.Buf{m.params, m.grads, m.ropeCos, m.ropeSin} {
		if b != nil {
			m.be.Free(b)
		}
	}
	if m.lora != nil {
		m.be.Free(m.lora.params)
		m.be.Free(m.lora.grads)
	}
	if m.wte16 != nil {
		m.be.Free(m.wte16)
		if !m.Config.TiedEmbeddings {
			m.be.Free(m.lmHead16)
		}
	}
	for l := range m.layers {
		for j, q := range m.layers[l].q4 {
			if q != nil {
				m.be.Free(q)
				m.layers[l].q4[j] = nil
			}
		}
	}
	m.params, m.grads, m.lora, m.wte16, m.lmHead16 = nil, nil, nil, nil, nil
	m.layers = nil
}

type decayRun struct {
	off, n int
	decay  bool
}

// decayRuns splits the trainable vector into maximal runs with the same
// weight-decay choice: matrices decay, norms do not; LoRA A/B all decay.
func (m *Model) decayRuns() []decayRun {
	if m.lora != nil {
		return []decayRun{{0, m.lora.params.Len(), true}}
	}
	var runs []decayRun
	for _, sp := range m.specs {
		d := len(sp.shape) >= 2
		if k := len(runs) - 1; k >= 0 && runs[k].decay == d && runs[k].off+runs[k].n == sp.off {
			runs[k].n += sp.n
			continue
		}
		runs = append(runs, decayRun{sp.off, sp.n, d})
	}
	return runs
}

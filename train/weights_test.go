package train

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/opencluster/opencluster/quant/safetensors"
	"github.com/opencluster/opencluster/train/backend"
)

var testQuant = QuantConfig{Format: "nf4", BlockSize: 64, DoubleQuant: true}

func newTiny(t *testing.T, tied bool, seed uint64) *Model {
	t.Helper()
	cfg := tinyConfig()
	cfg.TiedEmbeddings = tied
	m, err := NewModel(cfg, backend.NewCPU(2), seed)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func logits(t *testing.T, m *Model) []float32 {
	t.Helper()
	l, err := m.Logits([]int32{1, 5, 2, 9, 3})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestSaveLoadBaseRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name     string
		tied, q4 bool
		quantCfg QuantConfig
	}{
		{name: "fp32/tied", tied: true},
		{name: "fp32/untied"},
		{name: "nf4/double", tied: true, q4: true, quantCfg: testQuant},
		{name: "fp4/single/untied", q4: true, quantCfg: QuantConfig{Format: "fp4", BlockSize: 32}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newTiny(t, tc.tied, 7)
			if tc.q4 {
				if err := m.QuantizeBase(tc.quantCfg); err != nil {
					t.Fatal(err)
				}
			}
			want := logits(t, m)
			path := filepath.Join(t.TempDir(), "base.safetensors")
			if err := m.SaveBase(path); err != nil {
				t.Fatal(err)
			}
			f, err := safetensors.Read(path)
			if err != nil {
				t.Fatal(err)
			}
			if f.Metadata["format"] != "pt" || !strings.Contains(f.Metadata[metaConfig], `"hidden_size":16`) {
				t.Errorf("metadata %v lacks format=pt or the HF-named config", f.Metadata)
			}
			if got := f.Has("lm_head.weight"); got == tc.tied {
				t.Errorf("lm_head.weight present = %v with tied = %v", got, tc.tied)
			}
			m2, err := LoadModel(path, backend.NewCPU(2))
			if err != nil {
				t.Fatal(err)
			}
			if m2.Config != m.Config || m2.Quantized() != tc.q4 {
				t.Fatalf("config %+v quantized %v, want %+v %v", m2.Config, m2.Quantized(), m.Config, tc.q4)
			}
			if got := logits(t, m2); !reflect.DeepEqual(got, want) {
				t.Errorf("logits after reload differ:\n got %v\nwant %v", got[:4], want[:4])
			}
			if tc.q4 {
				a, b := m.BaseTensor4(1, "down_proj"), m2.BaseTensor4(1, "down_proj")
				if !bytes.Equal(a.Packed, b.Packed) || !reflect.DeepEqual(a.Absmax, b.Absmax) || !reflect.DeepEqual(a.Nested, b.Nested) {
					t.Error("4-bit down_proj differs after the round trip")
				}
				if *m2.quant != tc.quantCfg {
					t.Errorf("quant config %+v, want %+v", *m2.quant, tc.quantCfg)
				}
			}
		})
	}
}

// writeHF writes m as a Hugging Face folder with BF16 weights, sharded in two.
func writeHF(t *testing.T, m *Model, dir string) {
	t.Helper()
	cfg := map[string]any{
		"architectures": []string{"LlamaForCausalLM"}, "model_type": "llama",
		"vocab_size": m.Config.VocabSize, "hidden_size": m.Config.Dim, "num_hidden_layers": m.Config.Layers,
		"num_attention_heads": m.Config.Heads, "num_key_value_heads": m.Config.KVHeads,
		"intermediate_size": m.Config.HiddenDim, "max_position_embeddings": m.Config.MaxSeqLen,
		"rope_theta": m.Config.RopeTheta, "rms_norm_eps": m.Config.NormEps,
		"tie_word_embeddings": m.Config.TiedEmbeddings, "torch_dtype": "bfloat16",
	}
	b, _ := json.Marshal(cfg)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	var shards [2][]safetensors.Named
	weightMap := map[string]string{}
	for i, sp := range m.specs {
		v := m.download(m.be.View(m.params, sp.off, sp.n))
		data := make([]byte, 2*len(v))
		for k, x := range v {
			bits := math.Float32bits(x)
			h := uint16((bits + 0x7FFF + (bits>>16)&1) >> 16) // round to nearest even
			data[2*k], data[2*k+1] = byte(h), byte(h>>8)
		}
		shards[i%2] = append(shards[i%2], safetensors.Named{Name: sp.name, Tensor: safetensors.Tensor{DType: "BF16", Shape: sp.shape, Data: data}})
		weightMap[sp.name] = []string{"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}[i%2]
	}
	for i, s := range shards {
		name := []string{"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}[i]
		if err := safetensors.Write(filepath.Join(dir, name), s, map[string]string{"format": "pt"}); err != nil {
			t.Fatal(err)
		}
	}
	idx, _ := json.Marshal(map[string]any{"metadata": map[string]any{}, "weight_map": weightMap})
	if err := os.WriteFile(filepath.Join(dir, "model.safetensors.index.json"), idx, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestLoadHuggingFaceFolder(t *testing.T) {
	m := newTiny(t, false, 3)
	dir := t.TempDir()
	writeHF(t, m, dir)
	m2, err := LoadModel(dir, backend.NewCPU(1))
	if err != nil {
		t.Fatal(err)
	}
	if m2.Config != m.Config {
		t.Fatalf("config %+v, want %+v", m2.Config, m.Config)
	}
	a, b := m.TrainableParams(), m2.TrainableParams()
	for i := range a {
		if d := math.Abs(float64(a[i] - b[i])); d > math.Abs(float64(a[i]))/128 {
			t.Fatalf("param %d = %v after BF16, want %v", i, b[i], a[i])
		}
	}
}

func TestLoadRejectsBadCheckpoints(t *testing.T) {
	m := newTiny(t, true, 1)
	dir := t.TempDir()
	good := filepath.Join(dir, "good.safetensors")
	if err := m.SaveBase(good); err != nil {
		t.Fatal(err)
	}
	f, err := safetensors.Read(good)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(good)
	// rewrite builds a variant of the good file with one tensor changed.
	rewrite := func(name string, edit func(*safetensors.Named) bool) string {
		var out []safetensors.Named
		for _, n := range f.Names() {
			tt, _ := f.Tensor(n)
			nt := safetensors.Named{Name: n, Tensor: tt}
			if n == name && !edit(&nt) {
				continue
			}
			out = append(out, nt)
		}
		p := filepath.Join(dir, strings.ReplaceAll(name, ".", "_")+".safetensors")
		if err := safetensors.Write(p, out, f.Metadata); err != nil {
			t.Fatal(err)
		}
		return p
	}
	q := "model.layers.1.self_attn.k_proj.weight"
	truncated := filepath.Join(dir, "truncated.safetensors")
	os.WriteFile(truncated, raw[:len(raw)-10], 0o644)
	cases := []struct {
		name, path, want string
	}{
		{"truncated", truncated, "truncated"},
		{"missing", rewrite(q, func(*safetensors.Named) bool { return false }), q},
		{"misshaped", rewrite(q, func(n *safetensors.Named) bool {
			n.Tensor = safetensors.F32Tensor([]int{16, 8}, make([]float32, 128))
			return true
		}), q},
		{"nan", rewrite("model.norm.weight", func(n *safetensors.Named) bool {
			v := make([]float32, 16)
			v[3] = float32(math.NaN())
			n.Tensor = safetensors.F32Tensor([]int{16}, v)
			return true
		}), "model.norm.weight"},
		{"int dtype", rewrite("model.norm.weight", func(n *safetensors.Named) bool {
			n.Tensor = safetensors.I64Tensor([]int{16}, make([]int64, 16))
			return true
		}), "model.norm.weight"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadModel(tc.path, backend.NewCPU(1))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("LoadModel error %v, want one naming %q", err, tc.want)
			}
		})
	}
	// a mis-shaped 4-bit tensor is caught too
	mq := newTiny(t, true, 1)
	mq.QuantizeBase(testQuant)
	qpath := filepath.Join(dir, "q.safetensors")
	if err := mq.SaveBase(qpath); err != nil {
		t.Fatal(err)
	}
	fq, _ := safetensors.Read(qpath)
	var out []safetensors.Named
	for _, n := range fq.Names() {
		tt, _ := fq.Tensor(n)
		if n == "model.layers.0.mlp.up_proj.weight.absmax" {
			tt.Data, tt.Shape = tt.Data[:len(tt.Data)-1], []int{tt.Shape[0] - 1}
		}
		out = append(out, safetensors.Named{Name: n, Tensor: tt})
	}
	safetensors.Write(qpath, out, fq.Metadata)
	if _, err := LoadModel(qpath, backend.NewCPU(1)); err == nil || !strings.Contains(err.Error(), "up_proj") {
		t.Errorf("LoadModel of a short absmax: error %v, want one naming up_proj", err)
	}
}

func TestAdapterRoundTripAndZeroB(t *testing.T) {
	m := newTiny(t, true, 2)
	if err := m.QuantizeBase(testQuant); err != nil {
		t.Fatal(err)
	}
	base := logits(t, m)
	lc := LoRAConfig{Rank: 4, Alpha: 8, Dropout: 0.1, Targets: []string{"q_proj", "v_proj", "down_proj"}}
	if err := m.EnableLoRA(lc, 9); err != nil {
		t.Fatal(err)
	}
	if got := logits(t, m); !reflect.DeepEqual(got, base) {
		t.Fatal("LoRA with B = 0 changed the output of the base model")
	}
	randomizeTrainable(m, 3, 0.1)
	want := logits(t, m)
	if reflect.DeepEqual(want, base) {
		t.Fatal("non-zero adapters left the output unchanged")
	}
	dir := filepath.Join(t.TempDir(), "adapter")
	if err := m.SaveAdapter(dir, "tiny-base"); err != nil {
		t.Fatal(err)
	}
	var pc map[string]any
	b, _ := os.ReadFile(filepath.Join(dir, adapterConfig))
	if err := json.Unmarshal(b, &pc); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]any{"peft_type": "LORA", "r": 4.0, "lora_alpha": 8.0, "lora_dropout": 0.1,
		"bias": "none", "task_type": "CAUSAL_LM", "base_model_name_or_path": "tiny-base",
		"fan_in_fan_out": false, "inference_mode": true} {
		if !reflect.DeepEqual(pc[k], v) {
			t.Errorf("adapter_config.json %s = %v, want %v", k, pc[k], v)
		}
	}
	f, err := safetensors.Read(filepath.Join(dir, adapterWeights))
	if err != nil {
		t.Fatal(err)
	}
	a, _ := f.Tensor("base_model.model.model.layers.1.mlp.down_proj.lora_A.weight")
	bb, _ := f.Tensor("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight")
	if !reflect.DeepEqual(a.Shape, []int{4, 24}) || !reflect.DeepEqual(bb.Shape, []int{16, 4}) {
		t.Errorf("down_proj lora_A %v lora_B %v, want [4 24] and [16 4]", a.Shape, bb.Shape)
	}
	m2 := newTiny(t, true, 2)
	m2.QuantizeBase(testQuant)
	if err := m2.LoadAdapter(dir); err != nil {
		t.Fatal(err)
	}
	if got := logits(t, m2); !reflect.DeepEqual(got, want) {
		t.Error("logits differ after the adapter round trip")
	}
	// a mis-shaped adapter tensor names itself
	var out []safetensors.Named
	for _, n := range f.Names() {
		tt, _ := f.Tensor(n)
		if strings.Contains(n, "layers.0.self_attn.v_proj.lora_B") {
			tt = safetensors.F32Tensor([]int{4, 4}, make([]float32, 16))
		}
		out = append(out, safetensors.Named{Name: n, Tensor: tt})
	}
	safetensors.Write(filepath.Join(dir, adapterWeights), out, nil)
	if err := m2.LoadAdapter(dir); err == nil || !strings.Contains(err.Error(), "layers.0.self_attn.v_proj.lora_B") {
		t.Errorf("LoadAdapter error %v, want one naming the v_proj lora_B tensor", err)
	}
}

// trainSteps runs n QLoRA or full steps on a fixed batch starting at step first.
func trainSteps(t *testing.T, m *Model, first, n int) []float64 {
	t.Helper()
	rng := rand.New(rand.NewPCG(8, 8))
	B, T := 2, 5
	tokens := randomTokens(rng, B*T, m.Config.VocabSize)
	targets := randomTokens(rng, B*T, m.Config.VocabSize)
	tc := tinyTrainConfig()
	var losses []float64
	for step := first; step < first+n; step++ {
		m.ZeroGrad()
		for micro := 0; micro < 2; micro++ {
			l, err := m.ForwardBackward(tokens, targets, B, T, 0.5, step)
			if err != nil {
				t.Fatal(err)
			}
			losses = append(losses, l)
		}
		m.ClipGradNorm(tc.GradClip)
		m.OptimizerStep(tc, tc.LR, step)
	}
	return losses
}

func newQLoRA(t *testing.T, seed uint64, dropout float64) *Model {
	t.Helper()
	m := newTiny(t, true, seed)
	if err := m.QuantizeBase(testQuant); err != nil {
		t.Fatal(err)
	}
	if err := m.EnableLoRA(LoRAConfig{Rank: 4, Alpha: 8, Dropout: dropout, Targets: LinearNames}, seed); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestQLoRAStepFreezesBase(t *testing.T) {
	m := newQLoRA(t, 1, 0.1)
	type snap struct {
		packed []byte
		absmax []float32
		nested []byte
	}
	var before []snap
	for l := range m.layers {
		for _, q := range m.layers[l].q4host {
			s := snap{packed: bytes.Clone(q.Packed), absmax: append([]float32(nil), q.Absmax...)}
			if q.Nested != nil {
				s.nested = bytes.Clone(q.Nested.Codes)
				s.absmax = append(s.absmax, q.Nested.Absmax...)
			}
			before = append(before, s)
		}
	}
	fp32 := append([]float32(nil), m.download(m.params)...)
	ad := append([]float32(nil), m.TrainableParams()...)
	trainSteps(t, m, 1, 3)
	i := 0
	for l := range m.layers {
		for j, q := range m.layers[l].q4host {
			s := before[i]
			i++
			am := append([]float32(nil), q.Absmax...)
			if q.Nested != nil {
				am = append(am, q.Nested.Absmax...)
				if !bytes.Equal(s.nested, q.Nested.Codes) {
					t.Errorf("%s: nested absmax codes changed", linearName(l, j))
				}
			}
			if !bytes.Equal(s.packed, q.Packed) || !reflect.DeepEqual(s.absmax, am) {
				t.Errorf("%s: NF4 bytes or absmax changed by a QLoRA step", linearName(l, j))
			}
		}
	}
	if !reflect.DeepEqual(fp32, m.download(m.params)) {
		t.Error("frozen fp32 embedding/norms changed by a QLoRA step")
	}
	after := m.TrainableParams()
	changedA, changedB := false, false
	for _, sp := range m.lora.specs {
		for k := sp.off; k < sp.off+sp.n; k++ {
			if after[k] != ad[k] {
				if strings.Contains(sp.name, "lora_A") {
					changedA = true
				} else {
					changedB = true
				}
			}
		}
	}
	if !changedA || !changedB {
		t.Errorf("adapters changed: A %v, B %v; want both", changedA, changedB)
	}
}

func TestDeterministicRuns(t *testing.T) {
	for _, mode := range []string{"full", "qlora"} {
		run := func() ([]float32, []float64) {
			var m *Model
			if mode == "full" {
				m = newTiny(t, false, 5)
			} else {
				m = newQLoRA(t, 5, 0.2)
			}
			l := trainSteps(t, m, 1, 3)
			return append([]float32(nil), m.TrainableParams()...), l
		}
		p1, l1 := run()
		p2, l2 := run()
		if !reflect.DeepEqual(l1, l2) || !bytes.Equal(f32bytes(p1), f32bytes(p2)) {
			t.Errorf("%s: two runs with the same seed differ", mode)
		}
	}
}

func f32bytes(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		u := math.Float32bits(x)
		b[4*i], b[4*i+1], b[4*i+2], b[4*i+3] = byte(u), byte(u>>8), byte(u>>16), byte(u>>24)
	}
	return b
}

func TestTrainStateResume(t *testing.T) {
	for _, mode := range []string{"full", "qlora"} {
		t.Run(mode, func(t *testing.T) {
			mk := func() *Model {
				if mode == "full" {
					return newTiny(t, true, 4)
				}
				return newQLoRA(t, 4, 0.1)
			}
			straight := mk()
			trainSteps(t, straight, 1, 4)

			first := mk()
			trainSteps(t, first, 1, 2)
			path := filepath.Join(t.TempDir(), "state.safetensors")
			if err := first.SaveTrainState(path, map[string]string{"step": "2", "cursor": "17"}); err != nil {
				t.Fatal(err)
			}
			resumed := mk()
			meta, err := resumed.LoadTrainState(path)
			if err != nil {
				t.Fatal(err)
			}
			if meta["step"] != "2" || meta["cursor"] != "17" || len(meta) != 2 {
				t.Errorf("meta %v, want step=2 cursor=17", meta)
			}
			trainSteps(t, resumed, 3, 2)
			if !bytes.Equal(f32bytes(straight.TrainableParams()), f32bytes(resumed.TrainableParams())) {
				t.Error("resumed run differs from the uninterrupted one")
			}
			other := newTiny(t, true, 4)
			if mode == "full" {
				other = newQLoRA(t, 4, 0)
			}
			if _, err := other.LoadTrainState(path); err == nil {
				t.Error("loading a train state into a model of the other mode succeeded")
			}
		})
	}
}

package train

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/opencluster/opencluster/internal/atomicfile"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/opencluster/opencluster/quant/safetensors"
	"github.com/opencluster/opencluster/train/backend"
)

// Metadata keys of the files this package writes.
const (
	metaConfig = "opencluster.config" // ModelConfig as Hugging Face config.json JSON
	metaQuant  = "opencluster.quant"  // QuantConfig JSON when the linears are 4-bit
)

// tensorSource finds a tensor by name across one or more safetensors files.
type tensorSource interface {
	get(name string) (safetensors.Tensor, bool)
}

type fileSet []*safetensors.File

func (fs fileSet) get(name string) (safetensors.Tensor, bool) {
	for _, f := range fs {
		if f.Has(name) {
			t, err := f.Tensor(name)
			return t, err == nil
		}
	}
	return safetensors.Tensor{}, false
}

// loadF32 reads tensor name, checks its shape and that every value is finite.
func loadF32(src tensorSource, name string, shape []int) ([]float32, error) {
	t, ok := src.get(name)
	if !ok {
		return nil, fmt.Errorf("tensor %s is missing", name)
	}
	if !sameShape(t.Shape, shape) {
		return nil, fmt.Errorf("tensor %s has shape %v, want %v", name, t.Shape, shape)
	}
	if !t.IsFloat() {
		return nil, fmt.Errorf("tensor %s has dtype %s, want F32, F16 or BF16", name, t.DType)
	}
	v, err := t.Float32()
	if err != nil {
		return nil, fmt.Errorf("tensor %s: %w", name, err)
	}
	if i := firstNonFinite(v); i >= 0 {
		return nil, fmt.Errorf("tensor %s: element %d is %v", name, i, v[i])
	}
	return v, nil
}

func sameShape(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func firstNonFinite(v []float32) int {
	for i, x := range v {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return i
		}
	}
	return -1
}

// shardNames lists the safetensors files of a Hugging Face folder.
func shardNames(dir string) ([]string, error) {
	if _, err := os.Stat(filepath.Join(dir, "model.safetensors")); err == nil {
		return []string{"model.safetensors"}, nil
	}
	idx := filepath.Join(dir, "model.safetensors.index.json")
	b, err := os.ReadFile(idx)
	if err != nil {
		return nil, fmt.Errorf("train: %s has neither model.safetensors nor a readable index: %w", dir, err)
	}
	var index struct {
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(b, &index); err != nil {
		return nil, fmt.Errorf("train: %s: %w", idx, err)
	}
	seen := map[string]bool{}
	var names []string
	for _, f := range index.WeightMap {
		if strings.ContainsAny(f, `/\`) || f == ".." {
			return nil, fmt.Errorf("train: %s: shard name %q must be a plain file name", idx, f)
		}
		if !seen[f] {
			seen[f] = true
			names = append(names, f)
		}
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("train: %s: empty weight_map", idx)
	}
	sort.Strings(names)
	return names, nil
}

// SaveBase writes the base weights (fp32; or, when quantized, the norms in
// fp32, the embedding and lm_head in BF16 and the linears in the packed
// 4-bit layout) with the model config in the safetensors metadata under
// "opencluster.config" and "format": "pt", atomically. On the CPU backend
// the fp32 tensors stream from the live buffers, without copies.
func (m *Model) SaveBase(path string) error {
	stage, err := m.prepareBase(path)
	if err != nil {
		return err
	}
	return commitStaged(stage)
}

// commitStaged writes staged files and puts them in place.
func commitStaged(stage func() (staged, error)) error {
	s, err := stage()
	if err != nil {
		return err
	}
	return s.commit()
}

// prepareBase gathers SaveBase's tensors (copying device buffers now,
// viewing host ones) and returns the function that writes them beside path
// without putting the file in place; it may run beside other work that
// only reads the weights.
func (m *Model) prepareBase(path string) (func() (staged, error), error) {
	indented, err := m.Config.HFConfigJSON(m.Info, "float32", nil)
	if err != nil {
		return nil, err
	}
	var cfgJSON bytes.Buffer
	if err := json.Compact(&cfgJSON, indented); err != nil {
		return nil, err
	}
	meta := map[string]string{"format": "pt", metaConfig: cfgJSON.String()}
	var out []safetensors.Named
	for _, sp := range m.specs {
		out = append(out, safetensors.Named{Name: sp.name, Tensor: m.tensorOf(sp.shape, m.be.View(m.params, sp.off, sp.n))})
	}
	if m.quant != nil {
		qj, _ := json.Marshal(m.quant)
		meta[metaQuant] = string(qj)
		if out, err = m.appendFrozen(out); err != nil {
			return nil, fmt.Errorf("train: SaveBase %s: %w", path, err)
		}
	}
	return func() (staged, error) {
		p, err := stageSafetensors(path, out, meta)
		if err != nil {
			return nil, fmt.Errorf("train: SaveBase: %w", err)
		}
		return staged{p}, nil
	}, nil
}

// stageSafetensors writes tensors and metadata to a temporary file beside
// path, tensor by tensor (a tensor viewing live memory is written from it
// directly), and syncs it; the caller commits or aborts it.
func stageSafetensors(path string, tensors []safetensors.Named, meta map[string]string) (*atomicfile.Pending, error) {
	p, err := atomicfile.Create(path, 0o644)
	if err != nil {
		return nil, err
	}
	w := bufio.NewWriterSize(p, 1<<20)
	err = safetensors.Encode(w, tensors, meta)
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = p.Sync()
	}
	if err != nil {
		p.Abort()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}

// stagedFile is a file (or folder) written in full beside its place: Commit
// puts it there, Abort throws it away. *atomicfile.Pending is one.
type stagedFile interface {
	Commit() error
	Abort()
}

// staged is files written in full beside their paths, not yet in place.
type staged []stagedFile

// commit puts every file in place, in order; after an error the rest are
// thrown away.
func (s staged) commit() error {
	for i, p := range s {
		if err := p.Commit(); err != nil {
			s[i+1:].abort()
			return err
		}
	}
	return nil
}

func (s staged) abort() {
	for _, p := range s {
		p.Abort()
	}
}

// hostResident reports whether the model's weights are in host memory (the
// CPU backend), where writers read them in place.
func (m *Model) hostResident() bool {
	p, _ := m.trainable()
	return p != nil && backend.HostSlice(p) != nil
}

// tensorOf is buffer b as an F32 tensor for a writer: b's own memory on the
// CPU backend (no copy, so b must not change until the tensor is written),
// a downloaded copy elsewhere.
func (m *Model) tensorOf(shape []int, b backend.Buf) safetensors.Tensor {
	if h := backend.HostSlice(b); h != nil {
		return safetensors.F32View(shape, h)
	}
	return safetensors.F32View(shape, m.download(b))
}

func (m *Model) download(b backend.Buf) []float32 {
	h := make([]float32, b.Len())
	m.be.Download(h, b)
	return h
}

// peftConfig is adapter_config.json as PEFT writes it (the keys we use).
type peftConfig struct {
	PeftType      string   `json:"peft_type"`
	R             int      `json:"r"`
	LoraAlpha     float64  `json:"lora_alpha"`
	LoraDropout   float64  `json:"lora_dropout"`
	TargetModules any      `json:"target_modules"`
	Bias          string   `json:"bias"`
	TaskType      string   `json:"task_type"`
	BaseModel     string   `json:"base_model_name_or_path"`
	FanInFanOut   bool     `json:"fan_in_fan_out"`
	InferenceMode bool     `json:"inference_mode"`
	ModulesToSave []string `json:"modules_to_save"`
	UseRSLoRA     bool     `json:"use_rslora"`
	UseDoRA       bool     `json:"use_dora"`
	LayersToXform any      `json:"layers_to_transform"`
	RankPattern   any      `json:"rank_pattern"`
	AlphaPattern  any      `json:"alpha_pattern"`
}

// Adapter file names inside a PEFT folder.
const (
	adapterWeights = "adapter_model.safetensors"
	adapterConfig  = "adapter_config.json"
)

// BaseName is what an adapter trained on model m, loaded from path, records
// as base_model_name_or_path, for PEFT to find the base: explicit when
// given, else the base's own _name_or_path (a hub id such as
// "meta-llama/Llama-3.2-1B"), else the base's absolute path.
func BaseName(explicit string, m *Model, path string) string {
	switch {
	case explicit != "":
		return explicit
	case m.Info.NameOrPath != "":
		return m.Info.NameOrPath
	}
	if abs, err := filepath.Abs(path); err == nil {
		return abs
	}
	return path
}

// SaveAdapter writes the adapters in PEFT layout: DIR/adapter_model.safetensors
// and DIR/adapter_config.json. baseName goes to base_model_name_or_path.
// Both files are written atomically.
func (m *Model) SaveAdapter(dir, baseName string) error {
	stage, err := m.prepareAdapter(dir, baseName)
	if err != nil {
		return err
	}
	return commitStaged(stage)
}

// prepareAdapter is prepareBase for SaveAdapter's two files.
func (m *Model) prepareAdapter(dir, baseName string) (func() (staged, error), error) {
	if m.lora == nil {
		return nil, errors.New("train: SaveAdapter: LoRA is not enabled")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("train: SaveAdapter: %w", err)
	}
	var out []safetensors.Named
	for _, sp := range m.lora.specs {
		out = append(out, safetensors.Named{Name: sp.name, Tensor: m.tensorOf(sp.shape, m.be.View(m.lora.params, sp.off, sp.n))})
	}
	c := m.lora.cfg
	pc := map[string]any{
		"peft_type": "LORA", "r": c.Rank, "lora_alpha": c.Alpha, "lora_dropout": c.Dropout,
		"target_modules": c.Targets, "bias": "none", "task_type": "CAUSAL_LM",
		"base_model_name_or_path": baseName, "fan_in_fan_out": false, "inference_mode": true,
		"modules_to_save": nil,
	}
	b, err := json.MarshalIndent(pc, "", "  ")
	if err != nil {
		return nil, err
	}
	return func() (staged, error) {
		weights, err := stageSafetensors(filepath.Join(dir, adapterWeights), out, map[string]string{"format": "pt"})
		if err != nil {
			return nil, fmt.Errorf("train: SaveAdapter: %w", err)
		}
		cfgFile, err := atomicfile.Create(filepath.Join(dir, adapterConfig), 0o644)
		if err == nil {
			_, err = cfgFile.Write(append(b, '\n'))
		}
		if err != nil {
			weights.Abort()
			if cfgFile != nil {
				cfgFile.Abort()
			}
			return nil, fmt.Errorf("train: SaveAdapter: %w", err)
		}
		return staged{weights, cfgFile}, nil
	}, nil
}

// LoadAdapter reads a PEFT adapter folder written by SaveAdapter (or PEFT)
// and switches the model to LoRA mode with those adapters. Options this
// model cannot honour (DoRA, rsLoRA, fan_in_fan_out, bias, modules_to_save,
// per-layer rank patterns) are errors that name the key.
func (m *Model) LoadAdapter(dir string) error {
	cpath := filepath.Join(dir, adapterConfig)
	b, err := os.ReadFile(cpath)
	if err != nil {
		return fmt.Errorf("train: LoadAdapter: %w", err)
	}
	var pc peftConfig
	if err := json.Unmarshal(b, &pc); err != nil {
		return fmt.Errorf("train: %s: %w", cpath, err)
	}
	bad := func(key string, v any) error {
		return fmt.Errorf("train: %s: %s = %v is not supported", cpath, key, v)
	}
	switch {
	case pc.PeftType != "LORA":
		return bad("peft_type", pc.PeftType)
	case pc.FanInFanOut:
		return bad("fan_in_fan_out", true)
	case pc.Bias != "" && pc.Bias != "none":
		return bad("bias", pc.Bias)
	case len(pc.ModulesToSave) > 0:
		return bad("modules_to_save", pc.ModulesToSave)
	case pc.UseDoRA:
		return bad("use_dora", true)
	case pc.UseRSLoRA:
		return bad("use_rslora", true)
	case pc.LayersToXform != nil:
		return bad("layers_to_transform", pc.LayersToXform)
	case nonEmptyMap(pc.RankPattern):
		return bad("rank_pattern", pc.RankPattern)
	case nonEmptyMap(pc.AlphaPattern):
		return bad("alpha_pattern", pc.AlphaPattern)
	}
	cfg := LoRAConfig{Rank: pc.R, Alpha: pc.LoraAlpha, Dropout: pc.LoraDropout}
	switch t := pc.TargetModules.(type) {
	case string:
		cfg.Targets = []string{t}
	case []any:
		for _, x := range t {
			s, ok := x.(string)
			if !ok {
				return bad("target_modules", pc.TargetModules)
			}
			cfg.Targets = append(cfg.Targets, s)
		}
	default:
		return bad("target_modules", pc.TargetModules)
	}
	sort.Slice(cfg.Targets, func(i, j int) bool { return linearIndex(cfg.Targets[i]) < linearIndex(cfg.Targets[j]) })
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("train: %s: %w", cpath, err)
	}
	wpath := filepath.Join(dir, adapterWeights)
	f, err := safetensors.Read(wpath)
	if err != nil {
		return fmt.Errorf("train: LoadAdapter: %w", err)
	}
	specs, total := loraSpecs(m.Config, cfg)
	host := make([]float32, total)
	want := map[string]bool{}
	for _, sp := range specs {
		want[sp.name] = true
		v, err := loadF32(fileSet{f}, sp.name, sp.shape)
		if err != nil {
			return fmt.Errorf("train: %s: %w", wpath, err)
		}
		copy(host[sp.off:], v)
	}
	for _, n := range f.Names() {
		if !want[n] {
			return fmt.Errorf("train: %s: unexpected tensor %s for this model and adapter_config.json", wpath, n)
		}
	}
	var seed uint64
	if m.lora != nil {
		seed = m.lora.seed
	}
	if err := m.allocLoRA(cfg, seed); err != nil {
		return err
	}
	m.be.Upload(m.lora.params, host)
	return nil
}

func nonEmptyMap(v any) bool {
	mm, ok := v.(map[string]any)
	return ok && len(mm) > 0
}

func linearIndex(name string) int {
	for i, n := range LinearNames {
		if n == name {
			return i
		}
	}
	return len(LinearNames)
}

// Train-state file layout.
const (
	tsParams = "trainable"
	tsM      = "adamw.m"
	tsV      = "adamw.v"
	metaMode = "opencluster.mode"  // "full" or "lora"
	metaUser = "opencluster.meta." // prefix of the caller's meta keys
)

func (m *Model) modeName() string {
	if m.lora != nil {
		return "lora"
	}
	return "full"
}

// SaveTrainState writes what resuming needs (trainable parameters, AdamW
// moments) plus meta (the loop's step, data cursor, ...) to path, atomically.
// On the CPU backend it streams the live buffers into the file, tensor by
// tensor, without copying them.
func (m *Model) SaveTrainState(path string, meta map[string]string) error {
	stage, err := m.PrepareTrainState(path, meta)
	if err != nil {
		return err
	}
	return commitStaged(stage)
}

// PrepareTrainState gathers what SaveTrainState writes and returns the
// function that writes it beside path (committing is the caller's). On the
// CPU backend the tensors are views of the live parameters and moments, so
// stage may run in the background while the next step's forward and
// backward do (they read the parameters and write only gradients and
// activations), as long as nothing changes the parameters or moments until
// it returns: OptimizerStep, LoadTrainState and SetTrainableParams must
// wait for it. Device buffers are copied to the host here, before it
// returns.
func (m *Model) PrepareTrainState(path string, meta map[string]string) (stage func() (staged, error), err error) {
	p, _ := m.trainable()
	if p == nil {
		return nil, errors.New("train: SaveTrainState: the model has no trainable parameters")
	}
	n := p.Len()
	md := map[string]string{"format": "pt", metaMode: m.modeName()}
	for k, v := range meta {
		md[metaUser+k] = v
	}
	out := []safetensors.Named{{Name: tsParams, Tensor: m.tensorOf([]int{n}, p)}}
	mm, vv := m.momentTensors(n)
	out = append(out, safetensors.Named{Name: tsM, Tensor: mm}, safetensors.Named{Name: tsV, Tensor: vv})
	return func() (staged, error) {
		f, err := stageSafetensors(path, out, md)
		if err != nil {
			return nil, fmt.Errorf("train: SaveTrainState: %w", err)
		}
		return staged{f}, nil
	}, nil
}

// LoadTrainState restores SaveTrainState's file and returns its meta. The
// file must match the model's mode and trainable size; nothing is changed
// when it does not.
func (m *Model) LoadTrainState(path string) (map[string]string, error) {
	p, _ := m.trainable()
	if p == nil {
		return nil, errors.New("train: LoadTrainState: the model has no trainable parameters")
	}
	f, err := safetensors.Read(path)
	if err != nil {
		return nil, fmt.Errorf("train: LoadTrainState: %w", err)
	}
	if mode := f.Metadata[metaMode]; mode != m.modeName() {
		return nil, fmt.Errorf("train: %s holds %q training state, the model is in %q mode", path, mode, m.modeName())
	}
	n := p.Len()
	var vals [3][]float32
	for i, name := range []string{tsParams, tsM, tsV} {
		if vals[i], err = loadF32(fileSet{f}, name, []int{n}); err != nil {
			return nil, fmt.Errorf("train: %s: %w", path, err)
		}
	}
	m.be.Upload(p, vals[0])
	m.setMoments(vals[1], vals[2])
	meta := map[string]string{}
	for k, v := range f.Metadata {
		if strings.HasPrefix(k, metaUser) {
			meta[strings.TrimPrefix(k, metaUser)] = v
		}
	}
	return meta, nil
}

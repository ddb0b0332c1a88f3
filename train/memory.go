package train

import (
	"errors"
	"fmt"
	"runtime"
	"sort"
	"strings"

	"github.com/opencluster/opencluster/quant"
	"github.com/opencluster/opencluster/train/backend/sgemm"
)

// The memory model: how many bytes each part of a training job takes, from
// the same layouts the code allocates (baseSpecs, loraSpecs, the activation
// carver, quant.Storage4), so a job can be sized before anything is loaded,
// and a node's RAM or VRAM checked against it (docs/memory.md).

// Where a MemoryItem lives.
const (
	OnHost   = "host"
	OnDevice = "device"
)

// Phases of a job: resident memory is held throughout; load scratch only
// while the base is built; step memory only while training.
const (
	PhaseResident = "resident"
	PhaseLoad     = "load"
	PhaseStep     = "step"
)

// Constants of the model that are not layouts. Measured, see docs/memory.md.
const (
	// RuntimeHostBytes is the resident memory of the opencluster process
	// before it allocates a model: the Go runtime, the binary's code and
	// data, thread stacks.
	RuntimeHostBytes = 24 << 20
	// CUDAContextHostBytes and CUDAContextDeviceBytes are what creating a
	// CUDA context costs in host RAM and in device memory (the driver's
	// own figures are 150-400 MiB depending on the card; the upper end).
	CUDAContextHostBytes   = 256 << 20
	CUDAContextDeviceBytes = 400 << 20
)

// MemoryJob is a training job as the memory model sees it.
type MemoryJob struct {
	Model ModelConfig
	// Mode is ModeQLoRA (4-bit base, LoRA) or ModePretrain (all fp32).
	Mode  Mode
	LoRA  LoRAConfig  // QLoRA
	Quant QuantConfig // QLoRA
	// MicroBatch sequences of SeqLen tokens go through one forward and
	// backward (Model.SetMicroBatch).
	MicroBatch, SeqLen int
	// Batch is the sequences the data loader hands over per step (0: the
	// micro-batch): their token ids and targets are in memory at once.
	Batch         int
	Checkpointing bool
	// CUDA puts the model on a GPU (device memory); otherwise everything
	// is host memory.
	CUDA bool
	// HostOptimizer keeps the AdamW moments in host memory (GPU only).
	HostOptimizer bool
}

// MemoryItem is one part of the estimate.
type MemoryItem struct {
	Name  string `json:"name"`
	Bytes int64  `json:"bytes"`
	Where string `json:"where"` // OnHost or OnDevice
	Phase string `json:"phase"` // PhaseResident, PhaseLoad or PhaseStep
}

// MemoryEstimate is a job's memory, part by part, and its peaks: the
// resident parts plus the larger of the load and step parts, per place.
type MemoryEstimate struct {
	Items []MemoryItem `json:"items"`
	// Host is the peak host RAM (on the CPU backend, the process's peak RSS).
	Host int64 `json:"host_bytes"`
	// Device is the peak device memory (0 without CUDA).
	Device int64 `json:"device_bytes"`
}

// Peak is the peak of the place the model runs: device memory with CUDA,
// host RAM otherwise.
func (e MemoryEstimate) Peak() int64 {
	if e.Device > 0 {
		return e.Device
	}
	return e.Host
}

// Largest lists the n largest items, "name 1.2 GiB" each, for messages.
func (e MemoryEstimate) Largest(n int) string {
	items := append([]MemoryItem(nil), e.Items...)
	sort.SliceStable(items, func(i, j int) bool { return items[i].Bytes > items[j].Bytes })
	var parts []string
	for _, it := range items[:min(n, len(items))] {
		parts = append(parts, fmt.Sprintf("%s %s", it.Name, FormatBytes(it.Bytes)))
	}
	return strings.Join(parts, ", ")
}

// Validate checks the job's shapes.
func (j MemoryJob) Validate() error {
	if err := j.Model.Validate(); err != nil {
		return err
	}
	if j.MicroBatch <= 0 || j.SeqLen <= 0 || j.Batch < 0 {
		return fmt.Errorf("memory job: micro-batch %d, batch %d and seq_len %d must be positive", j.MicroBatch, j.Batch, j.SeqLen)
	}
	switch j.Mode {
	case ModePretrain:
	case ModeQLoRA:
		if err := j.LoRA.Validate(); err != nil {
			return err
		}
		if err := j.Quant.Validate(); err != nil {
			return err
		}
	default:
		return fmt.Errorf("memory job: unknown mode %q", j.Mode)
	}
	return nil
}

// EstimateMemory is the memory model: every buffer the job allocates, in
// bytes, and the peaks.
func EstimateMemory(j MemoryJob) (MemoryEstimate, error) {
	if err := j.Validate(); err != nil {
		return MemoryEstimate{}, err
	}
	c := j.Model
	where := OnHost
	if j.CUDA {
		where = OnDevice
	}
	var e MemoryEstimate
	add := func(name string, bytes int64, at, phase string) {
		if bytes > 0 {
			e.Items = append(e.Items, MemoryItem{Name: name, Bytes: bytes, Where: at, Phase: phase})
		}
	}
	add("runtime", RuntimeHostBytes, OnHost, PhaseResident)
	if j.CUDA {
		add("cuda context", CUDAContextHostBytes, OnHost, PhaseResident)
		add("cuda context", CUDAContextDeviceBytes, OnDevice, PhaseResident)
	}
	hd := c.HeadDim()
	add("rope tables", 4*int64(c.MaxSeqLen)*int64(hd), where, PhaseResident)
	add("rope tables (float64, while building)", 8*int64(c.MaxSeqLen)*int64(hd), OnHost, PhaseLoad)
	_, normsN := baseSpecs(c, true)
	var trainable int64
	N := j.MicroBatch * j.SeqLen
	if j.Mode == ModeQLoRA {
		var q4 int64
		for l := 0; l < c.Layers; l++ {
			for k := 0; k < numLinear; k++ {
				in, out := c.linShape(k)
				q4 += quant.Storage4(in*out, j.Quant.BlockSize, j.Quant.DoubleQuant)
			}
		}
		emb := 2 * int64(c.VocabSize) * int64(c.Dim)
		add("4-bit linears", q4, where, PhaseResident)
		add("bf16 embedding", emb, where, PhaseResident)
		if !c.TiedEmbeddings {
			add("bf16 lm_head", emb, where, PhaseResident)
		}
		if j.CUDA { // the host keeps what it quantized, for saving and exports
			add("4-bit linears (host copy)", q4, OnHost, PhaseResident)
			add("bf16 embedding (host copy)", emb, OnHost, PhaseResident)
			if !c.TiedEmbeddings {
				add("bf16 lm_head (host copy)", emb, OnHost, PhaseResident)
			}
		}
		add("fp32 norms", 4*int64(normsN), where, PhaseResident)
		_, loraN := loraSpecs(c, j.LoRA)
		trainable = int64(loraN)
		add("lora adapters", 4*trainable, where, PhaseResident)
		add("lora gradients", 4*trainable, where, PhaseStep)
		// One fp32 linear at a time, quantized and dropped; the read
		// buffers of a streaming load (the larger of the two ways in).
		add("load: one fp32 linear + read buffers", 4*int64(maxLinear(c))+loadReadBytes(c), OnHost, PhaseLoad)
		if j.CUDA {
			add("frozen bf16 tile (fp32)", 4*int64(min(c.VocabSize, max(1, bf16TileRows(c.Dim)))*c.Dim), OnDevice, PhaseStep)
		} else {
			add("frozen tile scratch", 4*int64(cpuTileElems), OnHost, PhaseStep)
		}
	}
	if !j.CUDA {
		add("sgemm workspaces", sgemmWorkspaces(j), OnHost, PhaseStep)
	}
	if j.Mode == ModePretrain {
		total := c.NumParams()
		trainable = total
		add("fp32 weights", 4*total, where, PhaseResident)
		add("fp32 gradients", 4*total, where, PhaseStep)
	}
	moments := OnHost
	if j.CUDA && !j.HostOptimizer {
		moments = OnDevice
	}
	add("adamw moments", 8*trainable, moments, PhaseStep)
	if j.CUDA && j.HostOptimizer {
		add("adamw host copies of params and grads", 8*trainable, OnHost, PhaseStep)
	}
	acts, grads := activationElems(j)
	add("activations", 4*int64(acts), where, PhaseStep)
	add("activation gradients", 4*int64(grads), where, PhaseStep)
	add("per-row losses", 8*int64(N), OnHost, PhaseStep)
	add("data batch (token ids and targets)", 8*int64(max(j.Batch, j.MicroBatch))*int64(j.SeqLen), OnHost, PhaseStep)
	T := j.SeqLen
	if j.CUDA {
		add("attention backward scratch", 4*int64(j.MicroBatch)*int64(c.Heads)*int64(T)*int64(T), OnDevice, PhaseStep)
	} else {
		add("attention backward scratch", 4*int64(T)*int64(T), OnHost, PhaseStep)
	}
	for _, at := range []string{OnHost, OnDevice} {
		var res, load, step int64
		for _, it := range e.Items {
			if it.Where != at {
				continue
			}
			switch it.Phase {
			case PhaseResident:
				res += it.Bytes
			case PhaseLoad:
				load += it.Bytes
			default:
				step += it.Bytes
			}
		}
		peak := res + max(load, step)
		if at == OnHost {
			e.Host = peak
		} else if j.CUDA {
			e.Device = peak
		}
	}
	return e, nil
}

// loadReadBytes is a streaming load's read buffer (at most readChunkBytes,
// at most the largest fp32 tensor) and its widened chunk (twice that from
// a 16-bit file).
func loadReadBytes(c ModelConfig) int64 {
	largest := 4 * int64(max(maxLinear(c), c.VocabSize*c.Dim))
	return 3 * min(int64(readChunkBytes), largest)
}

// sgemmWorkspaces is the CPU's matrix-product scratch over a step: the
// largest workspace any of its products takes (sgemm reuses them).
func sgemmWorkspaces(j MemoryJob) int64 {
	c, t := j.Model, runtime.GOMAXPROCS(0)
	N, T := j.MicroBatch*j.SeqLen, j.SeqLen
	var ws int64
	prod := func(m, n, k int) { ws = max(ws, sgemm.WorkspaceBytes(m, n, k, t)) }
	prod(T, T, c.HeadDim()) // attention scores
	prod(T, c.HeadDim(), T)
	rows := ceRows(N, c.VocabSize)
	headTile := max(1, cpuTileElems/c.Dim)
	for k := 0; k < numLinear; k++ {
		in, out := c.linShape(k)
		tile := max(1, cpuTileElems/in)
		if j.Mode == ModeQLoRA { // frozen tiles; the LoRA pairs
			prod(N, tile, in)
			prod(N, in, tile)
			r := j.LoRA.Rank
			prod(N, r, in)
			prod(N, out, r)
			prod(N, in, r)
			prod(r, in, N)
			prod(out, r, N)
		} else { // dense forward, input and weight gradients
			prod(N, out, in)
			prod(N, in, out)
			prod(out, in, N)
		}
	}
	if j.Mode == ModeQLoRA {
		prod(rows, headTile, c.Dim)
		prod(rows, c.Dim, headTile)
	} else {
		prod(rows, c.VocabSize, c.Dim)
		prod(rows, c.Dim, c.VocabSize)
		prod(c.VocabSize, c.Dim, rows)
	}
	return ws
}

// cpuTileElems is the CPU backend's frozen-weight tile (backend tileElems).
const cpuTileElems = 1 << 20

// bf16TileRows is how many rows of a frozen bf16 weight of width C the CUDA
// backend widens at a time (kernels' bf16TileElems = 1<<24).
func bf16TileRows(C int) int { return (1 << 24) / max(C, 1) }

// activationElems counts the activation and activation-gradient elements
// of one micro-batch as newActivations lays them out.
func activationElems(j MemoryJob) (acts, grads int) {
	var adapted [numLinear]bool
	rank, dropout := 0, false
	if j.Mode == ModeQLoRA {
		rank, dropout = j.LoRA.Rank, j.LoRA.Dropout > 0
		for _, t := range j.LoRA.Targets {
			adapted[linearIndex(t)] = true
		}
	}
	a := &activations{B: j.MicroBatch, T: j.SeqLen, train: true, ckpt: j.Checkpointing}
	sz := layActivations(a, j.Model, adapted, rank, dropout, nil)
	return sz.acts, sz.grads
}

// MemoryPlan is how PlanMemory fits a job into a budget.
type MemoryPlan struct {
	// MicroBatch sequences go through one forward and backward; a batch of
	// BatchSize runs as BatchSize/MicroBatch of them (Model.SetMicroBatch).
	MicroBatch    int
	Checkpointing bool
	HostOptimizer bool
	Estimate      MemoryEstimate
	Budget        int64
}

// ErrDoesNotFit is wrapped by PlanMemory's error when no plan fits.
var ErrDoesNotFit = errors.New("the job does not fit in memory")

// PlanMemory picks how to run job (its MicroBatch is the batch size) within
// budget bytes of the memory it runs in (device memory with CUDA, host RAM
// otherwise): the largest micro-batch that divides the batch, first without
// activation checkpointing (which costs a second forward; smaller
// micro-batches cost nothing but parallelism), then with it,
// then (CUDA, when allowed) with the AdamW moments on the host. When nothing
// fits, the error (wrapping ErrDoesNotFit) says what the smallest plan
// needs and what to change.
func PlanMemory(job MemoryJob, budget int64, allowHostOptimizer bool) (MemoryPlan, error) {
	if err := job.Validate(); err != nil {
		return MemoryPlan{}, err
	}
	divisors := divisorsOf(job.MicroBatch) // ascending
	hostOpt := []bool{false}
	if job.CUDA && allowHostOptimizer {
		hostOpt = append(hostOpt, true)
	}
	try := func(mb int, ck, ho bool) (MemoryPlan, bool, error) {
		j := job
		j.Batch = max(job.Batch, job.MicroBatch) // the loader still hands over the whole batch
		j.MicroBatch, j.Checkpointing, j.HostOptimizer = mb, ck, ho
		e, err := EstimateMemory(j)
		p := MemoryPlan{MicroBatch: mb, Checkpointing: ck, HostOptimizer: ho, Estimate: e, Budget: budget}
		return p, err == nil && e.Peak() <= budget, err
	}
	var smallest MemoryPlan
	for _, ho := range hostOpt {
		for _, ck := range []bool{false, true} {
			// Memory grows with the micro-batch: find the largest divisor
			// that fits by bisection (a hostile batch may have many).
			p, ok, err := try(divisors[0], ck, ho)
			if err != nil {
				return MemoryPlan{}, err
			}
			smallest = p
			if !ok {
				continue
			}
			lo, hi := 0, len(divisors)-1 // divisors[lo] fits
			for lo < hi {
				mid := (lo + hi + 1) / 2
				q, fits, err := try(divisors[mid], ck, ho)
				if err != nil {
					return MemoryPlan{}, err
				}
				if fits {
					lo, p = mid, q
				} else {
					hi = mid - 1
				}
			}
			return p, nil
		}
	}
	return smallest, fmt.Errorf("%w: %s", ErrDoesNotFit, doesNotFit(job, smallest, budget))
}

// divisorsOf lists n's divisors in ascending order (in O(sqrt n)).
func divisorsOf(n int) []int {
	var lo, hi []int
	for d := 1; d*d <= n; d++ {
		if n%d == 0 {
			lo = append(lo, d)
			if d*d != n {
				hi = append(hi, n/d)
			}
		}
	}
	for i := len(hi) - 1; i >= 0; i-- {
		lo = append(lo, hi[i])
	}
	return lo
}

// doesNotFit explains a failed plan: what the smallest plan needs, where it
// goes, and the changes that would fit.
func doesNotFit(job MemoryJob, p MemoryPlan, budget int64) string {
	place := "RAM"
	if job.CUDA {
		place = "GPU memory"
	}
	msg := fmt.Sprintf("even at micro-batch 1 with activation checkpointing it needs %s of %s, the budget is %s (largest parts: %s)",
		FormatBytes(p.Estimate.Peak()), place, FormatBytes(budget), p.Estimate.Largest(3))
	// The frozen model alone, at the shortest sequence.
	j := job
	j.MicroBatch, j.Batch, j.Checkpointing, j.HostOptimizer, j.SeqLen = 1, 1, true, p.HostOptimizer, 1
	floor, err := EstimateMemory(j)
	if err == nil && floor.Peak() > budget {
		return msg + fmt.Sprintf("; the model alone needs %s: use a smaller model or raise --max-memory", FormatBytes(floor.Peak()))
	}
	if batch := max(job.Batch, job.MicroBatch); batch > 1 { // the data batch itself
		j.SeqLen = job.SeqLen
		for b := batch / 2; b >= 1; b /= 2 {
			j.Batch = b
			if e, err := EstimateMemory(j); err == nil && e.Peak() <= budget {
				return msg + fmt.Sprintf("; lower the batch to %d sequence(s) (needs %s), use a smaller model, or raise --max-memory", b, FormatBytes(e.Peak()))
			}
		}
		j.Batch = 1
	}
	for seq := job.SeqLen / 2; seq >= 1; seq /= 2 {
		j.SeqLen = seq
		if e, err := EstimateMemory(j); err == nil && e.Peak() <= budget {
			return msg + fmt.Sprintf("; lower train.seq_len to %d (needs %s), use a smaller model, or raise --max-memory", seq, FormatBytes(e.Peak()))
		}
	}
	return msg + "; use a smaller model or raise --max-memory"
}

// FormatBytes renders a byte count in binary units ("1.5 GiB").
func FormatBytes(b int64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%d B", b)
	}
	div, exp := int64(unit), 0
	for n := b / unit; n >= unit && exp < 4; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(b)/float64(div), "KMGTP"[exp])
}

package device

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// CUDABinary is the name of the CUDA build of the worker.
const CUDABinary = "opencluster-cuda"

// ProbeArgs are the arguments the CUDA build is run with to prove it works
// here: it must initialise CUDA on a GPU and exit 0.
var ProbeArgs = []string{"devices", "--probe"}

// Request is a parsed --device value.
type Request struct {
	Kind  string // "auto", "cpu" or "cuda"
	Index int    // GPU index for "cuda:N"; -1 for any
}

func (r Request) String() string {
	if r.Kind == "cuda" && r.Index >= 0 {
		return "cuda:" + strconv.Itoa(r.Index)
	}
	return r.Kind
}

// ParseRequest parses --device: auto, cpu, cuda or cuda:N.
func ParseRequest(s string) (Request, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	switch s {
	case "", "auto":
		return Request{Kind: "auto", Index: -1}, nil
	case "cpu":
		return Request{Kind: "cpu", Index: -1}, nil
	case "cuda", "gpu":
		return Request{Kind: "cuda", Index: -1}, nil
	}
	if rest, ok := strings.CutPrefix(s, "cuda:"); ok {
		n, err := strconv.Atoi(rest)
		if err != nil || n < 0 {
			return Request{}, fmt.Errorf("--device %q: the GPU index must be a number >= 0", s)
		}
		return Request{Kind: "cuda", Index: n}, nil
	}
	return Request{}, fmt.Errorf("--device %q: want auto, cpu, cuda or cuda:N", s)
}

// Environment is everything Select decides from. Gather fills it on a real
// machine; tests build it by hand.
type Environment struct {
	NVML NVMLStatus
	GPUs []GPU
	// InCUDABuild is true when this process is opencluster-cuda itself:
	// no exec is needed to use a GPU.
	InCUDABuild bool
	// CUDABuild is the path of opencluster-cuda, "" when not found.
	CUDABuild string
	// CUDABuildErr says why it was not found or not usable (probe failed).
	CUDABuildErr error
	// CUDAVisible is CUDA_VISIBLE_DEVICES when CUDAVisibleSet: the GPUs
	// CUDA may use, renumbered (VisibleGPUs).
	CUDAVisible    string
	CUDAVisibleSet bool
}

// Decision is where the worker runs and why.
type Decision struct {
	Kind  string `json:"kind"`  // "cpu" or "cuda"
	Index int    `json:"index"` // CUDA ordinal (cuda:N); -1 on CPU
	// NVMLIndex and PCIBusID name the same GPU for NVML (sensors, free
	// memory) and for opening it in CUDA whatever its numbering.
	NVMLIndex int    `json:"nvml_index"`
	PCIBusID  string `json:"pci_bus_id,omitempty"`
	Name      string `json:"name,omitempty"` // GPU or CPU model
	Exec      string `json:"exec,omitempty"` // opencluster-cuda to exec with the same arguments; "" to run in this process
	Reason    string `json:"reason"`         // one line for the log and `devices`
}

// ErrNoUsableGPU is wrapped by Select's error for --device cuda without a GPU.
var ErrNoUsableGPU = errors.New("no usable GPU")

// Select applies the dispatch rule: cpu runs here; auto picks the CUDA GPU
// with the most free memory when the CUDA build is usable, else the CPU with
// the reason; cuda[:N] is an error when it cannot be honoured.
func Select(req Request, env Environment) (Decision, error) {
	cpu := func(reason string) Decision { return Decision{Kind: "cpu", Index: -1, NVMLIndex: -1, Reason: reason} }
	if req.Kind == "cpu" {
		return cpu("--device cpu"), nil
	}
	all := len(env.GPUs)
	visible, err := VisibleGPUs(env.GPUs, env.CUDAVisible, env.CUDAVisibleSet)
	if err != nil {
		visible = nil
	}
	env.GPUs = visible
	why := gpuUnusable(req, env)
	if err != nil && env.NVML.Available {
		why = err.Error()
	} else if why == "NVML found no readable GPU" && env.CUDAVisibleSet && all > 0 {
		why = fmt.Sprintf("%s=%q hides all %d GPUs", CUDAVisibleEnv, env.CUDAVisible, all)
	}
	if why != "" {
		if req.Kind == "cuda" {
			return Decision{}, fmt.Errorf("--device %s: %w: %s", req, ErrNoUsableGPU, why)
		}
		return cpu("running on CPU: " + why), nil
	}
	best := -1
	for i, g := range env.GPUs {
		if req.Index >= 0 {
			if g.Ordinal == req.Index {
				best = i
			}
			continue
		}
		if best < 0 || g.MemoryFreeBytes > env.GPUs[best].MemoryFreeBytes {
			best = i
		}
	}
	g := env.GPUs[best]
	d := Decision{Kind: "cuda", Index: g.Ordinal, NVMLIndex: g.Index, PCIBusID: g.PCIBusID, Name: g.Name}
	if !env.InCUDABuild {
		d.Exec = env.CUDABuild
	}
	free := fmt.Sprintf("%.1f of %.1f GiB free", gib(g.MemoryFreeBytes), gib(g.MemoryTotalBytes))
	if g.PCIBusID != "" {
		free += ", PCI " + g.PCIBusID
	}
	switch {
	case req.Index >= 0:
		d.Reason = fmt.Sprintf("--device %s: GPU %d %s (%s)", req, g.Ordinal, g.Name, free)
	case len(env.GPUs) == 1:
		d.Reason = fmt.Sprintf("GPU %d %s (%s)", g.Ordinal, g.Name, free)
	default:
		d.Reason = fmt.Sprintf("GPU %d %s has the most free memory of %d GPUs (%s)", g.Ordinal, g.Name, len(env.GPUs), free)
	}
	return d, nil
}

// gpuUnusable returns why req cannot run on a GPU, or "".
func gpuUnusable(req Request, env Environment) string {
	switch {
	case !env.NVML.Available:
		r := env.NVML.Reason
		if r == "" {
			r = "not initialised"
		}
		return "NVML unavailable: " + r
	case len(env.GPUs) == 0:
		return "NVML found no readable GPU"
	case req.Index >= 0 && !hasIndex(env.GPUs, req.Index):
		return fmt.Sprintf("no GPU %d (found %d: %s)", req.Index, len(env.GPUs), indexList(env.GPUs))
	case env.InCUDABuild:
		return ""
	case env.CUDABuild == "" && env.CUDABuildErr == nil:
		return CUDABinary + " not found beside the executable or on PATH"
	case env.CUDABuildErr != nil:
		return env.CUDABuildErr.Error()
	}
	return ""
}

func hasIndex(gpus []GPU, i int) bool {
	for _, g := range gpus {
		if g.Ordinal == i {
			return true
		}
	}
	return false
}

func indexList(gpus []GPU) string {
	var s []string
	for _, g := range gpus {
		s = append(s, strconv.Itoa(g.Ordinal))
	}
	return strings.Join(s, ", ")
}

func gib(b uint64) float64 { return float64(b) / (1 << 30) }

// FindCUDABuild looks for opencluster-cuda beside exe (the running binary),
// then on PATH through lookPath (exec.LookPath when nil).
func FindCUDABuild(exe string, lookPath func(string) (string, error)) (string, error) {
	if exe != "" {
		p := filepath.Join(filepath.Dir(exe), CUDABinary)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	if lookPath == nil {
		lookPath = exec.LookPath
	}
	p, err := lookPath(CUDABinary)
	if err != nil {
		return "", fmt.Errorf("%s not found beside %s or on PATH", CUDABinary, filepath.Base(exe))
	}
	return p, nil
}

// Prober runs the CUDA build's probe; nil error means it can use a GPU.
type Prober interface {
	Probe(ctx context.Context, path string) error
}

// ExecProber runs `path devices --probe` with a time limit.
type ExecProber struct{ Timeout time.Duration }

// Probe implements Prober; the error carries the probe's last output line.
func (p ExecProber) Probe(ctx context.Context, path string) error {
	t := p.Timeout
	if t <= 0 {
		t = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, t)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, path, ProbeArgs...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		last := lastLine(out.String())
		if ctx.Err() != nil {
			return fmt.Errorf("%s probe timed out after %s", path, t)
		}
		if last != "" {
			return fmt.Errorf("%s probe failed (%v): %s", path, err, last)
		}
		return fmt.Errorf("%s probe failed: %w", path, err)
	}
	return nil
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

package device

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// Report is what `opencluster devices` prints: every device, NVML's state,
// the CUDA build's state and which device the worker would use and why.
type Report struct {
	Devices   []Entry        `json:"devices"`
	Selected  Decision       `json:"selected"`
	NVML      NVMLStatus     `json:"nvml"`
	CUDABuild CUDABuildState `json:"cuda_build"`
	Errors    []string       `json:"errors,omitempty"` // per-device read failures
}

// CUDABuildState says whether opencluster-cuda was found and passed its probe.
type CUDABuildState struct {
	Path   string `json:"path,omitempty"`
	Usable bool   `json:"usable"`
	Reason string `json:"reason,omitempty"`
}

// Entry is one device in a Report: exactly one of CPU and GPU is set. In
// JSON it is the device's own fields plus "kind": "cpu" or "cuda".
type Entry struct {
	CPU *CPU
	GPU *GPU
}

// MarshalJSON flattens the device and adds its kind.
func (e Entry) MarshalJSON() ([]byte, error) {
	var v any
	kind := "cpu"
	if e.GPU != nil {
		v, kind = e.GPU, "cuda"
	} else {
		v = e.CPU
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	m := map[string]json.RawMessage{}
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	m["kind"], _ = json.Marshal(kind)
	return json.Marshal(m)
}

// GatherOptions are the hardware handles Gather reads through.
type GatherOptions struct {
	Request     Request
	NVML        nvml.Interface // nil: nvml.New()
	CPU         CPUSource      // nil: HostCPU
	RAPL        *RAPL          // nil: none read
	Exe         string         // path of the running binary (os.Executable)
	LookPath    func(string) (string, error)
	Prober      Prober // nil: ExecProber
	InCUDABuild bool
	// SkipProbe leaves the CUDA build unprobed (Report shows it as
	// unverified and auto falls back to the CPU); for --no-probe.
	SkipProbe bool
	// CUDAVisible is CUDA_VISIBLE_DEVICES when CUDAVisibleSet.
	CUDAVisible    string
	CUDAVisibleSet bool
}

// Gather discovers the devices and decides where to run. The error is the
// one Select returns for an unsatisfiable --device cuda; the Report is
// filled either way.
func Gather(ctx context.Context, o GatherOptions) (Report, error) {
	if o.NVML == nil {
		o.NVML = nvml.New()
	}
	if o.CPU == nil {
		o.CPU = HostCPU{}
	}
	if o.Prober == nil {
		o.Prober = ExecProber{}
	}
	var r Report
	c := DiscoverCPU(ctx, o.CPU, o.RAPL)
	r.Devices = append(r.Devices, Entry{CPU: &c})
	st, gpus, errs := DiscoverGPUs(o.NVML)
	r.NVML = st
	// Number the GPUs as CUDA will (-1: hidden by CUDA_VISIBLE_DEVICES).
	visible, _ := VisibleGPUs(gpus, o.CUDAVisible, o.CUDAVisibleSet)
	for i := range gpus {
		gpus[i].Ordinal = -1
		for _, v := range visible {
			if v.Index == gpus[i].Index {
				gpus[i].Ordinal = v.Ordinal
			}
		}
	}
	for i := range gpus {
		r.Devices = append(r.Devices, Entry{GPU: &gpus[i]})
	}
	for _, e := range errs {
		r.Errors = append(r.Errors, e.Error())
	}
	env := Environment{NVML: st, GPUs: gpus, InCUDABuild: o.InCUDABuild, CUDAVisible: o.CUDAVisible, CUDAVisibleSet: o.CUDAVisibleSet}
	switch {
	case o.InCUDABuild:
		r.CUDABuild = CUDABuildState{Usable: st.Available, Reason: "this is the CUDA build"}
	case o.Request.Kind == "cpu":
		r.CUDABuild.Reason = "not looked for (--device cpu)"
	case !st.Available || len(gpus) == 0:
		r.CUDABuild.Reason = "not looked for (no GPU)"
	default:
		path, err := FindCUDABuild(o.Exe, o.LookPath)
		r.CUDABuild.Path = path
		switch {
		case err != nil:
			env.CUDABuildErr = err
		case o.SkipProbe:
			env.CUDABuildErr = fmt.Errorf("%s not probed (--no-probe)", path)
		default:
			env.CUDABuildErr = o.Prober.Probe(ctx, path)
		}
		env.CUDABuild = path
		if env.CUDABuildErr != nil {
			r.CUDABuild.Reason = env.CUDABuildErr.Error()
		} else {
			r.CUDABuild.Usable = true
		}
	}
	d, err := Select(o.Request, env)
	if err == nil && d.Kind == "cpu" {
		d.Name = c.Model
	}
	r.Selected = d
	return r, err
}

// Text renders the report for people.
func (r Report) Text() string {
	var b strings.Builder
	for _, e := range r.Devices {
		if c := e.CPU; c != nil {
			fmt.Fprintf(&b, "cpu     %s, %d cores (%d physical), %s, %.1f of %.1f GiB free",
				orDash(c.Model), c.LogicalCores, c.PhysicalCores, orDash(strings.Join(c.Flags, " ")), gib(c.MemFreeBytes), gib(c.MemTotalBytes))
			if c.TempSensor != "" {
				fmt.Fprintf(&b, ", %.0f C", c.TempC)
			}
			if c.RAPL {
				b.WriteString(", RAPL energy")
			}
			b.WriteString("\n")
			for _, n := range c.Notes {
				fmt.Fprintf(&b, "        note: %s\n", n)
			}
		}
		if g := e.GPU; g != nil {
			fmt.Fprintf(&b, "cuda:%d  %s (sm %s), %.1f of %.1f GiB free, %.0f/%.0f W, %.0f C (slowdown %.0f C), %d%% busy, PCIe %dx%d\n",
				g.Index, g.Name, g.ComputeCapability, gib(g.MemoryFreeBytes), gib(g.MemoryTotalBytes),
				g.PowerW, g.PowerLimitW, g.TempC, g.SlowdownTempC, g.UtilizationPct, g.PCIeGen, g.PCIeWidth)
			if len(g.ClockEventReasons) > 0 {
				fmt.Fprintf(&b, "        clocks held back by: %s\n", strings.Join(g.ClockEventReasons, ", "))
			}
		}
	}
	if r.NVML.Available {
		fmt.Fprintf(&b, "nvml    driver %s, CUDA %d.%d, %d GPU(s)\n", r.NVML.DriverVersion, r.NVML.CUDADriverVersion/1000, r.NVML.CUDADriverVersion%1000/10, r.NVML.DeviceCount)
	} else {
		fmt.Fprintf(&b, "nvml    unavailable: %s\n", r.NVML.Reason)
	}
	if r.CUDABuild.Usable {
		fmt.Fprintf(&b, "cuda    %s usable\n", orDash(r.CUDABuild.Path))
	} else if r.CUDABuild.Reason != "" {
		fmt.Fprintf(&b, "cuda    build not used: %s\n", r.CUDABuild.Reason)
	}
	for _, e := range r.Errors {
		fmt.Fprintf(&b, "error   %s\n", e)
	}
	if r.Selected.Kind != "" {
		sel := r.Selected.Kind
		if sel == "cuda" {
			sel = fmt.Sprintf("cuda:%d", r.Selected.Index)
		}
		fmt.Fprintf(&b, "selected %s: %s\n", sel, r.Selected.Reason)
	}
	return b.String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"

	"github.com/opencluster/opencluster/train/backend/sgemm"
)

// Machine describes the CPU the rows were measured on, and its theoretical
// fp32 peak: cores x GHz x FLOPs per cycle per core.
type Machine struct {
	CPUModel string
	Cores    int
	GHz      float64
	// ClockSource says where GHz came from (the /proc/cpuinfo "cpu MHz"
	// field, the model name, or nothing).
	ClockSource string
	// FlopsPerCycle is per core: 64 with AVX-512 (two 16-wide FMA ports),
	// 32 with AVX2+FMA (two 8-wide FMA ports), 8 otherwise (SSE mul + add).
	FlopsPerCycle float64
	ISA           string // the widest vector ISA the peak assumes
	Kernel        string // the kernel sgemm runs: avx512, avx2 or go
	// Flags are the CPU's feature flags (/proc/cpuinfo "flags"), nil when unknown.
	Flags map[string]bool
}

// PeakGFLOPS is the theoretical fp32 peak, or 0 when the clock is unknown.
func (m Machine) PeakGFLOPS() float64 { return float64(m.Cores) * m.GHz * m.FlopsPerCycle }

// Row reports the machine as a row named "machine".
func (m Machine) Row() Row {
	return Row{
		Name:       "machine",
		PeakGFLOPS: m.PeakGFLOPS(),
		Extra: map[string]any{
			"cpu_model":       m.CPUModel,
			"cores":           m.Cores,
			"ghz":             m.GHz,
			"clock_source":    m.ClockSource,
			"flops_per_cycle": m.FlopsPerCycle,
			"isa":             m.ISA,
			"sgemm_kernel":    m.Kernel,
			"sgemm_threads":   sgemm.Threads(),
			"goos_goarch":     runtime.GOOS + "/" + runtime.GOARCH,
			"loadavg_start":   LoadAverage(),
		},
	}
}

// DescribeMachine reads /proc/cpuinfo where there is one.
func DescribeMachine() Machine {
	data, _ := os.ReadFile("/proc/cpuinfo")
	return parseCPUInfo(data, runtime.NumCPU())
}

// parseCPUInfo fills a Machine from /proc/cpuinfo text (empty when absent).
func parseCPUInfo(data []byte, cores int) Machine {
	m := Machine{Cores: cores, Kernel: sgemm.Implementation(), CPUModel: runtime.GOARCH, ClockSource: "unknown"}
	var mhz float64
	var flags map[string]bool
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		key, val = strings.TrimSpace(key), strings.TrimSpace(val)
		switch key {
		case "model name":
			if m.CPUModel == runtime.GOARCH {
				m.CPUModel = val
			}
		case "cpu MHz":
			if v, err := strconv.ParseFloat(val, 64); err == nil && v > mhz {
				mhz = v
			}
		case "flags":
			if flags == nil {
				flags = map[string]bool{}
				for _, f := range strings.Fields(val) {
					flags[f] = true
				}
			}
		}
	}
	switch {
	case mhz > 0:
		m.GHz = mhz / 1000
		m.ClockSource = `/proc/cpuinfo "cpu MHz" (the current or nominal clock; turbo may run higher)`
	default:
		// Intel model names end in "@ 2.60GHz".
		if i := strings.LastIndex(m.CPUModel, "@"); i >= 0 {
			s := strings.TrimSuffix(strings.TrimSpace(m.CPUModel[i+1:]), "GHz")
			if v, err := strconv.ParseFloat(s, 64); err == nil {
				m.GHz = v
				m.ClockSource = "the CPU model name"
			}
		}
	}
	m.Flags = flags
	switch {
	case flags["avx512f"]:
		m.FlopsPerCycle, m.ISA = 64, "avx512f"
	case flags["avx2"] && flags["fma"]:
		m.FlopsPerCycle, m.ISA = 32, "avx2+fma"
	default:
		m.FlopsPerCycle, m.ISA = 8, "sse"
	}
	return m
}

// String is a one-line summary for the table header.
func (m Machine) String() string {
	s := fmt.Sprintf("%s, %d cores", m.CPUModel, m.Cores)
	if m.GHz > 0 {
		s += fmt.Sprintf(" at %.2f GHz, %s peak %.0f GFLOPS fp32", m.GHz, m.ISA, m.PeakGFLOPS())
	}
	return s + ", sgemm kernel " + m.Kernel
}

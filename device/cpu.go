package device

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"slices"
	"strings"

	"github.com/shirou/gopsutil/v3/cpu"
	"github.com/shirou/gopsutil/v3/host"
	"github.com/shirou/gopsutil/v3/mem"
)

// CPU describes the host processor and memory, with the live readings the
// budget controller uses (temperature, package energy).
type CPU struct {
	Model         string   `json:"model"`
	PhysicalCores int      `json:"physical_cores"`
	LogicalCores  int      `json:"cores"`
	Flags         []string `json:"flags"` // of interest to the kernels: avx2, fma, avx512f, ...
	MemTotalBytes uint64   `json:"mem_total_bytes"`
	MemFreeBytes  uint64   `json:"mem_free_bytes"`   // MemAvailable: free for use
	TempC         float64  `json:"temp_c,omitempty"` // hottest package/core sensor; 0 if none
	TempSensor    string   `json:"temp_sensor,omitempty"`
	RAPL          bool     `json:"rapl"`               // package energy readable
	EnergyJ       float64  `json:"energy_j,omitempty"` // RAPL package energy counter
	Arch          string   `json:"arch"`
	Notes         []string `json:"notes,omitempty"` // readings that failed, and why
}

// interestingFlags are the CPU features the CPU kernels dispatch on.
var interestingFlags = []string{"avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_vnni", "amx_bf16", "neon", "asimd"}

// CPUSource is what DiscoverCPU reads; the default uses gopsutil, tests
// substitute fixed answers.
type CPUSource interface {
	Info(ctx context.Context) ([]cpu.InfoStat, error)
	Counts(ctx context.Context, logical bool) (int, error)
	Memory(ctx context.Context) (*mem.VirtualMemoryStat, error)
	Temperatures(ctx context.Context) ([]host.TemperatureStat, error)
}

// HostCPU reads the real machine through gopsutil.
type HostCPU struct{}

func (HostCPU) Info(ctx context.Context) ([]cpu.InfoStat, error) { return cpu.InfoWithContext(ctx) }
func (HostCPU) Counts(ctx context.Context, logical bool) (int, error) {
	return cpu.CountsWithContext(ctx, logical)
}
func (HostCPU) Memory(ctx context.Context) (*mem.VirtualMemoryStat, error) {
	return mem.VirtualMemoryWithContext(ctx)
}
func (HostCPU) Temperatures(ctx context.Context) ([]host.TemperatureStat, error) {
	return host.SensorsTemperaturesWithContext(ctx)
}

// DiscoverCPU describes the CPU. Readings that fail are noted, not fatal: a
// worker can always run on the CPU. rapl may be nil.
func DiscoverCPU(ctx context.Context, src CPUSource, rapl *RAPL) CPU {
	c := CPU{Arch: runtime.GOARCH, LogicalCores: runtime.NumCPU()}
	if infos, err := src.Info(ctx); err != nil || len(infos) == 0 {
		c.Notes = append(c.Notes, fmt.Sprintf("cpu info: %v", orEmpty(err)))
	} else {
		c.Model = strings.TrimSpace(infos[0].ModelName)
		have := map[string]bool{}
		for _, f := range infos[0].Flags {
			have[strings.ToLower(f)] = true
		}
		for _, f := range interestingFlags {
			if have[f] {
				c.Flags = append(c.Flags, f)
			}
		}
	}
	if n, err := src.Counts(ctx, true); err == nil && n > 0 {
		c.LogicalCores = n
	}
	if n, err := src.Counts(ctx, false); err == nil && n > 0 {
		c.PhysicalCores = n
	} else if err != nil {
		c.Notes = append(c.Notes, fmt.Sprintf("physical cores: %v", err))
	}
	if m, err := src.Memory(ctx); err != nil {
		c.Notes = append(c.Notes, fmt.Sprintf("memory: %v", err))
	} else {
		c.MemTotalBytes, c.MemFreeBytes = m.Total, m.Available
	}
	temps, err := src.Temperatures(ctx)
	if t, name, ok := CPUTemperature(temps); ok {
		c.TempC, c.TempSensor = t, name
	} else if err != nil {
		c.Notes = append(c.Notes, fmt.Sprintf("temperature: %v", err))
	} else {
		c.Notes = append(c.Notes, "temperature: no CPU sensor found")
	}
	if rapl != nil {
		if e, err := rapl.EnergyJ(); err == nil {
			c.RAPL, c.EnergyJ = true, e
		} else {
			c.Notes = append(c.Notes, fmt.Sprintf("rapl: %v", err))
		}
	}
	return c
}

// HasFlag reports whether the CPU advertises feature f (e.g. "avx2").
func (c CPU) HasFlag(f string) bool { return slices.Contains(c.Flags, f) }

// cpuSensorPrefixes are the hwmon sensor keys that measure the CPU package
// or cores: Intel coretemp, AMD k10temp (Tctl/Tdie/Tccd), ARM SoCs.
var cpuSensorPrefixes = []string{"coretemp", "k10temp", "zenpower", "cpu_thermal", "cpu-thermal", "x86_pkg_temp", "soc_thermal"}

// CPUTemperature picks the hottest plausible CPU reading from host sensors.
// Readings outside (-40, 150) C or NaN are ignored as broken sensors.
func CPUTemperature(temps []host.TemperatureStat) (float64, string, bool) {
	best, name, ok := math.Inf(-1), "", false
	for _, t := range temps {
		key := strings.ToLower(t.SensorKey)
		match := false
		for _, p := range cpuSensorPrefixes {
			if strings.HasPrefix(key, p) {
				match = true
				break
			}
		}
		if !match || math.IsNaN(t.Temperature) || t.Temperature <= -40 || t.Temperature >= 150 {
			continue
		}
		if t.Temperature > best {
			best, name, ok = t.Temperature, t.SensorKey, true
		}
	}
	if !ok {
		return 0, "", false
	}
	return best, name, true
}

func orEmpty(err error) string {
	if err == nil {
		return "no CPU reported"
	}
	return err.Error()
}

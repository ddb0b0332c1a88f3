package device

import (
	"errors"
	"fmt"
	"strings"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// NVMLStatus says whether NVML could be used and, when not, why.
type NVMLStatus struct {
	Available         bool   `json:"available"`
	Reason            string `json:"reason,omitempty"` // why not, when !Available
	DriverVersion     string `json:"driver_version,omitempty"`
	NVMLVersion       string `json:"nvml_version,omitempty"`
	CUDADriverVersion int    `json:"cuda_driver_version,omitempty"` // e.g. 12040 for 12.4
	DeviceCount       int    `json:"device_count"`
}

// GPU is one NVIDIA GPU: its fixed capabilities and the live readings taken
// when it was discovered. A reading NVML does not support is left at zero and
// its name is listed in Unsupported.
type GPU struct {
	Index int `json:"index"` // NVML's (PCI order)
	// Ordinal is the GPU's number for CUDA (cuda:N) once CUDA_VISIBLE_DEVICES
	// is applied (VisibleGPUs); PCIBusID is the address both agree on.
	Ordinal           int    `json:"cuda_ordinal"`
	PCIBusID          string `json:"pci_bus_id,omitempty"`
	Name              string `json:"name"`
	UUID              string `json:"uuid"`
	ComputeCapability string `json:"compute_capability"` // "8.6"
	MemoryTotalBytes  uint64 `json:"mem_total_bytes"`
	MemoryFreeBytes   uint64 `json:"mem_free_bytes"`

	PowerW            float64  `json:"power_w"`
	PowerLimitW       float64  `json:"power_limit_w"`
	TempC             float64  `json:"temp_c"`
	SlowdownTempC     float64  `json:"slowdown_temp_c"`
	SMClockMHz        uint32   `json:"sm_clock_mhz"`
	MemClockMHz       uint32   `json:"mem_clock_mhz"`
	UtilizationPct    uint32   `json:"utilization_pct"`
	EnergyJ           float64  `json:"energy_j"` // since the driver loaded
	ClockEventReasons []string `json:"clock_event_reasons,omitempty"`
	PCIeGen           int      `json:"pcie_gen"`
	PCIeWidth         int      `json:"pcie_width"`

	Unsupported []string `json:"unsupported,omitempty"`
}

// ErrNVMLUnavailable is wrapped by every error that means "no NVML here".
var ErrNVMLUnavailable = errors.New("NVML unavailable")

// nvmlReason turns an Init return code into the words a volunteer can act on.
func nvmlReason(ret nvml.Return) string {
	switch ret {
	case nvml.ERROR_LIBRARY_NOT_FOUND:
		return "library not found (libnvidia-ml.so.1 is not installed: no NVIDIA driver)"
	case nvml.ERROR_DRIVER_NOT_LOADED:
		return "no driver (the NVIDIA kernel driver is not loaded)"
	case nvml.ERROR_NO_PERMISSION:
		return "no permission to open the NVIDIA device files"
	case nvml.ERROR_FUNCTION_NOT_FOUND:
		return "driver too old for this NVML (function not found)"
	}
	return "init failed: " + ret.Error()
}

// OpenNVML initialises lib and reports what it found. On success the caller
// must call lib.Shutdown when done. A library that panics on Init (a broken
// install) is reported as unavailable, not propagated.
func OpenNVML(lib nvml.Interface) (st NVMLStatus, err error) {
	if lib == nil {
		return NVMLStatus{Reason: "no NVML library configured"}, fmt.Errorf("%w: no library configured", ErrNVMLUnavailable)
	}
	defer func() {
		if r := recover(); r != nil {
			st = NVMLStatus{Reason: fmt.Sprintf("init panicked: %v", r)}
			err = fmt.Errorf("%w: %s", ErrNVMLUnavailable, st.Reason)
		}
	}()
	if ret := lib.Init(); ret != nvml.SUCCESS {
		st.Reason = nvmlReason(ret)
		return st, fmt.Errorf("%w: %s", ErrNVMLUnavailable, st.Reason)
	}
	n, ret := lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		lib.Shutdown()
		st.Reason = "cannot count devices: " + ret.Error()
		return st, fmt.Errorf("%w: %s", ErrNVMLUnavailable, st.Reason)
	}
	st.DeviceCount = n
	if n == 0 {
		lib.Shutdown()
		st.Reason = "no device (the driver is loaded but sees no NVIDIA GPU)"
		return st, fmt.Errorf("%w: %s", ErrNVMLUnavailable, st.Reason)
	}
	st.Available = true
	if v, ret := lib.SystemGetDriverVersion(); ret == nvml.SUCCESS {
		st.DriverVersion = v
	}
	if v, ret := lib.SystemGetNVMLVersion(); ret == nvml.SUCCESS {
		st.NVMLVersion = v
	}
	if v, ret := lib.SystemGetCudaDriverVersion(); ret == nvml.SUCCESS {
		st.CUDADriverVersion = v
	}
	return st, nil
}

// DiscoverGPUs initialises NVML, reads every GPU and shuts NVML down again.
// When NVML is unavailable it returns the status with the reason and no
// GPUs; that is not an error (a CPU-only machine is normal). A GPU that
// cannot even be named is skipped with its index in the error list.
func DiscoverGPUs(lib nvml.Interface) (NVMLStatus, []GPU, []error) {
	st, err := OpenNVML(lib)
	if err != nil {
		return st, nil, nil
	}
	defer lib.Shutdown()
	var gpus []GPU
	var errs []error
	for i := 0; i < st.DeviceCount; i++ {
		dev, ret := lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			errs = append(errs, fmt.Errorf("gpu %d: get handle: %w", i, ret))
			continue
		}
		g, err := ReadGPU(i, dev)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		gpus = append(gpus, g)
	}
	return st, gpus, errs
}

// ReadGPU reads the capabilities and live readings of one device. Only the
// name and memory are required; every other reading is best effort.
func ReadGPU(index int, dev nvml.Device) (GPU, error) {
	g := GPU{Index: index}
	var ret nvml.Return
	if g.Name, ret = dev.GetName(); ret != nvml.SUCCESS {
		return g, fmt.Errorf("gpu %d: name: %w", index, ret)
	}
	mem, ret := dev.GetMemoryInfo()
	if ret != nvml.SUCCESS {
		return g, fmt.Errorf("gpu %d (%s): memory info: %w", index, g.Name, ret)
	}
	g.MemoryTotalBytes, g.MemoryFreeBytes = mem.Total, mem.Free
	skip := func(what string, ret nvml.Return) bool {
		if ret != nvml.SUCCESS {
			g.Unsupported = append(g.Unsupported, what)
			return true
		}
		return false
	}
	if u, ret := dev.GetUUID(); !skip("uuid", ret) {
		g.UUID = u
	}
	if p, ret := dev.GetPciInfo(); !skip("pci_bus_id", ret) {
		g.PCIBusID = pciBusID(p)
	}
	if ma, mi, ret := dev.GetCudaComputeCapability(); !skip("compute_capability", ret) {
		g.ComputeCapability = fmt.Sprintf("%d.%d", ma, mi)
	}
	if p, ret := dev.GetPowerUsage(); !skip("power", ret) {
		g.PowerW = float64(p) / 1000
	}
	if p, ret := dev.GetEnforcedPowerLimit(); !skip("power_limit", ret) {
		g.PowerLimitW = float64(p) / 1000
	}
	if t, ret := dev.GetTemperature(nvml.TEMPERATURE_GPU); !skip("temperature", ret) {
		g.TempC = float64(t)
	}
	if t, ret := dev.GetTemperatureThreshold(nvml.TEMPERATURE_THRESHOLD_SLOWDOWN); !skip("slowdown_temperature", ret) {
		g.SlowdownTempC = float64(t)
	}
	if c, ret := dev.GetClockInfo(nvml.CLOCK_SM); !skip("sm_clock", ret) {
		g.SMClockMHz = c
	}
	if c, ret := dev.GetClockInfo(nvml.CLOCK_MEM); !skip("mem_clock", ret) {
		g.MemClockMHz = c
	}
	if u, ret := dev.GetUtilizationRates(); !skip("utilization", ret) {
		g.UtilizationPct = u.Gpu
	}
	if e, ret := dev.GetTotalEnergyConsumption(); !skip("energy", ret) {
		g.EnergyJ = float64(e) / 1000
	}
	if r, ret := dev.GetCurrentClocksEventReasons(); !skip("clock_event_reasons", ret) {
		g.ClockEventReasons = ClockEventReasons(r)
	}
	if v, ret := dev.GetCurrPcieLinkGeneration(); !skip("pcie_gen", ret) {
		g.PCIeGen = v
	}
	if v, ret := dev.GetCurrPcieLinkWidth(); !skip("pcie_width", ret) {
		g.PCIeWidth = v
	}
	return g, nil
}

// clockEventNames names the bits of NVML's clock-event (throttle) reasons.
var clockEventNames = []struct {
	bit  uint64
	name string
}{
	{nvml.ClocksEventReasonGpuIdle, "gpu_idle"},
	{nvml.ClocksEventReasonApplicationsClocksSetting, "applications_clocks_setting"},
	{nvml.ClocksEventReasonSwPowerCap, "sw_power_cap"},
	{nvml.ClocksThrottleReasonHwSlowdown, "hw_slowdown"},
	{nvml.ClocksEventReasonSyncBoost, "sync_boost"},
	{nvml.ClocksEventReasonSwThermalSlowdown, "sw_thermal_slowdown"},
	{nvml.ClocksThrottleReasonHwThermalSlowdown, "hw_thermal_slowdown"},
	{nvml.ClocksThrottleReasonHwPowerBrakeSlowdown, "hw_power_brake_slowdown"},
	{nvml.ClocksEventReasonDisplayClockSetting, "display_clock_setting"},
}

// ClockEventReasons names the set bits of an NVML clock-event reason mask,
// in bit order; unknown bits are shown in hex.
func ClockEventReasons(mask uint64) []string {
	var out []string
	known := uint64(0)
	for _, r := range clockEventNames {
		known |= r.bit
		if mask&r.bit != 0 {
			out = append(out, r.name)
		}
	}
	if rest := mask &^ known; rest != 0 {
		out = append(out, fmt.Sprintf("0x%x", rest))
	}
	return out
}

// Thermal reports whether a clock-event reason list says the card is
// slowing itself for heat.
func Thermal(reasons []string) bool {
	for _, r := range reasons {
		if strings.Contains(r, "thermal") {
			return true
		}
	}
	return false
}

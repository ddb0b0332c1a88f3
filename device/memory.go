package device

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// Memory budgets: how much memory a training job may plan for (--max-memory).
// By default it is what the machine has free now, minus a margin for the
// rest of the system and for the estimate's error.

// ParseBytes reads a memory size: a plain byte count, or a number with a
// unit: K, M, G, T (or KiB, MiB, GiB, TiB: powers of 1024) or KB, MB, GB, TB
// (powers of 1000), case-insensitive, e.g. "6GiB", "6G", "5.5 GiB", "6e9".
func ParseBytes(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := len(t)
	for i > 0 && (t[i-1] < '0' || t[i-1] > '9') && t[i-1] != '.' {
		i--
	}
	num, unit := strings.TrimSpace(t[:i]), strings.ToLower(strings.TrimSpace(t[i:]))
	mult := map[string]float64{
		"": 1, "b": 1,
		"k": 1 << 10, "kib": 1 << 10, "kb": 1e3,
		"m": 1 << 20, "mib": 1 << 20, "mb": 1e6,
		"g": 1 << 30, "gib": 1 << 30, "gb": 1e9,
		"t": 1 << 40, "tib": 1 << 40, "tb": 1e12,
	}[unit]
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || mult == 0 || v < 0 || math.IsInf(v, 0) || math.IsNaN(v) || v*mult > math.MaxInt64/2 {
		return 0, fmt.Errorf("memory size %q: want a byte count or a number with a unit (MiB, GiB, GB, ...), e.g. 6GiB", s)
	}
	return int64(v * mult), nil
}

// Margins the default budget leaves free.
const (
	// HostMarginBytes is kept free of the RAM the system reports available
	// (at least; 10% when that is more): the desktop goes on running.
	HostMarginBytes = 512 << 20
	// GPUMarginBytes is kept free of the device memory NVML reports free:
	// the display and the driver's own growth.
	GPUMarginBytes = 256 << 20
)

// HostBudget is the default budget on the CPU: available RAM minus the
// larger of HostMarginBytes and 10%.
func HostBudget(available uint64) int64 {
	return budgetAfter(available, HostMarginBytes)
}

// GPUBudget is the default budget on a GPU: free device memory minus the
// larger of GPUMarginBytes and 5%.
func GPUBudget(free uint64) int64 {
	margin := max(int64(GPUMarginBytes), int64(free/20))
	return max(0, int64(free)-margin)
}

func budgetAfter(avail uint64, minMargin int64) int64 {
	margin := max(minMargin, int64(avail/10))
	return max(0, int64(avail)-margin)
}

// GPUFreeMemory asks NVML for the free memory of GPU index (NVML's
// numbering). The caller has not initialised lib; this does and shuts it
// down.
func GPUFreeMemory(lib nvml.Interface, index int) (free, total uint64, err error) {
	if _, err := OpenNVML(lib); err != nil {
		return 0, 0, err
	}
	defer lib.Shutdown()
	dev, ret := lib.DeviceGetHandleByIndex(index)
	if ret != nvml.SUCCESS {
		return 0, 0, fmt.Errorf("gpu %d: %w", index, ret)
	}
	mem, ret := dev.GetMemoryInfo()
	if ret != nvml.SUCCESS {
		return 0, 0, fmt.Errorf("gpu %d: memory info: %w", index, ret)
	}
	return mem.Free, mem.Total, nil
}

package device

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// NVML and CUDA number GPUs differently: NVML by PCI address, CUDA (unless
// CUDA_DEVICE_ORDER=PCI_BUS_ID, which dispatch sets) fastest first, and
// CUDA_VISIBLE_DEVICES hides and renumbers devices for CUDA only. The PCI
// address is what both agree on, so a GPU chosen through NVML is opened in
// CUDA by its address, and --device cuda:N means the N-th GPU CUDA sees.

// CUDAVisibleEnv is the variable CUDA reads to hide and reorder GPUs.
const CUDAVisibleEnv = "CUDA_VISIBLE_DEVICES"

// VisibleGPUs applies CUDA_VISIBLE_DEVICES (value, when set) to gpus (NVML
// order) as the CUDA driver does and numbers the result with CUDA
// ordinals (GPU.Ordinal): entries are NVML indices (PCI order) or UUIDs
// (GPU-..., a unique prefix is enough), in the order given; the list ends
// at the first entry that names no GPU, or repeats one. Unset, every GPU is
// visible in NVML order. MIG instances are not supported: a MIG- entry is
// an error.
func VisibleGPUs(gpus []GPU, value string, set bool) ([]GPU, error) {
	if !set {
		out := append([]GPU(nil), gpus...)
		for i := range out {
			out[i].Ordinal = i
		}
		return out, nil
	}
	var out []GPU
	used := map[int]bool{}
	for _, e := range strings.Split(value, ",") {
		e = strings.TrimSpace(e)
		if strings.HasPrefix(strings.ToUpper(e), "MIG-") {
			return nil, fmt.Errorf("%s=%q: MIG instances are not supported; name whole GPUs", CUDAVisibleEnv, value)
		}
		pos := -1
		if n, err := strconv.Atoi(e); err == nil {
			for i, g := range gpus {
				if g.Index == n {
					pos = i
				}
			}
		} else if e != "" {
			for i, g := range gpus {
				if g.UUID != "" && strings.HasPrefix(strings.ToUpper(g.UUID), strings.ToUpper(e)) {
					if pos >= 0 {
						pos = -2 // ambiguous prefix: CUDA stops here
						break
					}
					pos = i
				}
			}
		}
		if pos < 0 || used[pos] {
			break // CUDA ignores this entry and everything after it
		}
		used[pos] = true
		g := gpus[pos]
		g.Ordinal = len(out)
		out = append(out, g)
	}
	return out, nil
}

// ParsePCIBusID reads a PCI address "domain:bus:device.function" (NVML's
// 8-digit or the usual 4-digit domain, any case) into its numbers.
func ParsePCIBusID(s string) (domain, bus, dev int, ok bool) {
	head, fn, found := strings.Cut(strings.TrimSpace(s), ".")
	parts := strings.Split(head, ":")
	if !found || len(parts) != 3 || fn == "" {
		return 0, 0, 0, false
	}
	var v [3]int
	for i, p := range parts {
		n, err := strconv.ParseUint(p, 16, 32)
		if err != nil {
			return 0, 0, 0, false
		}
		v[i] = int(n)
	}
	if _, err := strconv.ParseUint(fn, 16, 8); err != nil {
		return 0, 0, 0, false
	}
	return v[0], v[1], v[2], true
}

// SamePCIBusID reports whether two PCI addresses name the same device,
// however each tool wrote it.
func SamePCIBusID(a, b string) bool {
	d1, b1, v1, ok1 := ParsePCIBusID(a)
	d2, b2, v2, ok2 := ParsePCIBusID(b)
	return ok1 && ok2 && d1 == d2 && b1 == b2 && v1 == v2
}

// pciBusID turns NVML's C string into a Go string.
func pciBusID(p nvml.PciInfo) string {
	var b strings.Builder
	for _, c := range p.BusId {
		if c == 0 {
			break
		}
		b.WriteByte(byte(c))
	}
	if b.Len() == 0 {
		return fmt.Sprintf("%08X:%02X:%02X.0", p.Domain, p.Bus, p.Device)
	}
	return b.String()
}

// NVMLIndexByPCIBusID finds NVML's index of the GPU at a PCI address (the
// GPU a CUDA backend opened), so its sensors and free memory are read from
// the right card. lib is initialised and shut down here.
func NVMLIndexByPCIBusID(lib nvml.Interface, busID string) (int, error) {
	if _, err := OpenNVML(lib); err != nil {
		return -1, err
	}
	defer lib.Shutdown()
	n, ret := lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return -1, fmt.Errorf("NVML device count: %w", ret)
	}
	for i := 0; i < n; i++ {
		dev, ret := lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			continue
		}
		if p, ret := dev.GetPciInfo(); ret == nvml.SUCCESS && SamePCIBusID(pciBusID(p), busID) {
			return i, nil
		}
	}
	return -1, fmt.Errorf("NVML has no GPU at PCI %s", busID)
}

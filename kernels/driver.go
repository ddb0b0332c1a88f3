package kernels

import (
	"fmt"
	"regexp"
)

// The driver JIT-compiles the committed PTX, and only a driver at least as
// new as the CUDA toolkit that wrote it understands its ISA version. These
// helpers (in the plain build, so they are tested without a GPU) turn that
// into an error that names the driver to install.

// minLinuxDriver is the first Linux driver of each CUDA release (NVIDIA's
// table "CUDA Toolkit and Corresponding Driver Versions").
var minLinuxDriver = map[int]string{
	11000: "450.36.06", 11010: "455.23", 11020: "460.27.03", 11030: "465.19.01", 11040: "470.42.01",
	11050: "495.29.05", 11060: "510.39.01", 11070: "515.43.04", 11080: "520.61.05",
	12000: "525.60.13", 12010: "530.30.02", 12020: "535.54.03", 12030: "545.23.06", 12040: "550.54.14",
}

var versionRE = regexp.MustCompile(`(?m)^\.version (\d+)\.(\d+)\s*$`)

// ptxVersion reads the ISA version of PTX source ("7.8"), or "".
func ptxVersion(src []byte) string {
	m := versionRE.FindSubmatch(src)
	if m == nil {
		return ""
	}
	return string(m[1]) + "." + string(m[2])
}

// cudaForISA is the CUDA release (1000*major + 10*minor) whose toolkit
// writes PTX ISA isa: 7.x is CUDA 11.x, 8.x is CUDA 12.x; 0 when unknown.
func cudaForISA(isa string) int {
	var major, minor int
	if _, err := fmt.Sscanf(isa, "%d.%d", &major, &minor); err != nil {
		return 0
	}
	switch major {
	case 7:
		return 11000 + 10*minor
	case 8:
		return 12000 + 10*minor
	}
	return 0
}

func cudaString(v int) string { return fmt.Sprintf("%d.%d", v/1000, v%1000/10) }

// driverNeed says which driver the PTX of ISA isa needs.
func driverNeed(isa string) string {
	need := cudaForISA(isa)
	if need == 0 {
		return fmt.Sprintf("the PTX is ISA %s", isa)
	}
	s := fmt.Sprintf("the PTX (ISA %s, from CUDA %s) needs an NVIDIA driver for CUDA %s or newer", isa, cudaString(need), cudaString(need))
	if d, ok := minLinuxDriver[need]; ok {
		s += ": " + d + " or newer on Linux"
	}
	return s
}

// checkDriver fails when the driver, which supports CUDA driverCUDA
// (cuDriverGetVersion: 12020 for 12.2; <= 0 unknown), is too old for PTX
// of ISA isa.
func checkDriver(driverCUDA int, isa string) error {
	need := cudaForISA(isa)
	if driverCUDA <= 0 || need == 0 || driverCUDA >= need {
		return nil
	}
	return fmt.Errorf("this driver supports CUDA %s, and %s; update the NVIDIA driver", cudaString(driverCUDA), driverNeed(isa))
}

// FormatPCIBusID writes a PCI address as NVML does: "00000000:65:00.0".
func FormatPCIBusID(domain, bus, device int) string {
	return fmt.Sprintf("%08X:%02X:%02X.0", domain, bus, device)
}

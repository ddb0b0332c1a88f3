package kernels

import (
	"strings"
	"testing"
)

func TestEmbeddedPTXVersionAndDriver(t *testing.T) {
	src, err := embeddedPTX.ReadFile("gemm.sm80.ptx")
	if err != nil {
		t.Fatal(err)
	}
	isa := ptxVersion(src)
	if cudaForISA(isa) == 0 {
		t.Fatalf("the committed PTX has ISA %q, which maps to no CUDA release", isa)
	}
	// Debian's CUDA 11.8 writes ISA 7.8: a driver for CUDA 11.4 is too old
	// and the error names the driver to install; 11.8 and 12.2 are fine.
	err = checkDriver(11040, "7.8")
	if err == nil || !strings.Contains(err.Error(), "CUDA 11.4") || !strings.Contains(err.Error(), "CUDA 11.8") || !strings.Contains(err.Error(), "520.61.05") {
		t.Errorf("driver 11.4 for ISA 7.8: %v", err)
	}
	for _, ok := range []int{11080, 12020, 0, -1} {
		if err := checkDriver(ok, "7.8"); err != nil {
			t.Errorf("driver %d for ISA 7.8: %v", ok, err)
		}
	}
	if got := cudaForISA("8.2"); got != 12020 {
		t.Errorf("ISA 8.2 -> %d, want 12020", got)
	}
	if got := ptxVersion([]byte("//\n.version 7.8\n.target sm_80\n")); got != "7.8" {
		t.Errorf("ptxVersion = %q", got)
	}
}

func TestFormatPCIBusID(t *testing.T) {
	if got := FormatPCIBusID(1, 0x3b, 2); got != "00000001:3B:02.0" {
		t.Errorf("FormatPCIBusID = %q", got)
	}
}

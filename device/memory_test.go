package device

import (
	"strconv"
	"strings"
	"testing"
)

func TestParseBytes(t *testing.T) {
	for in, want := range map[string]int64{
		"6GiB": 6 << 30, "6G": 6 << 30, "6gib": 6 << 30, "2.5 GiB": 5 << 29, "6GB": 6e9,
		"512MiB": 512 << 20, "512M": 512 << 20, "1048576": 1 << 20, "1k": 1024, "6e9": 6e9, "7b": 7,
	} {
		got, err := ParseBytes(in)
		if err != nil || got != want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "GiB", "-1G", "6 parsecs", "1e30T", "NaN", "6 G B"} {
		if _, err := ParseBytes(bad); err == nil || !strings.Contains(err.Error(), "memory size") {
			t.Errorf("ParseBytes(%q) = %v, want an error naming the memory size", bad, err)
		}
	}
}

func TestBudgets(t *testing.T) {
	if got := HostBudget(24 << 30); got != 24<<30-(24<<30)/10 {
		t.Errorf("HostBudget(24 GiB) = %d: want 10%% kept free", got)
	}
	if got := HostBudget(2 << 30); got != 2<<30-HostMarginBytes {
		t.Errorf("HostBudget(2 GiB) = %d: want the 512 MiB floor kept free", got)
	}
	if got := HostBudget(100 << 20); got != 0 {
		t.Errorf("HostBudget(100 MiB) = %d, want 0", got)
	}
	if got := GPUBudget(20 << 30); got != 20<<30-(20<<30)/20 {
		t.Errorf("GPUBudget(20 GiB) = %d", got)
	}
}

func TestGPUFreeMemory(t *testing.T) {
	free, total, err := GPUFreeMemory(fakeServer(10<<30, 30<<30), 1)
	if err != nil || free != 30<<30 || total != 40<<30 {
		t.Fatalf("GPUFreeMemory = %d of %d, %v", free, total, err)
	}
	if _, _, err := GPUFreeMemory(fakeServer(10<<30), 3); err == nil || !strings.Contains(err.Error(), "gpu 3") {
		t.Errorf("a missing GPU: %v", err)
	}
}

func TestVisibleGPUs(t *testing.T) {
	gpus := []GPU{{Index: 0, UUID: "GPU-aaaa1111"}, {Index: 1, UUID: "GPU-bbbb2222"}, {Index: 2, UUID: "GPU-bbbc3333"}}
	cases := []struct {
		value string
		set   bool
		want  string // NVML indices in CUDA order
	}{
		{"", false, "0,1,2"},
		{"2,0", true, "2,0"},
		{"GPU-bbbc,1", true, "2,1"},
		{"1,7,0", true, "1"},    // CUDA stops at the first bad entry
		{"GPU-bbb,0", true, ""}, // an ambiguous prefix is a bad entry
		{"0,0,1", true, "0"},    // so is a repeat
		{"", true, ""},          // set and empty: no GPU
		{"-1", true, ""},
	}
	for _, c := range cases {
		got, err := VisibleGPUs(gpus, c.value, c.set)
		if err != nil {
			t.Fatalf("%q: %v", c.value, err)
		}
		var idx []string
		for i, g := range got {
			if g.Ordinal != i {
				t.Errorf("%q: GPU %d has ordinal %d", c.value, g.Index, g.Ordinal)
			}
			idx = append(idx, strconv.Itoa(g.Index))
		}
		if s := strings.Join(idx, ","); s != c.want {
			t.Errorf("CUDA_VISIBLE_DEVICES=%q: %s, want %s", c.value, s, c.want)
		}
	}
	if _, err := VisibleGPUs(gpus, "MIG-1234", true); err == nil || !strings.Contains(err.Error(), "MIG") {
		t.Errorf("MIG: %v", err)
	}
}

// TestSelectHonoursCUDAVisibleDevices: cuda:N is the N-th GPU CUDA sees,
// and the decision carries NVML's index and the PCI address of that GPU.
func TestSelectHonoursCUDAVisibleDevices(t *testing.T) {
	gpus := []GPU{{Index: 0, Name: "A", PCIBusID: "00000000:17:00.0", MemoryFreeBytes: 30 << 30},
		{Index: 1, Name: "B", PCIBusID: "00000000:65:00.0", MemoryFreeBytes: 10 << 30}}
	env := Environment{NVML: NVMLStatus{Available: true}, GPUs: gpus, InCUDABuild: true, CUDAVisible: "1", CUDAVisibleSet: true}
	d, err := Select(Request{Kind: "cuda", Index: 0}, env)
	if err != nil || d.Index != 0 || d.NVMLIndex != 1 || d.Name != "B" || d.PCIBusID != "00000000:65:00.0" {
		t.Fatalf("cuda:0 with CUDA_VISIBLE_DEVICES=1: %+v, %v", d, err)
	}
	// auto picks the most free memory among the visible GPUs only.
	if d, err := Select(Request{Kind: "auto", Index: -1}, env); err != nil || d.Name != "B" {
		t.Errorf("auto: %+v, %v", d, err)
	}
	env.CUDAVisible = "5"
	_, err = Select(Request{Kind: "cuda", Index: -1}, env)
	if err == nil || !strings.Contains(err.Error(), "CUDA_VISIBLE_DEVICES") {
		t.Errorf("every GPU hidden: %v", err)
	}
}

func TestPCIBusIDs(t *testing.T) {
	if !SamePCIBusID("00000000:65:00.0", "0000:65:00.0") || SamePCIBusID("0000:65:00.0", "0000:66:00.0") || SamePCIBusID("x", "x") {
		t.Error("SamePCIBusID")
	}
	idx, err := NVMLIndexByPCIBusID(fakeServer(1<<30, 2<<30), busOf(t, 1))
	if err != nil || idx != 1 {
		t.Errorf("NVMLIndexByPCIBusID = %d, %v", idx, err)
	}
	if _, err := NVMLIndexByPCIBusID(fakeServer(1<<30), "0000:ff:1f.0"); err == nil {
		t.Error("an address no GPU has was found")
	}
}

// busOf is the PCI address the fake server gives GPU i.
func busOf(t *testing.T, i int) string {
	t.Helper()
	_, gpus, errs := DiscoverGPUs(fakeServer(1<<30, 2<<30))
	if len(errs) > 0 || gpus[i].PCIBusID == "" {
		t.Fatalf("fake server GPUs %+v %v", gpus, errs)
	}
	return gpus[i].PCIBusID
}

package device

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
)

// fakeServer is a DGX A100 from go-nvml's mock with the live readings the
// fake server leaves out filled in, and per-GPU free memory set.
func fakeServer(free ...uint64) *dgxa100.Server {
	s := dgxa100.New()
	s.Devices = s.Devices[:len(free)]
	for i, d := range s.Devices {
		dev := d.(*dgxa100.Device)
		dev.MemoryInfo = nvml.Memory{Total: 40 << 30, Free: free[i]}
		dev.GetPowerUsageFunc = func() (uint32, nvml.Return) { return 123_000, nvml.SUCCESS }
		dev.GetEnforcedPowerLimitFunc = func() (uint32, nvml.Return) { return 400_000, nvml.SUCCESS }
		dev.GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) { return 61, nvml.SUCCESS }
		dev.GetTemperatureThresholdFunc = func(nvml.TemperatureThresholds) (uint32, nvml.Return) { return 92, nvml.SUCCESS }
		dev.GetClockInfoFunc = func(nvml.ClockType) (uint32, nvml.Return) { return 1410, nvml.SUCCESS }
		dev.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) { return nvml.Utilization{Gpu: 97}, nvml.SUCCESS }
		dev.GetTotalEnergyConsumptionFunc = func() (uint64, nvml.Return) { return 5_000_000, nvml.SUCCESS }
		dev.GetCurrentClocksEventReasonsFunc = func() (uint64, nvml.Return) {
			return nvml.ClocksEventReasonSwPowerCap | nvml.ClocksThrottleReasonHwThermalSlowdown, nvml.SUCCESS
		}
		dev.GetCurrPcieLinkGenerationFunc = func() (int, nvml.Return) { return 4, nvml.SUCCESS }
		dev.GetCurrPcieLinkWidthFunc = func() (int, nvml.Return) { return 16, nvml.SUCCESS }
		bus := uint32(0x17 + 0x20*i) // a distinct PCI address per card
		dev.GetPciInfoFunc = func() (nvml.PciInfo, nvml.Return) { return nvml.PciInfo{Bus: bus}, nvml.SUCCESS }
	}
	return s
}

func TestDiscoverGPUsOnFakeServer(t *testing.T) {
	st, gpus, errs := DiscoverGPUs(fakeServer(10<<30, 30<<30))
	if !st.Available || st.DeviceCount != 2 || st.DriverVersion == "" || len(errs) != 0 {
		t.Fatalf("status %+v errs %v", st, errs)
	}
	g := gpus[1]
	if g.Index != 1 || !strings.Contains(g.Name, "A100") || g.ComputeCapability != "8.0" || g.UUID == "" {
		t.Errorf("gpu %+v", g)
	}
	if g.PowerW != 123 || g.PowerLimitW != 400 || g.TempC != 61 || g.SlowdownTempC != 92 || g.EnergyJ != 5000 || g.MemoryFreeBytes != 30<<30 {
		t.Errorf("readings %+v", g)
	}
	if got := strings.Join(g.ClockEventReasons, ","); got != "sw_power_cap,hw_thermal_slowdown" || !Thermal(g.ClockEventReasons) {
		t.Errorf("clock event reasons %q", got)
	}
	if len(g.Unsupported) != 0 {
		t.Errorf("unsupported %v", g.Unsupported)
	}
}

func TestReadGPUUnsupportedReadings(t *testing.T) {
	dev := &mock.Device{
		GetNameFunc:       func() (string, nvml.Return) { return "GeForce RTX 3060", nvml.SUCCESS },
		GetMemoryInfoFunc: func() (nvml.Memory, nvml.Return) { return nvml.Memory{Total: 12 << 30, Free: 11 << 30}, nvml.SUCCESS },
	}
	notSup := func() nvml.Return { return nvml.ERROR_NOT_SUPPORTED }
	dev.GetUUIDFunc = func() (string, nvml.Return) { return "", notSup() }
	dev.GetCudaComputeCapabilityFunc = func() (int, int, nvml.Return) { return 8, 6, nvml.SUCCESS }
	dev.GetPowerUsageFunc = func() (uint32, nvml.Return) { return 0, notSup() }
	dev.GetEnforcedPowerLimitFunc = func() (uint32, nvml.Return) { return 0, notSup() }
	dev.GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) { return 50, nvml.SUCCESS }
	dev.GetTemperatureThresholdFunc = func(nvml.TemperatureThresholds) (uint32, nvml.Return) { return 0, notSup() }
	dev.GetClockInfoFunc = func(nvml.ClockType) (uint32, nvml.Return) { return 0, notSup() }
	dev.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) { return nvml.Utilization{}, notSup() }
	dev.GetTotalEnergyConsumptionFunc = func() (uint64, nvml.Return) { return 0, notSup() }
	dev.GetCurrentClocksEventReasonsFunc = func() (uint64, nvml.Return) { return 0, notSup() }
	dev.GetCurrPcieLinkGenerationFunc = func() (int, nvml.Return) { return 0, notSup() }
	dev.GetCurrPcieLinkWidthFunc = func() (int, nvml.Return) { return 0, notSup() }
	dev.GetPciInfoFunc = func() (nvml.PciInfo, nvml.Return) { return nvml.PciInfo{}, notSup() }
	g, err := ReadGPU(0, dev)
	if err != nil {
		t.Fatal(err)
	}
	if g.ComputeCapability != "8.6" || g.TempC != 50 {
		t.Errorf("gpu %+v", g)
	}
	for _, want := range []string{"uuid", "power", "energy", "pcie_width", "pci_bus_id"} {
		if !strings.Contains(strings.Join(g.Unsupported, " "), want) {
			t.Errorf("unsupported %v lacks %s", g.Unsupported, want)
		}
	}
	dev.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) { return nvml.Memory{}, nvml.ERROR_GPU_IS_LOST }
	if _, err := ReadGPU(3, dev); err == nil || !strings.Contains(err.Error(), "gpu 3") {
		t.Errorf("err = %v, want one naming gpu 3", err)
	}
}

func TestNVMLUnavailableReasons(t *testing.T) {
	tests := []struct {
		init  nvml.Return
		count int
		want  string
	}{
		{nvml.ERROR_LIBRARY_NOT_FOUND, 0, "library not found"},
		{nvml.ERROR_DRIVER_NOT_LOADED, 0, "no driver"},
		{nvml.ERROR_NO_PERMISSION, 0, "no permission"},
		{nvml.SUCCESS, 0, "no device"},
	}
	for _, tc := range tests {
		lib := &mock.Interface{
			InitFunc:           func() nvml.Return { return tc.init },
			ShutdownFunc:       func() nvml.Return { return nvml.SUCCESS },
			DeviceGetCountFunc: func() (int, nvml.Return) { return tc.count, nvml.SUCCESS },
		}
		st, gpus, _ := DiscoverGPUs(lib)
		if st.Available || len(gpus) != 0 || !strings.Contains(st.Reason, tc.want) {
			t.Errorf("init %v: status %+v, want reason containing %q", tc.init, st, tc.want)
		}
	}
	// A panicking library is reported, not propagated.
	lib := &mock.Interface{InitFunc: func() nvml.Return { panic("broken install") }}
	if st, err := OpenNVML(lib); err == nil || st.Available || !strings.Contains(st.Reason, "broken install") {
		t.Errorf("status %+v err %v", st, err)
	}
}

func TestRealNVMLWithoutDriverDoesNotFail(t *testing.T) {
	// On a machine without libnvidia-ml this reports why; on one with a
	// GPU it lists it. Either way it must not panic or error out.
	st, gpus, _ := DiscoverGPUs(nvml.New())
	if !st.Available && st.Reason == "" {
		t.Errorf("unavailable without a reason: %+v", st)
	}
	if st.Available && len(gpus) == 0 {
		t.Errorf("available but no GPU read: %+v", st)
	}
}

func TestClockEventReasons(t *testing.T) {
	if got := ClockEventReasons(0); len(got) != 0 {
		t.Errorf("no bits: %v", got)
	}
	got := ClockEventReasons(nvml.ClocksEventReasonGpuIdle | 1<<40)
	if len(got) != 2 || got[0] != "gpu_idle" || got[1] != "0x10000000000" {
		t.Errorf("got %v", got)
	}
}

func TestEntryJSONHasKind(t *testing.T) {
	b, err := json.Marshal([]Entry{{CPU: &CPU{LogicalCores: 8}}, {GPU: &GPU{Index: 1, TempC: 40}}})
	if err != nil {
		t.Fatal(err)
	}
	var got []map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got[0]["kind"] != "cpu" || got[0]["cores"] != 8.0 || got[1]["kind"] != "cuda" || got[1]["temp_c"] != 40.0 {
		t.Errorf("got %s", b)
	}
}

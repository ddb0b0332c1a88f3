package device

import (
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/shirou/gopsutil/v3/cpu"
	"github.com/shirou/gopsutil/v3/host"
	"github.com/shirou/gopsutil/v3/mem"
)

// writeTree writes files (path -> content) under a fresh temp dir.
func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, c := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(c+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestPowerSupplies(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		want  PowerState
	}{
		{"desktop", map[string]string{"AC/type": "Mains", "AC/online": "1"}, PowerState{OnAC: true, BatteryPercent: -1}},
		{"laptop on AC", map[string]string{
			"AC/type": "Mains", "AC/online": "1",
			"BAT0/type": "Battery", "BAT0/present": "1", "BAT0/status": "Charging", "BAT0/energy_now": "30000000", "BAT0/energy_full": "60000000",
		}, PowerState{HasBattery: true, OnAC: true, BatteryPercent: 50}},
		{"laptop on battery, charge_* and two packs", map[string]string{
			"ADP1/type": "Mains", "ADP1/online": "0",
			"BAT0/type": "Battery", "BAT0/charge_now": "1000", "BAT0/charge_full": "4000",
			"BAT1/type": "Battery", "BAT1/charge_now": "3000", "BAT1/charge_full": "4000",
		}, PowerState{HasBattery: true, OnAC: false, BatteryPercent: 50}},
		{"no adapter entry, capacity only", map[string]string{
			"BAT0/type": "Battery", "BAT0/status": "Discharging", "BAT0/capacity": "42",
		}, PowerState{HasBattery: true, OnAC: false, BatteryPercent: 42}},
		{"mouse battery ignored", map[string]string{
			"hidpp_battery_0/type": "Battery", "hidpp_battery_0/scope": "Device", "hidpp_battery_0/capacity": "5",
		}, PowerState{OnAC: true, BatteryPercent: -1}},
		{"garbage values", map[string]string{
			"BAT0/type": "Battery", "BAT0/status": "Full", "BAT0/energy_now": "NaN", "BAT0/energy_full": "x", "BAT0/capacity": "300",
		}, PowerState{HasBattery: true, OnAC: true, BatteryPercent: -1}},
	}
	for _, tc := range tests {
		got, err := PowerSupplies{Root: writeTree(t, tc.files)}.Read()
		if err != nil || got != tc.want {
			t.Errorf("%s: %+v, %v; want %+v", tc.name, got, err, tc.want)
		}
	}
	if got, err := (PowerSupplies{Root: "/nonexistent/power_supply"}).Read(); err != nil || !got.OnAC || got.HasBattery {
		t.Errorf("missing root: %+v %v", got, err)
	}
}

func TestRAPLDelta(t *testing.T) {
	tests := []struct{ prev, cur, max, want uint64 }{
		{100, 250, 1000, 150},
		{900, 100, 1000, 200}, // wrapped
		{900, 100, 0, 0},      // wrapped, range unknown
		{5, 5, 1000, 0},
	}
	for _, tc := range tests {
		if got := RAPLDelta(tc.prev, tc.cur, tc.max); got != tc.want {
			t.Errorf("RAPLDelta(%d, %d, %d) = %d, want %d", tc.prev, tc.cur, tc.max, got, tc.want)
		}
	}
}

func TestRAPLReadsAndUnwraps(t *testing.T) {
	root := writeTree(t, map[string]string{
		"intel-rapl:0/energy_uj": "262143000000", "intel-rapl:0/max_energy_range_uj": "262143999999",
		"intel-rapl:0:0/energy_uj": "5", // a sub-zone: not summed
		"intel-rapl:1/energy_uj":   "1000000", "intel-rapl:1/max_energy_range_uj": "262143999999",
	})
	r := &RAPL{Root: root}
	if e, err := r.EnergyJ(); err != nil || e != 0 {
		t.Fatalf("first read: %g %v", e, err)
	}
	write := func(zone, v string) {
		if err := os.WriteFile(filepath.Join(root, zone, "energy_uj"), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("intel-rapl:0", "1000000") // wrapped: 999999 + 1000000 uJ
	write("intel-rapl:1", "3000000") // +2 J
	e, err := r.EnergyJ()
	if err != nil || math.Abs(e-(1.999999+2)) > 1e-9 {
		t.Errorf("after wrap: %.6f J %v, want 3.999999", e, err)
	}
	write("intel-rapl:1", "garbage")
	if _, err := r.EnergyJ(); err == nil || !strings.Contains(err.Error(), "intel-rapl:1") {
		t.Errorf("corrupt counter: err = %v, want one naming the file", err)
	}
	if _, err := (&RAPL{Root: t.TempDir()}).EnergyJ(); !errors.Is(err, ErrNoRAPL) {
		t.Errorf("no zones: %v", err)
	}
}

type fakeTimes struct{ seq []CPUTimes }

func (f *fakeTimes) CPUTimes(context.Context) (CPUTimes, error) {
	if len(f.seq) == 0 {
		return CPUTimes{}, errors.New("no more readings")
	}
	c := f.seq[0]
	f.seq = f.seq[1:]
	return c, nil
}

func TestOtherLoad(t *testing.T) {
	src := &fakeTimes{seq: []CPUTimes{
		{Total: 100, Busy: 10, Self: 5},
		{Total: 200, Busy: 90, Self: 45},   // 80 busy, 40 ours: others 40%
		{Total: 300, Busy: 180, Self: 135}, // all the busy time is ours
	}}
	o := &OtherLoad{Source: src}
	for i, want := range []float64{0, 40, 0} {
		got, err := o.OtherLoadPercent()
		if err != nil || math.Abs(got-want) > 1e-9 {
			t.Errorf("reading %d: %g %v, want %g", i, got, err, want)
		}
	}
	if _, err := o.OtherLoadPercent(); err == nil {
		t.Error("source error not returned")
	}
	if got := OtherPercent(CPUTimes{Total: 10}, CPUTimes{Total: 10, Busy: 5}); got != 0 {
		t.Errorf("zero span: %g", got)
	}
}

func TestHostLoadMeterRuns(t *testing.T) {
	o := NewOtherLoad()
	if _, err := o.OtherLoadPercent(); err != nil {
		t.Skipf("no CPU times here: %v", err)
	}
	v, err := o.OtherLoadPercent()
	if err != nil || v < 0 || v > 100 {
		t.Errorf("load %g %v", v, err)
	}
}

type fakeCPU struct{ err error }

func (f fakeCPU) Info(context.Context) ([]cpu.InfoStat, error) {
	return []cpu.InfoStat{{ModelName: " AMD Ryzen 7 5800X ", Flags: []string{"sse2", "avx2", "fma", "AVX512F"}}}, f.err
}
func (f fakeCPU) Counts(_ context.Context, logical bool) (int, error) {
	if logical {
		return 16, nil
	}
	return 8, nil
}
func (f fakeCPU) Memory(context.Context) (*mem.VirtualMemoryStat, error) {
	return &mem.VirtualMemoryStat{Total: 32 << 30, Available: 20 << 30}, nil
}
func (f fakeCPU) Temperatures(context.Context) ([]host.TemperatureStat, error) {
	return []host.TemperatureStat{
		{SensorKey: "nvme_composite", Temperature: 99},
		{SensorKey: "k10temp_tctl", Temperature: 71.5},
		{SensorKey: "k10temp_tccd1", Temperature: math.NaN()},
		{SensorKey: "coretemp_broken", Temperature: 255},
	}, nil
}

func TestDiscoverCPU(t *testing.T) {
	c := DiscoverCPU(context.Background(), fakeCPU{}, nil)
	if c.Model != "AMD Ryzen 7 5800X" || c.LogicalCores != 16 || c.PhysicalCores != 8 || c.MemTotalBytes != 32<<30 {
		t.Errorf("cpu %+v", c)
	}
	if !c.HasFlag("avx2") || !c.HasFlag("fma") || !c.HasFlag("avx512f") || c.HasFlag("sse2") {
		t.Errorf("flags %v", c.Flags)
	}
	if c.TempC != 71.5 || c.TempSensor != "k10temp_tctl" {
		t.Errorf("temperature %g from %q, want 71.5 from k10temp_tctl", c.TempC, c.TempSensor)
	}
}

func TestGatherWithoutNVML(t *testing.T) {
	lib := &mock.Interface{InitFunc: func() nvml.Return { return nvml.ERROR_LIBRARY_NOT_FOUND }}
	rep, err := Gather(context.Background(), GatherOptions{Request: Request{Kind: "auto", Index: -1}, NVML: lib, CPU: fakeCPU{}})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Devices) != 1 || rep.Devices[0].CPU == nil || rep.Selected.Kind != "cpu" || rep.Selected.Name != "AMD Ryzen 7 5800X" {
		t.Errorf("report %+v", rep)
	}
	if !strings.Contains(rep.Selected.Reason, "NVML unavailable: library not found") || !strings.Contains(rep.Text(), "nvml    unavailable") {
		t.Errorf("reason %q\n%s", rep.Selected.Reason, rep.Text())
	}
	_, err = Gather(context.Background(), GatherOptions{Request: Request{Kind: "cuda", Index: -1}, NVML: lib, CPU: fakeCPU{}})
	if !errors.Is(err, ErrNoUsableGPU) || !strings.Contains(err.Error(), "library not found") {
		t.Errorf("--device cuda: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	c := DefaultConfig()
	c.Select = "tpu"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "device.select") {
		t.Errorf("err = %v", err)
	}
	c = DefaultConfig()
	c.ProbeTimeoutS = -1
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "device.probe_timeout_s") {
		t.Errorf("err = %v", err)
	}
}

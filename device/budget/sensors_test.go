package budget

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"github.com/opencluster/opencluster/device"
	"github.com/shirou/gopsutil/v3/host"
)

// mockGPU is a card whose readings the test sets; ret != SUCCESS makes that
// reading fail.
type mockGPU struct {
	mw, mj              uint64
	tempC               uint32
	powerR, energyR, tR nvml.Return
}

func (g *mockGPU) device() *mock.Device {
	return &mock.Device{
		GetPowerUsageFunc:             func() (uint32, nvml.Return) { return uint32(g.mw), g.powerR },
		GetTotalEnergyConsumptionFunc: func() (uint64, nvml.Return) { return g.mj, g.energyR },
		GetTemperatureFunc: func(s nvml.TemperatureSensors) (uint32, nvml.Return) {
			if s != nvml.TEMPERATURE_GPU {
				return 0, nvml.ERROR_INVALID_ARGUMENT
			}
			return g.tempC, g.tR
		},
	}
}

func TestGPUSensorsRead(t *testing.T) {
	tests := []struct {
		name    string
		gpu     mockGPU
		cpu     func() (float64, bool)
		want    Reading // NaN = unknown
		wantErr string
	}{
		{
			name: "all readings",
			gpu:  mockGPU{mw: 187_500, mj: 9_000_000, tempC: 66},
			cpu:  func() (float64, bool) { return 58, true },
			want: Reading{PowerW: 187.5, EnergyJ: 9000, GPUTempC: 66, CPUTempC: 58},
		},
		{
			name: "no energy counter (pre-Volta)",
			gpu:  mockGPU{mw: 120_000, tempC: 70, energyR: nvml.ERROR_NOT_SUPPORTED},
			want: Reading{PowerW: 120, EnergyJ: math.NaN(), GPUTempC: 70, CPUTempC: math.NaN()},
		},
		{
			name: "implausible power and temperature are dropped",
			gpu:  mockGPU{mw: 4_000_000_000, mj: 5, tempC: 4000},
			want: Reading{PowerW: math.NaN(), EnergyJ: 0.005, GPUTempC: math.NaN(), CPUTempC: math.NaN()},
		},
		{
			name:    "card lost",
			gpu:     mockGPU{powerR: nvml.ERROR_GPU_IS_LOST, energyR: nvml.ERROR_GPU_IS_LOST, tR: nvml.ERROR_GPU_IS_LOST},
			want:    Reading{PowerW: math.NaN(), EnergyJ: math.NaN(), GPUTempC: math.NaN(), CPUTempC: math.NaN()},
			wantErr: "gpu 3 power",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := &GPUSensors{Device: tc.gpu.device(), Index: 3, CPUTemp: tc.cpu}
			got, err := s.Read()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one naming %q", err, tc.wantErr)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if !sameReading(got, tc.want) {
				t.Errorf("Read = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func sameReading(a, b Reading) bool {
	eq := func(x, y float64) bool { return (math.IsNaN(x) && math.IsNaN(y)) || math.Abs(x-y) < 1e-9 }
	return eq(a.PowerW, b.PowerW) && eq(a.EnergyJ, b.EnergyJ) && eq(a.GPUTempC, b.GPUTempC) && eq(a.CPUTempC, b.CPUTempC)
}

func TestOpenGPUSensorsOnMockServer(t *testing.T) {
	srv := dgxa100.New()
	for i, d := range srv.Devices {
		dev := d.(*dgxa100.Device)
		w := uint32(100_000 + 1000*i)
		dev.GetPowerUsageFunc = func() (uint32, nvml.Return) { return w, nvml.SUCCESS }
		dev.GetTotalEnergyConsumptionFunc = func() (uint64, nvml.Return) { return 42_000, nvml.SUCCESS }
		dev.GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) { return 55, nvml.SUCCESS }
	}
	s, closeFn, err := OpenGPUSensors(srv, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer closeFn()
	r, err := s.Read()
	if err != nil {
		t.Fatal(err)
	}
	if r.PowerW != 102 || r.EnergyJ != 42 || r.GPUTempC != 55 || !math.IsNaN(r.CPUTempC) {
		t.Errorf("GPU 2 read %+v, want 102 W, 42 J, 55 C", r)
	}
	if _, _, err := OpenGPUSensors(dgxa100.New(), 8); err == nil || !strings.Contains(err.Error(), "gpu 8") {
		t.Errorf("index past the last GPU: err = %v", err)
	}
	noLib := &mock.Interface{InitFunc: func() nvml.Return { return nvml.ERROR_LIBRARY_NOT_FOUND }}
	if _, _, err := OpenGPUSensors(noLib, 0); !errors.Is(err, device.ErrNVMLUnavailable) {
		t.Errorf("no NVML library: err = %v, want ErrNVMLUnavailable", err)
	}
}

// writeRAPL makes a powercap tree with one package zone at uj microjoules.
func writeRAPL(t *testing.T, root string, uj string) {
	t.Helper()
	dir := filepath.Join(root, "intel-rapl:0")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]string{"energy_uj": uj, "max_energy_range_uj": "262143328850"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func fixedTemps(c float64) func() ([]host.TemperatureStat, error) {
	return func() ([]host.TemperatureStat, error) {
		return []host.TemperatureStat{{SensorKey: "acpitz_input", Temperature: 99}, {SensorKey: "coretemp_package_id_0_input", Temperature: c}}, nil
	}
}

func TestCPUSensorsRAPL(t *testing.T) {
	root := t.TempDir()
	writeRAPL(t, root, "1000000")
	clock := NewVirtualClock(time.Date(2025, 1, 6, 12, 0, 0, 0, time.UTC))
	s, err := NewCPUSensors(CPUSensorOptions{Clock: clock, RAPL: &device.RAPL{Root: root}, Temperatures: fixedTemps(61),
		CPUSeconds: func() (float64, error) { t.Fatal("the estimate was used although RAPL is readable"); return 0, nil }})
	if err != nil {
		t.Fatal(err)
	}
	if s.Estimated() || !strings.Contains(s.Source(), "RAPL") {
		t.Fatalf("Estimated %v, Source %q: want RAPL", s.Estimated(), s.Source())
	}
	r, err := s.Read()
	if err != nil {
		t.Fatal(err)
	}
	if r.EnergyJ != 0 || !math.IsNaN(r.PowerW) || r.CPUTempC != 61 || !math.IsNaN(r.GPUTempC) {
		t.Errorf("first read %+v: want 0 J, no power yet, 61 C", r)
	}
	clock.Advance(2 * time.Second)
	writeRAPL(t, root, "91000000") // +90 J in 2 s
	r, err = s.Read()
	if err != nil {
		t.Fatal(err)
	}
	if r.EnergyJ != 90 || math.Abs(r.PowerW-45) > 1e-9 {
		t.Errorf("second read %+v: want 90 J and 45 W", r)
	}
}

func TestCPUSensorsEstimate(t *testing.T) {
	clock := NewVirtualClock(time.Date(2025, 1, 6, 12, 0, 0, 0, time.UTC))
	cpuSec := 10.0
	s, err := NewCPUSensors(CPUSensorOptions{Clock: clock, RAPL: &device.RAPL{Root: t.TempDir()}, WattsPerCore: 10,
		Temperatures: func() ([]host.TemperatureStat, error) { return nil, errors.New("no hwmon") },
		CPUSeconds:   func() (float64, error) { return cpuSec, nil }})
	if err != nil {
		t.Fatal(err)
	}
	if !s.Estimated() || !strings.Contains(s.Source(), "estimated") || !strings.Contains(s.Source(), "RAPL") {
		t.Fatalf("Estimated %v, Source %q: want an estimate that says RAPL is unreadable", s.Estimated(), s.Source())
	}
	if _, err := s.Read(); err != nil {
		t.Fatal(err)
	}
	clock.Advance(4 * time.Second)
	cpuSec += 8 // two cores busy for 4 s
	r, err := s.Read()
	if err != nil {
		t.Fatal(err)
	}
	if r.EnergyJ != 180 || math.Abs(r.PowerW-20) > 1e-9 || !math.IsNaN(r.CPUTempC) {
		t.Errorf("read %+v: want 180 J, 20 W, no temperature", r)
	}
	if _, ok := s.CPUTemp(); ok {
		t.Error("CPUTemp ok without a sensor")
	}
}

func TestCPUSensorsErrors(t *testing.T) {
	clock := NewVirtualClock(time.Date(2025, 1, 6, 12, 0, 0, 0, time.UTC))
	if _, err := NewCPUSensors(CPUSensorOptions{}); err == nil {
		t.Error("no clock: want an error")
	}
	if _, err := NewCPUSensors(CPUSensorOptions{Clock: clock, WattsPerCore: math.NaN()}); err == nil {
		t.Error("NaN watts per core: want an error")
	}
	// Nothing readable: an error naming both, never a panic.
	s, err := NewCPUSensors(CPUSensorOptions{Clock: clock,
		Temperatures: func() ([]host.TemperatureStat, error) { return nil, errors.New("no hwmon") },
		CPUSeconds:   func() (float64, error) { return 0, errors.New("no proc") }})
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.Read()
	if err == nil || !strings.Contains(err.Error(), "no proc") || !strings.Contains(err.Error(), "temperature") {
		t.Errorf("err = %v, want one naming the energy failure and the missing temperature", err)
	}
	if !math.IsNaN(r.EnergyJ) || !math.IsNaN(r.PowerW) {
		t.Errorf("read %+v: want NaN energy and power", r)
	}
	// A temperature alone is enough to keep going.
	s.temps = fixedTemps(50)
	if r, err := s.Read(); err != nil || r.CPUTempC != 50 {
		t.Errorf("read %+v, %v: want 50 C and no error", r, err)
	}
}

// The sensors plug into the controller: a CPU worker's estimated power is
// booked as energy.
func TestCPUSensorsDriveController(t *testing.T) {
	clock := NewVirtualClock(time.Date(2025, 1, 6, 12, 0, 0, 0, time.UTC))
	cpuSec := 0.0
	s, err := NewCPUSensors(CPUSensorOptions{Clock: clock, Temperatures: fixedTemps(50),
		CPUSeconds: func() (float64, error) { return cpuSec, nil }})
	if err != nil {
		t.Fatal(err)
	}
	cfg := baseConfig()
	ctrl, err := New(Options{Config: cfg, Clock: clock, Sensors: s})
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if err := ctrl.Wait(t.Context()); err != nil {
			t.Fatal(err)
		}
		clock.Advance(time.Second)
		cpuSec += 1
		ctrl.StepDone(time.Second)
	}
	st := ctrl.Status()
	wantKWh := 10 * DefaultCPUWattsPerCore / 3.6e6
	if math.Abs(st.EnergyTotalKWh-wantKWh) > 1e-12 || st.CPUTempC != 50 {
		t.Errorf("status %+v: want %.3g kWh and 50 C", st, wantKWh)
	}
}

package budget

// The real Sensors: NVML for a GPU worker, RAPL and hwmon for a CPU worker.
// Both report NaN for what they cannot read, so the controller enforces
// every limit it has a reading for and warns about the rest.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/opencluster/opencluster/device"
	"github.com/shirou/gopsutil/v3/host"
)

// Plausible sensor ranges; readings outside them are treated as unreadable
// (a driver glitch must not pause or unleash the work).
const (
	maxPlausibleW = 5000
	minPlausibleC = -40
	maxPlausibleC = 150
)

// GPUSensors reads one NVIDIA GPU through NVML: board power, the card's
// cumulative energy counter (Volta and newer) and the GPU temperature. When
// CPUTemp is set it also fills Reading.CPUTempC, so a GPU worker keeps the
// CPU temperature limit too.
type GPUSensors struct {
	Device nvml.Device
	Index  int // for error messages
	// CPUTemp returns the hottest CPU sensor, ok false when none; nil: none.
	CPUTemp func() (c float64, ok bool)
}

// OpenGPUSensors initialises lib and returns the sensors of GPU index. The
// caller must call close when done (it shuts NVML down).
func OpenGPUSensors(lib nvml.Interface, index int) (s *GPUSensors, close func(), err error) {
	st, err := device.OpenNVML(lib)
	if err != nil {
		return nil, nil, fmt.Errorf("gpu %d sensors: %w", index, err)
	}
	if index < 0 || index >= st.DeviceCount {
		lib.Shutdown()
		return nil, nil, fmt.Errorf("gpu %d sensors: NVML sees %d GPU(s) (indices 0-%d)", index, st.DeviceCount, st.DeviceCount-1)
	}
	dev, ret := lib.DeviceGetHandleByIndex(index)
	if ret != nvml.SUCCESS {
		lib.Shutdown()
		return nil, nil, fmt.Errorf("gpu %d sensors: get handle: %w", index, ret)
	}
	return &GPUSensors{Device: dev, Index: index}, func() { lib.Shutdown() }, nil
}

// Read implements Sensors. It fails only when neither power, energy nor
// temperature can be read (the card is gone); single unsupported readings
// are NaN.
func (s *GPUSensors) Read() (Reading, error) {
	r := Reading{PowerW: math.NaN(), EnergyJ: math.NaN(), GPUTempC: math.NaN(), CPUTempC: math.NaN()}
	if s.CPUTemp != nil {
		if c, ok := s.CPUTemp(); ok {
			r.CPUTempC = c
		}
	}
	var firstErr error
	fail := func(what string, ret nvml.Return) {
		if firstErr == nil {
			firstErr = fmt.Errorf("gpu %d %s: %w", s.Index, what, ret)
		}
	}
	if mw, ret := s.Device.GetPowerUsage(); ret != nvml.SUCCESS {
		fail("power", ret)
	} else if w := float64(mw) / 1000; w < maxPlausibleW {
		r.PowerW = w
	}
	if mj, ret := s.Device.GetTotalEnergyConsumption(); ret != nvml.SUCCESS {
		fail("energy", ret)
	} else {
		r.EnergyJ = float64(mj) / 1000
	}
	if c, ret := s.Device.GetTemperature(nvml.TEMPERATURE_GPU); ret != nvml.SUCCESS {
		fail("temperature", ret)
	} else if plausibleC(float64(c)) {
		r.GPUTempC = float64(c)
	}
	if firstErr != nil && !finite(r.PowerW) && !finite(r.EnergyJ) && !finite(r.GPUTempC) {
		return r, firstErr
	}
	return r, nil
}

// EnergyMeter is a cumulative energy counter in joules (*device.RAPL).
type EnergyMeter interface {
	EnergyJ() (float64, error)
}

// DefaultCPUWattsPerCore is the power assumed per core-second of this
// process's CPU time when no RAPL counter is readable: a rough figure for a
// desktop core under load, reported as an estimate, never as a measurement.
const DefaultCPUWattsPerCore = 12.0

// CPUSensors reads a CPU worker: package energy from RAPL, with power
// derived from the energy between two reads, and the hottest CPU
// temperature sensor. When RAPL is not readable the energy is estimated
// from this process's CPU time x WattsPerCore and Estimated reports true.
type CPUSensors struct {
	clock Clock
	// meter is RAPL when it was readable at construction, else nil.
	meter EnergyMeter
	// cpuSeconds returns this process's cumulative CPU time (the estimate).
	cpuSeconds   func() (float64, error)
	temps        func() ([]host.TemperatureStat, error)
	wattsPerCore float64
	why          string // why the energy is estimated

	mu    sync.Mutex
	lastT time.Time
	lastE float64
	have  bool
}

// CPUSensorOptions wires CPUSensors; nil fields use the real machine.
type CPUSensorOptions struct {
	Clock Clock // required
	// RAPL is the package energy counter; nil: none (estimate).
	RAPL EnergyMeter
	// CPUSeconds returns this process's cumulative CPU time in seconds;
	// nil: device.HostTimes.
	CPUSeconds func() (float64, error)
	// Temperatures returns the host's sensors; nil: gopsutil's hwmon reader.
	Temperatures func() ([]host.TemperatureStat, error)
	// WattsPerCore for the estimate; 0: DefaultCPUWattsPerCore.
	WattsPerCore float64
}

// NewCPUSensors probes RAPL once (the first read primes the counter) and
// returns sensors that measure with it, or estimate without it.
func NewCPUSensors(o CPUSensorOptions) (*CPUSensors, error) {
	if o.Clock == nil {
		return nil, errors.New("cpu sensors: Clock is required")
	}
	if math.IsNaN(o.WattsPerCore) || o.WattsPerCore < 0 || math.IsInf(o.WattsPerCore, 0) {
		return nil, fmt.Errorf("cpu sensors: watts per core %g must be a finite number >= 0", o.WattsPerCore)
	}
	s := &CPUSensors{clock: o.Clock, cpuSeconds: o.CPUSeconds, temps: o.Temperatures, wattsPerCore: o.WattsPerCore}
	if s.wattsPerCore == 0 {
		s.wattsPerCore = DefaultCPUWattsPerCore
	}
	if s.cpuSeconds == nil {
		ht := &device.HostTimes{}
		s.cpuSeconds = func() (float64, error) {
			t, err := ht.CPUTimes(context.Background())
			return t.Self, err
		}
	}
	if s.temps == nil {
		s.temps = func() ([]host.TemperatureStat, error) { return host.SensorsTemperatures() }
	}
	switch {
	case o.RAPL == nil:
		s.why = "no RAPL meter configured"
	default:
		if _, err := o.RAPL.EnergyJ(); err != nil {
			s.why = err.Error()
		} else {
			s.meter = o.RAPL
		}
	}
	return s, nil
}

// Estimated reports whether energy and power are estimates from CPU time
// rather than RAPL measurements.
func (s *CPUSensors) Estimated() bool { return s.meter == nil }

// Source says in words where the power reading comes from.
func (s *CPUSensors) Source() string {
	if s.meter != nil {
		return "CPU package energy (RAPL)"
	}
	return fmt.Sprintf("estimated: %g W per busy core from this process's CPU time (%s)", s.wattsPerCore, s.why)
}

// Read implements Sensors. PowerW is NaN on the first read (no interval
// yet). It fails only when neither energy nor temperature is readable.
func (s *CPUSensors) Read() (Reading, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := Reading{PowerW: math.NaN(), EnergyJ: math.NaN(), GPUTempC: math.NaN(), CPUTempC: math.NaN()}
	now := s.clock.Now()
	var eErr error
	if s.meter != nil {
		r.EnergyJ, eErr = s.meter.EnergyJ()
	} else {
		var sec float64
		sec, eErr = s.cpuSeconds()
		r.EnergyJ = sec * s.wattsPerCore
	}
	if eErr != nil || !finite(r.EnergyJ) || r.EnergyJ < 0 {
		if eErr == nil {
			eErr = fmt.Errorf("energy reading %g J is not a cumulative count", r.EnergyJ)
		}
		r.EnergyJ = math.NaN()
	} else {
		if s.have && r.EnergyJ >= s.lastE {
			if dt := now.Sub(s.lastT).Seconds(); dt > 0 {
				if w := (r.EnergyJ - s.lastE) / dt; w < maxPlausibleW {
					r.PowerW = w
				}
			}
		}
		s.lastT, s.lastE, s.have = now, r.EnergyJ, true
	}
	r.CPUTempC = s.cpuTemp()
	if eErr != nil && !finite(r.CPUTempC) {
		return r, fmt.Errorf("cpu sensors: energy: %w; and no CPU temperature sensor", eErr)
	}
	return r, nil
}

// CPUTemp returns the hottest CPU temperature sensor, ok false when none.
func (s *CPUSensors) CPUTemp() (float64, bool) {
	c := s.cpuTemp()
	return c, finite(c)
}

func (s *CPUSensors) cpuTemp() float64 {
	// gopsutil returns the readings it got together with a warning error for
	// the ones it did not, so the list is used whatever the error.
	temps, _ := s.temps()
	if c, _, ok := device.CPUTemperature(temps); ok {
		return c
	}
	return math.NaN()
}

func plausibleC(c float64) bool { return c > minPlausibleC && c < maxPlausibleC }

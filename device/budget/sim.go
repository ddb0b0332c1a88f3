package budget

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"sort"
	"time"
)

// SimGPU is a simulated card for `budget simulate` and the tests. Busy, it
// draws idle + (TDP - idle) x speed watts; idle, it draws IdleW. Its
// temperature follows a first-order thermal RC model toward
// ambient + power x thermal resistance with time constant TauS. Above
// SlowdownC the card slows itself like a real one: speed (and so the
// dynamic power) drops 5% per degree, to at most 30%.
type SimGPU struct {
	TDPW      float64
	IdleW     float64
	AmbientC  float64
	RthCPerW  float64
	TauS      float64
	SlowdownC float64

	TempC   float64
	EnergyJ float64
	PowerW  float64 // power during the last integrated span
	t       time.Time
}

// NewSimGPU builds a card of the given TDP: idle at 10% of TDP, heating
// riseC above ambient at full load, starting at ambient at time t.
func NewSimGPU(tdpW, ambientC, riseC, tauS, slowdownC float64, t time.Time) *SimGPU {
	return &SimGPU{
		TDPW: tdpW, IdleW: 0.1 * tdpW, AmbientC: ambientC, RthCPerW: riseC / tdpW,
		TauS: tauS, SlowdownC: slowdownC, TempC: ambientC, PowerW: 0.1 * tdpW, t: t,
	}
}

// Speed is the card's own clock factor at temperature c.
func (g *SimGPU) Speed(c float64) float64 {
	if g.SlowdownC <= 0 || c <= g.SlowdownC {
		return 1
	}
	return max(0.3, 1-0.05*(c-g.SlowdownC))
}

// busyPower is the draw while working at temperature c.
func (g *SimGPU) busyPower(c float64) float64 { return g.IdleW + (g.TDPW-g.IdleW)*g.Speed(c) }

const simDT = 0.02 // integration step, s

// integrate advances the card by dt seconds, busy or idle, and returns the
// work done (seconds of full-speed compute).
func (g *SimGPU) integrate(dt float64, busy bool) float64 {
	p := g.IdleW
	speed := 0.0
	if busy {
		speed = g.Speed(g.TempC)
		p = g.busyPower(g.TempC)
	}
	target := g.AmbientC + p*g.RthCPerW
	g.TempC = target + (g.TempC-target)*math.Exp(-dt/g.TauS)
	g.EnergyJ += p * dt
	g.PowerW = p
	g.t = g.t.Add(time.Duration(dt * float64(time.Second)))
	return speed * dt
}

// IdleUntil lets the card sit idle until t.
func (g *SimGPU) IdleUntil(t time.Time) {
	for {
		rest := t.Sub(g.t).Seconds()
		if rest <= 1e-9 {
			return
		}
		g.integrate(min(simDT, rest), false)
	}
}

// Run does work seconds of full-speed compute (longer when the card slows
// itself) and returns the time it took.
func (g *SimGPU) Run(work float64) time.Duration {
	start := g.t
	for work > 1e-12 {
		speed := g.Speed(g.TempC)
		dt := min(simDT, work/speed)
		work -= g.integrate(dt, true)
	}
	return g.t.Sub(start)
}

// SteadyMaxPowerW is the average power of a card working without pause at
// thermal equilibrium, its own slowdown included.
func (g *SimGPU) SteadyMaxPowerW() float64 {
	// T = ambient + R * busyPower(T) has one root; busyPower falls with T.
	lo, hi := g.AmbientC, g.AmbientC+g.RthCPerW*g.TDPW
	for range 100 {
		mid := (lo + hi) / 2
		if g.AmbientC+g.RthCPerW*g.busyPower(mid) > mid {
			lo = mid
		} else {
			hi = mid
		}
	}
	return g.busyPower(lo)
}

// BestConstantRate is the most work per second any constant duty cycle can
// sustain within the power cap and temperature limit at equilibrium: work
// rate is (P - idle)/(TDP - idle) at average power P, so it is the highest
// feasible P. Zero when even idle breaks a limit.
func (g *SimGPU) BestConstantRate(capW, limitC float64) float64 {
	p := g.SteadyMaxPowerW()
	if capW > 0 {
		p = min(p, capW)
	}
	if limitC > 0 {
		p = min(p, (limitC-g.AmbientC)/g.RthCPerW)
	}
	return max(0, (p-g.IdleW)/(g.TDPW-g.IdleW))
}

// simSensors reads the simulated card the way NVML would: the card idles up
// to the clock's now, temperature in whole degrees.
type simSensors struct {
	gpu   *SimGPU
	clock Clock
}

func (s simSensors) Read() (Reading, error) {
	s.gpu.IdleUntil(s.clock.Now())
	return Reading{PowerW: s.gpu.PowerW, EnergyJ: s.gpu.EnergyJ, GPUTempC: math.Round(s.gpu.TempC), CPUTempC: math.NaN()}, nil
}

// SimConfig describes one `budget simulate` run.
type SimConfig struct {
	TDPW        float64       `json:"tdp_w"`
	PowerCapW   float64       `json:"power_cap_w"`  // 0 = none
	TempLimitC  float64       `json:"temp_limit_c"` // 0 = none
	AmbientC    float64       `json:"ambient_c"`
	RiseC       float64       `json:"rise_c"`     // full-load rise above ambient; default 55
	TauS        float64       `json:"tau_s"`      // card thermal time constant; default 40
	SlowdownC   float64       `json:"slowdown_c"` // card's own slowdown threshold; default 90
	StepS       float64       `json:"step_s"`     // one training step at full speed; default 0.2
	Duration    time.Duration `json:"-"`
	HysteresisC float64       `json:"hysteresis_c"` // default 5
	WindowS     float64       `json:"window_s"`     // power averaging window; default 30
	// Budget, when set, is used as is (its cap and GPU limit are overridden
	// by PowerCapW and TempLimitC).
	Budget *Config `json:"-"`
}

// SimResult is what `budget simulate --json` prints.
type SimResult struct {
	MaxWindowAvgPowerW float64 `json:"max_window_avg_power_w"` // windows starting after the first (warm-up) window
	AvgPowerW          float64 `json:"avg_power_w"`
	MaxTempC           float64 `json:"max_temp_c"`
	FinalTempC         float64 `json:"final_temp_c"`
	ThroughputFraction float64 `json:"throughput_fraction"` // work / best constant duty cycle's work
	WorkFraction       float64 `json:"work_fraction"`       // work / duration (full speed = 1)
	BestConstantDuty   float64 `json:"best_constant_duty"`
	Pauses             int     `json:"pauses"`
	DutyPauses         int     `json:"duty_pauses"`
	Steps              int     `json:"steps"`
	EnergyKWh          float64 `json:"energy_kwh"`
	CO2G               float64 `json:"co2_g"`
	DurationS          float64 `json:"duration_s"`
}

func (c *SimConfig) defaults() {
	if c.RiseC == 0 {
		c.RiseC = 55
	}
	if c.TauS == 0 {
		c.TauS = 40
	}
	if c.SlowdownC == 0 {
		c.SlowdownC = 90
	}
	if c.StepS == 0 {
		c.StepS = 0.2
	}
	if c.HysteresisC == 0 {
		c.HysteresisC = 5
	}
	if c.WindowS == 0 {
		c.WindowS = 30
	}
}

// Validate names the first bad setting.
func (c SimConfig) Validate() error {
	switch {
	case !(c.TDPW > 0) || c.TDPW > 2000:
		return fmt.Errorf("--tdp %g W: want 1-2000", c.TDPW)
	case !(c.PowerCapW >= 0) || math.IsInf(c.PowerCapW, 0):
		return fmt.Errorf("--power-cap %g W: want >= 0 (0 = none)", c.PowerCapW)
	case c.PowerCapW > 0 && c.PowerCapW <= 0.1*c.TDPW:
		return fmt.Errorf("--power-cap %g W is at or below the simulated idle power %g W", c.PowerCapW, 0.1*c.TDPW)
	case !(c.AmbientC > -20 && c.AmbientC < 60):
		return fmt.Errorf("--ambient %g C: want -20 to 60", c.AmbientC)
	case c.TempLimitC != 0 && !(c.TempLimitC > c.AmbientC+0.1*c.RiseC+c.HysteresisC):
		return fmt.Errorf("--temp-limit %g C cannot be held: idle alone reaches %.1f C at ambient %g C", c.TempLimitC, c.AmbientC+0.1*c.RiseC, c.AmbientC)
	case !(c.TauS > 0), !(c.StepS > 0), !(c.RiseC > 0), !(c.WindowS > 0):
		return errors.New("simulate: tau, step, rise and window must be > 0")
	case c.Duration <= 0 || c.Duration > 31*24*time.Hour:
		return fmt.Errorf("--duration %s: want > 0 and at most 31 days", c.Duration)
	}
	return nil
}

// Simulate runs the real controller against a SimGPU on a virtual clock.
func Simulate(ctx context.Context, sc SimConfig, log *slog.Logger) (SimResult, error) {
	sc.defaults()
	if err := sc.Validate(); err != nil {
		return SimResult{}, err
	}
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	start := time.Date(2025, 1, 6, 12, 0, 0, 0, time.UTC)
	clock := NewVirtualClock(start)
	gpu := NewSimGPU(sc.TDPW, sc.AmbientC, sc.RiseC, sc.TauS, sc.SlowdownC, start)
	cfg := Config{
		PowerWindowS: sc.WindowS, HysteresisC: sc.HysteresisC, ThermalTimeConstantS: 60,
		PollS: 1, UserActiveCPUPercent: 25, RunOnBattery: true, GridGCO2PerKWh: 400,
	}
	if sc.Budget != nil {
		cfg = *sc.Budget
	}
	cfg.PowerCapW, cfg.GPUTempLimitC = sc.PowerCapW, sc.TempLimitC
	ctrl, err := New(Options{Config: cfg, Clock: clock, Sensors: simSensors{gpu, clock}, Logger: log})
	if err != nil {
		return SimResult{}, err
	}
	end := start.Add(sc.Duration)
	trace := []energyPoint{{start, 0}}
	var res SimResult
	work := 0.0
	res.MaxTempC = gpu.TempC
	note := func() {
		trace = append(trace, energyPoint{gpu.t, gpu.EnergyJ})
		res.MaxTempC = max(res.MaxTempC, gpu.TempC)
	}
	for clock.Now().Before(end) {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		if err := ctrl.Wait(ctx); err != nil {
			return res, err
		}
		gpu.IdleUntil(clock.Now())
		note()
		if !clock.Now().Before(end) {
			break
		}
		d := gpu.Run(sc.StepS)
		clock.Advance(d)
		work += sc.StepS
		res.Steps++
		note()
		ctrl.StepDone(d)
	}
	dur := clock.Now().Sub(start).Seconds()
	res.DurationS = dur
	res.MaxWindowAvgPowerW = maxWindowAvg(trace, sc.WindowS, sc.WindowS)
	res.AvgPowerW = gpu.EnergyJ / dur
	res.FinalTempC = gpu.TempC
	res.WorkFraction = work / dur
	res.BestConstantDuty = gpu.BestConstantRate(sc.PowerCapW, sc.TempLimitC)
	if res.BestConstantDuty > 0 {
		res.ThroughputFraction = res.WorkFraction / res.BestConstantDuty
	}
	st := ctrl.Status()
	res.Pauses, res.DutyPauses = st.Pauses, st.DutyPauses
	res.EnergyKWh = gpu.EnergyJ / 3.6e6
	res.CO2G = res.EnergyKWh * cfg.GridGCO2PerKWh
	return res, nil
}

// maxWindowAvg is the highest average power over any window of w seconds
// that starts at or after warm seconds and ends inside the trace (energy is
// linear between points).
func maxWindowAvg(tr []energyPoint, w, warm float64) float64 {
	if len(tr) < 2 {
		return 0
	}
	t0 := tr[0].t
	x := make([]float64, len(tr))
	for i, p := range tr {
		x[i] = p.t.Sub(t0).Seconds()
	}
	at := func(s float64) float64 {
		i := sort.SearchFloat64s(x, s)
		if i <= 0 {
			return tr[0].e
		}
		if i >= len(x) {
			return tr[len(tr)-1].e
		}
		a, b := x[i-1], x[i]
		if b == a {
			return tr[i].e
		}
		return tr[i-1].e + (tr[i].e-tr[i-1].e)*(s-a)/(b-a)
	}
	best := 0.0
	endT := x[len(x)-1]
	if warm+w <= endT { // the first window after warm-up
		best = (at(warm+w) - at(warm)) / w
	}
	for i := range x {
		if x[i]-w >= warm { // window ending here
			best = max(best, (tr[i].e-at(x[i]-w))/w)
		}
		if x[i] >= warm && x[i]+w <= endT { // window starting here
			best = max(best, (at(x[i]+w)-tr[i].e)/w)
		}
	}
	return best
}

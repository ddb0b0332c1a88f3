package budget

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/opencluster/opencluster/device"
)

// Reading is one sample of the device the work runs on. Unknown values are
// NaN: a CPU worker has no GPU temperature, a card without an energy
// counter has EnergyJ NaN (the controller then integrates PowerW).
type Reading struct {
	PowerW   float64 // power of the compute device now, W
	EnergyJ  float64 // cumulative energy counter of the compute device, J
	GPUTempC float64
	CPUTempC float64
}

// Sensors reads the compute device.
type Sensors interface {
	Read() (Reading, error)
}

// PowerSupply reads battery and AC state (device.PowerSupplies does).
type PowerSupply interface {
	Read() (device.PowerState, error)
}

// LoadMeter reports the CPU share used by processes other than ours
// (device.OtherLoad does).
type LoadMeter interface {
	OtherLoadPercent() (float64, error)
}

// Options wires a Controller. Clock and Sensors are required; PowerSupply
// and Load may be nil (treated as mains power and no other load).
type Options struct {
	Config      Config
	Clock       Clock
	Sensors     Sensors
	PowerSupply PowerSupply
	Load        LoadMeter
	Logger      *slog.Logger // nil: slog.Default()
}

// Pause reasons, the category words in Status.Kind and the slog "kind".
const (
	KindPower    = "power_cap"
	KindThermal  = "temperature"
	KindSchedule = "schedule"
	KindBattery  = "battery"
	KindUser     = "user_active"
	KindEnergy   = "daily_energy"
)

// Status is the controller's state for the worker's status page.
type Status struct {
	Paused bool      `json:"paused"`
	Kind   string    `json:"kind,omitempty"`   // one of the Kind* constants
	Reason string    `json:"reason,omitempty"` // one line for people
	Since  time.Time `json:"since,omitzero"`

	PowerCapW        float64 `json:"power_cap_w"`          // configured; 0 = none
	EffectiveCapW    float64 `json:"effective_cap_w"`      // after the temperature regulator; 0 = none
	WindowPowerW     float64 `json:"window_power_w"`       // average over power_window_s
	GPUTempC         float64 `json:"gpu_temp_c,omitempty"` // 0 when unknown
	CPUTempC         float64 `json:"cpu_temp_c,omitempty"`
	EnergyTodayKWh   float64 `json:"energy_today_kwh"`
	CO2TodayG        float64 `json:"co2_today_g"`
	EnergyTotalKWh   float64 `json:"energy_total_kwh"`
	CO2TotalG        float64 `json:"co2_total_g"`
	OtherLoadPercent float64 `json:"other_load_percent"`
	OnBattery        bool    `json:"on_battery"`
	BatteryPercent   float64 `json:"battery_percent"` // -1 when none
	Steps            int     `json:"steps"`
	Pauses           int     `json:"pauses"`      // pauses other than duty-cycling
	DutyPauses       int     `json:"duty_pauses"` // pauses that keep the power cap
}

// Controller is the budget the training loop obeys. It implements the
// loop's Governor: Wait between steps, StepDone after each. Safe for use by
// one training goroutine plus any number of Status readers.
type Controller struct {
	cfg   Config
	sched *Schedule
	clock Clock
	sens  Sensors
	ps    PowerSupply
	load  LoadMeter
	log   *slog.Logger

	mu sync.Mutex

	started   bool
	lastT     time.Time
	lastE     float64 // last cumulative meter reading, NaN if none
	lastBusy  bool    // the span since lastT was a step
	lastSleep bool    // the span since lastT was our own pause
	reading   Reading

	pBusy, pIdle float64 // measured W, NaN until seen
	account      float64 // J above the cap (never below 0)
	effCap       float64 // W; +Inf when no cap

	energyJ     float64 // since start
	todayJ      float64
	today       int // yday + 1000*year of todayJ
	window      []energyPoint
	warnedPower bool

	gpu, cpu thermal

	power        device.PowerState
	otherLoad    float64
	loadAt       time.Time
	lastActiveAt time.Time

	kind, reason string
	since        time.Time
	schedNext    time.Time
	steps        int
	pauses       int
	dutyPauses   int
	sensorErr    string
}

type energyPoint struct {
	t time.Time
	e float64
}

// New checks the config and builds a controller.
func New(o Options) (*Controller, error) {
	if err := o.Config.Validate(); err != nil {
		return nil, err
	}
	if o.Clock == nil || o.Sensors == nil {
		return nil, errors.New("budget: Clock and Sensors are required")
	}
	sched, _ := ParseSchedule(o.Config.Schedule)
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	c := &Controller{
		cfg: o.Config, sched: sched, clock: o.Clock, sens: o.Sensors, ps: o.PowerSupply, load: o.Load,
		log:   o.Logger,
		lastE: math.NaN(), pBusy: math.NaN(), pIdle: math.NaN(), effCap: math.Inf(1),
		power: device.PowerState{OnAC: true, BatteryPercent: -1},
	}
	c.gpu = newThermal("GPU", o.Config.GPUTempLimitC, o.Config.HysteresisC, o.Config.ThermalTimeConstantS)
	c.cpu = newThermal("CPU", o.Config.CPUTempLimitC, o.Config.HysteresisC, o.Config.ThermalTimeConstantS)
	return c, nil
}

// StepDone reports that a step just finished after busy time of work. The
// span since the last Wait returned is booked as busy.
func (c *Controller) StepDone(busy time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.steps++
	c.lastBusy = true
	c.sample(c.clock.Now())
}

// Wait blocks while any budget says pause and returns nil when the next step
// may run, or ctx.Err() when ctx is cancelled first.
func (c *Controller) Wait(ctx context.Context) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		c.mu.Lock()
		now := c.clock.Now()
		c.sample(now)
		kind, reason, d := c.decide(now)
		c.transition(now, kind, reason)
		c.mu.Unlock()
		if kind == "" {
			return nil
		}
		if err := c.clock.Sleep(ctx, d); err != nil {
			return err
		}
		c.mu.Lock()
		c.lastSleep = true
		c.mu.Unlock()
	}
}

// sample reads every input and books the energy since the last sample.
func (c *Controller) sample(now time.Time) {
	r, err := c.sens.Read()
	if err != nil {
		if c.sensorErr != err.Error() {
			c.log.Warn("budget: sensor read failed; limits that need it are not enforced", "err", err)
			c.sensorErr = err.Error()
		}
		r = Reading{PowerW: math.NaN(), EnergyJ: math.NaN(), GPUTempC: math.NaN(), CPUTempC: math.NaN()}
	} else {
		c.sensorErr = ""
	}
	c.reading = r
	busy, slept := c.lastBusy, c.lastSleep
	c.lastBusy, c.lastSleep = false, false
	if !c.started {
		c.started, c.lastT, c.lastE = true, now, r.EnergyJ
		c.today = dayKey(now)
		c.window = append(c.window, energyPoint{now, 0})
		c.readSupplies(now)
		c.gpu.update(now, r.GPUTempC, 0, c.pBusy, c.pIdle)
		c.cpu.update(now, r.CPUTempC, 0, c.pBusy, c.pIdle)
		return
	}
	dt := now.Sub(c.lastT).Seconds()
	c.readSupplies(now)
	if dt <= 0 {
		return
	}
	var dE float64
	switch {
	case finite(r.EnergyJ) && finite(c.lastE) && r.EnergyJ >= c.lastE:
		dE = r.EnergyJ - c.lastE
	case finite(r.PowerW) && r.PowerW >= 0:
		dE = r.PowerW * dt
	default:
		if !c.warnedPower && c.cfg.PowerCapW > 0 {
			c.log.Warn("budget: no power or energy reading; the power cap and energy budget cannot be enforced")
			c.warnedPower = true
		}
	}
	c.lastT, c.lastE = now, r.EnergyJ
	p := dE / dt
	switch {
	case busy:
		c.pBusy = ewma(c.pBusy, p, 0.3)
	case slept && dt >= 0.05:
		c.pIdle = ewma(c.pIdle, p, 0.3)
	}
	c.energyJ += dE
	if k := dayKey(now); k != c.today {
		c.today, c.todayJ = k, 0
	}
	// The daily budget books the work's energy: steps and duty-cycle
	// pauses, not the idle draw while paused for another reason.
	if c.kind == "" || c.kind == KindPower {
		c.todayJ += dE
	}
	c.window = append(c.window, energyPoint{now, c.energyJ})
	w := time.Duration(c.cfg.PowerWindowS * float64(time.Second))
	i := 0
	for i+1 < len(c.window) && now.Sub(c.window[i+1].t) >= w {
		i++
	}
	c.window = c.window[i:]

	// The power account: energy above the effective cap, never in credit,
	// so the window average stays under the cap.
	if math.IsInf(c.effCap, 1) {
		c.account = 0
	} else {
		c.account = max(0, c.account+dE-c.effCap*dt)
	}
	c.gpu.update(now, r.GPUTempC, dt, c.pBusy, c.pIdle)
	c.cpu.update(now, r.CPUTempC, dt, c.pBusy, c.pIdle)
	c.effCap = math.Inf(1)
	if c.cfg.PowerCapW > 0 {
		c.effCap = c.cfg.PowerCapW
	}
	c.effCap = min(c.effCap, c.gpu.budget, c.cpu.budget)
}

// readSupplies refreshes battery state and other-process load.
func (c *Controller) readSupplies(now time.Time) {
	if c.ps != nil {
		if st, err := c.ps.Read(); err == nil {
			c.power = st
		} else {
			c.log.Debug("budget: power supply read failed", "err", err)
		}
	}
	if c.load != nil && c.cfg.PauseWhenUserActive && (c.loadAt.IsZero() || now.Sub(c.loadAt) >= 500*time.Millisecond) {
		if v, err := c.load.OtherLoadPercent(); err == nil {
			c.otherLoad, c.loadAt = v, now
			if v > c.cfg.UserActiveCPUPercent {
				c.lastActiveAt = now
			}
		} else {
			c.log.Debug("budget: load read failed", "err", err)
		}
	}
}

// decide returns the pause kind and reason ("" = run) and how long to sleep
// before looking again.
func (c *Controller) decide(now time.Time) (kind, reason string, d time.Duration) {
	poll := time.Duration(c.cfg.PollS * float64(time.Second))
	if !c.sched.Allowed(now) {
		// Next scans a week by the minute: compute it once per closed span.
		if c.kind != KindSchedule || (!c.schedNext.IsZero() && !now.Before(c.schedNext)) {
			c.schedNext = c.sched.Next(now)
		}
		r := "outside the schedule windows"
		if next := c.schedNext; !next.IsZero() {
			r += ", next opens " + next.Format("Mon 15:04")
		}
		return KindSchedule, r, poll
	}
	if c.power.OnBattery() && !c.cfg.RunOnBattery {
		return KindBattery, "on battery (run_on_battery is off)", poll
	}
	if c.power.HasBattery && c.power.BatteryPercent >= 0 && c.power.BatteryPercent < c.cfg.MinBatteryPercent {
		return KindBattery, fmt.Sprintf("battery at %.0f%%, below min_battery_percent %.0f%%", c.power.BatteryPercent, c.cfg.MinBatteryPercent), poll
	}
	if c.cfg.PauseWhenUserActive && !c.lastActiveAt.IsZero() {
		idle := now.Sub(c.lastActiveAt).Seconds()
		if idle < c.cfg.UserIdleResumeS || c.otherLoad > c.cfg.UserActiveCPUPercent {
			return KindUser, fmt.Sprintf("owner active: other processes used %.0f%% CPU (limit %.0f%%); resumes after %.0f s idle",
				c.otherLoad, c.cfg.UserActiveCPUPercent, c.cfg.UserIdleResumeS), poll
		}
	}
	if c.cfg.DailyEnergyKWh > 0 && c.todayJ >= c.cfg.DailyEnergyKWh*3.6e6 {
		return KindEnergy, fmt.Sprintf("daily energy budget %.2f kWh used; resumes at midnight", c.cfg.DailyEnergyKWh), poll
	}
	for _, t := range []*thermal{&c.gpu, &c.cpu} {
		if t.hot {
			return KindThermal, fmt.Sprintf("%s at %.0f C, above limit %.0f C; resumes below %.0f C", t.name, t.temp, t.limit, t.limit-t.hyst), poll
		}
	}
	if c.account > 0 && !math.IsInf(c.effCap, 1) {
		idle := c.pIdle
		if !finite(idle) {
			idle = 0
		}
		room := c.effCap - idle
		wait := poll
		if room > 0.02*c.effCap {
			wait = min(poll, time.Duration(c.account/room*float64(time.Second))+time.Millisecond)
		}
		r := fmt.Sprintf("duty-cycling to %.0f W", c.effCap)
		if c.cfg.PowerCapW <= 0 || c.effCap < c.cfg.PowerCapW-0.5 {
			r = fmt.Sprintf("duty-cycling to %.0f W to stay under the temperature limit", c.effCap)
		}
		return KindPower, r, wait
	}
	return "", "", 0
}

// transition logs and counts a change of pause state.
func (c *Controller) transition(now time.Time, kind, reason string) {
	if kind == c.kind {
		c.reason = reason
		return
	}
	prevKind, prevReason, since := c.kind, c.reason, c.since
	c.kind, c.reason, c.since = kind, reason, now
	level := slog.LevelInfo
	if kind == KindPower || (kind == "" && prevKind == KindPower) {
		level = slog.LevelDebug
	}
	switch {
	case kind == KindPower:
		c.dutyPauses++
	case kind != "":
		c.pauses++
	}
	if prevKind != "" && c.log.Enabled(context.Background(), level) {
		lvl := level
		if prevKind != KindPower {
			lvl = slog.LevelInfo
		}
		c.log.Log(context.Background(), lvl, "budget: resume", "kind", prevKind, "reason", prevReason, "paused_for", now.Sub(since).Round(time.Millisecond))
	}
	if kind != "" {
		c.log.Log(context.Background(), level, "budget: pause", "kind", kind, "reason", reason,
			"window_power_w", round1(c.windowPower(now)), "gpu_temp_c", c.reading.GPUTempC, "cpu_temp_c", c.reading.CPUTempC,
			"energy_today_kwh", round3(c.todayJ/3.6e6))
	}
}

// windowPower is the average power over the last power_window_s.
func (c *Controller) windowPower(now time.Time) float64 {
	if len(c.window) < 2 {
		return 0
	}
	first, last := c.window[0], c.window[len(c.window)-1]
	dt := last.t.Sub(first.t).Seconds()
	if dt <= 0 {
		return 0
	}
	return (last.e - first.e) / dt
}

// Status returns a snapshot for the worker's status.
func (c *Controller) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.clock.Now()
	s := Status{
		Paused: c.kind != "", Kind: c.kind, Reason: c.reason, Since: c.since,
		PowerCapW:        c.cfg.PowerCapW,
		WindowPowerW:     c.windowPower(now),
		GPUTempC:         zeroNaN(c.reading.GPUTempC),
		CPUTempC:         zeroNaN(c.reading.CPUTempC),
		EnergyTodayKWh:   c.todayJ / 3.6e6,
		EnergyTotalKWh:   c.energyJ / 3.6e6,
		OtherLoadPercent: c.otherLoad,
		OnBattery:        c.power.OnBattery(),
		BatteryPercent:   c.power.BatteryPercent,
		Steps:            c.steps,
		Pauses:           c.pauses,
		DutyPauses:       c.dutyPauses,
	}
	if !math.IsInf(c.effCap, 1) {
		s.EffectiveCapW = c.effCap
	}
	s.CO2TodayG = s.EnergyTodayKWh * c.cfg.GridGCO2PerKWh
	s.CO2TotalG = s.EnergyTotalKWh * c.cfg.GridGCO2PerKWh
	return s
}

// Mark is a point on the controller's energy meter; Usage measures from it.
type Mark struct {
	T       time.Time
	EnergyJ float64
}

// Usage is the energy and estimated CO2 between a Mark and now: per step
// window, per federated round.
type Usage struct {
	Seconds   float64 `json:"seconds"`
	EnergyJ   float64 `json:"energy_j"`
	KWh       float64 `json:"kwh"`
	CO2G      float64 `json:"co2_g"`
	AvgPowerW float64 `json:"avg_power_w"`
}

// Mark returns the current point on the energy meter.
func (c *Controller) Mark() Mark {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Mark{T: c.clock.Now(), EnergyJ: c.energyJ}
}

// Since returns the energy used since m (booked up to the last step or pause).
func (c *Controller) Since(m Mark) Usage {
	c.mu.Lock()
	defer c.mu.Unlock()
	u := Usage{Seconds: c.clock.Now().Sub(m.T).Seconds(), EnergyJ: c.energyJ - m.EnergyJ}
	u.KWh = u.EnergyJ / 3.6e6
	u.CO2G = u.KWh * c.cfg.GridGCO2PerKWh
	if u.Seconds > 0 {
		u.AvgPowerW = u.EnergyJ / u.Seconds
	}
	return u
}

func dayKey(t time.Time) int { return t.Year()*1000 + t.YearDay() }

func ewma(old, v, a float64) float64 {
	if !finite(old) {
		return v
	}
	return old + a*(v-old)
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

func zeroNaN(v float64) float64 {
	if !finite(v) {
		return 0
	}
	return v
}

func round1(v float64) float64 { return math.Round(v*10) / 10 }
func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

package budget

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/opencluster/opencluster/device"
)

// Governor is the method set the training loop accepts (train/loop.go).
type Governor interface {
	Wait(ctx context.Context) error
	StepDone(busy time.Duration)
}

var _ Governor = (*Controller)(nil)

// Monday 6 January 2025, noon.
var t0 = time.Date(2025, 1, 6, 12, 0, 0, 0, time.UTC)

type fnSupply func() device.PowerState

func (f fnSupply) Read() (device.PowerState, error) { return f(), nil }

type fnLoad func() float64

func (f fnLoad) OtherLoadPercent() (float64, error) { return f(), nil }

// harness drives a controller against a simulated card on a virtual clock
// and records when each step started and the energy it used.
type harness struct {
	clock *VirtualClock
	gpu   *SimGPU
	ctrl  *Controller
	start []time.Time
	stepJ []float64
}

func newHarness(t *testing.T, cfg Config, start time.Time, ps PowerSupply, load LoadMeter, log *slog.Logger) *harness {
	t.Helper()
	clock := NewVirtualClock(start)
	gpu := NewSimGPU(300, 25, 50, 40, 200, start)
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	ctrl, err := New(Options{Config: cfg, Clock: clock, Sensors: simSensors{gpu, clock}, PowerSupply: ps, Load: load, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	return &harness{clock: clock, gpu: gpu, ctrl: ctrl}
}

func (h *harness) run(t *testing.T, until time.Time, stepS float64) {
	t.Helper()
	for h.clock.Now().Before(until) {
		if err := h.ctrl.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
		h.gpu.IdleUntil(h.clock.Now())
		if !h.clock.Now().Before(until) {
			return
		}
		h.start = append(h.start, h.clock.Now())
		e := h.gpu.EnergyJ
		d := h.gpu.Run(stepS)
		h.stepJ = append(h.stepJ, h.gpu.EnergyJ-e)
		h.clock.Advance(d)
		h.ctrl.StepDone(d)
	}
}

// stepsIn counts steps that started in [a, b).
func (h *harness) stepsIn(a, b time.Time) int {
	n := 0
	for _, s := range h.start {
		if !s.Before(a) && s.Before(b) {
			n++
		}
	}
	return n
}

// baseConfig has every limit off so one budget can be tested at a time.
func baseConfig() Config {
	return Config{PowerWindowS: 30, HysteresisC: 5, ThermalTimeConstantS: 60, PollS: 1, RunOnBattery: true, UserActiveCPUPercent: 25, UserIdleResumeS: 60}
}

func TestPauseLatency(t *testing.T) {
	ev := t0.Add(90 * time.Second) // the event
	end := t0.Add(200 * time.Second)
	tests := []struct {
		name      string
		cfg       func(*Config)
		ps        func(clock Clock) PowerSupply
		load      func(clock Clock) LoadMeter
		resumeBy  time.Time // steps must start again before this (zero: never)
		quietFrom time.Time
		quietTo   time.Time
	}{
		{
			name: "on battery",
			cfg:  func(c *Config) { c.RunOnBattery = false },
			ps: func(clock Clock) PowerSupply {
				return fnSupply(func() device.PowerState {
					now := clock.Now()
					onBat := !now.Before(ev) && now.Before(ev.Add(60*time.Second))
					return device.PowerState{HasBattery: true, OnAC: !onBat, BatteryPercent: 90}
				})
			},
			quietTo:  ev.Add(60 * time.Second),
			resumeBy: ev.Add(62 * time.Second),
		},
		{
			name: "battery below minimum",
			cfg:  func(c *Config) { c.MinBatteryPercent = 40 },
			ps: func(clock Clock) PowerSupply {
				return fnSupply(func() device.PowerState {
					pct := 80.0
					if now := clock.Now(); !now.Before(ev) && now.Before(ev.Add(30*time.Second)) {
						pct = 30
					}
					return device.PowerState{HasBattery: true, OnAC: true, BatteryPercent: pct}
				})
			},
			quietTo:  ev.Add(30 * time.Second),
			resumeBy: ev.Add(32 * time.Second),
		},
		{
			name: "owner active",
			cfg:  func(c *Config) { c.PauseWhenUserActive = true },
			load: func(clock Clock) LoadMeter {
				return fnLoad(func() float64 {
					if now := clock.Now(); !now.Before(ev) && now.Before(ev.Add(20*time.Second)) {
						return 70
					}
					return 3
				})
			},
			quietTo:  ev.Add(20*time.Second + 59*time.Second), // + user_idle_resume_s, less the load meter's 0.5 s sampling
			resumeBy: ev.Add(20*time.Second + 62*time.Second),
		},
		{
			name: "schedule window closes",
			cfg:  func(c *Config) {},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := baseConfig()
			evAt, quietTo, resumeBy := ev, tc.quietTo, tc.resumeBy
			if tc.name == "schedule window closes" {
				cfg.Schedule = map[string][]string{"mon": {"11:00-12:02", "12:03-13:00"}}
				evAt, quietTo, resumeBy = t0.Add(2*time.Minute), t0.Add(3*time.Minute), t0.Add(3*time.Minute+2*time.Second)
			}
			tc.cfg(&cfg)
			clock := NewVirtualClock(t0)
			var ps PowerSupply
			var load LoadMeter
			if tc.ps != nil {
				ps = tc.ps(clock)
			}
			if tc.load != nil {
				load = tc.load(clock)
			}
			gpu := NewSimGPU(300, 25, 50, 40, 200, t0)
			ctrl, err := New(Options{Config: cfg, Clock: clock, Sensors: simSensors{gpu, clock}, PowerSupply: ps, Load: load, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err != nil {
				t.Fatal(err)
			}
			h := &harness{clock: clock, gpu: gpu, ctrl: ctrl}
			for _, stepS := range []float64{0.3} {
				h.run(t, end, stepS)
			}
			if n := h.stepsIn(t0, evAt); n == 0 {
				t.Fatalf("no steps before the event")
			}
			if n := h.stepsIn(evAt.Add(time.Second), quietTo); n != 0 {
				t.Errorf("%d steps started between 1 s after the event and %s", n, quietTo.Sub(t0))
			}
			if !resumeBy.IsZero() && h.stepsIn(quietTo, resumeBy) == 0 {
				t.Errorf("did not resume by %s", resumeBy.Sub(t0))
			}
		})
	}
}

func TestScheduleAcrossMidnight(t *testing.T) {
	cfg := baseConfig()
	cfg.Schedule = map[string][]string{"daily": {"22:00-07:00"}}
	start := time.Date(2025, 1, 6, 21, 58, 0, 0, time.UTC)
	h := newHarness(t, cfg, start, nil, nil, nil)
	h.run(t, start.Add(10*time.Hour), 0.5)
	open := time.Date(2025, 1, 6, 22, 0, 0, 0, time.UTC)
	closeAt := time.Date(2025, 1, 7, 7, 0, 0, 0, time.UTC)
	if n := h.stepsIn(start, open); n != 0 {
		t.Errorf("%d steps before the window opened", n)
	}
	if n := h.stepsIn(open, open.Add(2*time.Second)); n == 0 {
		t.Errorf("no step within 2 s of the window opening")
	}
	if n := h.stepsIn(time.Date(2025, 1, 7, 0, 0, 0, 0, time.UTC), time.Date(2025, 1, 7, 0, 1, 0, 0, time.UTC)); n == 0 {
		t.Errorf("the window stopped at midnight; it runs to 07:00")
	}
	if n := h.stepsIn(closeAt.Add(time.Second), start.Add(10*time.Hour)); n != 0 {
		t.Errorf("%d steps after the window closed", n)
	}
}

func TestDailyEnergyBudget(t *testing.T) {
	cfg := baseConfig()
	cfg.DailyEnergyKWh = 0.01 // 36 kJ: two minutes at 300 W
	start := time.Date(2025, 1, 6, 23, 50, 0, 0, time.UTC)
	midnight := time.Date(2025, 1, 7, 0, 0, 0, 0, time.UTC)
	var logBuf bytes.Buffer
	h := newHarness(t, cfg, start, nil, nil, slog.New(slog.NewJSONHandler(&logBuf, nil)))
	h.run(t, midnight.Add(-time.Second), 0.5)
	stepJ := 300 * 0.5
	if !strings.Contains(logBuf.String(), `"kind":"daily_energy"`) {
		t.Errorf("no pause for the daily energy budget logged:\n%s", logBuf.String())
	}
	var worked float64
	for i, s := range h.start {
		if s.Before(midnight) {
			worked += h.stepJ[i]
		}
	}
	if worked > 36e3+stepJ {
		t.Errorf("steps used %.0f J before midnight, want <= %.0f", worked, 36e3+stepJ)
	}
	if worked < 36e3-2*stepJ {
		t.Errorf("steps used only %.0f J of the 36000 J budget", worked)
	}
	h.run(t, midnight.Add(time.Minute), 0.5)
	if h.stepsIn(midnight, midnight.Add(2*time.Second)) == 0 {
		t.Errorf("did not resume at midnight")
	}
	if e := h.ctrl.Status().EnergyTodayKWh; e > 0.01 {
		t.Errorf("energy today %.4f kWh after midnight, want reset", e)
	}
}

func TestThermalPauseAndResume(t *testing.T) {
	// A sensor stuck hot: the controller must pause, and resume only below
	// limit - hysteresis.
	cfg := baseConfig()
	cfg.GPUTempLimitC = 70
	clock := NewVirtualClock(t0)
	temp := 80.0
	sens := fnSensors(func() Reading {
		return Reading{PowerW: 100, EnergyJ: math.NaN(), GPUTempC: temp, CPUTempC: math.NaN()}
	})
	var logBuf bytes.Buffer
	ctrl, err := New(Options{Config: cfg, Clock: clock, Sensors: sens, Logger: slog.New(slog.NewJSONHandler(&logBuf, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	polls := 0
	sens2 := fnSensors(func() Reading {
		polls++
		switch {
		case polls < 20:
			temp = 80
		case polls < 40:
			temp = 67 // below the limit, not below limit - hysteresis
		default:
			temp = 60
		}
		return Reading{PowerW: 100, EnergyJ: math.NaN(), GPUTempC: temp, CPUTempC: math.NaN()}
	})
	ctrl.sens = sens2
	if err := ctrl.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if polls < 40 {
		t.Errorf("resumed after %d polls at %.0f C, want only below 65 C", polls, temp)
	}
	st := ctrl.Status()
	if st.Pauses != 1 || st.Paused {
		t.Errorf("status %+v: want one finished pause", st)
	}
	logs := logBuf.String()
	for _, want := range []string{`"msg":"budget: pause"`, `"kind":"temperature"`, `above limit 70 C`, `"msg":"budget: resume"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %s:\n%s", want, logs)
		}
	}
}

type fnSensors func() Reading

func (f fnSensors) Read() (Reading, error) { return f(), nil }

func TestWaitReturnsWhenCancelled(t *testing.T) {
	cfg := baseConfig()
	cfg.RunOnBattery = false
	clock := NewVirtualClock(t0)
	ctx, cancel := context.WithCancel(context.Background())
	reads := 0
	ps := fnSupply(func() device.PowerState {
		if reads++; reads == 50 {
			cancel()
		}
		return device.PowerState{HasBattery: true, OnAC: false, BatteryPercent: 90}
	})
	ctrl, err := New(Options{Config: cfg, Clock: clock, Sensors: fnSensors(func() Reading { return Reading{PowerW: 50, EnergyJ: math.NaN()} }), PowerSupply: ps, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := ctrl.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait = %v, want context.Canceled", err)
	}
	st := ctrl.Status()
	if !st.Paused || st.Kind != KindBattery || !st.OnBattery {
		t.Errorf("status %+v, want paused on battery", st)
	}
}

func TestWaitRealClockCancel(t *testing.T) {
	cfg := baseConfig()
	cfg.Schedule = map[string][]string{"daily": {"00:00-00:01"}}
	cfg.PollS = 30
	ctrl, err := New(Options{Config: cfg, Clock: RealClock{}, Sensors: fnSensors(func() Reading { return Reading{PowerW: math.NaN(), EnergyJ: math.NaN()} }), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(20 * time.Millisecond); cancel() }()
	if !ctrl.sched.Allowed(time.Now()) {
		if err := ctrl.Wait(ctx); !errors.Is(err, context.Canceled) {
			t.Fatalf("Wait = %v, want context.Canceled", err)
		}
	}
}

func TestPowerCapAndUsage(t *testing.T) {
	cfg := baseConfig()
	cfg.PowerCapW = 120
	cfg.GridGCO2PerKWh = 500
	h := newHarness(t, cfg, t0, nil, nil, nil)
	m := h.ctrl.Mark()
	h.run(t, t0.Add(10*time.Minute), 0.2)
	u := h.ctrl.Since(m)
	if math.Abs(u.AvgPowerW-120) > 3 {
		t.Errorf("average power %.1f W, want about the 120 W cap", u.AvgPowerW)
	}
	if math.Abs(u.CO2G-u.KWh*500) > 1e-9 || u.KWh <= 0 {
		t.Errorf("usage %+v: CO2 must be kWh x 500", u)
	}
	st := h.ctrl.Status()
	if st.WindowPowerW > 126 || st.WindowPowerW < 100 {
		t.Errorf("window power %.1f W, want near 120", st.WindowPowerW)
	}
	if st.DutyPauses == 0 || st.Pauses != 0 {
		t.Errorf("status %+v: want duty-cycle pauses only", st)
	}
	if st.EffectiveCapW != 120 {
		t.Errorf("effective cap %g, want 120", st.EffectiveCapW)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	cfg := baseConfig()
	cfg.Schedule = map[string][]string{"mon": {"25:00-07:00"}}
	_, err := New(Options{Config: cfg, Clock: RealClock{}, Sensors: fnSensors(func() Reading { return Reading{} })})
	if err == nil || !strings.Contains(err.Error(), "budget.schedule.mon") {
		t.Fatalf("err = %v, want one naming budget.schedule.mon", err)
	}
	if _, err := New(Options{Config: baseConfig()}); err == nil {
		t.Fatal("want an error without a clock and sensors")
	}
}

// Package budget is the controller the training loop consults between
// steps so a lent machine never runs too hot, too loud, too costly or at the
// wrong time: a GPU (or CPU) power cap met by duty-cycling the work, GPU and
// CPU temperature limits with hysteresis, a daily energy budget with CO2
// accounting, weekday schedule windows, and pauses on battery or while the
// owner is using the machine (BOINC's computing preferences, plus the GPU
// temperature cap and power throttling BOINC users asked for).
//
// The controller never changes the card's settings; it only decides how long
// to wait between steps. Clocks, sensors, power supplies and load meters are
// interfaces so the same code runs on a virtual clock against the simulated
// GPU in sim.go.
package budget

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// Config is the budget: section of configs/worker.yaml. Zero values mean
// "no limit" for the caps; Default returns the gaming-PC defaults.
type Config struct {
	// PowerCapW caps the compute device's power averaged over
	// PowerWindowS seconds; 0 = no cap.
	PowerCapW    float64 `mapstructure:"power_cap_w" json:"power_cap_w"`
	PowerWindowS float64 `mapstructure:"power_window_s" json:"power_window_s"`
	// GPUTempLimitC and CPUTempLimitC: slow down as the limit nears, pause
	// above it, resume below limit - HysteresisC. 0 = no limit.
	GPUTempLimitC float64 `mapstructure:"gpu_temp_limit_c" json:"gpu_temp_limit_c"`
	CPUTempLimitC float64 `mapstructure:"cpu_temp_limit_c" json:"cpu_temp_limit_c"`
	HysteresisC   float64 `mapstructure:"hysteresis_c" json:"hysteresis_c"`
	// ThermalTimeConstantS is how fast the card heats (first-order time
	// constant); it scales the look-ahead of the temperature regulator.
	ThermalTimeConstantS float64 `mapstructure:"thermal_time_constant_s" json:"thermal_time_constant_s"`
	// DailyEnergyKWh caps the energy used per local calendar day; 0 = none.
	DailyEnergyKWh float64 `mapstructure:"daily_energy_kwh" json:"daily_energy_kwh"`
	// GridGCO2PerKWh is the grid's carbon intensity for the CO2 estimate.
	GridGCO2PerKWh float64 `mapstructure:"grid_gco2_per_kwh" json:"grid_gco2_per_kwh"`
	// Schedule lists allowed windows per weekday ("mon".."sun", or "daily"
	// for days without their own entry), e.g. ["22:00-07:00"]. A window that
	// crosses midnight belongs to the day it starts. Empty = any time.
	Schedule map[string][]string `mapstructure:"schedule" json:"schedule,omitempty"`
	// RunOnBattery allows work while on battery; MinBatteryPercent pauses
	// below that charge even on AC.
	RunOnBattery      bool    `mapstructure:"run_on_battery" json:"run_on_battery"`
	MinBatteryPercent float64 `mapstructure:"min_battery_percent" json:"min_battery_percent"`
	// PauseWhenUserActive pauses while other processes use more than
	// UserActiveCPUPercent of the machine, and resumes after they stayed
	// below it for UserIdleResumeS seconds.
	PauseWhenUserActive  bool    `mapstructure:"pause_when_user_active" json:"pause_when_user_active"`
	UserActiveCPUPercent float64 `mapstructure:"user_active_cpu_percent" json:"user_active_cpu_percent"`
	UserIdleResumeS      float64 `mapstructure:"user_idle_resume_s" json:"user_idle_resume_s"`
	// PollS is how often a paused controller re-checks its inputs.
	PollS float64 `mapstructure:"poll_s" json:"poll_s"`
}

// Default returns the gaming-PC defaults documented in configs/worker.yaml.
func Default() Config {
	return Config{
		PowerCapW:            200,
		PowerWindowS:         30,
		GPUTempLimitC:        75,
		CPUTempLimitC:        85,
		HysteresisC:          5,
		ThermalTimeConstantS: 60,
		DailyEnergyKWh:       3,
		GridGCO2PerKWh:       400,
		RunOnBattery:         false,
		MinBatteryPercent:    50,
		PauseWhenUserActive:  true,
		UserActiveCPUPercent: 25,
		UserIdleResumeS:      180,
		PollS:                1,
	}
}

// Weekdays are the schedule keys in time.Weekday order.
var Weekdays = []string{"sun", "mon", "tue", "wed", "thu", "fri", "sat"}

// Validate names the first key whose value is unusable.
func (c Config) Validate() error {
	bad := func(v float64) bool { return math.IsNaN(v) || math.IsInf(v, 0) }
	nonneg := []struct {
		key string
		v   float64
	}{
		{"power_cap_w", c.PowerCapW}, {"gpu_temp_limit_c", c.GPUTempLimitC},
		{"cpu_temp_limit_c", c.CPUTempLimitC}, {"hysteresis_c", c.HysteresisC},
		{"daily_energy_kwh", c.DailyEnergyKWh}, {"grid_gco2_per_kwh", c.GridGCO2PerKWh},
		{"user_idle_resume_s", c.UserIdleResumeS},
	}
	for _, f := range nonneg {
		if bad(f.v) || f.v < 0 {
			return fmt.Errorf("budget.%s: must be a finite number >= 0, got %g", f.key, f.v)
		}
	}
	for _, f := range []struct {
		key string
		v   float64
	}{{"power_window_s", c.PowerWindowS}, {"poll_s", c.PollS}, {"thermal_time_constant_s", c.ThermalTimeConstantS}} {
		if bad(f.v) || f.v <= 0 {
			return fmt.Errorf("budget.%s: must be > 0, got %g", f.key, f.v)
		}
	}
	if c.PollS > 60 {
		return fmt.Errorf("budget.poll_s: %g s is too slow to honour pauses; use at most 60", c.PollS)
	}
	for _, f := range []struct {
		key string
		v   float64
	}{{"gpu_temp_limit_c", c.GPUTempLimitC}, {"cpu_temp_limit_c", c.CPUTempLimitC}} {
		if f.v != 0 && (f.v < 30 || f.v > 110) {
			return fmt.Errorf("budget.%s: %g C is outside 30-110 C (0 disables)", f.key, f.v)
		}
		if f.v != 0 && c.HysteresisC >= f.v-20 {
			return fmt.Errorf("budget.hysteresis_c: %g C is too large for budget.%s %g C", c.HysteresisC, f.key, f.v)
		}
	}
	if bad(c.MinBatteryPercent) || c.MinBatteryPercent < 0 || c.MinBatteryPercent > 100 {
		return fmt.Errorf("budget.min_battery_percent: must be 0-100, got %g", c.MinBatteryPercent)
	}
	if bad(c.UserActiveCPUPercent) || c.UserActiveCPUPercent < 0 || c.UserActiveCPUPercent > 100 {
		return fmt.Errorf("budget.user_active_cpu_percent: must be 0-100, got %g", c.UserActiveCPUPercent)
	}
	if _, err := ParseSchedule(c.Schedule); err != nil {
		return err
	}
	return nil
}

// Window is one allowed span of a day in minutes since midnight; End may
// exceed 24*60 when the window crosses midnight into the next day.
type Window struct{ Start, End int }

// Schedule holds the allowed windows for each weekday; nil means always.
type Schedule [7][]Window

// ParseSchedule checks and parses the schedule map. Keys are weekday
// abbreviations or "daily"; values are "HH:MM-HH:MM" (end 24:00 allowed).
func ParseSchedule(m map[string][]string) (*Schedule, error) {
	if len(m) == 0 {
		return nil, nil
	}
	var s Schedule
	set := [7]bool{}
	var daily []Window
	hasDaily := false
	for key, list := range m {
		k := strings.ToLower(key)
		day := -1
		for i, d := range Weekdays {
			if d == k {
				day = i
			}
		}
		if day < 0 && k != "daily" {
			return nil, fmt.Errorf("budget.schedule.%s: unknown day; use mon, tue, wed, thu, fri, sat, sun or daily", key)
		}
		var ws []Window
		for i, w := range list {
			win, err := ParseWindow(w)
			if err != nil {
				return nil, fmt.Errorf("budget.schedule.%s[%d]: %w", key, i, err)
			}
			ws = append(ws, win)
		}
		if day < 0 {
			daily, hasDaily = ws, true
			continue
		}
		s[day], set[day] = ws, true
	}
	for d := range s {
		if !set[d] && hasDaily {
			s[d] = daily
		}
	}
	return &s, nil
}

// ParseWindow parses "HH:MM-HH:MM"; an end before the start crosses midnight.
func ParseWindow(w string) (Window, error) {
	a, b, ok := strings.Cut(strings.TrimSpace(w), "-")
	if !ok {
		return Window{}, fmt.Errorf("window %q: want HH:MM-HH:MM", w)
	}
	start, err := parseClock(a, false)
	if err != nil {
		return Window{}, fmt.Errorf("window %q: start: %w", w, err)
	}
	end, err := parseClock(b, true)
	if err != nil {
		return Window{}, fmt.Errorf("window %q: end: %w", w, err)
	}
	if start == end {
		return Window{}, fmt.Errorf("window %q: start equals end; use 00:00-24:00 for all day", w)
	}
	if end < start {
		end += 24 * 60
	}
	return Window{start, end}, nil
}

func parseClock(s string, allow24 bool) (int, error) {
	s = strings.TrimSpace(s)
	h, m, ok := strings.Cut(s, ":")
	if !ok || len(h) < 1 || len(h) > 2 || len(m) != 2 {
		return 0, fmt.Errorf("%q is not HH:MM", s)
	}
	var hh, mm int
	if _, err := fmt.Sscanf(h+" "+m, "%d %d", &hh, &mm); err != nil {
		return 0, fmt.Errorf("%q is not HH:MM", s)
	}
	if hh == 24 && mm == 0 && allow24 {
		return 24 * 60, nil
	}
	if hh < 0 || hh > 23 || mm < 0 || mm > 59 {
		return 0, fmt.Errorf("%q is not a time of day (00:00-23:59)", s)
	}
	return hh*60 + mm, nil
}

// Allowed reports whether t falls in a window.
func (s *Schedule) Allowed(t time.Time) bool {
	if s == nil {
		return true
	}
	midnight := time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, t.Location())
	minute := t.Sub(midnight).Minutes()
	wd := int(t.Weekday())
	for _, w := range s[wd] {
		if minute >= float64(w.Start) && minute < float64(w.End) {
			return true
		}
	}
	// Yesterday's windows that run past midnight.
	for _, w := range s[(wd+6)%7] {
		if w.End > 24*60 && minute+24*60 < float64(w.End) {
			return true
		}
	}
	return false
}

// Next returns when Allowed next changes after t, to the minute; the zero
// time when it never does (always or never allowed).
func (s *Schedule) Next(t time.Time) time.Time {
	if s == nil {
		return time.Time{}
	}
	now := s.Allowed(t)
	next := t.Truncate(time.Minute).Add(time.Minute)
	for i := 0; i < 8*24*60; i++ {
		if s.Allowed(next) != now {
			return next
		}
		next = next.Add(time.Minute)
	}
	return time.Time{}
}

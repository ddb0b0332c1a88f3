package budget

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestDefaultIsValid(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestValidateNamesBadKey(t *testing.T) {
	tests := []struct {
		key string
		mod func(*Config)
	}{
		{"power_cap_w", func(c *Config) { c.PowerCapW = -1 }},
		{"power_cap_w", func(c *Config) { c.PowerCapW = math.NaN() }},
		{"power_window_s", func(c *Config) { c.PowerWindowS = 0 }},
		{"gpu_temp_limit_c", func(c *Config) { c.GPUTempLimitC = 150 }},
		{"cpu_temp_limit_c", func(c *Config) { c.CPUTempLimitC = math.Inf(1) }},
		{"hysteresis_c", func(c *Config) { c.HysteresisC = 60 }},
		{"daily_energy_kwh", func(c *Config) { c.DailyEnergyKWh = -2 }},
		{"min_battery_percent", func(c *Config) { c.MinBatteryPercent = 101 }},
		{"user_active_cpu_percent", func(c *Config) { c.UserActiveCPUPercent = -5 }},
		{"poll_s", func(c *Config) { c.PollS = 600 }},
		{"schedule.mon", func(c *Config) { c.Schedule = map[string][]string{"mon": {"25:00-07:00"}} }},
		{"schedule.mon", func(c *Config) { c.Schedule = map[string][]string{"mon": {"22:00"}} }},
		{"schedule.mon", func(c *Config) { c.Schedule = map[string][]string{"mon": {"22:00-22:00"}} }},
		{"schedule.mon", func(c *Config) { c.Schedule = map[string][]string{"mon": {"22:60-23:00"}} }},
		{"schedule.funday", func(c *Config) { c.Schedule = map[string][]string{"funday": {"22:00-23:00"}} }},
	}
	for _, tc := range tests {
		c := Default()
		tc.mod(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), "budget."+tc.key) {
			t.Errorf("%s: err = %v, want one naming budget.%s", tc.key, err, tc.key)
		}
	}
}

func TestParseWindow(t *testing.T) {
	tests := []struct {
		in   string
		want Window
		ok   bool
	}{
		{"22:00-07:00", Window{22 * 60, 31 * 60}, true},
		{"00:00-24:00", Window{0, 24 * 60}, true},
		{"9:30-17:45", Window{9*60 + 30, 17*60 + 45}, true},
		{"25:00-07:00", Window{}, false},
		{"24:00-07:00", Window{}, false},
		{"07:00-07:00", Window{}, false},
		{"7-9", Window{}, false},
		{"", Window{}, false},
		{"aa:bb-cc:dd", Window{}, false},
	}
	for _, tc := range tests {
		got, err := ParseWindow(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseWindow(%q) = %v, %v; want %v ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestScheduleAllowed(t *testing.T) {
	s, err := ParseSchedule(map[string][]string{"daily": {"22:00-07:00"}, "sat": {"00:00-24:00"}, "sun": {}})
	if err != nil {
		t.Fatal(err)
	}
	at := func(day, h, m int) time.Time { return time.Date(2025, 1, day, h, m, 0, 0, time.UTC) } // 6 Jan 2025 is a Monday
	tests := []struct {
		t    time.Time
		want bool
	}{
		{at(6, 21, 59), false},
		{at(6, 22, 0), true},
		{at(7, 6, 59), true}, // Monday's window runs into Tuesday
		{at(7, 7, 0), false},
		{at(11, 12, 0), true},  // Saturday all day
		{at(12, 3, 0), false},  // Sunday: its own empty entry; Saturday's window ends at 24:00
		{at(12, 23, 0), false}, // Sunday evening
		{at(13, 2, 0), false},  // Monday early: Sunday had no window
	}
	for _, tc := range tests {
		if got := s.Allowed(tc.t); got != tc.want {
			t.Errorf("Allowed(%s) = %v, want %v", tc.t.Format("Mon 15:04"), got, tc.want)
		}
	}
	if next := s.Next(at(6, 12, 0)); !next.Equal(at(6, 22, 0)) {
		t.Errorf("Next = %s, want Mon 22:00", next)
	}
	var always *Schedule
	if !always.Allowed(at(6, 3, 0)) || !always.Next(at(6, 3, 0)).IsZero() {
		t.Error("a nil schedule must always allow and never change")
	}
}

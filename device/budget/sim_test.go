package budget

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// checkTargets asserts the targets for one simulated run.
func checkTargets(t *testing.T, sc SimConfig, r SimResult) {
	t.Helper()
	name := fmt.Sprintf("tdp %.0f cap %.0f limit %.1f ambient %.1f tau %.0f step %.2f", sc.TDPW, sc.PowerCapW, sc.TempLimitC, sc.AmbientC, sc.TauS, sc.StepS)
	if sc.PowerCapW > 0 && r.MaxWindowAvgPowerW > 1.05*sc.PowerCapW {
		t.Errorf("%s: window-average power %.1f W > 1.05 x cap", name, r.MaxWindowAvgPowerW)
	}
	if sc.TempLimitC > 0 && r.MaxTempC > sc.TempLimitC+1 {
		t.Errorf("%s: max temperature %.2f C > limit + 1", name, r.MaxTempC)
	}
	if r.ThroughputFraction < 0.9 {
		t.Errorf("%s: throughput %.3f of the best constant duty cycle (%.3f), want >= 0.9", name, r.ThroughputFraction, r.BestConstantDuty)
	}
}

func TestSimulateTargets(t *testing.T) {
	cases := []SimConfig{
		{TDPW: 300, PowerCapW: 150, TempLimitC: 75, AmbientC: 25}, // power-limited
		{TDPW: 450, PowerCapW: 100, TempLimitC: 80, AmbientC: 25}, // deep duty cycle
		{TDPW: 300, TempLimitC: 65, AmbientC: 25},                 // temperature-limited, no cap
		{TDPW: 450, PowerCapW: 400, TempLimitC: 70, AmbientC: 35}, // both near
		{TDPW: 100, PowerCapW: 90, TempLimitC: 60, AmbientC: 15},  // small card
		{TDPW: 250, TempLimitC: 75, AmbientC: 40},                 // hot room
		{TDPW: 350, TempLimitC: 95, AmbientC: 40, SlowdownC: 85},  // card slows itself first
		{TDPW: 200, PowerCapW: 120, AmbientC: 20, StepS: 0.5},     // long steps
		{TDPW: 400, TempLimitC: 70, AmbientC: 30, TauS: 90},       // slow cooler
	}
	for _, sc := range cases {
		sc.Duration = 20 * time.Minute
		r, err := Simulate(context.Background(), sc, nil)
		if err != nil {
			t.Fatal(err)
		}
		sc.defaults()
		checkTargets(t, sc, r)
	}
}

// TestSimulateRandomSweep checks the targets on settings drawn at random
// with a fixed seed, none of which were used to tune the controller.
func TestSimulateRandomSweep(t *testing.T) {
	n := 60
	if testing.Short() {
		n = 10
	}
	rng := rand.New(rand.NewPCG(2024, 515))
	for range n {
		sc := SimConfig{TDPW: 100 + 350*rng.Float64(), AmbientC: 15 + 25*rng.Float64(), Duration: 15 * time.Minute}
		if rng.IntN(4) > 0 {
			sc.PowerCapW = sc.TDPW * (0.25 + 0.8*rng.Float64())
		}
		if rng.IntN(4) > 0 {
			lo := sc.AmbientC + 20
			sc.TempLimitC = min(95, lo+(95-lo)*rng.Float64())
		}
		sc.TauS = 25 + 65*rng.Float64()
		sc.StepS = 0.05 + 0.45*rng.Float64()
		r, err := Simulate(context.Background(), sc, nil)
		if err != nil {
			t.Fatalf("%+v: %v", sc, err)
		}
		sc.defaults()
		checkTargets(t, sc, r)
	}
}

func TestSimulateRejectsBadSettings(t *testing.T) {
	for _, sc := range []SimConfig{
		{TDPW: 0, AmbientC: 25, Duration: time.Minute},
		{TDPW: math.NaN(), AmbientC: 25, Duration: time.Minute},
		{TDPW: 300, PowerCapW: 20, AmbientC: 25, Duration: time.Minute},  // below idle
		{TDPW: 300, TempLimitC: 30, AmbientC: 28, Duration: time.Minute}, // idle is hotter
		{TDPW: 300, AmbientC: 25, Duration: 0},
		{TDPW: 300, AmbientC: math.Inf(1), Duration: time.Minute},
	} {
		if _, err := Simulate(context.Background(), sc, nil); err == nil {
			t.Errorf("%+v: want an error", sc)
		}
	}
}

func TestBestConstantRate(t *testing.T) {
	g := NewSimGPU(300, 25, 60, 40, 200, time.Time{}) // R = 0.2 C/W, idle 30 W
	tests := []struct {
		capW, limitC, want float64
	}{
		{0, 0, 1},
		{165, 0, 0.5},          // (165-30)/270
		{0, 25 + 0.2*165, 0.5}, // the same power by temperature
		{300, 25 + 0.2*84, 0.2},
		{100, 25 + 0.2*84, 0.2}, // the tighter limit wins
	}
	for _, tc := range tests {
		if got := g.BestConstantRate(tc.capW, tc.limitC); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("cap %g limit %g: got %g, want %g", tc.capW, tc.limitC, got, tc.want)
		}
	}
	// The card's own slowdown caps flat-out power below TDP.
	hot := NewSimGPU(300, 40, 60, 40, 80, time.Time{})
	if p := hot.SteadyMaxPowerW(); !(p < 300 && p > 30) {
		t.Errorf("steady max power with slowdown = %g, want between idle and TDP", p)
	}
}

func TestSimGPUFollowsRCModel(t *testing.T) {
	g := NewSimGPU(200, 20, 50, 30, 200, time.Time{})
	g.Run(30) // one time constant at full power: 63% of the way to 70 C
	want := 20 + 50*(1-math.Exp(-1))
	if math.Abs(g.TempC-want) > 0.2 {
		t.Errorf("after one tau: %.2f C, want %.2f", g.TempC, want)
	}
	if math.Abs(g.EnergyJ-200*30) > 1 {
		t.Errorf("energy %.1f J, want 6000", g.EnergyJ)
	}
}

func TestMaxWindowAvg(t *testing.T) {
	t0 := time.Unix(0, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	// 100 W for 10 s, then 300 W for 10 s, then idle 0 W for 10 s.
	tr := []energyPoint{{at(0), 0}, {at(10), 1000}, {at(20), 4000}, {at(30), 4000}}
	if got := maxWindowAvg(tr, 10, 0); math.Abs(got-300) > 1e-9 {
		t.Errorf("10 s window: %g, want 300", got)
	}
	if got := maxWindowAvg(tr, 20, 0); math.Abs(got-200) > 1e-9 {
		t.Errorf("20 s window: %g, want 200", got)
	}
	if got := maxWindowAvg(tr, 10, 15); math.Abs(got-150) > 1e-9 {
		t.Errorf("10 s window after 15 s warm-up: %g, want 150", got)
	}
}

func BenchmarkSimulateHour(b *testing.B) {
	for b.Loop() {
		if _, err := Simulate(context.Background(), SimConfig{TDPW: 350, PowerCapW: 175, TempLimitC: 70, AmbientC: 30, Duration: time.Hour}, nil); err != nil {
			b.Fatal(err)
		}
	}
}

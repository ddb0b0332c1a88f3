package main

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/opencluster/opencluster/device"
	"github.com/opencluster/opencluster/device/budget"
	"github.com/opencluster/opencluster/netclient"
	"github.com/spf13/cobra"
)

// workerConfig is configs/worker.yaml as the worker reads it (strictly:
// unknown keys are errors). Sections owned by other packages join here.
type workerConfig struct {
	// JoinToken is the coordinator operator's join token (also
	// OPENCLUSTER_JOIN_TOKEN or --join-token), for coordinators that admit
	// holders of one only.
	JoinToken string           `mapstructure:"join_token" json:"-"`
	Device    device.Config    `mapstructure:"device" json:"device"`
	Budget    budget.Config    `mapstructure:"budget" json:"budget"`
	Limits    netclient.Limits `mapstructure:"limits" json:"limits"`
}

func defaultWorkerConfig() workerConfig {
	return workerConfig{Device: device.DefaultConfig(), Budget: budget.Default(), Limits: netclient.DefaultLimits()}
}

// Validate names the first bad key of any section.
func (w workerConfig) Validate() error {
	if err := w.Device.Validate(); err != nil {
		return err
	}
	if err := w.Limits.Validate(); err != nil {
		return err
	}
	return w.Budget.Validate()
}

func init() { rootCmd.AddCommand(newBudgetCmd()) }

func newBudgetCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "budget",
		Short: "Check the worker's power, temperature and schedule budget, or simulate it",
	}
	sim := &cobra.Command{
		Use:   "simulate",
		Short: "Run the budget controller against a simulated GPU on a virtual clock",
		Long: `Runs the real budget controller against a simulated GPU whose power follows
the duty cycle and whose temperature follows a thermal RC model, on a virtual
clock (an hour takes well under a second). With --json the last line holds
max_window_avg_power_w, max_temp_c, throughput_fraction and pauses.`,
		Args: cobra.NoArgs,
		RunE: runBudgetSimulate,
	}
	f := sim.Flags()
	f.Float64("tdp", 300, "card's full-load power, W")
	f.Float64("power-cap", 150, "power cap averaged over --window, W (0 = none)")
	f.Float64("temp-limit", 75, "GPU temperature limit, C (0 = none)")
	f.Float64("ambient", 25, "room temperature, C")
	f.Duration("duration", 30*time.Minute, "simulated time")
	f.Float64("rise", 55, "card's temperature rise above ambient at full load, C")
	f.Float64("tau", 40, "card's thermal time constant, s")
	f.Float64("slowdown", 90, "card's own slowdown threshold, C")
	f.Float64("step", 0.2, "one training step at full speed, s")
	f.Float64("window", 30, "power averaging window, s")
	f.Float64("hysteresis", 5, "resume below temp-limit minus this, C")
	f.Bool("json", false, "print the result as one JSON line")

	check := &cobra.Command{
		Use:   "check",
		Short: "Validate a worker config (default: the embedded worker preset) and print the budget it sets",
		Args:  cobra.NoArgs,
		RunE:  runBudgetCheck,
	}
	check.Flags().String("config", "worker", "worker config: a YAML file or the embedded preset name")
	cmd.AddCommand(sim, check)
	return cmd
}

func runBudgetSimulate(cmd *cobra.Command, _ []string) error {
	f := cmd.Flags()
	get := func(name string) float64 { v, _ := f.GetFloat64(name); return v }
	dur, _ := f.GetDuration("duration")
	sc := budget.SimConfig{
		TDPW: get("tdp"), PowerCapW: get("power-cap"), TempLimitC: get("temp-limit"), AmbientC: get("ambient"),
		RiseC: get("rise"), TauS: get("tau"), SlowdownC: get("slowdown"), StepS: get("step"),
		WindowS: get("window"), HysteresisC: get("hysteresis"), Duration: dur,
	}
	res, err := budget.Simulate(cmd.Context(), sc, nil)
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	if asJSON, _ := f.GetBool("json"); asJSON {
		b, err := json.Marshal(res)
		if err != nil {
			return err
		}
		fmt.Fprintln(out, string(b))
		return nil
	}
	fmt.Fprintf(out, "simulated %s of a %.0f W card at %.0f C ambient, cap %s, limit %s\n",
		dur, sc.TDPW, sc.AmbientC, orNone(sc.PowerCapW, "W"), orNone(sc.TempLimitC, "C"))
	fmt.Fprintf(out, "  max %gs-window average power  %.1f W\n", sc.WindowS, res.MaxWindowAvgPowerW)
	fmt.Fprintf(out, "  average power                  %.1f W\n", res.AvgPowerW)
	fmt.Fprintf(out, "  max temperature                %.1f C\n", res.MaxTempC)
	fmt.Fprintf(out, "  work done                      %.1f%% of flat-out (best constant duty cycle within limits: %.1f%%)\n", 100*res.WorkFraction, 100*res.BestConstantDuty)
	fmt.Fprintf(out, "  throughput fraction            %.3f\n", res.ThroughputFraction)
	fmt.Fprintf(out, "  pauses                         %d (plus %d duty-cycle pauses)\n", res.Pauses, res.DutyPauses)
	fmt.Fprintf(out, "  energy                         %.3f kWh\n", res.EnergyKWh)
	return nil
}

func orNone(v float64, unit string) string {
	if v <= 0 {
		return "none"
	}
	return fmt.Sprintf("%g %s", v, unit)
}

func runBudgetCheck(cmd *cobra.Command, _ []string) error {
	src, _ := cmd.Flags().GetString("config")
	cfg := defaultWorkerConfig()
	if err := loadConfig(src, cmd.Flags(), nil, &cfg); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("config %s: %w", src, err)
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	fmt.Fprintln(cmd.OutOrStdout(), string(b))
	return nil
}

package main

// The budget governor: the worker config's budget section turned into the
// controller the training loop obeys (`worker`, and `pretrain`/`train` with
// --budget), reading the compute device's real sensors.

import (
	"fmt"
	"log/slog"
	"strconv"
	"strings"

	"github.com/opencluster/opencluster/device"
	"github.com/opencluster/opencluster/device/budget"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// governorClock is the controller's clock; tests may replace it.
var governorClock budget.Clock = budget.RealClock{}

// budgetGovernor is the controller plus where its readings come from. It
// implements train.Governor through the embedded controller.
type budgetGovernor struct {
	*budget.Controller
	// Source says where power and temperature are read, for the log and the
	// summary line; Estimated is true when the energy is not measured.
	Source    string
	Estimated bool
	close     func()
}

// Close releases the sensors (NVML). Safe on nil.
func (g *budgetGovernor) Close() {
	if g != nil && g.close != nil {
		g.close()
		g.close = nil
	}
}

// Summary is one line on the budget's state and the energy used so far.
func (g *budgetGovernor) Summary() string {
	st := g.Status()
	est := ""
	if g.Estimated {
		est = " (estimated)"
	}
	s := fmt.Sprintf("budget: %.4f kWh%s, %.1f g CO2, %d pauses, %d duty-cycle pauses", st.EnergyTotalKWh, est, st.CO2TotalG, st.Pauses, st.DutyPauses)
	if st.Paused {
		s += fmt.Sprintf("; paused (%s): %s", st.Kind, st.Reason)
	}
	return s
}

// loadWorkerConfig reads a worker config (a YAML file or an embedded preset
// name) strictly, over the defaults, and validates it.
func loadWorkerConfig(source string, flags *pflag.FlagSet) (workerConfig, error) {
	cfg := defaultWorkerConfig()
	if err := loadConfig(source, flags, nil, &cfg); err != nil {
		return cfg, err
	}
	if err := cfg.Validate(); err != nil {
		return cfg, fmt.Errorf("config %s: %w", source, err)
	}
	return cfg, nil
}

// newGovernor builds the budget controller for training on compute (a
// backend name: "cpu" or "cuda:N"): NVML sensors of GPU N, or RAPL and the
// CPU temperature (estimated power when RAPL is unreadable), the machine's
// power supplies and the other-process load meter, on governorClock.
func newGovernor(cfg workerConfig, compute string, log *slog.Logger) (*budgetGovernor, error) {
	if log == nil {
		log = slog.Default()
	}
	cpu, err := budget.NewCPUSensors(budget.CPUSensorOptions{Clock: governorClock, RAPL: &device.RAPL{Root: cfg.Device.PowercapRoot}})
	if err != nil {
		return nil, err
	}
	g := &budgetGovernor{}
	var sens budget.Sensors = cpu
	g.Source, g.Estimated = "cpu: "+cpu.Source(), cpu.Estimated()
	if idx, ok := nvmlIndexFor(compute); ok {
		gs, closeFn, err := budget.OpenGPUSensors(newNVML(), idx)
		if err != nil {
			// The run goes on: the controller warns that the GPU's power
			// cap cannot be enforced, and the CPU limits still hold.
			log.Warn("budget: GPU sensors unreadable; only the CPU is watched", "gpu", idx, "err", err)
			g.Source += fmt.Sprintf(" (GPU %d unreadable: %v)", idx, err)
		} else {
			gs.CPUTemp = cpu.CPUTemp
			sens, g.close = gs, closeFn
			g.Source, g.Estimated = fmt.Sprintf("gpu %d: NVML power, energy and temperature", idx), false
		}
	}
	ctrl, err := budget.New(budget.Options{
		Config: cfg.Budget, Clock: governorClock, Sensors: sens,
		PowerSupply: device.PowerSupplies{Root: cfg.Device.PowerSupplyRoot},
		Load:        device.NewOtherLoad(), Logger: log,
	})
	if err != nil {
		g.Close()
		return nil, err
	}
	g.Controller = ctrl
	log.Info("budget: the training loop obeys the budget", "sensors", g.Source,
		"power_cap_w", cfg.Budget.PowerCapW, "gpu_temp_limit_c", cfg.Budget.GPUTempLimitC,
		"cpu_temp_limit_c", cfg.Budget.CPUTempLimitC, "daily_energy_kwh", cfg.Budget.DailyEnergyKWh)
	return g, nil
}

// gpuPCIBusIDs maps the name of each CUDA backend this process opened
// ("cuda:N", CUDA's numbering) to its GPU's PCI address (backend_cuda.go).
var gpuPCIBusIDs = map[string]string{}

// nvmlIndexFor is NVML's index of the GPU a backend named compute runs on:
// found by PCI address, since CUDA_VISIBLE_DEVICES renumbers GPUs for CUDA
// only; the N of "cuda:N" when the address is unknown. ok is false on the CPU.
func nvmlIndexFor(compute string) (int, bool) {
	n, ok := gpuIndex(compute)
	if !ok {
		return 0, false
	}
	if bus := gpuPCIBusIDs[compute]; bus != "" {
		if idx, err := device.NVMLIndexByPCIBusID(newNVML(), bus); err == nil {
			return idx, true
		}
	}
	return n, true
}

// gpuIndex parses a backend name "cuda:N".
func gpuIndex(compute string) (int, bool) {
	rest, ok := strings.CutPrefix(compute, "cuda:")
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(rest)
	return n, err == nil && n >= 0
}

// trainingGovernor builds the governor of `pretrain`/`train` from --budget
// (a worker config file or preset); nil, nil when the flag is empty.
func trainingGovernor(cmd *cobra.Command, compute string) (*budgetGovernor, error) {
	src, _ := cmd.Flags().GetString("budget")
	if src == "" {
		return nil, nil
	}
	cfg, err := loadWorkerConfig(src, cmd.Flags())
	if err != nil {
		return nil, fmt.Errorf("--budget: %w", err)
	}
	return newGovernor(cfg, compute, slog.Default())
}

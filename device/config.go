package device

import (
	"fmt"
	"math"
)

// Config is the device: section of configs/worker.yaml.
type Config struct {
	// Select is the --device default: auto, cpu, cuda or cuda:N.
	Select string `mapstructure:"select" json:"select"`
	// ProbeTimeoutS bounds the `opencluster-cuda devices --probe` run.
	ProbeTimeoutS float64 `mapstructure:"probe_timeout_s" json:"probe_timeout_s"`
	// PowerSupplyRoot and PowercapRoot are where battery/AC state and RAPL
	// counters are read; override only for containers or tests.
	PowerSupplyRoot string `mapstructure:"power_supply_root" json:"power_supply_root"`
	PowercapRoot    string `mapstructure:"powercap_root" json:"powercap_root"`
}

// DefaultConfig is what configs/worker.yaml ships.
func DefaultConfig() Config {
	return Config{Select: "auto", ProbeTimeoutS: 30, PowerSupplyRoot: DefaultPowerSupplyRoot, PowercapRoot: DefaultPowercapRoot}
}

// Validate names the first bad key.
func (c Config) Validate() error {
	if _, err := ParseRequest(c.Select); err != nil {
		return fmt.Errorf("device.select: %w", err)
	}
	if math.IsNaN(c.ProbeTimeoutS) || c.ProbeTimeoutS <= 0 || c.ProbeTimeoutS > 600 {
		return fmt.Errorf("device.probe_timeout_s: want 0 < s <= 600, got %g", c.ProbeTimeoutS)
	}
	return nil
}

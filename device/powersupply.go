package device

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// DefaultPowerSupplyRoot is where Linux lists batteries and AC adapters.
const DefaultPowerSupplyRoot = "/sys/class/power_supply"

// PowerState is what the budget needs to know about the power source.
type PowerState struct {
	HasBattery bool `json:"has_battery"`
	// OnAC is true when an AC adapter (or USB-PD source) reports online, or
	// when no battery is present at all (a desktop).
	OnAC bool `json:"on_ac"`
	// BatteryPercent is the charge of all batteries together, 0-100; -1 when
	// there is no battery or no capacity reading.
	BatteryPercent float64 `json:"battery_percent"`
}

// OnBattery reports whether the machine is running from its battery.
func (p PowerState) OnBattery() bool { return p.HasBattery && !p.OnAC }

// PowerSupplies reads power_supply class directories under Root (gopsutil
// has no battery API). A zero Root means DefaultPowerSupplyRoot.
type PowerSupplies struct{ Root string }

// Read returns the current power state. A missing root (no power_supply
// class, e.g. in a container) means a desktop on mains power.
func (ps PowerSupplies) Read() (PowerState, error) {
	root := ps.Root
	if root == "" {
		root = DefaultPowerSupplyRoot
	}
	st := PowerState{BatteryPercent: -1}
	entries, err := os.ReadDir(root)
	if os.IsNotExist(err) {
		st.OnAC = true
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("power supply %s: %w", root, err)
	}
	acSeen, acOnline, discharging := false, false, false
	var nowSum, fullSum, pctSum float64
	var pctN int
	for _, e := range entries {
		dir := filepath.Join(root, e.Name())
		typ := readTrim(filepath.Join(dir, "type"))
		switch typ {
		case "Mains", "USB", "USB_C", "USB_PD", "USB_PD_DRP", "Wireless":
			online := readTrim(filepath.Join(dir, "online"))
			if online == "" {
				continue
			}
			acSeen = true
			if online != "0" {
				acOnline = true
			}
		case "Battery":
			// Peripheral batteries (mice, headsets) have scope Device.
			if strings.EqualFold(readTrim(filepath.Join(dir, "scope")), "Device") {
				continue
			}
			if p := readTrim(filepath.Join(dir, "present")); p == "0" {
				continue
			}
			st.HasBattery = true
			if strings.EqualFold(readTrim(filepath.Join(dir, "status")), "Discharging") {
				discharging = true
			}
			now, okN := readFloat(filepath.Join(dir, "energy_now"))
			full, okF := readFloat(filepath.Join(dir, "energy_full"))
			if !okN || !okF {
				now, okN = readFloat(filepath.Join(dir, "charge_now"))
				full, okF = readFloat(filepath.Join(dir, "charge_full"))
			}
			if okN && okF && full > 0 {
				nowSum += now
				fullSum += full
			} else if c, ok := readFloat(filepath.Join(dir, "capacity")); ok && c >= 0 && c <= 100 {
				pctSum += c
				pctN++
			}
		}
	}
	switch {
	case !st.HasBattery:
		st.OnAC = true
	case acSeen:
		st.OnAC = acOnline
	default:
		// No adapter entry: trust the battery's own status.
		st.OnAC = !discharging
	}
	if st.HasBattery {
		switch {
		case fullSum > 0:
			st.BatteryPercent = min(100, 100*nowSum/fullSum)
		case pctN > 0:
			st.BatteryPercent = pctSum / float64(pctN)
		}
	}
	return st, nil
}

func readTrim(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func readFloat(path string) (float64, bool) {
	s := readTrim(path)
	if s == "" {
		return 0, false
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v != v {
		return 0, false
	}
	return v, true
}

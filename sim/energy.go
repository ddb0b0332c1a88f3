package sim

import (
	"fmt"
	"math"

	"github.com/opencluster/opencluster/protocol"
)

// DataCenter is the comparison a run's summary ends with: the same useful
// FLOPs on data-center accelerators, with the assumptions stated.
type DataCenter struct {
	Accelerator string
	// PeakFLOPS is the accelerator's dense peak in the training precision.
	PeakFLOPS float64
	// Utilisation is the share of peak a training job sustains (MFU).
	Utilisation float64
	// PowerW is one accelerator's share of its server's power at load.
	PowerW float64
	// PUE is the facility's power usage effectiveness.
	PUE float64
	// GridG is the grid's carbon intensity, gCO2/kWh, and GridNote where
	// that figure comes from.
	GridG    float64
	GridNote string
}

// DefaultDataCenter: an NVIDIA H100 SXM at its published dense BF16 peak
// (989 TFLOPS, the H100 datasheet), 40% MFU (Meta's Llama 3 paper reports
// 38-43% on 16K H100s), a DGX H100's 10.2 kW maximum shared by its 8 GPUs,
// PUE 1.1 (Google reports a fleet-wide 1.10 for 2023), on the United
// States' 2024 grid (Ember, 383.55 g/kWh).
func DefaultDataCenter() DataCenter {
	return DataCenter{Accelerator: "H100 SXM", PeakFLOPS: 989e12, Utilisation: 0.4, PowerW: 10200.0 / 8, PUE: 1.1,
		GridG: 383.55, GridNote: "United States, Ember 2024"}
}

// Compare states what flops would cost in the data center next to what the
// volunteers spent, in one plain sentence that says which side used more.
func (d DataCenter) Compare(flops, volunteerKWh, volunteerCO2Kg float64) *protocol.DataCenterComparison {
	hours := flops / (d.PeakFLOPS * d.Utilisation) / 3600
	kwh := hours * d.PowerW * d.PUE / 1000
	co2 := kwh * d.GridG / 1000
	c := &protocol.DataCenterComparison{Accelerator: d.Accelerator, PeakFLOPS: d.PeakFLOPS, Utilisation: d.Utilisation,
		PowerW: d.PowerW * d.PUE, PUE: d.PUE, GridGPerKWh: d.GridG, Hours: hours, EnergyKWh: kwh, CO2Kg: co2}
	switch {
	case kwh <= 0 || volunteerKWh <= 0:
		c.Verdict = "no useful work was done, so there is nothing to compare"
	case volunteerKWh >= kwh:
		c.Verdict = fmt.Sprintf("the volunteer network used %.1fx the energy of the data center for the same FLOPs (%s kWh against %s kWh) and emitted %.1fx its CO2",
			volunteerKWh/kwh, num(volunteerKWh), num(kwh), ratio(volunteerCO2Kg, co2))
	default:
		c.Verdict = fmt.Sprintf("the volunteer network used %.2fx the energy of the data center for the same FLOPs (%s kWh against %s kWh) and emitted %.2fx its CO2",
			volunteerKWh/kwh, num(volunteerKWh), num(kwh), ratio(volunteerCO2Kg, co2))
	}
	return c
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return math.Inf(1)
	}
	return a / b
}

// TreeEstimate is what tree-shaped aggregation would do to one round's
// traffic through the organiser. The organiser hands the model to Fanout
// relays, each relay to Fanout more, and updates are summed on the way
// back up, so every machine moves at most Fanout+1 objects in each
// direction and the round's transfer time grows with the tree's depth
// instead of with the cohort:
//
//	depth = ceil(log_Fanout(cohort))
//	down  = depth x Fanout x model / median relay uplink
//	up    = depth x Fanout x sum  / median relay downlink
//
// where sum is an aggregated update. Sums of sparse updates are denser
// than one update (the union of their top-k coordinates), so the estimate
// bounds a level's sum by min(Fanout x update, dense adapter).
type TreeEstimate struct {
	Fanout  int     `json:"fanout"`
	Depth   int     `json:"depth"`
	DownS   float64 `json:"down_s"`
	UpS     float64 `json:"up_s"`
	RelayUp float64 `json:"relay_up_mbps"`
	RelayDn float64 `json:"relay_down_mbps"`
}

// EstimateTree computes a TreeEstimate for a cohort and a job over relays
// with the given median links.
func EstimateTree(fanout, cohort int, j Job, upMbps, downMbps float64) TreeEstimate {
	t := TreeEstimate{Fanout: fanout, RelayUp: upMbps, RelayDn: downMbps}
	for n := 1; n < cohort; n *= fanout {
		t.Depth++
	}
	t.Depth = max(t.Depth, 1)
	sum := math.Min(float64(fanout)*float64(j.UpBytes), float64(j.DenseBytes))
	t.DownS = float64(t.Depth) * float64(fanout) * float64(j.DownBytes) * 8 / (upMbps * 1e6)
	t.UpS = float64(t.Depth) * float64(fanout) * sum * 8 / (downMbps * 1e6)
	return t
}

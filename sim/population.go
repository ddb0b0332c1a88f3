package sim

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Node is one volunteer machine, compact so that a million fit in tens of
// megabytes. Hours are local time of day.
type Node struct {
	Region     uint16
	GPU        int16 // index into Tables.GPUs; -1: none (a CPU-only laptop)
	Host       uint8 // index into Tables.Hosts
	Reachable  bool  // accepts inbound connections (not behind NAT or CGNAT)
	BaseCached bool  // already holds the base model
	DownMbps   float32
	UpMbps     float32
	// PowerCap is the share of the GPU's board power its owner allows
	// (the worker's budget power cap; 1: none).
	PowerCap float32
	// The machine is idle from IdleStart for IdleHours each day it is
	// present; it is present on a day with probability Present.
	IdleStart, IdleHours, Present float32
	// BudgetStart..BudgetEnd is the owner's time window (BOINC's "compute
	// only between"); equal values mean no window.
	BudgetStart, BudgetEnd float32
}

// PopulationConfig are the distributions a population is drawn from (see
// docs/simulation.md for their sources). Shares are in [0, 1].
type PopulationConfig struct {
	// Laptops is the share of CPU-only laptops; the rest are PCs with a
	// graphics card drawn from Tables.GPUs.
	Laptops float64
	// DownMbps and UpMbps are the access links, drawn independently.
	DownMbps, UpMbps Dist
	// Reachable is the share of machines that accept inbound connections.
	Reachable float64
	// IdleStart (local hour), IdleHours and Present (probability per day)
	// shape when a machine is idle enough to train.
	IdleStart, IdleHours, Present Dist
	// BudgetShare of the owners restrict training to BudgetStart..BudgetEnd
	// (local hours).
	BudgetShare            float64
	BudgetStart, BudgetEnd float64
	// CapShare of the owners cap GPU power at a share drawn from PowerCap.
	CapShare float64
	PowerCap Dist
	// BaseCached is the share of machines that hold the base model already.
	BaseCached float64
}

// DefaultPopulation is the population docs/simulation.md describes.
func DefaultPopulation() PopulationConfig {
	return PopulationConfig{
		Laptops:     0.3,
		DownMbps:    MustDist("down_mbps", "lognormal:90,0.9", 0.1, 1e5),
		UpMbps:      MustDist("up_mbps", "lognormal:30,1.1", 0.1, 1e5),
		Reachable:   0.3,
		IdleStart:   MustDist("idle_start_h", "uniform:17,24", 0, 24),
		IdleHours:   MustDist("idle_hours", "uniform:4,12", 0, 24),
		Present:     MustDist("present", "uniform:0.5,1", 0, 1),
		BudgetShare: 0.25,
		BudgetStart: 0, BudgetEnd: 7,
		CapShare: 0.3,
		PowerCap: MustDist("power_cap", "uniform:0.6,0.9", 0.05, 1),
	}
}

// Validate names the first share that is out of range (the distributions
// were checked when parsed).
func (p PopulationConfig) Validate() error {
	for _, s := range []struct {
		name string
		v    float64
	}{{"laptops", p.Laptops}, {"reachable", p.Reachable}, {"budget_share", p.BudgetShare}, {"cap_share", p.CapShare}, {"base_cached", p.BaseCached}} {
		if math.IsNaN(s.v) || s.v < 0 || s.v > 1 {
			return fmt.Errorf("population %s = %v: want a share in [0, 1]", s.name, s.v)
		}
	}
	for _, h := range []struct {
		name string
		v    float64
	}{{"budget_start", p.BudgetStart}, {"budget_end", p.BudgetEnd}} {
		if math.IsNaN(h.v) || h.v < 0 || h.v > 24 {
			return fmt.Errorf("population %s = %v: want a local hour in [0, 24]", h.name, h.v)
		}
	}
	for _, d := range []struct {
		name string
		d    Dist
	}{{"down_mbps", p.DownMbps}, {"up_mbps", p.UpMbps}, {"idle_start_h", p.IdleStart}, {"idle_hours", p.IdleHours}, {"present", p.Present}, {"power_cap", p.PowerCap}} {
		if d.d.Kind == "" {
			return fmt.Errorf("population %s: no distribution", d.name)
		}
	}
	return nil
}

// Population is the nodes of a run and what they were drawn from.
type Population struct {
	T     *Tables
	Nodes []Node
	// IDs are the nodes' worker ids, increasing; nil means n0, n1, ...
	// zero-padded to one width (so that id order is index order).
	IDs  []string
	Seed uint64
}

// WorkerIDs returns the nodes' ids, making them when IDs is nil.
func (p *Population) WorkerIDs() []string {
	if p.IDs != nil {
		return p.IDs
	}
	width := len(strconv.Itoa(len(p.Nodes) - 1))
	ids := make([]string, len(p.Nodes))
	for i := range ids {
		ids[i] = fmt.Sprintf("n%0*d", width, i)
	}
	return ids
}

// Draw draws n nodes. Node i's attributes depend only on seed and i.
func Draw(t *Tables, p PopulationConfig, n int, seed uint64) (*Population, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if n < 1 {
		return nil, fmt.Errorf("population: %d nodes: want at least 1", n)
	}
	var regionW, gpuW, desktopW, laptopW []float64
	for _, r := range t.Regions {
		regionW = append(regionW, r.PopulationM)
	}
	for _, g := range t.GPUs {
		gpuW = append(gpuW, g.SharePct)
	}
	for _, h := range t.Hosts {
		desktopW = append(desktopW, shareIf(h, "desktop"))
		laptopW = append(laptopW, shareIf(h, "laptop"))
	}
	cRegion, cGPU, cDesktop, cLaptop := cumulative(regionW), cumulative(gpuW), cumulative(desktopW), cumulative(laptopW)
	empty := func(c []float64) bool { return len(c) == 0 || c[len(c)-1] <= 0 }
	switch {
	case empty(cRegion):
		return nil, errors.New("population: the regions table has no weight to draw from")
	case p.Laptops < 1 && (empty(cGPU) || empty(cDesktop)):
		return nil, fmt.Errorf("population: laptops %v < 1 needs the gpus table and desktop hosts to draw PCs from", p.Laptops)
	case p.Laptops > 0 && empty(cLaptop):
		return nil, fmt.Errorf("population: laptops %v > 0 needs laptop hosts to draw from", p.Laptops)
	}
	if empty(cLaptop) {
		cLaptop = cDesktop // graphics cards for laptops go into desktops then
	}
	pop := &Population{T: t, Nodes: make([]Node, n), Seed: seed}
	for i := range pop.Nodes {
		r := newStream(seed, tagNode, uint64(i))
		nd := Node{Region: uint16(r.pick(cRegion)), GPU: -1, PowerCap: 1}
		if r.float() >= p.Laptops {
			nd.GPU = int16(r.pick(cGPU))
			if strings.HasSuffix(t.GPUs[nd.GPU].Name, "Laptop") {
				nd.Host = uint8(r.pick(cLaptop))
			} else {
				nd.Host = uint8(r.pick(cDesktop))
			}
		} else {
			nd.Host = uint8(r.pick(cLaptop))
		}
		nd.DownMbps = float32(p.DownMbps.Draw(&r))
		nd.UpMbps = float32(p.UpMbps.Draw(&r))
		nd.Reachable = r.float() < p.Reachable
		nd.IdleStart = float32(p.IdleStart.Draw(&r))
		nd.IdleHours = float32(p.IdleHours.Draw(&r))
		nd.Present = float32(p.Present.Draw(&r))
		if r.float() < p.BudgetShare {
			nd.BudgetStart, nd.BudgetEnd = float32(p.BudgetStart), float32(p.BudgetEnd)
		}
		if r.float() < p.CapShare {
			nd.PowerCap = float32(p.PowerCap.Draw(&r))
		}
		nd.BaseCached = r.float() < p.BaseCached
		pop.Nodes[i] = nd
	}
	return pop, nil
}

func shareIf(h Host, kind string) float64 {
	if h.Kind == kind {
		return h.SharePct
	}
	return 0
}

const day = 86400.0

// hoursSince is how many hours past from local hour `from` to `h`, in [0, 24).
func hoursSince(h, from float64) float64 { return math.Mod(h-from+48, 24) }

// Online reports whether node i may train at t (seconds of UTC time since
// the Unix epoch): inside its idle window on a day it is present, and
// inside its owner's budget window.
func (p *Population) Online(i int, t float64) bool {
	return p.OnlineUntil(i, t) > t
}

// OnlineUntil returns when node i stops being available if it is available
// at t, or t itself when it is not.
func (p *Population) OnlineUntil(i int, t float64) float64 {
	nd := &p.Nodes[i]
	local := t + p.T.Regions[nd.Region].UTCOffsetH*3600
	h := math.Mod(local, day) / 3600
	if h < 0 {
		h += 24
	}
	into := hoursSince(h, float64(nd.IdleStart))
	if into >= float64(nd.IdleHours) {
		return t
	}
	startDay := math.Floor((local - into*3600) / day)
	if unit(hash(p.Seed, tagDay, uint64(int64(startDay)), uint64(nd.Region), uint64(i))) >= float64(nd.Present) {
		return t
	}
	until := t + (float64(nd.IdleHours)-into)*3600
	if nd.BudgetStart != nd.BudgetEnd {
		length := hoursSince(float64(nd.BudgetEnd), float64(nd.BudgetStart))
		in := hoursSince(h, float64(nd.BudgetStart))
		if in >= length {
			return t
		}
		until = math.Min(until, t+(length-in)*3600)
	}
	return until
}

// Describe is the node's device in a few words ("RTX 4070 12 GB", "cpu 8
// cores") for the dashboard and traces.
func (p *Population) Describe(i int) string {
	nd := &p.Nodes[i]
	h := p.T.Hosts[nd.Host]
	if nd.GPU >= 0 {
		g := p.T.GPUs[nd.GPU]
		if g.VRAMGB > 0 {
			return fmt.Sprintf("%s %g GB", g.Name, g.VRAMGB)
		}
		return fmt.Sprintf("%s, %s", g.Name, h.Name)
	}
	return h.Name
}

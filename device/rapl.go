package device

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// DefaultPowercapRoot is where Linux exposes RAPL energy counters.
const DefaultPowercapRoot = "/sys/class/powercap"

// RAPL reads CPU package energy from Linux powercap (intel-rapl, also used by
// AMD). The counters are microjoules that wrap at max_energy_range_uj; RAPL
// unwraps them into a monotonic total. Only top-level package zones
// (intel-rapl:N) are summed; sub-zones (intel-rapl:N:M) are inside them.
type RAPL struct {
	Root string // zero means DefaultPowercapRoot

	mu    sync.Mutex
	zones []raplZone
	init  bool
}

type raplZone struct {
	path   string
	max    uint64 // max_energy_range_uj; 0 when unknown
	last   uint64
	totalJ float64
}

// ErrNoRAPL means no readable RAPL package zone was found.
var ErrNoRAPL = errors.New("no readable RAPL package zone")

func (r *RAPL) discover() error {
	root := r.Root
	if root == "" {
		root = DefaultPowercapRoot
	}
	matches, _ := filepath.Glob(filepath.Join(root, "intel-rapl:*"))
	sort.Strings(matches)
	var reasons []string
	for _, m := range matches {
		if strings.Count(filepath.Base(m), ":") != 1 {
			continue
		}
		e, err := readUint(filepath.Join(m, "energy_uj"))
		if err != nil {
			reasons = append(reasons, err.Error())
			continue
		}
		z := raplZone{path: m, last: e}
		if mx, err := readUint(filepath.Join(m, "max_energy_range_uj")); err == nil {
			z.max = mx
		}
		r.zones = append(r.zones, z)
	}
	if len(r.zones) == 0 {
		if len(reasons) > 0 {
			return fmt.Errorf("%w under %s: %s", ErrNoRAPL, root, reasons[0])
		}
		return fmt.Errorf("%w under %s", ErrNoRAPL, root)
	}
	r.init = true
	return nil
}

// EnergyJ returns the package energy in joules accumulated since the first
// call (the first call returns 0). Call it more often than the counter wraps
// (about an hour at 65 W for a 2^32 uJ range).
func (r *RAPL) EnergyJ() (float64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.init {
		if err := r.discover(); err != nil {
			return 0, err
		}
		return 0, nil
	}
	var total float64
	for i := range r.zones {
		z := &r.zones[i]
		e, err := readUint(filepath.Join(z.path, "energy_uj"))
		if err != nil {
			return 0, err
		}
		z.totalJ += float64(RAPLDelta(z.last, e, z.max)) / 1e6
		z.last = e
		total += z.totalJ
	}
	return total, nil
}

// RAPLDelta is the energy in microjoules between two readings of a counter
// that wraps at max (the counter runs 0..max). A reading below the previous
// one means one wrap; with max unknown (0) such a reading counts as zero.
func RAPLDelta(prev, cur, max uint64) uint64 {
	if cur >= prev {
		return cur - prev
	}
	if max == 0 || prev > max {
		return 0
	}
	return max - prev + cur
}

func readUint(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return v, nil
}

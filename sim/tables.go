package sim

import (
	"embed"
	"encoding/csv"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// The tables a population is drawn from live in data/*.csv, each with its
// sources in its header comment (and in docs/simulation.md).
//
//go:embed data/*.csv
var dataFS embed.FS

// Region is where a node is: a country, or a time-zone part of one, or the
// rest of a continent.
type Region struct {
	Code        string // ISO 3166-1 alpha-2, or X.. for a rest-of-continent row
	Name        string
	PopulationM float64
	UTCOffsetH  float64
	Lat, Lon    float64
	GridG       float64 // gCO2 per kWh
	GridYear    int
}

// GPU is a graphics card model.
type GPU struct {
	Name        string
	Arch        string // "sm_89", or "none" for a GPU opencluster-cuda cannot use
	FP32TFLOPS  float64
	TensorFLOPS float64 // dense tensor TFLOPS in the precision our kernels use; 0: none
	VRAMGB      float64
	TDPW        float64
	SharePct    float64
}

// Usable reports whether opencluster-cuda can train on the card: it ships
// PTX for sm_75 and sm_80 (newer cards JIT the sm_80 PTX).
func (g GPU) Usable() bool {
	v, ok := strings.CutPrefix(g.Arch, "sm_")
	if !ok {
		return false
	}
	n, err := strconv.Atoi(v)
	return err == nil && n >= 75
}

// PeakFLOPS is the card's peak in the precision training uses: tensor
// cores where there are some, else fp32.
func (g GPU) PeakFLOPS() float64 {
	if g.TensorFLOPS > 0 {
		return g.TensorFLOPS * 1e12
	}
	return g.FP32TFLOPS * 1e12
}

// Host is a PC class: its CPU, memory and power.
type Host struct {
	Name          string
	Kind          string // "desktop" or "laptop"
	Cores         int
	GHz           float64
	FlopsPerCycle float64
	RAMGB         float64
	LoadW, IdleW  float64
	SharePct      float64
}

// PeakFLOPS is cores x clock x FLOPs per cycle, as `opencluster bench`'s
// machine row computes it.
func (h Host) PeakFLOPS() float64 { return float64(h.Cores) * h.GHz * 1e9 * h.FlopsPerCycle }

// Tables are what a population is drawn from.
type Tables struct {
	Regions []Region
	GPUs    []GPU
	Hosts   []Host
}

// DefaultTables parses the embedded tables.
func DefaultTables() (*Tables, error) {
	var t Tables
	var err error
	if t.Regions, err = readTable("data/regions.csv", parseRegion); err != nil {
		return nil, err
	}
	if t.GPUs, err = readTable("data/gpus.csv", parseGPU); err != nil {
		return nil, err
	}
	if t.Hosts, err = readTable("data/hosts.csv", parseHost); err != nil {
		return nil, err
	}
	return &t, nil
}

// GPUIndex returns the index of the named card, or -1.
func (t *Tables) GPUIndex(name string) int {
	for i, g := range t.GPUs {
		if g.Name == name {
			return i
		}
	}
	return -1
}

// HostIndex returns the index of the named host class, or -1.
func (t *Tables) HostIndex(name string) int {
	for i, h := range t.Hosts {
		if h.Name == name {
			return i
		}
	}
	return -1
}

// RegionIndex returns the index of the region row with this name, or -1.
func (t *Tables) RegionIndex(name string) int {
	for i, r := range t.Regions {
		if r.Name == name {
			return i
		}
	}
	return -1
}

// row reads named fields of one CSV record, remembering the first error
// with the file, line and field it came from.
type row struct {
	file string
	line int
	cols map[string]int
	rec  []string
	err  error
}

func (r *row) str(field string) string {
	i, ok := r.cols[field]
	if !ok || i >= len(r.rec) {
		r.fail(field, "missing")
		return ""
	}
	return strings.TrimSpace(r.rec[i])
}

// num parses a float field that must lie in [lo, hi].
func (r *row) num(field string, lo, hi float64) float64 {
	s := r.str(field)
	if r.err != nil {
		return 0
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v != v {
		r.fail(field, fmt.Sprintf("%q is not a number", s))
		return 0
	}
	if v < lo || v > hi {
		r.fail(field, fmt.Sprintf("%g is out of range [%g, %g]", v, lo, hi))
		return 0
	}
	return v
}

func (r *row) fail(field, why string) {
	if r.err == nil {
		r.err = fmt.Errorf("%s line %d, field %s: %s", r.file, r.line, field, why)
	}
}

// readCSV streams a CSV file with a header line (lines starting with # are
// comments), calling f for each record; it never holds more than one.
func readCSV(name string, in io.Reader, required []string, f func(*row) error) error {
	cr := csv.NewReader(in)
	cr.Comment = '#'
	cr.FieldsPerRecord = -1
	cr.ReuseRecord = true
	head, err := cr.Read()
	if err != nil {
		return fmt.Errorf("%s: no header line: %w", name, err)
	}
	cols := map[string]int{}
	for i, h := range head {
		cols[strings.TrimSpace(h)] = i
	}
	for _, c := range required {
		if _, ok := cols[c]; !ok {
			return fmt.Errorf("%s: header has no %q column (columns: %s)", name, c, strings.Join(head, ","))
		}
	}
	for {
		rec, err := cr.Read()
		if err == io.EOF {
			return nil
		}
		line, _ := cr.FieldPos(0)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if len(rec) != len(head) {
			return fmt.Errorf("%s line %d: %d fields, the header has %d", name, line, len(rec), len(head))
		}
		r := &row{file: name, line: line, cols: cols, rec: rec}
		if err := f(r); err != nil {
			return err
		}
		if r.err != nil {
			return r.err
		}
	}
}

func readTable[T any](name string, parse func(*row) T) ([]T, error) {
	f, err := dataFS.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []T
	err = readCSV("sim/"+name, f, nil, func(r *row) error {
		out = append(out, parse(r))
		return nil
	})
	return out, err
}

func parseRegion(r *row) Region {
	return Region{Code: r.str("region"), Name: r.str("name"), PopulationM: r.num("population_m", 0, 1e4),
		UTCOffsetH: r.num("utc_offset_h", -12, 14), Lat: r.num("lat", -90, 90), Lon: r.num("lon", -180, 180),
		GridG: r.num("grid_g_per_kwh", 0, 2000), GridYear: int(r.num("grid_year", 1990, 2100))}
}

func parseGPU(r *row) GPU {
	return GPU{Name: r.str("name"), Arch: r.str("arch"), FP32TFLOPS: r.num("fp32_tflops", 0, 1e4), TensorFLOPS: r.num("tensor_tflops", 0, 1e5),
		VRAMGB: r.num("vram_gb", 0, 1e4), TDPW: r.num("tdp_w", 0, 1e4), SharePct: r.num("share_pct", 0, 100)}
}

func parseHost(r *row) Host {
	return Host{Name: r.str("name"), Kind: r.str("kind"), Cores: int(r.num("cores", 1, 1024)), GHz: r.num("ghz", 0.1, 10),
		FlopsPerCycle: r.num("flops_per_cycle", 1, 1024), RAMGB: r.num("ram_gb", 0.5, 1e5), LoadW: r.num("load_w", 1, 1e4),
		IdleW: r.num("idle_w", 0, 1e4), SharePct: r.num("share_pct", 0, 100)}
}

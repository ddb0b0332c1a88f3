package sim

import (
	"bufio"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/opencluster/opencluster/protocol"
)

// Traces are CSV files (docs/simulation.md has the columns), read one
// record at a time so that a trace of any size streams: a population trace
// becomes the run's nodes, a window trace is consumed as the virtual clock
// reaches each window. --trace-out writes the population a run drew, so
// that `--trace` with the same seed repeats the run exactly.

// PopulationColumns are a population trace's columns, in the order
// WritePopulation writes them.
var PopulationColumns = []string{"id", "region", "gpu", "host", "down_mbps", "up_mbps", "reachable", "power_cap",
	"idle_start_h", "idle_hours", "present", "budget_start_h", "budget_end_h", "base_cached"}

// ReadPopulation reads a population trace. Ids must increase strictly
// (byte order), so the trace's order is the coordinator's id order; every
// value is checked and an error names the file, line and field.
func ReadPopulation(name string, in io.Reader, t *Tables, seed uint64) (*Population, error) {
	pop := &Population{T: t, Seed: seed}
	err := readCSV(name, bufio.NewReaderSize(in, 1<<20), PopulationColumns, func(r *row) error {
		id := r.str("id")
		if id == "" || len(id) > protocol.MaxWorkerIDLen {
			r.fail("id", fmt.Sprintf("%q: want 1..%d bytes", id, protocol.MaxWorkerIDLen))
			return nil
		}
		if n := len(pop.IDs); n > 0 && id <= pop.IDs[n-1] {
			r.fail("id", fmt.Sprintf("%q does not come after %q: ids must increase", id, pop.IDs[n-1]))
			return nil
		}
		nd := Node{GPU: -1}
		reg := r.str("region")
		ri := t.lookupRegion(reg)
		if ri < 0 && r.err == nil {
			r.fail("region", fmt.Sprintf("unknown region %q: want a name or code from sim/data/regions.csv", reg))
		}
		nd.Region = uint16(max(ri, 0))
		if g := r.str("gpu"); g != "" {
			gi := t.GPUIndex(g)
			if gi < 0 {
				r.fail("gpu", fmt.Sprintf("unknown GPU %q: want a name from sim/data/gpus.csv or empty", g))
			}
			nd.GPU = int16(gi)
		}
		h := r.str("host")
		hi := t.HostIndex(h)
		if hi < 0 && r.err == nil {
			r.fail("host", fmt.Sprintf("unknown host %q: want a name from sim/data/hosts.csv", h))
		}
		nd.Host = uint8(max(hi, 0))
		nd.DownMbps = float32(r.num("down_mbps", 0.001, 1e5))
		nd.UpMbps = float32(r.num("up_mbps", 0.001, 1e5))
		nd.Reachable = r.boolean("reachable")
		nd.PowerCap = float32(r.num("power_cap", 0.05, 1))
		nd.IdleStart = float32(r.num("idle_start_h", 0, 24))
		nd.IdleHours = float32(r.num("idle_hours", 0, 24))
		nd.Present = float32(r.num("present", 0, 1))
		nd.BudgetStart = float32(r.num("budget_start_h", 0, 24))
		nd.BudgetEnd = float32(r.num("budget_end_h", 0, 24))
		nd.BaseCached = r.boolean("base_cached")
		if r.err == nil {
			pop.Nodes = append(pop.Nodes, nd)
			pop.IDs = append(pop.IDs, id)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(pop.Nodes) == 0 {
		return nil, fmt.Errorf("%s: no nodes", name)
	}
	return pop, nil
}

func (r *row) boolean(field string) bool {
	s := r.str(field)
	switch strings.ToLower(s) {
	case "1", "true", "yes":
		return true
	case "0", "false", "no":
		return false
	}
	if r.err == nil {
		r.fail(field, fmt.Sprintf("%q: want 1 or 0", s))
	}
	return false
}

// lookupRegion finds a region row by name, or by code (the most populous
// row of a country split by time zone).
func (t *Tables) lookupRegion(s string) int {
	if i := t.RegionIndex(s); i >= 0 {
		return i
	}
	best := -1
	for i, r := range t.Regions {
		if strings.EqualFold(r.Code, s) && (best < 0 || r.PopulationM > t.Regions[best].PopulationM) {
			best = i
		}
	}
	return best
}

// WritePopulation writes p as a population trace.
func WritePopulation(w io.Writer, p *Population, ids []string) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	cw := csv.NewWriter(bw)
	if err := cw.Write(PopulationColumns); err != nil {
		return err
	}
	f := func(v float32) string { return strconv.FormatFloat(float64(v), 'g', -1, 32) }
	b := func(v bool) string {
		if v {
			return "1"
		}
		return "0"
	}
	rec := make([]string, len(PopulationColumns))
	for i := range p.Nodes {
		nd := &p.Nodes[i]
		gpu := ""
		if nd.GPU >= 0 {
			gpu = p.T.GPUs[nd.GPU].Name
		}
		rec = append(rec[:0], ids[i], p.T.Regions[nd.Region].Name, gpu, p.T.Hosts[nd.Host].Name, f(nd.DownMbps), f(nd.UpMbps),
			b(nd.Reachable), f(nd.PowerCap), f(nd.IdleStart), f(nd.IdleHours), f(nd.Present), f(nd.BudgetStart), f(nd.BudgetEnd), b(nd.BaseCached))
		if err := cw.Write(rec); err != nil {
			return err
		}
	}
	cw.Flush()
	if err := cw.Error(); err != nil {
		return err
	}
	return bw.Flush()
}

// Window is one availability window from a trace: node ID may train from
// Start to End, in seconds since the run's start.
type Window struct {
	ID         string
	Start, End float64
	Line       int
}

// WindowReader streams an availability trace (columns id,start_s,end_s,
// ordered by start_s), one record ahead.
type WindowReader struct {
	name   string
	cr     *csv.Reader
	cols   map[string]int
	peeked *Window
	last   float64
	err    error
}

// NewWindowReader reads the header of a window trace.
func NewWindowReader(name string, in io.Reader) (*WindowReader, error) {
	cr := csv.NewReader(bufio.NewReaderSize(in, 1<<20))
	cr.Comment = '#'
	cr.ReuseRecord = true
	head, err := cr.Read()
	if err != nil {
		return nil, fmt.Errorf("%s: no header line: %w", name, err)
	}
	w := &WindowReader{name: name, cr: cr, cols: map[string]int{}}
	for i, h := range head {
		w.cols[strings.TrimSpace(h)] = i
	}
	for _, c := range []string{"id", "start_s", "end_s"} {
		if _, ok := w.cols[c]; !ok {
			return nil, fmt.Errorf("%s: header has no %q column (want id,start_s,end_s)", name, c)
		}
	}
	return w, nil
}

// Peek returns the next window without consuming it; ok is false at the end.
func (w *WindowReader) Peek() (Window, bool, error) {
	if w.err != nil {
		return Window{}, false, w.err
	}
	if w.peeked != nil {
		return *w.peeked, true, nil
	}
	rec, err := w.cr.Read()
	if errors.Is(err, io.EOF) {
		return Window{}, false, nil
	}
	line, _ := w.cr.FieldPos(0)
	if err != nil {
		w.err = fmt.Errorf("%s: %w", w.name, err)
		return Window{}, false, w.err
	}
	r := &row{file: w.name, line: line, cols: w.cols, rec: rec}
	win := Window{ID: r.str("id"), Start: r.num("start_s", 0, 1e10), End: r.num("end_s", 0, 1e10), Line: line}
	if r.err == nil && win.End < win.Start {
		r.fail("end_s", fmt.Sprintf("%g is before start_s %g", win.End, win.Start))
	}
	if r.err == nil && win.Start < w.last {
		r.fail("start_s", fmt.Sprintf("%g comes after a window starting at %g: order the trace by start_s", win.Start, w.last))
	}
	if r.err != nil {
		w.err = r.err
		return Window{}, false, w.err
	}
	w.last = win.Start
	w.peeked = &win
	return win, true, nil
}

// Next consumes the window Peek returned.
func (w *WindowReader) Next() { w.peeked = nil }

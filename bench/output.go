package bench

import (
	"encoding/json"
	"fmt"
	"github.com/opencluster/opencluster/internal/atomicfile"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
)

// RSSRow reports the process's peak resident memory so far.
func RSSRow() Row {
	b := PeakRSS()
	return Row{Name: "peak_rss", Extra: map[string]any{"bytes": b, "mib": float64(b) / (1 << 20), "loadavg_end": LoadAverage()}}
}

// LoadAverage is /proc/loadavg's first three fields ("1.52 1.20 0.98": the
// 1, 5 and 15 minute load), or "" where there is none: other processes'
// work on a shared machine shows up in every timing, so the rows say how
// busy it was.
func LoadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// WriteJSON writes r as one JSON object on one line.
func WriteJSON(w io.Writer, r Row) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("bench row %s: %w", r.Name, err)
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// Table prints rows as an aligned, readable table. Call Row for each row,
// then Flush.
type Table struct {
	tw       *tabwriter.Writer
	header   bool
	notes    []string
	peerDesc string // the peer row's library, not repeated per row
}

// NewTable starts a table on w.
func NewTable(w io.Writer) *Table {
	return &Table{tw: tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)}
}

// Row adds one row; machine and peak_rss rows become notes under the table.
func (t *Table) Row(r Row) {
	switch r.Name {
	case "machine":
		t.notes = append(t.notes, "machine: "+machineLine(r))
		return
	case "peak_rss":
		t.notes = append(t.notes, fmt.Sprintf("peak RSS: %.0f MiB; load average at the end: %v", r.Extra["mib"], r.Extra["loadavg_end"]))
		return
	case "peer":
		if r.Peer == "" {
			t.notes = append(t.notes, fmt.Sprintf("peer: none (%v)", r.Extra["peer_missing"]))
			return
		}
		t.peerDesc = r.Peer
		t.notes = appendOnce(t.notes, fmt.Sprintf("peer: %s, running its %s kernels; %v", r.Peer, r.PeerKernel, r.Extra["note"]))
		return
	}
	if !t.header {
		fmt.Fprintln(t.tw, "row\tsize\tGFLOPS\tGB/s\tpeer GFLOPS\tours/peer\t% of peak\tkernel ours/peer\tnotes")
		t.header = true
	}
	fmt.Fprintf(t.tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, r.Size,
		num(r.GFLOPS, "%.1f"), num(r.GBps, "%.1f"), num(r.PeerGFLOPS, "%.1f"), num(r.Ratio, "%.2fx"),
		num(100*r.FractionOfPeak, "%.0f%%"), kernelColumn(r), notes(r))
	if r.Peer != "" && r.Peer != t.peerDesc {
		t.notes = appendOnce(t.notes, "peer: "+r.Peer)
	}
	if r.Warning != "" {
		t.notes = append(t.notes, fmt.Sprintf("WARNING %s %s: %s", r.Name, r.Size, r.Warning))
	}
}

// kernelColumn is the "ours / peer" kernel column (not "kernels": the cuda
// build imports package kernels into this package).
func kernelColumn(r Row) string {
	switch {
	case r.Kernel == "" && r.PeerKernel == "":
		return "-"
	case r.PeerKernel == "":
		return r.Kernel
	}
	return orDash(r.Kernel) + " / " + r.PeerKernel
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Flush writes the table and its notes.
func (t *Table) Flush() error {
	if err := t.tw.Flush(); err != nil {
		return err
	}
	w := t.tw
	for _, n := range t.notes {
		fmt.Fprintln(w, n)
	}
	return w.Flush()
}

func appendOnce(xs []string, s string) []string {
	for _, x := range xs {
		if x == s {
			return xs
		}
	}
	return append(xs, s)
}

func num(v float64, format string) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf(format, v)
}

func machineLine(r Row) string {
	e := r.Extra
	s := fmt.Sprintf("%v, %v cores, sgemm kernel %v, load average at the start %v", e["cpu_model"], e["cores"], e["sgemm_kernel"], e["loadavg_start"])
	if r.PeakGFLOPS > 0 {
		s += fmt.Sprintf("; peak %.0f GFLOPS = %v cores x %.2f GHz x %v FLOP/cycle (%v; clock from %v)",
			r.PeakGFLOPS, e["cores"], e["ghz"], e["flops_per_cycle"], e["isa"], e["clock_source"])
	}
	return s
}

// notes is the short free-text column: the error, or the missing peer, or
// a few extras.
func notes(r Row) string {
	if r.Error != "" {
		return "error: " + r.Error
	}
	var parts []string
	if why, ok := r.Extra["peer_missing"]; ok {
		parts = append(parts, fmt.Sprintf("no peer: %v", why))
	}
	keys := make([]string, 0, len(r.Extra))
	for k := range r.Extra {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		switch k {
		case "dense_gflops", "copy_gbps", "fp32_tiled_gflops":
			parts = append(parts, fmt.Sprintf("%s %.1f", k, r.Extra[k]))
		case "tokens_per_s", "tokens_per_s_incl_warmup", "peer_tokens_per_s":
			parts = append(parts, fmt.Sprintf("%s %.0f", k, r.Extra[k]))
		case "final_write_s", "final_save_s":
			parts = append(parts, fmt.Sprintf("%s %.2f", k, r.Extra[k]))
		case "peak_rss_over_sum":
			parts = append(parts, fmt.Sprintf("peak RSS %.0f MiB = %.2fx weights+grads+moments+activations", r.Extra["peak_rss_mib"], r.Extra[k]))
		case "max_rel_diff_vs_peer":
			parts = append(parts, fmt.Sprintf("diff vs peer %.1e", r.Extra[k]))
		}
	}
	return strings.Join(parts, ", ")
}

// WriteFileAtomic writes data to path through a temporary file in the same
// folder, synced and renamed, so a crash never leaves half a file.
func WriteFileAtomic(path string, data []byte) error {
	return atomicfile.WriteFile(path, data, 0o644)
}

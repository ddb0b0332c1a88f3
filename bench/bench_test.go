package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseCPUInfo(t *testing.T) {
	tests := []struct {
		name      string
		info      string
		cores     int
		wantGHz   float64
		wantFlops float64
		wantPeak  float64
		wantModel string
	}{
		{
			name:  "avx512 with cpu MHz",
			info:  "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\ncpu MHz\t\t: 2600.000\nflags\t\t: fpu avx2 fma avx512f\n\nprocessor\t: 1\ncpu MHz\t\t: 2600.000\n",
			cores: 2, wantGHz: 2.6, wantFlops: 64, wantPeak: 332.8, wantModel: "Intel(R) Xeon(R) Processor",
		},
		{
			name:  "avx2 clock from the model name",
			info:  "model name\t: Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz\nflags\t: sse avx2 fma\n",
			cores: 6, wantGHz: 3.2, wantFlops: 32, wantPeak: 614.4, wantModel: "Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz",
		},
		{
			name:  "no clock, no vector flags",
			info:  "flags\t: sse sse2\n",
			cores: 4, wantGHz: 0, wantFlops: 8, wantPeak: 0,
		},
		{name: "empty file", info: "", cores: 1, wantFlops: 8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := parseCPUInfo([]byte(tt.info), tt.cores)
			if m.GHz != tt.wantGHz || m.FlopsPerCycle != tt.wantFlops {
				t.Fatalf("GHz %v FLOP/cycle %v, want %v and %v", m.GHz, m.FlopsPerCycle, tt.wantGHz, tt.wantFlops)
			}
			if d := m.PeakGFLOPS() - tt.wantPeak; d > 1e-9 || d < -1e-9 {
				t.Fatalf("peak %v, want %v", m.PeakGFLOPS(), tt.wantPeak)
			}
			if tt.wantModel != "" && m.CPUModel != tt.wantModel {
				t.Fatalf("model %q, want %q", m.CPUModel, tt.wantModel)
			}
			if m.GHz > 0 && m.ClockSource == "unknown" {
				t.Fatalf("clock %v GHz but source unknown", m.GHz)
			}
		})
	}
}

func TestMedianAndIters(t *testing.T) {
	if got := median([]float64{5, 1, 3}); got != 3 {
		t.Errorf("median odd = %v, want 3", got)
	}
	if got := median([]float64{4, 1, 3, 2}); got != 2.5 {
		t.Errorf("median even = %v, want 2.5", got)
	}
	if got := median(nil); got != 0 {
		t.Errorf("median empty = %v, want 0", got)
	}
	if got := itersFor(0.01, 0.2); got != 20 {
		t.Errorf("itersFor(0.01, 0.2) = %d, want 20", got)
	}
	if got := itersFor(1, 0.2); got != 1 {
		t.Errorf("itersFor(1, 0.2) = %d, want 1", got)
	}
	if got := itersFor(0, 0.2); got != 1 {
		t.Errorf("itersFor(0, 0.2) = %d, want 1", got)
	}
}

func TestRowJSONNames(t *testing.T) {
	var buf bytes.Buffer
	r := Row{Name: "fp32_gemm", Size: "8x8x8", GFLOPS: 1, GBps: 2, Peer: "p", PeerGFLOPS: 3, Ratio: 4, PeakGFLOPS: 5, FractionOfPeak: 0.5, Extra: map[string]any{"x": 1}}
	if err := WriteJSON(&buf, r); err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(buf.String(), "}\n") || strings.Count(buf.String(), "\n") != 1 {
		t.Fatalf("want one object on one line, got %q", buf.String())
	}
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"name", "size", "gflops", "gbps", "peer", "peer_gflops", "ratio", "peak_gflops", "fraction_of_peak", "extra"} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON lacks %q: %s", k, buf.String())
		}
	}
	buf.Reset()
	WriteJSON(&buf, Row{Name: "peak_rss"})
	if got := strings.TrimSpace(buf.String()); got != `{"name":"peak_rss"}` {
		t.Errorf("empty fields should be left out, got %s", got)
	}
}

func TestGEMMRow(t *testing.T) {
	r, err := GEMM(context.Background(), 96, Options{Reps: 2, Quick: true})
	if err != nil {
		t.Fatal(err)
	}
	if r.Name != "fp32_gemm" || r.Size != "96x96x96" || !(r.GFLOPS > 0) {
		t.Fatalf("row %+v", r)
	}
	if r.Peer == "" {
		if _, ok := r.Extra["peer_missing"]; !ok {
			t.Fatalf("no peer and no reason: %+v", r)
		}
		t.Logf("peer missing: %v", r.Extra["peer_missing"])
		return
	}
	if !(r.PeerGFLOPS > 0) || !(r.Ratio > 0) {
		t.Fatalf("peer measured but no figures: %+v", r)
	}
	if d := r.Extra["max_rel_diff_vs_peer"].(float64); d > 1e-5 {
		t.Fatalf("our product and OpenBLAS's differ by %g", d)
	}
	if _, err := GEMM(context.Background(), 0, Options{}); err == nil {
		t.Fatal("GEMM(0) succeeded")
	}
}

func TestRunEmitsEveryRow(t *testing.T) {
	step := func(ctx context.Context, preset string) (Row, error) {
		if preset == "broken" {
			return Row{}, errors.New("no such preset")
		}
		return Row{Name: "train_step", Size: preset, Extra: map[string]any{"tokens_per_s": 123.0}}, nil
	}
	var rows []Row
	opt := Options{Quick: true, Reps: 1, GEMMSizes: []int{32}, NoPeer: true, Step: step, StepPresets: []string{"tiny", "broken"}}
	if err := Run(context.Background(), opt, func(r Row) { rows = append(rows, r) }); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range rows {
		names = append(names, r.Name+":"+r.Size)
	}
	want := []string{"machine:", "fp32_gemm:32x32x32", "nf4_dequantize:1024x4096", "nf4_matmul:256x2048 * (2048x2048 NF4)^T", "train_step:tiny", "train_step:broken", "peak_rss:"}
	if strings.Join(names, "|") != strings.Join(want, "|") {
		t.Fatalf("rows\n%v\nwant\n%v", names, want)
	}
	if rows[5].Error != "no such preset" {
		t.Errorf("failed step row has Error %q", rows[5].Error)
	}
	if b, _ := rows[6].Extra["bytes"].(int64); b <= 0 {
		t.Errorf("peak RSS %v, want > 0", rows[6].Extra["bytes"])
	}
	for _, r := range rows[2:4] {
		if r.Error != "" {
			t.Logf("%s: %s (quant not ready?)", r.Name, r.Error)
			continue
		}
		if !(r.GFLOPS > 0 || r.GBps > 0) {
			t.Errorf("%s has no figure: %+v", r.Name, r)
		}
	}

	var buf bytes.Buffer
	tab := NewTable(&buf)
	for _, r := range rows {
		tab.Row(r)
	}
	if err := tab.Flush(); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, s := range []string{"fp32_gemm", "error: no such preset", "tokens_per_s 123", "machine:", "peak RSS:"} {
		if !strings.Contains(out, s) {
			t.Errorf("table lacks %q:\n%s", s, out)
		}
	}
}

func TestRunStopsWhenCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	n := 0
	err := Run(ctx, Options{Quick: true, NoPeer: true}, func(Row) { n++ })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v, want context.Canceled", err)
	}
	if n > 1 {
		t.Fatalf("%d rows after cancel, want at most the machine row", n)
	}
}

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "rows.jsonl")
	if err := WriteFileAtomic(path, []byte("one\n")); err != nil {
		t.Fatal(err)
	}
	if err := WriteFileAtomic(path, []byte("two\n")); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != "two\n" {
		t.Fatalf("file holds %q", b)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("temporary files left behind: %v", ents)
	}
	bad := filepath.Join(dir, "missing", "rows.jsonl")
	if err := WriteFileAtomic(bad, nil); err == nil || !strings.Contains(err.Error(), bad) {
		t.Fatalf("error %v should name %s", err, bad)
	}
}

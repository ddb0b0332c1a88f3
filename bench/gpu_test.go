package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/opencluster/opencluster/train"
	"github.com/opencluster/opencluster/train/backend"
)

func TestGPUPeaks(t *testing.T) {
	// Published dense figures, from SM count x boost clock, for cards whose
	// clocks are public: the table must reproduce them within 2%.
	tests := []struct {
		name      string
		g         GPUInfo
		dtype     string
		wantTF    float64
		wantGBps  float64 // 0: not checked
		wantNoneT bool
	}{
		{"A100 SXM bf16", GPUInfo{CC: "8.0", SMs: 108, ClockMHz: 1410, MemClockMHz: 1215, BusBits: 5120}, "bf16", 312, 1555, false},
		{"A100 SXM tf32", GPUInfo{CC: "8.0", SMs: 108, ClockMHz: 1410}, "tf32", 156, 0, false},
		{"A100 SXM fp32", GPUInfo{CC: "8.0", SMs: 108, ClockMHz: 1410}, "fp32", 19.5, 0, false},
		{"H100 SXM bf16", GPUInfo{CC: "9.0", SMs: 132, ClockMHz: 1830, MemClockMHz: 2619, BusBits: 5120}, "bf16", 989, 3352, false},
		{"H100 SXM fp32", GPUInfo{CC: "9.0", SMs: 132, ClockMHz: 1980}, "fp32", 67, 0, false},
		{"RTX 3090 fp16 (fp16 accumulate)", GPUInfo{CC: "8.6", SMs: 82, ClockMHz: 1695, MemClockMHz: 9751, BusBits: 384}, "fp16", 142, 936, false},
		{"RTX 3090 fp32", GPUInfo{CC: "8.6", SMs: 82, ClockMHz: 1695}, "fp32", 35.6, 0, false},
		{"T4 fp16", GPUInfo{CC: "7.5", SMs: 40, ClockMHz: 1590}, "fp16", 65, 0, false},
		{"T4 has no bf16", GPUInfo{CC: "7.5", SMs: 40, ClockMHz: 1590}, "bf16", 0, 0, true},
		{"RTX 4090 int8", GPUInfo{CC: "8.9", SMs: 128, ClockMHz: 2520}, "int8", 660, 0, false},
		{"unknown newer minor uses 8.9", GPUInfo{CC: "8.11", SMs: 128, ClockMHz: 2520}, "fp16", 330, 0, false},
		{"pre-Turing is unknown", GPUInfo{CC: "6.1", SMs: 28, ClockMHz: 1582}, "fp32", 0, 0, true},
		{"garbage capability", GPUInfo{CC: "sm_80", SMs: 1, ClockMHz: 1}, "fp32", 0, 0, true},
	}
	for _, tc := range tests {
		got := tc.g.PeakTFLOPS(tc.dtype)
		if tc.wantNoneT {
			if got != 0 {
				t.Errorf("%s: peak %.1f TFLOPS, want 0 (no such path)", tc.name, got)
			}
			continue
		}
		if math.Abs(got-tc.wantTF)/tc.wantTF > 0.02 {
			t.Errorf("%s: peak %.1f TFLOPS, want %.1f", tc.name, got, tc.wantTF)
		}
		if tc.wantGBps > 0 {
			if bw := tc.g.PeakGBps(); math.Abs(bw-tc.wantGBps)/tc.wantGBps > 0.02 {
				t.Errorf("%s: peak %.0f GB/s, want %.0f", tc.name, bw, tc.wantGBps)
			}
		}
	}
}

// fakeKernels answers like a card running at fixed fractions of its peak;
// int8 fails as on a backend without it.
type fakeKernels struct {
	g     GPUInfo
	calls []string
}

func (f *fakeKernels) BenchGEMM(dtype string, m, n, k, iters int) (float64, error) {
	f.calls = append(f.calls, fmt.Sprintf("gemm %s %dx%dx%d", dtype, m, n, k))
	if dtype == "int8" {
		return 0, errors.New("int8 GEMM not implemented")
	}
	return 0.5 * f.g.PeakTFLOPS(dtype), nil
}
func (f *fakeKernels) BenchCopy(bytes int) (float64, error) {
	f.calls = append(f.calls, "copy")
	return 0.9 * f.g.PeakGBps(), nil
}
func (f *fakeKernels) BenchNF4Dequant(n int) (float64, error) {
	f.calls = append(f.calls, "dequant")
	return 0.8 * 0.9 * f.g.PeakGBps(), nil
}
func (f *fakeKernels) BenchNF4Matmul(m, n, k int) (float64, error) {
	f.calls = append(f.calls, "nf4 matmul")
	return 0.25 * f.g.PeakTFLOPS("bf16"), nil
}

// memBackend is the CPU backend dressed as a GPU: it counts the floats
// allocated, so the peak is the model's own size.
type memBackend struct {
	backend.Backend
	alloc, peak uint64
	closed      bool
}

func (b *memBackend) Alloc(n int) backend.Buf {
	b.alloc += 4 * uint64(n)
	b.peak = max(b.peak, b.alloc)
	return b.Backend.Alloc(n)
}
func (b *memBackend) MemInfo() (uint64, uint64) { return 1 << 30, 2 << 30 }
func (b *memBackend) PeakBytes() uint64         { return b.peak }
func (b *memBackend) ResetPeak()                { b.peak = b.alloc }
func (b *memBackend) Close()                    { b.closed = true }

func tinyQLoRA() QLoRAPreset {
	return QLoRAPreset{Name: "micro", Config: train.Config{
		Model: train.ModelConfig{VocabSize: 64, Dim: 32, Layers: 2, Heads: 4, KVHeads: 2, HiddenDim: 64,
			MaxSeqLen: 32, RopeTheta: 10000, NormEps: 1e-5, TiedEmbeddings: true},
		Train: train.TrainConfig{SeqLen: 16, BatchSize: 2, GradAccum: 1, Steps: 10, LR: 1e-3, MinLR: 1e-4,
			WeightDecay: 0.01, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, GradClip: 1, EvalEvery: 5, EvalBatches: 1,
			ValFraction: 0.1, Seed: 3, Threads: 1},
		LoRA:  train.LoRAConfig{Rank: 4, Alpha: 8, Targets: train.LinearNames},
		Quant: train.QuantConfig{Format: "nf4", BlockSize: 64, DoubleQuant: true},
	}}
}

func TestRunGPURows(t *testing.T) {
	g := GPUInfo{Name: "Fake A100", CC: "8.0", SMs: 108, ClockMHz: 1410, MemClockMHz: 1215, BusBits: 5120}
	k := &fakeKernels{g: g}
	var opened []*memBackend
	opt := GPUOptions{Info: g, Kernels: k, Quick: true, Steps: 1, QLoRA: []QLoRAPreset{tinyQLoRA()},
		Open: func() (GPUBackend, error) {
			b := &memBackend{Backend: backend.NewCPU(1)}
			opened = append(opened, b)
			return b, nil
		}}
	var rows []Row
	if err := RunGPU(context.Background(), opt, func(r Row) { rows = append(rows, r) }); err != nil {
		t.Fatal(err)
	}
	byName := map[string][]Row{}
	for _, r := range rows {
		byName[r.Name] = append(byName[r.Name], r)
	}
	if gr := byName["gpu"]; len(gr) != 1 || gr[0].Extra["name"] != "Fake A100" || math.Abs(gr[0].PeakGFLOPS-312e3)/312e3 > 0.02 {
		t.Errorf("gpu row %+v", gr)
	}
	for _, dt := range []string{"fp32", "tf32", "bf16", "fp16"} {
		rs := byName["gpu_gemm_"+dt]
		if len(rs) != 1 || rs[0].Size != "4096x4096x4096" || rs[0].Error != "" {
			t.Fatalf("%s GEMM rows %+v", dt, rs)
		}
		if f := rs[0].FractionOfPeak; math.Abs(f-0.5) > 1e-9 {
			t.Errorf("%s GEMM fraction of peak %v, want 0.5", dt, f)
		}
	}
	if rs := byName["gpu_gemm_int8"]; len(rs) != 1 || !strings.Contains(rs[0].Error, "int8 GEMM not implemented") {
		t.Errorf("int8 row %+v, want the backend's error", rs)
	}
	if rs := byName["gpu_nf4_dequantize"]; len(rs) != 1 || math.Abs(rs[0].Extra["fraction_of_copy"].(float64)-0.8) > 1e-9 {
		t.Errorf("dequantize row %+v, want fraction_of_copy 0.8", rs)
	}
	if rs := byName["gpu_copy"]; len(rs) != 1 || math.Abs(rs[0].Extra["fraction_of_peak_bw"].(float64)-0.9) > 1e-9 {
		t.Errorf("copy row %+v", rs)
	}
	if rs := byName["gpu_nf4_matmul"]; len(rs) != 1 || math.Abs(rs[0].FractionOfPeak-0.25) > 1e-9 {
		t.Errorf("nf4 matmul row %+v", rs)
	}
	q := byName["gpu_qlora_step"]
	if len(q) != 1 || q[0].Error != "" || q[0].Size != "micro" {
		t.Fatalf("qlora rows %+v", q)
	}
	if tok, _ := q[0].Extra["tokens_per_s"].(float64); !(tok > 0) {
		t.Errorf("tokens/s %v", q[0].Extra["tokens_per_s"])
	}
	peak, _ := q[0].Extra["peak_bytes"].(uint64)
	if peak == 0 || peak > 4<<20 {
		t.Errorf("peak %d bytes for a model of a few thousand floats", peak)
	}
	if len(opened) != 1 || !opened[0].closed {
		t.Errorf("QLoRA backends: %d opened, closed %v; want one, closed", len(opened), len(opened) > 0 && opened[0].closed)
	}
}

func TestRunGPUTuringHasNoBF16Row(t *testing.T) {
	g := GPUInfo{Name: "Fake T4", CC: "7.5", SMs: 40, ClockMHz: 1590, MemClockMHz: 5001, BusBits: 256}
	k := &fakeKernels{g: g}
	var rows []Row
	if err := RunGPU(context.Background(), GPUOptions{Info: g, Kernels: k, Quick: true}, func(r Row) { rows = append(rows, r) }); err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		if r.Name == "gpu_gemm_bf16" && !strings.Contains(r.Error, "no bf16") {
			t.Errorf("bf16 on sm_75: %+v, want an error row", r)
		}
	}
	for _, c := range k.calls {
		if strings.HasPrefix(c, "gemm bf16") || strings.HasPrefix(c, "gemm tf32") {
			t.Errorf("asked the kernels for %q on a card without it", c)
		}
	}
}

func TestRunGPUStopsOnCancel(t *testing.T) {
	g := GPUInfo{CC: "8.6", SMs: 1, ClockMHz: 1}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	n := 0
	err := RunGPU(ctx, GPUOptions{Info: g, Kernels: &fakeKernels{g: g}}, func(Row) { n++ })
	if !errors.Is(err, context.Canceled) || n != 1 {
		t.Errorf("cancelled: err %v after %d rows, want context.Canceled after the gpu row", err, n)
	}
	if err := RunGPU(context.Background(), GPUOptions{Info: g}, func(Row) {}); err == nil {
		t.Error("RunGPU without kernels: no error")
	}
}

func TestQLoRAStepBadInput(t *testing.T) {
	be := backend.NewCPU(1)
	p := tinyQLoRA()
	if _, err := QLoRAStep(context.Background(), be, p, 0); err == nil || !strings.Contains(err.Error(), "micro") {
		t.Errorf("0 steps: error %v, want it to name the preset", err)
	}
	p.Config.LoRA.Rank = 0
	if _, err := QLoRAStep(context.Background(), be, p, 1); err == nil || !strings.Contains(err.Error(), "micro") {
		t.Errorf("rank 0: error %v, want it to name the preset", err)
	}
	// A plain CPU backend reports no device memory: the row has no peak.
	r, err := QLoRAStep(context.Background(), be, tinyQLoRA(), 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := r.Extra["peak_bytes"]; ok || r.Extra["backend"] != "cpu" {
		t.Errorf("CPU row extra %v", r.Extra)
	}
}

//go:build cuda

package main

// The opencluster-cuda build: commands open the CUDA backend (kernels/) on
// the GPU that device selection picks, `devices --probe` proves a GPU can
// compute, and `bench` on a GPU measures the GPU rows. This build never
// re-execs (inCUDABuild).

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"os"
	"strings"

	"github.com/opencluster/opencluster/bench"
	"github.com/opencluster/opencluster/device"
	"github.com/opencluster/opencluster/kernels"
	"github.com/opencluster/opencluster/train"
	"github.com/opencluster/opencluster/train/backend"
	"github.com/spf13/cobra"
)

// benchQLoRAEnv overrides the QLoRA step presets of the GPU bench, a comma
// list (bench/gpu-check.sh runs llama-7b on its own this way).
const benchQLoRAEnv = "OPENCLUSTER_BENCH_QLORA"

// defaultQLoRAPresets are the model shapes of the GPU bench's QLoRA rows.
var defaultQLoRAPresets = []string{"gpt2-124m", "llama-1b"}

func init() {
	inCUDABuild = true
	cudaProbe = probeCUDA
}

// probeCUDA opens the first GPU and round-trips a small buffer through
// device memory: exit 0 from `devices --probe` means kernels can run here.
func probeCUDA(ctx context.Context) error {
	c, err := bench.OpenCUDA(0)
	if err != nil {
		return fmt.Errorf("opening cuda:0: %w", err)
	}
	defer c.Close()
	want := []float32{1, -2, 3.5, float32(math.Pi)}
	buf := c.Alloc(len(want))
	c.Upload(buf, want)
	c.Scale(buf, 2)
	got := make([]float32, len(want))
	c.Download(got, buf)
	for i := range want {
		if got[i] != 2*want[i] {
			return fmt.Errorf("cuda:0: scale by 2 of %v gave %v", want, got)
		}
	}
	return ctx.Err()
}

// gpuFor resolves a --device value to a CUDA ordinal in this build, or -1
// for the CPU (with the reason logged). --device cuda without a GPU is an
// error. The GPU NVML chose is found among CUDA's devices by its PCI
// address, so the card whose memory and sensors were read is the one
// opened, whatever CUDA_DEVICE_ORDER and CUDA_VISIBLE_DEVICES say.
func gpuFor(ctx context.Context, dev string) (device.Request, int, error) {
	req, err := device.ParseRequest(dev)
	if err != nil {
		return req, -1, err
	}
	if req.Kind == "cpu" {
		return req, -1, nil
	}
	d, err := decideDispatch(ctx, liveDispatchInput(req))
	if err != nil {
		return req, -1, err
	}
	if d.Kind != "cuda" {
		slog.Info(d.Reason)
		return req, -1, nil
	}
	slog.Info("running on " + d.Reason)
	if d.PCIBusID == "" {
		return req, d.Index, nil
	}
	ids, err := kernels.PCIBusIDs()
	if err != nil {
		return req, -1, err
	}
	for i, id := range ids {
		if device.SamePCIBusID(id, d.PCIBusID) {
			return req, i, nil
		}
	}
	return req, -1, fmt.Errorf("--device %s: NVML chose the GPU at PCI %s, which CUDA does not see (CUDA sees %v; %s=%q)",
		req, d.PCIBusID, ids, device.CUDAVisibleEnv, os.Getenv(device.CUDAVisibleEnv))
}

// newBackend opens the CUDA backend on the selected GPU, or the CPU backend
// for --device cpu and for auto without a usable GPU.
func newBackend(dev string, threads int) (backend.Backend, error) {
	if threads < 0 {
		return nil, fmt.Errorf("threads %d: must be 0 (every core) or more", threads)
	}
	req, idx, err := gpuFor(context.Background(), dev)
	if err != nil {
		return nil, err
	}
	if idx < 0 {
		return backend.NewCPU(threads), nil
	}
	c, err := kernels.NewCUDA(idx)
	if err != nil {
		if req.Kind == "cuda" {
			return nil, fmt.Errorf("--device %s: opening cuda:%d: %w", req, idx, err)
		}
		slog.Info(fmt.Sprintf("running on CPU: opening cuda:%d failed: %v", idx, err))
		return backend.NewCPU(threads), nil
	}
	gpuPCIBusIDs[c.Name()] = c.PCIBusID()
	return c, nil
}

// benchGPU runs `bench` on a GPU when --device selects one, printing the
// GPU rows in the CPU bench's formats (table, or --json rows; --out). It
// reports false when the request lands on the CPU, so the CPU rows run.
func benchGPU(cmd *cobra.Command, dev string) (bool, error) {
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	_, idx, err := gpuFor(ctx, dev)
	if err != nil {
		return true, err
	}
	if idx < 0 {
		return false, nil
	}
	f := cmd.Flags()
	asJSON, _ := f.GetBool("json")
	quick, _ := f.GetBool("quick")
	out, _ := f.GetString("out")

	info, err := bench.CUDAInfo(idx)
	if err != nil {
		return true, fmt.Errorf("bench: %w", err)
	}
	be, err := bench.OpenCUDA(idx)
	if err != nil {
		return true, fmt.Errorf("bench: opening cuda:%d: %w", idx, err)
	}
	defer be.Close()
	kern, err := bench.KernelsOf(be)
	if err != nil {
		return true, err
	}
	if free, total := be.MemInfo(); total > 0 {
		info.MemBytes = total
		slog.Debug("bench: device memory", "free_gib", float64(free)/(1<<30), "total_gib", float64(total)/(1<<30))
	}
	names := defaultQLoRAPresets
	if env := strings.TrimSpace(os.Getenv(benchQLoRAEnv)); env != "" {
		names = strings.Split(env, ",")
	}
	var presets []bench.QLoRAPreset
	for _, n := range names {
		n = strings.TrimSpace(n)
		if n == "" {
			continue
		}
		var cfg train.Config
		if err := loadConfig(n, f, nil, &cfg); err != nil {
			return true, fmt.Errorf("%s %q: %w", benchQLoRAEnv, n, err)
		}
		presets = append(presets, bench.QLoRAPreset{Name: n, Config: cfg})
	}
	opt := bench.GPUOptions{
		Info: info, Kernels: kern, Quick: quick, QLoRA: presets,
		Open: func() (bench.GPUBackend, error) { return bench.OpenCUDA(idx) },
	}
	return true, emitRows(cmd, asJSON, out, "bench: measuring the GPU (a few minutes; --quick for less)...", func(emit func(bench.Row)) error {
		return bench.RunGPU(ctx, opt, emit)
	})
}

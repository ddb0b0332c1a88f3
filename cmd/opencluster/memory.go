package main

// --max-memory: the memory a training job may plan for (train.PlanMemory).
// "auto" is what the machine has free now minus a margin: available RAM on
// the CPU, free device memory from NVML on a GPU.

import (
	"context"
	"fmt"
	"runtime/debug"
	"strings"

	"github.com/opencluster/opencluster/device"
	"github.com/spf13/pflag"
)

const maxMemoryHelp = "memory the job may use: a size (6GiB, 5.5G, 8GB) or auto (free RAM on the CPU, free VRAM from NVML on a GPU, minus a margin); picks the micro-batch and activation checkpointing, and a job that cannot fit stops with what it needs"

func addMaxMemoryFlag(f *pflag.FlagSet) { f.String("max-memory", "auto", maxMemoryHelp) }

// maxMemory resolves --max-memory for a job on compute (a backend name,
// "cpu" or "cuda:N") and says where the figure came from.
func maxMemory(ctx context.Context, flag, compute string) (int64, string, error) {
	if v := strings.TrimSpace(flag); v != "" && v != "auto" {
		b, err := device.ParseBytes(v)
		if err != nil {
			return 0, "", fmt.Errorf("--max-memory: %w", err)
		}
		return b, "--max-memory " + v, nil
	}
	if idx, ok := nvmlIndexFor(compute); ok {
		free, total, err := device.GPUFreeMemory(newNVML(), idx)
		if err != nil {
			return 0, "", fmt.Errorf("--max-memory auto: reading GPU %d's free memory from NVML: %w (give --max-memory a size)", idx, err)
		}
		return device.GPUBudget(free), fmt.Sprintf("auto: %.1f of %.1f GiB free on GPU %d, minus a margin", gib(free), gib(total), idx), nil
	}
	m, err := device.HostCPU{}.Memory(ctx)
	if err != nil {
		return 0, "", fmt.Errorf("--max-memory auto: reading available RAM: %w (give --max-memory a size)", err)
	}
	return device.HostBudget(m.Available), fmt.Sprintf("auto: %.1f GiB of RAM available, minus a margin", gib(m.Available)), nil
}

func gib(b uint64) float64 { return float64(b) / (1 << 30) }

// limitHeap makes the Go garbage collector work harder as the heap nears
// budget (unless GOMEMLIMIT is set): a CPU job's memory is its heap.
func limitHeap(budget int64) {
	if budget > 0 && debug.SetMemoryLimit(-1) == 1<<63-1 {
		debug.SetMemoryLimit(budget)
	}
}

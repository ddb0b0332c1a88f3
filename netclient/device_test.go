package netclient

import (
	"context"
	"fmt"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencluster/opencluster/train"
	"github.com/opencluster/opencluster/train/backend"
	"github.com/opencluster/opencluster/train/data"
)

// namedBackend is the CPU backend under another name (a stand-in for the
// CUDA backend, which needs a GPU), counting what it is asked to hold.
type namedBackend struct {
	backend.Backend
	name   string
	allocs atomic.Int64
}

func (b *namedBackend) Name() string { return b.name }

func (b *namedBackend) Alloc(n int) backend.Buf {
	b.allocs.Add(1)
	return b.Backend.Alloc(n)
}

// TestWorkerTrainsOnGivenBackend: rounds train on Options.Backend (the
// dispatched device), planned for device memory: with a budget that fits
// only micro-batches of one sequence on it, the trainer runs those.
func TestWorkerTrainsOnGivenBackend(t *testing.T) {
	dir := t.TempDir()
	_, base := writeBase(t, dir)
	cfg := testConfig()
	fake := newFake(t, base, AdapterShapes(cfg.Model, cfg.LoRA), "topk:0.1")
	srv := httptest.NewServer(fake)
	defer srv.Close()
	w := startWorker(t, srv, filepath.Join(dir, "state"), writeData(t, dir), &fakeClock{now: time.Unix(0, 0)}, ReporterFunc(func(Event) {}))
	be := &namedBackend{Backend: backend.NewCPU(1), name: "cuda:3"}
	w.o.Backend = be
	B, T := cfg.Train.BatchSize, cfg.Train.SeqLen
	job := train.MemoryJob{Model: cfg.Model, Mode: train.ModeQLoRA, LoRA: cfg.LoRA, Quant: cfg.Quant,
		MicroBatch: 1, Batch: B, SeqLen: T, CUDA: true}
	one, err := train.EstimateMemory(job)
	if err != nil {
		t.Fatal(err)
	}
	whole := job
	whole.MicroBatch = B
	if all, _ := train.EstimateMemory(whole); B < 2 || all.Device <= one.Device {
		t.Fatalf("batch %d: the whole batch (%d) does not need more than one sequence (%d)", B, all.Device, one.Device)
	}
	w.o.MaxRounds = 1
	w.o.Limits.MaxMemoryBytes = one.Device
	if err := w.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(fake.updates) != 1 || be.allocs.Load() == 0 {
		t.Fatalf("%d updates, %d allocations on the given backend", len(fake.updates), be.allocs.Load())
	}
	m := w.trainer.Model()
	if m.Backend().Name() != "cuda:3" || m.MicroBatch() != 1 {
		t.Errorf("the trainer runs on %q in micro-batches of %d, want cuda:3 and 1", m.Backend().Name(), m.MicroBatch())
	}
}

// The worker's trainer runs the frozen base in train.compute_dtype, as
// `train` does: before, it never applied the setting, so a worker trained
// in fp32 where `train` used bf16 (and a bad value went unnoticed).
func TestTrainerAppliesComputeDType(t *testing.T) {
	dir := t.TempDir()
	path, _ := writeBase(t, dir)
	cfg := testConfig()
	want, err := backend.ApplyComputeDType(backend.NewCPU(1), "auto")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ set, want string }{{"auto", want}, {"", want}, {"fp32", "fp32"}} {
		be := backend.NewCPU(1)
		if want == "bf16" && c.want == "fp32" {
			be.(backend.FrozenDTyper).SetFrozenDType("bf16") // the setting must override what the backend had
		}
		cfg.Train.ComputeDType = c.set
		tr, err := NewTrainerOn(cfg, path, be)
		if err != nil {
			t.Fatalf("compute_dtype %q: %v", c.set, err)
		}
		if got := be.(backend.FrozenDTyper).FrozenDType(); got != c.want || tr.ComputeDType() != c.want {
			t.Errorf("compute_dtype %q: the backend runs %s (trainer says %s), want %s", c.set, got, tr.ComputeDType(), c.want)
		}
	}
	cfg.Train.ComputeDType = "fp8"
	if _, err := NewTrainerOn(cfg, path, backend.NewCPU(1)); err == nil || !strings.Contains(err.Error(), "compute_dtype") {
		t.Fatalf("compute_dtype fp8: %v, want an error naming compute_dtype", err)
	}
}

// Rounds on one trainer equal rounds on a fresh trainer each, bit for bit:
// reusing the adapters' buffers and activations between rounds (instead
// of re-enabling LoRA) must leave no state behind but the new adapter.
func TestRoundsReuseTrainerExactly(t *testing.T) {
	for _, host := range []bool{false, true} { // AdamW moments on the device, or in host memory
		t.Run(fmt.Sprintf("host_adamw=%v", host), func(t *testing.T) { roundsReuseTrainer(t, host) })
	}
}

func roundsReuseTrainer(t *testing.T, hostAdamW bool) {
	dir := t.TempDir()
	path, _ := writeBase(t, dir)
	cfg := testConfig()
	ds, err := data.Open(data.Options{Dir: writeData(t, dir), SeqLen: cfg.Train.SeqLen, BatchSize: cfg.Train.BatchSize,
		ValFraction: cfg.Train.ValFraction, Seed: cfg.Train.Seed})
	if err != nil {
		t.Fatal(err)
	}
	defer ds.Close()
	reused, err := NewTrainer(cfg, path, 1)
	if err != nil {
		t.Fatal(err)
	}
	global, err := reused.InitialAdapter()
	if err != nil {
		t.Fatal(err)
	}
	for round := uint64(1); round <= 3; round++ {
		fresh, err := NewTrainer(cfg, path, 1)
		if err != nil {
			t.Fatal(err)
		}
		reused.Model().SetHostOptimizer(hostAdamW)
		fresh.Model().SetHostOptimizer(hostAdamW)
		opts := LocalOptions{Steps: 3, LR: 1e-2, Stream: round * 1000}
		a, err := reused.TrainLocal(context.Background(), ds, global, opts)
		if err != nil {
			t.Fatal(err)
		}
		b, err := fresh.TrainLocal(context.Background(), ds, global, opts)
		if err != nil {
			t.Fatal(err)
		}
		if a.Loss != b.Loss || !slices.Equal(a.Delta, b.Delta) {
			t.Fatalf("round %d: the reused trainer's loss %v and delta differ from a fresh trainer's (%v)", round, a.Loss, b.Loss)
		}
		for i, d := range a.Delta {
			global[i] += d / 2 // the next round starts from a moved adapter
		}
	}
}

package netclient

import (
	"context"
	"net/http/httptest"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencluster/opencluster/train"
	"github.com/opencluster/opencluster/train/backend"
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

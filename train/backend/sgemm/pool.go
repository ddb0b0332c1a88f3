package sgemm

import (
	"runtime"
	"sync"
	"sync/atomic"
)

// The thread pool. Starting a goroutine per product, and parking it after,
// costs a wake-up of an idle OS thread on every call: tens to hundreds of
// microseconds on a virtual machine, a tenth of a 1024-cubed product on
// two cores. Training calls Sgemm back to back, so helpers instead spin
// for a short while after each job, watching for the next one, and only
// then park. The spin is bounded (about helperSpins loads, a fraction of a
// millisecond) and yields the processor now and then, so an idle process
// goes quiet almost at once.

// helperSpins bounds a helper's busy wait for its next job.
const helperSpins = 300000

type task struct {
	f   func(int)
	id  int
	bar *barrier
}

type helper struct {
	job    atomic.Pointer[task]
	parked atomic.Bool
	wake   chan struct{}
}

var (
	poolMu   sync.Mutex
	poolIdle []*helper
)

func (h *helper) loop() {
	for {
		var tk *task
		for i := 0; i < helperSpins; i++ {
			if tk = h.job.Swap(nil); tk != nil {
				break
			}
			if i%4096 == 4095 {
				runtime.Gosched()
			}
		}
		if tk == nil {
			h.parked.Store(true)
			// Re-check after announcing the park: a job stored before the
			// store above is seen here; one stored after it sends a wake.
			if tk = h.job.Swap(nil); tk == nil {
				<-h.wake
				h.parked.Store(false)
				continue
			}
			h.parked.Store(false)
		}
		tk.f(tk.id)
		tk.bar.wait()
	}
}

// give hands h a job, waking it if it parked.
func (h *helper) give(tk *task) {
	h.job.Store(tk)
	if h.parked.Load() {
		select {
		case h.wake <- struct{}{}:
		default:
		}
	}
}

func getHelpers(n int) []*helper {
	poolMu.Lock()
	defer poolMu.Unlock()
	hs := make([]*helper, 0, n)
	for len(hs) < n && len(poolIdle) > 0 {
		hs = append(hs, poolIdle[len(poolIdle)-1])
		poolIdle = poolIdle[:len(poolIdle)-1]
	}
	for len(hs) < n {
		h := &helper{wake: make(chan struct{}, 1)}
		go h.loop()
		hs = append(hs, h)
	}
	return hs
}

func putHelpers(hs []*helper) {
	poolMu.Lock()
	poolIdle = append(poolIdle, hs...)
	poolMu.Unlock()
}

// Parallel runs f(0) .. f(t-1) at once on the calling goroutine and t-1
// pool helpers and returns when all are done. The CPU backend runs its
// row-parallel loops on it too, so the helpers that spin between products
// pick that work up at once instead of competing with fresh goroutines for
// the cores.
func Parallel(t int, f func(i int)) { parallel(max(t, 1), f) }

// parallel runs f(0) .. f(t-1) at once, f(0) on the calling goroutine and
// the rest on pool helpers, and returns when all are done.
func parallel(t int, f func(i int)) {
	if t == 1 {
		f(0)
		return
	}
	hs := getHelpers(t - 1)
	bar := newBarrier(t)
	for i, h := range hs {
		h.give(&task{f: f, id: i + 1, bar: bar})
	}
	f(0)
	bar.wait()
	putHelpers(hs)
}

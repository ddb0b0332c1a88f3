package sgemm

import (
	"sync"
	"sync/atomic"
)

// engine is one fp32 kernel family: its register tile and its two blocked
// steps. The scheduler below cuts the product into slices and threads the
// same way for every engine (and for the bf16 products, see bf16.go).
type engine struct {
	mr, nr int
	// packB packs op(B)[pc:pc+kc, j0:j0+nc] into nr-wide panels at dst.
	packB func(transB bool, b []float32, ldb, pc, kc, j0, nc int, dst []float32)
	// macro computes C[i0:i1, j0:j1] = alpha*op(A)[i0:i1, pc:pc+kc]*packedB
	// + beta*C, packing A into abuf in blockMC-row blocks.
	macro func(transA bool, a []float32, lda, i0, i1, pc, kc int, packedB []float32, j0, j1 int, alpha, beta float32, c []float32, ldc int, abuf []float32)
}

// drive runs an fp32 product on t threads through the scheduler.
func (e *engine) drive(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int, t int) {
	p := blocked{
		m: m, n: n, k: k, mr: e.mr, nr: e.nr, kcb: depthBlock(m, n), beta: beta,
		panelFloats: func(kc int) int { return kc * e.nr },
		packB: func(pc, kc, j0, nc int, dst []float32) {
			e.packB(transB, b, ldb, pc, kc, j0, nc, dst)
		},
		macro: func(i0, i1, pc, kc int, packedB []float32, j0, j1 int, beta float32, abuf []float32) {
			e.macro(transA, a, lda, i0, i1, pc, kc, packedB, j0, j1, alpha, beta, c, ldc, abuf)
		},
	}
	p.run(t)
}

// blocked is one product as the scheduler sees it: C (m x n) += a product
// of depth k, cut into NC-wide column blocks and kcb-deep slices of k; for
// each slice, B's panels are packed once (packB) and shared by the threads,
// and macro multiplies a rectangle of C against them, packing its rows of A.
type blocked struct {
	m, n, k int
	mr, nr  int
	kcb     int     // depth of one slice
	beta    float32 // applied by the first slice of each column block
	// panelFloats is the size, in float32 slots, of one packed nr-wide
	// panel of depth kc (fp32: kc*nr; bf16 pairs: half that, rounded up).
	panelFloats func(kc int) int
	packB       func(pc, kc, j0, nc int, dst []float32)
	macro       func(i0, i1, pc, kc int, packedB []float32, j0, j1 int, beta float32, abuf []float32)
}

// slice is one (column block, depth slice) step of a product.
type slice struct {
	jc, nc, pc, kc int
	first          bool // first slice of its column block: beta applies
	units          int  // rectangles of C: bands x groups
	bands, groups  int
	panels, chunks int // B panels, and packing chunks of chunkPanels
	chunkPanels    int
	// claim counters and completion counts; see run.
	packNext, packDone atomic.Int32
	unitNext, unitDone atomic.Int32
}

// run computes the product on t threads without a barrier per slice.
//
// Each slice's B panels are packed in chunks that threads claim from a
// counter, into one of two buffers (slices alternate), and each slice's C
// is cut into rectangles (row bands x column groups) that threads also
// claim from a counter. A thread that has no rectangle left in slice s goes
// straight on to pack slice s+1 while the others finish s, so packing
// overlaps compute and the threads wait on each other only when one of them
// is held back for longer than the packing takes. Three waits keep it
// right: a rectangle waits until slice s's B is packed whole; it waits
// until the same rectangle of slice s-1 is done (C accumulates slice after
// slice); and packing slice s waits until slice s-2, the last user of its
// buffer, is done. Every element of C is summed in the same order, slice by
// slice, whoever computes it: results repeat bit for bit for any thread
// count and any timing.
func (p *blocked) run(t int) {
	ncb := min(p.n, blockNC)
	kcb := min(p.k, p.kcb)
	panelsMax := (ncb + p.nr - 1) / p.nr
	ws := getWorkspace(t, panelsMax*p.panelFloats(kcb))
	defer putWorkspace(ws)

	var slices []*slice
	maxUnits := 0
	for jc := 0; jc < p.n; jc += blockNC {
		nc := min(blockNC, p.n-jc)
		bands, groups := p.rectangles(nc, t)
		panels := (nc + p.nr - 1) / p.nr
		cp := max(1, (panels+4*t-1)/(4*t))
		for pc := 0; pc < p.k; pc += p.kcb {
			slices = append(slices, &slice{
				jc: jc, nc: nc, pc: pc, kc: min(p.kcb, p.k-pc), first: pc == 0,
				units: bands * groups, bands: bands, groups: groups,
				panels: panels, chunkPanels: cp, chunks: (panels + cp - 1) / cp,
			})
		}
		maxUnits = max(maxUnits, bands*groups)
	}
	// done[u] is one more than the last slice in which rectangle u of the
	// current column block was finished.
	done := make([]atomic.Int32, maxUnits)
	tilesM := (p.m + p.mr - 1) / p.mr
	prog := newProgress()

	parallel(t, func(id int) {
		abuf := ws.a[id]
		for s, sl := range slices {
			buf := ws.b[s%2]
			if s >= 2 {
				prev := slices[s-2]
				prog.wait(func() bool { return prev.unitDone.Load() == int32(prev.units) })
			}
			pf := p.panelFloats(sl.kc)
			for {
				ch := int(sl.packNext.Add(1)) - 1
				if ch >= sl.chunks {
					break
				}
				lo, hi := ch*sl.chunkPanels, min((ch+1)*sl.chunkPanels, sl.panels)
				j0, j1 := sl.jc+lo*p.nr, min(sl.jc+hi*p.nr, sl.jc+sl.nc)
				p.packB(sl.pc, sl.kc, j0, j1-j0, buf[lo*pf:])
				sl.packDone.Add(1)
				prog.done()
			}
			prog.wait(func() bool { return sl.packDone.Load() == int32(sl.chunks) })
			beta := float32(1)
			if sl.first {
				beta = p.beta
			}
			for {
				u := int(sl.unitNext.Add(1)) - 1
				if u >= sl.units {
					break
				}
				if !sl.first {
					prog.wait(func() bool { return done[u].Load() >= int32(s) })
				}
				band, group := u/sl.groups, u%sl.groups
				tlo, thi := split(tilesM, sl.bands, band)
				plo, phi := split(sl.panels, sl.groups, group)
				i0, i1 := tlo*p.mr, min(thi*p.mr, p.m)
				j0, j1 := sl.jc+plo*p.nr, min(sl.jc+phi*p.nr, sl.jc+sl.nc)
				if i0 < i1 && j0 < j1 {
					p.macro(i0, i1, sl.pc, sl.kc, buf[plo*pf:], j0, j1, beta, abuf)
				}
				markDone(&done[u], int32(s+1))
				sl.unitDone.Add(1)
				prog.done()
			}
		}
	})
}

// markDone raises *d to s unless it is already past it. Rectangle u of the
// first slice of a new column block need not wait for rectangle u of the
// previous block's last slice (they write different columns), so the two
// can finish in either order; a plain store could then lower the count
// and leave the next slice waiting forever.
func markDone(d *atomic.Int32, s int32) {
	for {
		old := d.Load()
		if old >= s || d.CompareAndSwap(old, s) {
			return
		}
	}
}

// rectangles cuts an m x nc block of C into bands of rows times groups of
// column panels: at least unitsPerThread rectangles per thread when the
// shape allows (so a held-back thread's share is small), bands of at most
// blockMC rows (the packed A block), and columns split only when C is too
// short to give every thread rows.
func (p *blocked) rectangles(nc, t int) (bands, groups int) {
	tilesM := (p.m + p.mr - 1) / p.mr
	panels := (nc + p.nr - 1) / p.nr
	if t == 1 {
		return (tilesM*p.mr + blockMC - 1) / blockMC, 1
	}
	want := unitsPerThread * t
	bands = min(tilesM, max(want, (tilesM*p.mr+blockMC-1)/blockMC))
	if bands >= want {
		return bands, 1
	}
	groups = min(panels, (want+bands-1)/bands)
	return bands, max(1, groups)
}

// unitsPerThread is how many rectangles of C each thread's share of a slice
// is cut into: more balance better when a thread is held up, fewer reuse
// each packed B panel over more rows of A.
const unitsPerThread = 4

// progress lets the threads of one product wait for each other: a waiter
// spins for a few microseconds (on a quiet machine the other thread gets
// there that fast, and parking and waking a thread costs more), then sleeps
// until the next piece of work is marked done, so a thread that waits on
// one the OS has pushed off its core hands the core over instead of
// burning it.
type progress struct {
	mu      sync.Mutex
	cond    *sync.Cond
	waiters atomic.Int32
}

// waitSpins bounds the busy wait: about a tenth of a millisecond of loads,
// longer than the waits of an unloaded machine (a packing chunk, the other
// thread's last rectangle), so a waiter rarely gives up its core there.
const waitSpins = 1 << 17

func newProgress() *progress {
	p := &progress{}
	p.cond = sync.NewCond(&p.mu)
	return p
}

// wait returns once cond holds. cond reads atomics that the other threads
// update before calling done.
func (p *progress) wait(cond func() bool) {
	for i := 0; i < waitSpins; i++ {
		if cond() {
			return
		}
	}
	p.mu.Lock()
	p.waiters.Add(1)
	for !cond() {
		p.cond.Wait()
	}
	p.waiters.Add(-1)
	p.mu.Unlock()
}

// done wakes the sleeping waiters after a piece of work is finished (its
// atomics already updated).
func (p *progress) done() {
	if p.waiters.Load() == 0 {
		return
	}
	p.mu.Lock()
	p.cond.Broadcast()
	p.mu.Unlock()
}

// barrier holds t goroutines until all have arrived. A waiter first spins
// for a few microseconds (on a quiet machine the others arrive that fast,
// and parking a thread and waking it again costs more), then sleeps on a
// condition variable so an oversubscribed machine gets the core back.
type barrier struct {
	n     int32
	count atomic.Int32
	gen   atomic.Uint32
	mu    sync.Mutex
	cond  *sync.Cond
}

// barrierSpins bounds the busy wait: about a tenth of a millisecond.
const barrierSpins = 1 << 17

func newBarrier(n int) *barrier {
	b := &barrier{n: int32(n)}
	b.cond = sync.NewCond(&b.mu)
	return b
}

func (b *barrier) wait() {
	if b.n == 1 {
		return
	}
	g := b.gen.Load()
	if b.count.Add(1) == b.n {
		b.mu.Lock()
		b.count.Store(0)
		b.gen.Add(1)
		b.cond.Broadcast()
		b.mu.Unlock()
		return
	}
	for i := 0; i < barrierSpins; i++ {
		if b.gen.Load() != g {
			return
		}
	}
	b.mu.Lock()
	for b.gen.Load() == g {
		b.cond.Wait()
	}
	b.mu.Unlock()
}

// workspace holds the packing buffers: two packed B slices shared by the
// threads (alternating, see run) and one packed A block per thread, all
// 64-byte aligned.
type workspace struct {
	a [][]float32
	b [2][]float32
}

// Workspaces are kept on a short free list rather than in a sync.Pool: a
// pool is emptied at every garbage collection, and re-allocating megabytes
// of buffers (and faulting their pages in) after each one cost a visible
// share of a mid-sized product.
var (
	freeMu     sync.Mutex
	freeList   []*workspace
	maxFreeWSs = 4
)

// getWorkspace returns a workspace with room for t threads and packed B
// slices of bFloats float32 slots each.
func getWorkspace(t, bFloats int) *workspace {
	freeMu.Lock()
	var ws *workspace
	if n := len(freeList); n > 0 {
		ws = freeList[n-1]
		freeList = freeList[:n-1]
	}
	freeMu.Unlock()
	if ws == nil {
		ws = &workspace{}
	}
	for i := range ws.b {
		if len(ws.b[i]) < bFloats {
			ws.b[i] = alignedFloats(bFloats)
		}
	}
	for len(ws.a) < t {
		ws.a = append(ws.a, alignedFloats(blockMC*blockKCLarge))
	}
	return ws
}

// WorkspaceBytes is the memory of the workspaces an m x n x k product on
// threads threads takes (the packed B slices and the per-thread packed A
// blocks), for memory plans. Workspaces are reused, so a run of products
// holds about the largest of them.
// The bf16 products' packed W (kc/2 pairs of 32-bit slots) is no bigger
// than the fp32 one.
func WorkspaceBytes(m, n, k, threads int) int64 {
	t := max(threads, 1)
	kc := int64(min(k, depthBlock(m, n)))
	return 4 * (2*kc*int64(min(n, blockNC)+maxNR) + int64(t)*blockMC*blockKCLarge)
}

func putWorkspace(ws *workspace) {
	freeMu.Lock()
	if len(freeList) < maxFreeWSs {
		freeList = append(freeList, ws)
	}
	freeMu.Unlock()
}

// maxNR is the widest register tile of any engine.
const maxNR = 32

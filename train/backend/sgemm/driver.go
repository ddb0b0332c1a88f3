package sgemm

import (
	"sync"
	"sync/atomic"
)

// engine is one kernel family: its register tile and its two blocked steps.
// The driver below cuts the product into slices and threads the same way
// for every engine.
type engine struct {
	mr, nr int
	// packB packs op(B)[pc:pc+kc, j0:j0+nc] into nr-wide panels at dst.
	packB func(transB bool, b []float32, ldb, pc, kc, j0, nc int, dst []float32)
	// macro computes C[i0:i1, j0:j1] = alpha*op(A)[i0:i1, pc:pc+kc]*packedB
	// + beta*C, packing A into abuf in blockMC-row blocks.
	macro func(transA bool, a []float32, lda, i0, i1, pc, kc int, packedB []float32, j0, j1 int, alpha, beta float32, c []float32, ldc int, abuf []float32)
}

// drive runs the blocked product on t threads. For each NC-wide block of
// columns and each KC-deep slice of k, every thread packs its share of B's
// panels, all meet at a barrier, then each multiplies a band of rows (or of
// column panels when C is too short to share by rows) against the shared
// packed B. The packed B alternates between two buffers, so one barrier per
// slice is enough: a thread that starts packing slice s+1 has passed barrier
// s, so every thread has finished multiplying slice s-1, the buffer's
// previous tenant.
func (e *engine) drive(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int, t int) {
	kcb := depthBlock(m, n)
	if t > 1 && splitColumns(m, n, e.nr, t) {
		e.driveColumns(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, t, kcb)
		return
	}
	e.driveShared(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, t, kcb)
}

// splitColumns says when each thread should run a whole one-thread product
// on its own band of columns instead of sharing packed B slices. That needs
// no barrier and keeps each thread's packed B in its own core's L2, which
// pays once C outgrows the caches (the blockKCLarge regime): measured on 2
// cores against OpenBLAS in the same run, 2048^3 went from 0.77x to 0.79-0.81x,
// while at 1024^3 the shared schedule stayed ahead (0.80x against 0.67-0.75x).
func splitColumns(m, n, nr, t int) bool {
	return m*n >= blockKCLargeC && n >= t*splitMinPanels*nr
}

// splitMinPanels keeps every thread's band at least this many panels wide.
const splitMinPanels = 8

// driveColumns gives each of t threads a band of whole nr-wide column
// panels and runs the one-thread schedule on it. Bands start on panel
// boundaries and use the depth block of the whole product, so every element
// is summed in the same order as with one thread: results do not depend on t.
func (e *engine) driveColumns(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int, t, kcb int) {
	panels := (n + e.nr - 1) / e.nr
	parallel(t, func(id int) {
		lo, hi := split(panels, t, id)
		j0, j1 := lo*e.nr, min(hi*e.nr, n)
		if j0 >= j1 {
			return
		}
		bs := b[j0:]
		if transB {
			bs = b[j0*ldb:]
		}
		e.driveShared(transA, transB, m, j1-j0, k, alpha, a, lda, bs, ldb, beta, c[j0:], ldc, 1, kcb)
	})
}

// driveShared is the shared-B schedule described above drive.
func (e *engine) driveShared(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int, t, kcb int) {
	ws := getWorkspace(t, min(k, kcb), min(n, blockNC))
	defer putWorkspace(ws)
	mr, nr := e.mr, e.nr
	bar := newBarrier(t)
	tilesM := (m + mr - 1) / mr
	// Row bands are handed out from a counter per slice rather than split
	// in advance, so a thread the OS keeps off its core for a while does
	// not hold the others up: whoever is running takes the next band. Bands
	// are at most MC rows, their count a multiple of t (bandsPerThread per
	// thread at least) and their sizes as even as whole tiles allow, so on
	// a quiet machine every thread gets the same share.
	bands := min(tilesM, t*max(bandsPerThread, (tilesM+t*(blockMC/mr)-1)/(t*(blockMC/mr))))
	slices := ((n + blockNC - 1) / blockNC) * ((k + kcb - 1) / kcb)
	next := make([]atomic.Int32, slices)
	parallel(t, func(id int) {
		slice := 0
		for jc := 0; jc < n; jc += blockNC {
			nc := min(blockNC, n-jc)
			panels := (nc + nr - 1) / nr
			byRows := tilesM >= panels || tilesM >= 4*t
			for pc := 0; pc < k; pc += kcb {
				kc := min(kcb, k-pc)
				bet := beta
				if pc > 0 {
					bet = 1
				}
				buf := ws.b[slice%2]
				claim := &next[slice]
				slice++
				if lo, hi := split(panels, t, id); lo < hi {
					j0, j1 := jc+lo*nr, min(jc+hi*nr, jc+nc)
					e.packB(transB, b, ldb, pc, kc, j0, j1-j0, buf[lo*nr*kc:])
				}
				bar.wait()
				if !byRows {
					lo, hi := split(panels, t, id)
					if lo < hi {
						j0, j1 := jc+lo*nr, min(jc+hi*nr, jc+nc)
						e.macro(transA, a, lda, 0, m, pc, kc, buf[lo*nr*kc:], j0, j1, alpha, bet, c, ldc, ws.a[id])
					}
					continue
				}
				for {
					band := int(claim.Add(1)) - 1
					if band >= bands {
						break
					}
					lo, hi := split(tilesM, bands, band)
					i0, i1 := lo*mr, min(hi*mr, m)
					e.macro(transA, a, lda, i0, i1, pc, kc, buf, jc, jc+nc, alpha, bet, c, ldc, ws.a[id])
				}
			}
		}
	})
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

// barrierSpins bounds the busy wait: about 100 us of atomic loads.
const barrierSpins = 100000

// bandsPerThread is how many row bands each thread's share of a slice is cut
// into: more bands balance better when a thread is held up, fewer reuse each
// packed B micro-panel over more rows of A.
const bandsPerThread = 2

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
// threads (alternating, see drive) and one packed A block per thread, all
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
// slices of kc x nc (nc rounded up to the widest tile).
func getWorkspace(t, kc, nc int) *workspace {
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
	need := kc * (nc + maxNR)
	for i := range ws.b {
		if len(ws.b[i]) < need {
			ws.b[i] = alignedFloats(need)
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
func WorkspaceBytes(m, n, k, threads int) int64 {
	t := max(threads, 1)
	kc := int64(min(k, depthBlock(m, n)))
	one := func(cols, threads int) int64 {
		return 4 * (2*kc*int64(min(cols, blockNC)+maxNR) + int64(threads)*blockMC*blockKCLarge)
	}
	if t > 1 && splitColumns(m, n, maxNR, t) { // one single-thread workspace per band
		return int64(t) * one((n+t-1)/t, 1)
	}
	return one(n, t)
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

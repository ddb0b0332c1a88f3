//go:build cgo

package sgemm

/*
#cgo CFLAGS: -O3 -std=gnu11 -Wdeprecated-declarations
#cgo LDFLAGS: -lm
#include "kernel_x86.h"
*/
import "C"

import "unsafe"

// archBest is the widest kernel the CPU and OS support.
func archBest() int { return int(C.oc_isa()) }

func fp(s []float32) *C.float { return (*C.float)(unsafe.Pointer(&s[0])) }

func cbool(v bool) C.int {
	if v {
		return 1
	}
	return 0
}

// cEngines are the C kernels by ISA (implAVX2, implAVX512).
var cEngines [3]*engine

func init() {
	for _, isa := range []int{implAVX2, implAVX512} {
		cisa := C.int(isa)
		cEngines[isa] = &engine{
			mr: int(C.oc_mr(cisa)),
			nr: int(C.oc_nr(cisa)),
			packB: func(transB bool, b []float32, ldb, pc, kc, j0, nc int, dst []float32) {
				C.oc_pack_b(C.oc_nr(cisa), cbool(transB), fp(b), C.long(ldb), C.int(pc), C.int(kc), C.int(j0), C.int(nc), fp(dst))
			},
			macro: func(transA bool, a []float32, lda, i0, i1, pc, kc int, packedB []float32, j0, j1 int, alpha, beta float32, c []float32, ldc int, abuf []float32) {
				C.oc_macro(cisa, cbool(transA), fp(a), C.long(lda), C.int(i0), C.int(i1), C.int(pc), C.int(kc),
					fp(packedB), C.int(j0), C.int(j1), C.float(alpha), C.float(beta), fp(c), C.long(ldc), fp(abuf), blockMC)
			},
		}
	}
}

// sgemmC runs the product with the C kernels of isa on t threads. The
// arguments are already checked and m, n, k, alpha are non-zero.
func sgemmC(isa int, transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int, t int) {
	if t > 1 {
		cEngines[isa].drive(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, t)
		return
	}
	// One thread: the whole product in one cgo call.
	kcb := depthBlock(m, n)
	ws := getWorkspace(1, min(k, kcb)*(min(n, blockNC)+maxNR))
	defer putWorkspace(ws)
	C.oc_sgemm_serial(C.int(isa), cbool(transA), cbool(transB), C.int(m), C.int(n), C.int(k),
		C.float(alpha), fp(a), C.long(lda), fp(b), C.long(ldb),
		C.float(beta), fp(c), C.long(ldc),
		fp(ws.a[0]), fp(ws.b[0]), blockMC, C.int(kcb), blockNC)
}

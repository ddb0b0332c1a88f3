//go:build cgo

package sgemm

/*
#include "kernel_x86.h"
#include "kernel_bf16.h"
*/
import "C"

import (
	"runtime"
	"unsafe"

	"github.com/opencluster/opencluster/quant"
)

var bf16OK = C.oc_bf16_ok() != 0

// wsrc describes w to the C packers. The Go memory it points into must stay
// alive (and pinned: Go's collector does not move heap memory) for the call.
func wsrc(w *Weight, pin *runtime.Pinner) C.oc_wsrc {
	s := C.oc_wsrc{rows: C.long(w.Rows), cols: C.long(w.Cols)}
	switch {
	case w.bf16 != nil:
		s.kind = C.OC_W_BF16
		s.bf16 = (*C.uint16_t)(unsafe.Pointer(&w.bf16[0]))
		pin.Pin(&w.bf16[0])
	case w.f32 != nil:
		s.kind = C.OC_W_F32
		s.f32 = (*C.float)(unsafe.Pointer(&w.f32[0]))
		pin.Pin(&w.f32[0])
	default:
		t := w.q4
		s.kind = C.OC_W_Q4
		s.bs = C.int(t.BlockSize)
		s.packed = (*C.uint8_t)(unsafe.Pointer(&t.Packed[0]))
		pin.Pin(&t.Packed[0])
		vals := codeTables[t.Format]
		s.values = (*C.float)(unsafe.Pointer(&vals[0]))
		pin.Pin(vals)
		if nd := t.Nested; nd != nil {
			s.ncodes = (*C.uint8_t)(unsafe.Pointer(&nd.Codes[0]))
			s.nabsmax = (*C.float)(unsafe.Pointer(&nd.Absmax[0]))
			s.nmap = (*C.float)(unsafe.Pointer(&nd.Map[0]))
			s.noffset = C.float(nd.Offset)
			s.nbs = C.int(nd.BlockSize)
			pin.Pin(&nd.Codes[0])
			pin.Pin(&nd.Absmax[0])
			pin.Pin(nd)
		} else {
			s.absmax = (*C.float)(unsafe.Pointer(&t.Absmax[0]))
			pin.Pin(&t.Absmax[0])
		}
	}
	return s
}

// codeTables are the 16 code values per 4-bit format, in memory the C side
// reads (package-level, so never moved or freed).
var codeTables = [2]*[16]float32{quant.NF4: ptr(quant.CodeValues(quant.NF4)), quant.FP4: ptr(quant.CodeValues(quant.FP4))}

func ptr(v [16]float32) *[16]float32 { return &v }

func gemmBF16(transW bool, m, n, k int, alpha float32, a []float32, lda int, w Weight, beta float32, c []float32, ldc int, t int) {
	var pin runtime.Pinner
	defer pin.Unpin()
	src := wsrc(&w, &pin)
	srcp := &src
	pin.Pin(srcp)
	tw := cbool(transW)
	p := blocked{
		m: m, n: n, k: k, mr: C.OC_MRB, nr: C.OC_NRB, kcb: blockKCBF16, beta: beta,
		panelFloats: func(kc int) int { return (kc + 1) / 2 * C.OC_NRB },
		packB: func(pc, kc, j0, nc int, dst []float32) {
			C.oc_packw((*C.oc_wsrc)(unsafe.Pointer(srcp)), tw, C.int(pc), C.int(kc), C.int(j0), C.int(nc), (*C.uint32_t)(unsafe.Pointer(&dst[0])))
		},
		macro: func(i0, i1, pc, kc int, packedB []float32, j0, j1 int, beta float32, abuf []float32) {
			C.oc_macro_bf16(fp(a), C.long(lda), C.int(i0), C.int(i1), C.int(pc), C.int(kc),
				(*C.uint32_t)(unsafe.Pointer(&packedB[0])), C.int(j0), C.int(j1), C.float(alpha), C.float(beta),
				fp(c), C.long(ldc), (*C.uint32_t)(unsafe.Pointer(&abuf[0])), blockMC)
		},
	}
	p.run(t)
}

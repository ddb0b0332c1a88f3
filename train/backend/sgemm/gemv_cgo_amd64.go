//go:build cgo

package sgemm

/*
#include "kernel_x86.h"
#include "kernel_bf16.h"
#include "kernel_gemv.h"
*/
import "C"

import (
	"runtime"
	"unsafe"
)

// gemvC runs rows [r0, r1) of Gemv with the C kernels of isa (kernel_gemv.h).
func gemvC(isa, m int, a []float32, lda int, w Weight, hv *halves, r0, r1 int, c []float32, ldc int) {
	var pin runtime.Pinner
	defer pin.Unpin()
	src := wsrc(&w, &pin)
	srcp := &src
	pin.Pin(srcp)
	var de *C.float
	var h int
	if hv != nil {
		de, h = fp(hv.de), hv.h
	}
	C.oc_gemv(C.int(isa), (*C.oc_wsrc)(unsafe.Pointer(srcp)), C.int(m), fp(a), C.long(lda), de, C.long(h),
		C.long(r0), C.long(r1), fp(c), C.long(ldc))
}

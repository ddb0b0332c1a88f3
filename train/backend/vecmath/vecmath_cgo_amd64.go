//go:build cgo

package vecmath

/*
#cgo CFLAGS: -O3 -std=gnu11
#cgo LDFLAGS: -lm
#include "vecmath.h"
*/
import "C"

import "unsafe"

var fast = C.vm_ok() != 0

func fp(s []float32) *C.float { return (*C.float)(unsafe.Pointer(&s[0])) }

func swigluFwd(out, gate, up []float32) {
	C.vm_swiglu_fwd(fp(out), fp(gate), fp(up), C.long(len(gate)))
}

func swigluBwd(dgate, dup, dout, gate, up []float32) {
	C.vm_swiglu_bwd(fp(dgate), fp(dup), fp(dout), fp(gate), fp(up), C.long(len(gate)))
}

func causalSoftmax(row []float32, t int) {
	C.vm_causal_softmax(fp(row), C.long(t), C.long(len(row)))
}

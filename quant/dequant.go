package quant

import "fmt"

// Code returns the 4-bit code of element i: the high nibble of byte i/2 for
// even i, the low nibble for odd i.
func (t *Tensor4) Code(i int) byte {
	c := t.Packed[i>>1]
	if i&1 == 0 {
		return c >> 4
	}
	return c & 0x0F
}

// DequantizeReference is the plain loop the fast paths are tested against:
// element i is CodeValues(format)[code] * AbsmaxAt(block), as bitsandbytes'
// kDequantizeBlockwise computes dDequantizeNF4(code) * absmax.
func (t *Tensor4) DequantizeReference(dst []float32) {
	vals := CodeValues(t.Format)
	for i := range dst {
		dst[i] = vals[t.Code(i)] * t.AbsmaxAt(i/t.BlockSize)
	}
}

// DequantizeRange writes elements [off, off+len(dst)) into dst. It is the
// hot path of the CPU backend's NF4 matmul, which calls it on row ranges of
// [out, in] weights from its own worker goroutines, so it runs on the
// calling goroutine and never allocates: per block it scales the 16 code
// values once (a 16-entry table on the stack), then turns each packed byte
// into a pair of floats by two table lookups. The products are the ones the
// reference computes, so results are identical bit for bit. A range outside
// [0, Len()) is a programmer error and panics, like a slice index.
func (t *Tensor4) DequantizeRange(dst []float32, off int) {
	end := off + len(dst)
	if off < 0 || end > t.Len() {
		panic(fmt.Sprintf("quant: DequantizeRange [%d, %d) outside a tensor of %d elements", off, end, t.Len()))
	}
	vals := &nf4Values
	if t.Format == FP4 {
		vals = &fp4Values
	}
	bs := t.BlockSize
	packed := t.Packed
	for i := off; i < end; {
		b := i / bs
		bEnd := min((b+1)*bs, end)
		am := t.AbsmaxAt(b)
		var tab [16]float32
		for k, v := range vals {
			tab[k] = v * am
		}
		out := dst[i-off : bEnd-off]
		if i&1 == 1 { // range starts on a low nibble
			out[0] = tab[packed[i>>1]&0x0F]
			out = out[1:]
			i++
		}
		pairs := len(out) / 2
		src := packed[i>>1 : i>>1+pairs]
		o := out[:2*pairs]
		for q, c := range src {
			o2 := o[2*q : 2*q+2 : 2*q+2]
			o2[0] = tab[c>>4]
			o2[1] = tab[c&0x0F]
		}
		if len(out) > 2*pairs { // range ends on a high nibble
			out[2*pairs] = tab[packed[(i>>1)+pairs]>>4]
		}
		i = bEnd
	}
}

// Dequantize writes every element into dst (len(dst) == t.Len()). Large
// tensors are split by blocks over GOMAXPROCS goroutines, each running
// DequantizeRange.
func (t *Tensor4) Dequantize(dst []float32) {
	n := t.Len()
	if len(dst) != n {
		panic(fmt.Sprintf("quant: Dequantize: dst has %d elements, want %d", len(dst), n))
	}
	bs := t.BlockSize
	parallelBlocks(t.NumBlocks(), n, func(b0, b1 int) {
		lo, hi := b0*bs, min(b1*bs, n)
		t.DequantizeRange(dst[lo:hi], lo)
	})
}

package quant

import (
	"fmt"
	"math"
	"sort"
)

// Blockwise8 is an 8-bit blockwise-quantized vector, the layout of
// bitsandbytes' quantize_blockwise: one code byte per element (an index into
// Map) and one fp32 absmax per block of BlockSize elements.
type Blockwise8 struct {
	BlockSize int
	Codes     []byte
	Absmax    []float32
	Map       [256]float32
}

// dynamicMap is computed once; see DynamicMap.
var dynamicMap = createDynamicMap()

// DynamicMap returns bitsandbytes' signed dynamic 8-bit code book,
// create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8) in
// bitsandbytes/functional.py: for exponent i = 0..6 it takes the means of
// 2^i+1 points spaced evenly over [0.1, 1] (torch.linspace in float32),
// scales them by 10^(i-6) and adds both signs; then 0 and 1.0; sorted. The
// result has 127 negative values, 0, 127 positive values below 1, and 1.0.
func DynamicMap() [256]float32 { return dynamicMap }

func createDynamicMap() [256]float32 {
	data := make([]float32, 0, 256)
	for i := 0; i < 7; i++ {
		bounds := linspace32(0.1, 1, 1<<i+1)
		// 10**(-6+i) is a Python float (an int for i = 6); torch multiplies a
		// float32 tensor by it in float32.
		scale := float32(math.Pow10(i - 6))
		for j := 0; j+1 < len(bounds); j++ {
			mean := (bounds[j] + bounds[j+1]) / 2
			v := float32(scale * mean)
			data = append(data, v, -v)
		}
	}
	data = append(data, 0, 1)
	sort.Slice(data, func(a, b int) bool { return data[a] < data[b] })
	var m [256]float32
	copy(m[:], data)
	return m
}

// linspace32 mirrors torch.linspace(start, end, steps, dtype=float32) as
// PyTorch's CPU kernel computes it: step = (end-start)/(steps-1) in float32;
// the first half counts up from start, the second half down from end, each
// as one fused multiply-add rounded once to float32 (the kernel is built with
// FMA contraction). Entries differ from a naive start+i*step in the last bit
// for 11 of the 127 positive map values, which is why this matters.
func linspace32(start, end float32, steps int) []float32 {
	out := make([]float32, steps)
	if steps == 1 {
		out[0] = start
		return out
	}
	step := (end - start) / float32(steps-1)
	half := steps / 2
	for i := range out {
		if i < half {
			out[i] = float32(math.FMA(float64(step), float64(i), float64(start)))
		} else {
			out[i] = float32(math.FMA(-float64(step), float64(steps-i-1), float64(end)))
		}
	}
	return out
}

// quantize8 mirrors dQuantize<0> in bitsandbytes' csrc/kernels.cu: a 7-step
// binary search over the sorted code book starting at pivot 127, then a choice
// between the neighbouring codes by the float32 midpoint. NaN (an all-zero
// block) walks down to code 0.
func quantize8(code *[256]float32, x float32) byte {
	pivot, upperPivot, lowerPivot := 127, 255, 0
	lower, upper := float32(-1), float32(1)
	val := code[pivot]
	for i := 64; i > 0; i >>= 1 {
		if x > val {
			lowerPivot = pivot
			lower = val
			pivot += i
		} else {
			upperPivot = pivot
			upper = val
			pivot -= i
		}
		val = code[pivot]
	}
	if upperPivot == 255 {
		upper = code[upperPivot]
	}
	if lowerPivot == 0 {
		lower = code[lowerPivot]
	}
	if x > val {
		mid := float32((upper + val) * 0.5)
		if x > mid {
			return byte(upperPivot)
		}
		return byte(pivot)
	}
	mid := float32((lower + val) * 0.5)
	if x < mid {
		return byte(lowerPivot)
	}
	return byte(pivot)
}

// QuantizeBlockwise8 quantizes data with the signed dynamic map in blocks of
// blockSize, as bitsandbytes' quantize_blockwise (kQuantizeBlockwise with
// General8bit) does: absmax = max |x| per block, x * (1/absmax) coded by
// quantize8. blockSize must be a power of two in 32..4096. NaN or Inf in data
// is an error naming the element.
func QuantizeBlockwise8(data []float32, blockSize int) (*Blockwise8, error) {
	if err := checkBlockSize(blockSize); err != nil {
		return nil, err
	}
	if i, ok := firstNonFinite(data); ok {
		return nil, fmt.Errorf("quant: element %d is %v: cannot quantize NaN or Inf", i, data[i])
	}
	b := &Blockwise8{BlockSize: blockSize, Map: dynamicMap}
	b.Codes, b.Absmax = quantizeBlockwise8(&b.Map, data, blockSize)
	return b, nil
}

// quantizeBlockwise8 is the unchecked kernel shared with double quantization.
func quantizeBlockwise8(code *[256]float32, data []float32, blockSize int) ([]byte, []float32) {
	nb := (len(data) + blockSize - 1) / blockSize
	codes := make([]byte, len(data))
	absmax := make([]float32, nb)
	for b := 0; b < nb; b++ {
		blk := data[b*blockSize : min((b+1)*blockSize, len(data))]
		am := blockAbsmax(blk)
		absmax[b] = am
		scale := 1 / am // +Inf for an all-zero block, as on the GPU
		out := codes[b*blockSize:]
		for i, v := range blk {
			out[i] = quantize8(code, v*scale)
		}
	}
	return codes, absmax
}

// Len is the number of elements.
func (b *Blockwise8) Len() int { return len(b.Codes) }

// Dequantize writes Map[code] * absmax for every element into dst (len(dst)
// == b.Len()), as bitsandbytes' dequantize_blockwise (kDequantizeBlockwise).
func (b *Blockwise8) Dequantize(dst []float32) {
	if len(dst) != len(b.Codes) {
		panic(fmt.Sprintf("quant: Blockwise8.Dequantize: dst has %d elements, want %d", len(dst), len(b.Codes)))
	}
	for i, c := range b.Codes {
		dst[i] = b.Map[c] * b.Absmax[i/b.BlockSize]
	}
}

// Validate checks that the codes, absmax values and block size agree.
func (b *Blockwise8) Validate() error {
	if err := checkBlockSize(b.BlockSize); err != nil {
		return err
	}
	if want := (len(b.Codes) + b.BlockSize - 1) / b.BlockSize; len(b.Absmax) != want {
		return fmt.Errorf("quant: %d absmax values for %d codes in blocks of %d, want %d", len(b.Absmax), len(b.Codes), b.BlockSize, want)
	}
	if i, ok := firstNonFinite(b.Absmax); ok {
		return fmt.Errorf("quant: absmax %d is %v", i, b.Absmax[i])
	}
	if i, ok := firstNonFinite(b.Map[:]); ok {
		return fmt.Errorf("quant: code map entry %d is %v", i, b.Map[i])
	}
	return nil
}

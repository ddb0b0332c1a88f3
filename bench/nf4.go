package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/opencluster/opencluster/quant"
	"github.com/opencluster/opencluster/train/backend/sgemm"
)

// nf4Block is bitsandbytes' default block size.
const nf4Block = 64

// quantizeNF4 wraps quant.Quantize4 so that a missing or broken quantizer
// (it is being written alongside this package) becomes an error row rather
// than a crash.
func quantizeNF4(data []float32, shape []int) (t *quant.Tensor4, err error) {
	defer func() {
		if r := recover(); r != nil {
			t, err = nil, fmt.Errorf("quant.Quantize4 panicked: %v", r)
		}
	}()
	t, err = quant.Quantize4(data, shape, quant.NF4, nf4Block, false)
	if err != nil {
		return nil, fmt.Errorf("quant.Quantize4 %v: %w", shape, err)
	}
	if t == nil || t.Len() != len(data) {
		return nil, errors.New("quant.Quantize4 returned a tensor of the wrong length (quant not implemented yet?)")
	}
	return t, nil
}

// dequantizeRange calls DequantizeRange, turning a panic into an error.
func dequantizeRange(t *quant.Tensor4, dst []float32, off int) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("quant.DequantizeRange panicked: %v", r)
		}
	}()
	t.DequantizeRange(dst, off)
	return nil
}

// NF4Dequantize measures Tensor4.Dequantize of a 4096 x 4096 NF4 weight
// (block 64, no double quantization) into fp32. GB/s counts the bytes
// moved: the packed codes and absmax read plus the fp32 written. For scale,
// Extra["copy_gbps"] is a plain copy of the fp32 output in the same run.
func NF4Dequantize(ctx context.Context, opt Options) (Row, error) {
	rows, cols := 4096, 4096
	if opt.Quick {
		rows = 1024
	}
	n := rows * cols
	row := Row{Name: "nf4_dequantize", Size: fmt.Sprintf("%dx%d", rows, cols), Extra: map[string]any{"block": nf4Block}}
	rng := rand.New(rand.NewPCG(2, 3))
	w := randNormal(rng, n)
	t, err := quantizeNF4(w, []int{rows, cols})
	if err != nil {
		return row, err
	}
	dst := make([]float32, n)
	deq := func() error { return dequantizeRange(t, dst, 0) }
	copyDst := make([]float32, n)
	cp := func() error { copy(copyDst, dst); return nil }

	perCall, err := timeIt(1, deq)
	if err != nil {
		return row, err
	}
	if err := checkDequant(w, dst); err != nil {
		return row, err
	}
	iters := itersFor(perCall, repTarget(opt))
	var deqS, copyS []float64
	for range opt.reps() {
		if err := ctx.Err(); err != nil {
			return row, err
		}
		s, err := timeIt(iters, deq)
		if err != nil {
			return row, err
		}
		deqS = append(deqS, s)
		s, _ = timeIt(iters, cp)
		copyS = append(copyS, s)
	}
	bytes := float64(n)/2 + float64(n/nf4Block)*4 + float64(n)*4
	row.GBps = bytes / median(deqS) / 1e9
	row.Extra["elements_per_s"] = float64(n) / median(deqS)
	row.Extra["copy_gbps"] = 2 * float64(n) * 4 / median(copyS) / 1e9
	row.Extra["reps"] = opt.reps()
	return row, nil
}

// checkDequant guards against a quantizer that returns garbage: NF4 with
// block 64 keeps every element within about 0.3 of its block's absmax scale.
func checkDequant(w, got []float32) error {
	for i := 0; i < len(w); i += nf4Block {
		end := min(len(w), i+nf4Block)
		var amax float32
		for _, v := range w[i:end] {
			amax = max(amax, abs32(v))
		}
		for j := i; j < end; j++ {
			if d := abs32(got[j] - w[j]); !(d <= 0.3*amax+1e-6) {
				return fmt.Errorf("NF4 round trip: element %d is %v, want about %v (block absmax %v)", j, got[j], w[j], amax)
			}
		}
	}
	return nil
}

func abs32(v float32) float32 {
	if v < 0 {
		return -v
	}
	return v
}

func randNormal(rng *rand.Rand, n int) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = float32(rng.NormFloat64() * 0.02)
	}
	return s
}

// dequantizeParallel fills dst from element off on, split by whole rows of
// rowLen across t goroutines.
func dequantizeParallel(q *quant.Tensor4, dst []float32, off, rowLen, t int) error {
	rows := len(dst) / rowLen
	if t <= 1 || rows < 2 {
		return dequantizeRange(q, dst, off)
	}
	errs := make([]error, t)
	var wg sync.WaitGroup
	for i := range t {
		lo, hi := rows*i/t, rows*(i+1)/t
		if lo == hi {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = dequantizeRange(q, dst[lo*rowLen:hi*rowLen], off+lo*rowLen)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// nf4Tile is how many weight rows are dequantized at a time for the NF4
// product: 256 rows of 2048 fp32 is 2 MiB, which stays in cache for the
// Sgemm that follows.
const nf4Tile = 256

// NF4Matmul measures Y = X * W^T, the QLoRA forward product, with W an
// [out, in] NF4 weight that is never dequantized whole. Where the CPU has
// AVX512_BF16 ours is the fused product (sgemm.GemmBF16: NF4 tiles decoded
// straight to bf16 inside the packing, bf16 dot products summed in fp32);
// elsewhere, and always as Extra["fp32_tiled_gflops"], nf4Tile rows at a
// time are dequantized to fp32 (split across the threads) into a tile that
// Sgemm multiplies straight away. GFLOPS counts 2*tokens*out*in.
// Extra["dense_gflops"] is our fp32 Sgemm with W already dequantized, and
// the peer is OpenBLAS's fp32 sgemm on that dequantized W, in the same run.
func NF4Matmul(ctx context.Context, opt Options) (Row, error) {
	tokens, in, out := 512, 2048, 2048
	if opt.Quick {
		tokens = 256
	}
	t := opt.threads()
	defer sgemm.SetThreads(sgemm.Threads())
	sgemm.SetThreads(t)
	row := Row{
		Name:       "nf4_matmul",
		Size:       fmt.Sprintf("%dx%d * (%dx%d NF4)^T", tokens, in, out, in),
		PeakGFLOPS: DescribeMachine().PeakGFLOPS(),
		Kernel:     sgemm.Implementation(),
		Extra:      map[string]any{"threads": t, "tile_rows": nf4Tile, "block": nf4Block},
	}
	rng := rand.New(rand.NewPCG(4, 5))
	w := randNormal(rng, out*in)
	x := randFloats(rng, tokens*in)
	qw, err := quantizeNF4(w, []int{out, in})
	if err != nil {
		return row, err
	}
	wd := make([]float32, out*in)
	if err := dequantizeRange(qw, wd, 0); err != nil {
		return row, err
	}
	y := make([]float32, tokens*out)
	yTiled := make([]float32, tokens*out)
	yDense := make([]float32, tokens*out)
	yPeer := make([]float32, tokens*out)
	tile := make([]float32, nf4Tile*in)
	tiled := func() error {
		for r0 := 0; r0 < out; r0 += nf4Tile {
			r := min(nf4Tile, out-r0)
			if err := dequantizeParallel(qw, tile[:r*in], r0*in, in, t); err != nil {
				return err
			}
			sgemm.Sgemm(false, true, tokens, r, in, 1, x, in, tile, in, 0, yTiled[r0:], out)
		}
		return nil
	}
	ours := tiled
	fused := sgemm.BF16Supported()
	if fused {
		qwt := sgemm.WeightQ4(qw, out, in)
		ours = func() error {
			sgemm.GemmBF16(true, tokens, out, in, 1, x, in, qwt, 0, y, out)
			return nil
		}
		row.Kernel = sgemm.BF16Implementation()
		row.Extra["fused"] = "NF4 decoded to bf16 in the packing, vdpbf16ps, fp32 accumulation"
		// vdpbf16ps does two multiply-adds per lane where an fp32 FMA does one.
		row.PeakGFLOPS *= 2
		row.Extra["peak"] = "bf16: twice the fp32 peak"
	}
	dense := func() error {
		sgemm.Sgemm(false, true, tokens, out, in, 1, x, in, wd, in, 0, yDense, out)
		return nil
	}
	var peer func() error
	if ob := attachPeer(&row, opt, t, ", fp32 sgemm on the dequantized weight"); ob != nil {
		peer = func() error { return ob.Sgemm(false, true, tokens, out, in, 1, x, in, wd, in, 0, yPeer, out) }
	}

	perCall, err := timeIt(1, ours)
	if err != nil {
		return row, err
	}
	_, _ = timeIt(1, dense)
	if _, err := timeIt(1, tiled); err != nil {
		return row, err
	}
	if d := maxRelDiff(yTiled, yDense); d > 1e-4 {
		return row, fmt.Errorf("NF4 tiled product differs from the dense product by %g", d)
	}
	if fused {
		// bf16 operands: about 3 significant digits.
		d := maxRelDiff(y, yDense)
		row.Extra["max_rel_diff_vs_fp32"] = d
		if d > 2e-2 {
			return row, fmt.Errorf("fused bf16 NF4 product differs from the fp32 product by %g", d)
		}
	}
	if peer != nil {
		_, _ = timeIt(1, peer)
		time.Sleep(peerCooldown)
	}
	iters := itersFor(perCall, repTarget(opt))
	var oursS, tiledS, denseS, peerS []float64
	for range opt.reps() {
		if err := ctx.Err(); err != nil {
			return row, err
		}
		s, err := timeIt(iters, ours)
		if err != nil {
			return row, err
		}
		oursS = append(oursS, s)
		if fused {
			s, _ = timeIt(iters, tiled)
			tiledS = append(tiledS, s)
		}
		s, _ = timeIt(iters, dense)
		denseS = append(denseS, s)
		if peer != nil {
			s, _ = timeIt(iters, peer)
			peerS = append(peerS, s)
			time.Sleep(peerCooldown)
		}
	}
	flop := 2 * float64(tokens) * float64(in) * float64(out)
	row.GFLOPS = flop / median(oursS) / 1e9
	row.Extra["dense_gflops"] = flop / median(denseS) / 1e9
	if fused {
		row.Extra["fp32_tiled_gflops"] = flop / median(tiledS) / 1e9
	}
	if row.PeakGFLOPS > 0 {
		row.FractionOfPeak = row.GFLOPS / row.PeakGFLOPS
	}
	if peer != nil {
		row.PeerGFLOPS = flop / median(peerS) / 1e9
		row.Ratio = row.GFLOPS / row.PeerGFLOPS
		peakRatio := 1.0
		if fused {
			peakRatio = 2 // bf16 dot products against fp32
		}
		checkPlausible(&row, peakRatio)
	}
	row.Extra["reps"] = opt.reps()
	return row, nil
}

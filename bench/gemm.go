package bench

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/opencluster/opencluster/train/backend/sgemm"
)

// GEMM measures C = A*B on square n x n fp32 matrices with our Sgemm and,
// when it loads, OpenBLAS's cblas_sgemm on the same operands, interleaved.
// GFLOPS counts 2*n^3 floating-point operations per product.
func GEMM(ctx context.Context, n int, opt Options) (Row, error) {
	if n <= 0 {
		return Row{}, fmt.Errorf("gemm size %d: must be positive", n)
	}
	t := opt.threads()
	defer sgemm.SetThreads(sgemm.Threads())
	sgemm.SetThreads(t)

	rng := rand.New(rand.NewPCG(uint64(n), 1))
	a, b := randFloats(rng, n*n), randFloats(rng, n*n)
	c, cp := make([]float32, n*n), make([]float32, n*n)
	flop := 2 * float64(n) * float64(n) * float64(n)
	m := DescribeMachine()
	row := Row{
		Name:       "fp32_gemm",
		Size:       fmt.Sprintf("%dx%dx%d", n, n, n),
		PeakGFLOPS: m.PeakGFLOPS(),
		Kernel:     sgemm.Implementation(),
		Extra:      map[string]any{"threads": t},
	}

	ours := func() error {
		sgemm.Sgemm(false, false, n, n, n, 1, a, n, b, n, 0, c, n)
		return nil
	}
	var peer func() error
	if ob := attachPeer(&row, opt, t, ""); ob != nil {
		peer = func() error { return ob.Sgemm(false, false, n, n, n, 1, a, n, b, n, 0, cp, n) }
	}

	// Warm-up: page in the operands, size the repetitions, and check the two
	// libraries agree (a kernel that is fast and wrong must not win).
	perCall, err := timeIt(1, ours)
	if err != nil {
		return row, err
	}
	iters := itersFor(perCall, repTarget(opt))
	if peer != nil {
		if _, err := timeIt(1, peer); err != nil {
			return row, err
		}
		row.Extra["max_rel_diff_vs_peer"] = maxRelDiff(c, cp)
		time.Sleep(peerCooldown)
	}

	var oursS, peerS []float64
	for range opt.reps() {
		if err := ctx.Err(); err != nil {
			return row, err
		}
		s, err := timeIt(iters, ours)
		if err != nil {
			return row, err
		}
		oursS = append(oursS, s)
		if peer != nil {
			s, err := timeIt(iters, peer)
			if err != nil {
				return row, err
			}
			peerS = append(peerS, s)
			time.Sleep(peerCooldown)
		}
	}
	row.GFLOPS = flop / median(oursS) / 1e9
	if row.PeakGFLOPS > 0 {
		row.FractionOfPeak = row.GFLOPS / row.PeakGFLOPS
	}
	if peer != nil {
		row.PeerGFLOPS = flop / median(peerS) / 1e9
		row.Ratio = row.GFLOPS / row.PeerGFLOPS
		checkPlausible(&row, 1)
	}
	row.Extra["reps"] = opt.reps()
	row.Extra["calls_per_rep"] = iters
	return row, nil
}

// repTarget is how long one timed repetition should last.
func repTarget(opt Options) float64 {
	if opt.Quick {
		return 0.05
	}
	return 0.2
}

func randFloats(rng *rand.Rand, n int) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = float32(rng.Float64()*2 - 1)
	}
	return s
}

// maxRelDiff is max |x-y| / max(1, max |y|): how far two results disagree
// relative to the size of the answer.
func maxRelDiff(x, y []float32) float64 {
	var d, scale float64 = 0, 1
	for i := range x {
		d = math.Max(d, math.Abs(float64(x[i])-float64(y[i])))
		scale = math.Max(scale, math.Abs(float64(y[i])))
	}
	return d / scale
}

// attachPeer loads OpenBLAS for a row unless --no-peer; when it cannot be
// had, the row says why in extra.peer_missing and nil is returned.
func attachPeer(row *Row, opt Options, threads int, note string) *openBLAS {
	if opt.NoPeer {
		row.Extra["peer_missing"] = "skipped (--no-peer)"
		return nil
	}
	ob, err := loadOpenBLAS(threads)
	if err != nil {
		row.Extra["peer_missing"] = err.Error()
		return nil
	}
	pc := settlePeer(ob.Core())
	row.Peer = ob.Name() + note
	row.PeerKernel = ob.Core()
	if pc.Forced != "" {
		row.Extra["peer_coretype_forced"] = pc.Forced
	}
	if pc.Stale {
		row.Warning = appendSentence(row.Warning, "the peer runs OpenBLAS's "+ob.Core()+" kernels, older than this CPU ("+pc.CPU+"): "+pc.Note)
	}
	return ob
}

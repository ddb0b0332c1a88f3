// Package bench measures the CPU paths behind `opencluster bench`: the fp32
// matrix product against OpenBLAS in the same run, NF4 dequantization, and
// the NF4 x fp32 product the QLoRA forward pass uses. Each measurement is a
// Row; the command prints them as a table or as one JSON object per line.
//
// Timing method: a warm-up call first, then several repetitions, ours and
// the peer's interleaved so both see the same machine state, and the median
// of each. OpenBLAS's worker threads keep spinning for a while after a call,
// so a short pause follows every peer repetition before ours runs.
package bench

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"slices"
	"time"
)

// Row is one measurement. Fields that do not apply to a row are zero and
// left out of its JSON.
type Row struct {
	Name           string  `json:"name"`
	Size           string  `json:"size,omitempty"`
	GFLOPS         float64 `json:"gflops,omitempty"`
	GBps           float64 `json:"gbps,omitempty"`
	Peer           string  `json:"peer,omitempty"`
	PeerGFLOPS     float64 `json:"peer_gflops,omitempty"`
	Ratio          float64 `json:"ratio,omitempty"` // ours / peer
	PeakGFLOPS     float64 `json:"peak_gflops,omitempty"`
	FractionOfPeak float64 `json:"fraction_of_peak,omitempty"`
	// Kernel is the kernel family ours ran (sgemm's avx512, avx2 or go, or
	// avx512-bf16 for bf16 products); PeerKernel is the peer's (OpenBLAS's
	// core type, e.g. SkylakeX).
	Kernel     string         `json:"kernel,omitempty"`
	PeerKernel string         `json:"peer_kernel,omitempty"`
	Extra      map[string]any `json:"extra,omitempty"`
	// Warning says why a figure should not be trusted as it stands (an
	// implausible ratio, a peer on kernels older than the CPU).
	Warning string `json:"warning,omitempty"`
	// Error says why the row could not be measured (the rest is then empty
	// or partial); a missing peer is not an error, see Extra["peer_missing"].
	Error string `json:"error,omitempty"`
}

// StepBench measures training steps of one model preset ("tiny", "small")
// and returns a row with tokens/s in Extra["tokens_per_s"]. The training
// package provides it; until it does, Options.Step is nil and no step rows
// are produced.
type StepBench func(ctx context.Context, preset string) (Row, error)

// Options choose what Run measures.
type Options struct {
	// Quick runs fewer repetitions and skips the largest GEMM.
	Quick bool
	// Threads is the thread count for our kernels and the peer (0: every core).
	Threads int
	// GEMMSizes overrides the square GEMM sizes (default 512, 1024, 2048).
	GEMMSizes []int
	// Reps is the number of timed repetitions per row (default 7, quick 3).
	Reps int
	// Step, when set, adds one training-step row per preset in StepPresets
	// (default tiny and small).
	Step        StepBench
	StepPresets []string
	// NoPeer skips OpenBLAS even when it is installed.
	NoPeer bool
	// PeerCoreType is the OpenBLAS core policy: "auto" (default: when the
	// library's own choice is older than the CPU, force the newest core the
	// CPU supports), "keep", or a core name to force (e.g. SkylakeX).
	PeerCoreType string
	// Probe runs the child process that reports which core OpenBLAS picks
	// (nil: no look-ahead; the loaded core is still checked).
	Probe ProbeFunc
}

func (o Options) reps() int {
	switch {
	case o.Reps > 0:
		return o.Reps
	case o.Quick:
		return 3
	}
	return 7
}

func (o Options) threads() int {
	if o.Threads > 0 {
		return o.Threads
	}
	return runtime.NumCPU()
}

func (o Options) gemmSizes() []int {
	switch {
	case len(o.GEMMSizes) > 0:
		return o.GEMMSizes
	case o.Quick:
		return []int{512, 1024}
	}
	return []int{512, 1024, 2048}
}

// Run measures every row in order and hands each to emit as soon as it is
// done. A row that fails carries its Error and Run goes on; Run itself fails
// only when ctx is cancelled.
func Run(ctx context.Context, opt Options, emit func(Row)) error {
	m := DescribeMachine()
	emit(m.Row())
	if !opt.NoPeer {
		emit(preparePeer(ctx, opt, m))
	}
	for _, n := range opt.gemmSizes() {
		if err := ctx.Err(); err != nil {
			return err
		}
		r, err := GEMM(ctx, n, opt)
		emit(orError(r, err, "fp32_gemm", fmt.Sprintf("%dx%dx%d", n, n, n)))
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	r, err := NF4Dequantize(ctx, opt)
	emit(orError(r, err, "nf4_dequantize", ""))
	if err := ctx.Err(); err != nil {
		return err
	}
	r, err = NF4Matmul(ctx, opt)
	emit(orError(r, err, "nf4_matmul", ""))
	if opt.Step != nil {
		presets := opt.StepPresets
		if len(presets) == 0 {
			presets = []string{"tiny", "small"}
		}
		for _, p := range presets {
			if err := ctx.Err(); err != nil {
				return err
			}
			r, err := opt.Step(ctx, p)
			emit(orError(r, err, "train_step", p))
		}
	}
	emit(RSSRow())
	return ctx.Err()
}

// orError turns a failed measurement into a row that says why.
func orError(r Row, err error, name, size string) Row {
	if err == nil {
		return r
	}
	if r.Name == "" {
		r.Name = name
	}
	if r.Size == "" {
		r.Size = size
	}
	r.Error = err.Error()
	return r
}

// timeIt returns the seconds per call of f, run iters times.
func timeIt(iters int, f func() error) (float64, error) {
	start := time.Now()
	for range iters {
		if err := f(); err != nil {
			return 0, err
		}
	}
	return time.Since(start).Seconds() / float64(iters), nil
}

// itersFor picks how many calls make one repetition last about target.
func itersFor(perCall, target float64) int {
	if perCall <= 0 {
		return 1
	}
	return max(1, min(1000, int(math.Ceil(target/perCall))))
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// peerCooldown lets OpenBLAS's spinning worker threads go to sleep before
// our kernel is timed on the same cores.
const peerCooldown = 150 * time.Millisecond

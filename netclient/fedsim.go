package netclient

import (
	"context"
	"fmt"
	"math"

	"github.com/opencluster/opencluster/compress"
	"github.com/opencluster/opencluster/train"
	"github.com/opencluster/opencluster/train/data"
)

// SimOptions is an in-process federation: the same local training and
// compression as real workers, with no sockets, processes or signatures.
// The compression sweep uses it so every codec sees the same seed, data
// and schedule.
type SimOptions struct {
	Config   train.Config // train, lora, quant sections
	BasePath string
	Shards   []string // one worker per shard
	ValDir   string   // held-out text for the validation loss
	Rounds   int
	Steps    int // local steps per round (H)
	LR       float64
	Codec    string
	Momentum float32 // error-feedback momentum
	Seed     uint64
	// EvalBatches is the number of validation batches (default 8).
	EvalBatches int
	Threads     int
	// Aggregate moves global by the round's decoded deltas with weights
	// (tokens trained): the coordinator's FedAvg and server optimizer.
	Aggregate func(global []float32, deltas []*compress.Sparse, weights []float64) error
	// Report, when set, receives each round's numbers.
	Report func(SimRound)
}

// SimRound is one simulated round's numbers.
type SimRound struct {
	Round        int     `json:"round"`
	Participants int     `json:"participants"`
	PayloadBytes int64   `json:"payload_bytes"` // per worker, mean
	DenseBytes   int64   `json:"dense_bytes"`   // the fp32 delta: 4 x N
	Ratio        float64 `json:"compression_ratio"`
	TrainLoss    float64 `json:"train_loss"`
	ValLoss      float64 `json:"val_loss"`
}

// ValBatches returns n fixed batches from a held-out folder: the same
// folder and shape always give the same batches.
func ValBatches(dir string, seqLen, batch, n int, seed uint64) ([]data.Batch, error) {
	ds, err := data.Open(data.Options{Dir: dir, SeqLen: seqLen, BatchSize: batch, ValFraction: 0.05, Seed: seed})
	if err != nil {
		return nil, fmt.Errorf("netclient: validation data %s: %w", dir, err)
	}
	defer ds.Close()
	out := make([]data.Batch, n)
	for i := range out {
		if out[i], err = ds.TrainBatch(i+1, 0); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Simulate runs o.Rounds rounds and returns each round's numbers, the
// first entry (round 0) being the starting adapter's validation loss.
func Simulate(ctx context.Context, o SimOptions) ([]SimRound, error) {
	if o.Aggregate == nil {
		return nil, fmt.Errorf("netclient: Simulate needs an Aggregate function")
	}
	codec, err := compress.Parse(o.Codec)
	if err != nil {
		return nil, err
	}
	tr, err := NewTrainer(o.Config, o.BasePath, o.Threads)
	if err != nil {
		return nil, err
	}
	tc := tr.Config().Train
	if o.EvalBatches <= 0 {
		o.EvalBatches = 8
	}
	val, err := ValBatches(o.ValDir, tc.SeqLen, tc.BatchSize, o.EvalBatches, o.Seed)
	if err != nil {
		return nil, err
	}
	n := tr.NumParams()
	global, err := tr.InitialAdapter()
	if err != nil {
		return nil, err
	}
	type worker struct {
		ds *data.Dataset
		ef *compress.State
	}
	ws := make([]worker, len(o.Shards))
	for i, dir := range o.Shards {
		ds, err := data.Open(data.Options{Dir: dir, SeqLen: tc.SeqLen, BatchSize: tc.BatchSize, ValFraction: tc.ValFraction, Seed: o.Seed + uint64(i)})
		if err != nil {
			return nil, fmt.Errorf("netclient: shard %s: %w", dir, err)
		}
		defer ds.Close()
		ws[i].ds = ds
		if !codec.Scaled {
			if ws[i].ef, err = compress.NewState(n, o.Momentum); err != nil {
				return nil, err
			}
		}
	}
	v0, err := tr.Loss(global, val)
	if err != nil {
		return nil, err
	}
	out := []SimRound{{Round: 0, ValLoss: v0, DenseBytes: int64(4 * n)}}
	for r := 1; r <= o.Rounds; r++ {
		seed := o.Seed*1_000_003 + uint64(r)
		var deltas []*compress.Sparse
		var weights []float64
		var bytes int64
		var loss float64
		for i := range ws {
			if err := ctx.Err(); err != nil {
				return out, err
			}
			res, err := tr.TrainLocal(ctx, ws[i].ds, global, LocalOptions{Steps: o.Steps, LR: o.LR, Stream: seed + uint64(i)*7919})
			if err != nil {
				return out, fmt.Errorf("round %d worker %d: %w", r, i, err)
			}
			p, err := codec.Encode(res.Delta, ws[i].ef, seed)
			if err != nil {
				return out, err
			}
			sp, err := codec.DecodeSparse(p.Bytes, n)
			if err != nil {
				return out, err
			}
			deltas = append(deltas, sp)
			weights = append(weights, float64(res.Tokens))
			bytes += int64(len(p.Bytes))
			loss += res.Loss
		}
		if err := o.Aggregate(global, deltas, weights); err != nil {
			return out, fmt.Errorf("round %d: aggregate: %w", r, err)
		}
		v, err := tr.Loss(global, val)
		if err != nil {
			return out, err
		}
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return out, fmt.Errorf("round %d: validation loss is %v", r, v)
		}
		k := len(ws)
		sr := SimRound{Round: r, Participants: k, PayloadBytes: bytes / int64(k), DenseBytes: int64(4 * n),
			TrainLoss: loss / float64(k), ValLoss: v}
		sr.Ratio = float64(sr.DenseBytes) / float64(max(1, sr.PayloadBytes))
		out = append(out, sr)
		if o.Report != nil {
			o.Report(sr)
		}
	}
	return out, nil
}

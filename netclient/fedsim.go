package netclient

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"math"

	"github.com/opencluster/opencluster/compress"
	"github.com/opencluster/opencluster/secagg"
	"github.com/opencluster/opencluster/train"
	"github.com/opencluster/opencluster/train/data"
	"github.com/opencluster/opencluster/train/tokenizer"
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
	// Secure, when set, replaces Codec with secure aggregation's encoding:
	// each worker's update plus residual on the round's shared positions,
	// clipped, quantized into the ring (with Skellam noise for DP), summed
	// in the ring and decoded, exactly the numbers a secure round's
	// coordinator gets (the masks cancel exactly; secagg's tests check it).
	Secure *SimSecure
}

// SimSecure is the secure-aggregation encoding for Simulate.
type SimSecure struct {
	Fraction  float64 // share of the adapter on the shared positions
	Clip      float64
	QuantBits uint
	Noise     float64 // DP noise multiplier (0: none)
}

// SimRound is one simulated round's numbers.
type SimRound struct {
	Round        int     `json:"round"`
	Participants int     `json:"participants"`
	PayloadBytes int64   `json:"payload_bytes"` // per worker, mean
	DenseBytes   int64   `json:"dense_bytes"`   // the fp32 delta: 4 x N
	Ratio        float64 `json:"compression_ratio"`
	TrainLoss    float64 `json:"loss"`
	ValLoss      float64 `json:"val_loss"`
}

// ValBatches returns n fixed batches from a held-out folder, encoded with
// tok (nil: byte-level; the token cache goes in cacheDir): the same folder
// and shape always give the same batches.
func ValBatches(dir string, seqLen, batch, n int, seed uint64, tok *tokenizer.Tokenizer, cacheDir string) ([]data.Batch, error) {
	ds, err := data.Open(data.Options{Dir: dir, SeqLen: seqLen, BatchSize: batch, ValFraction: 0.05, Seed: seed,
		Tokenizer: tok, Pack: true, CacheDir: cacheDir})
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
	if o.Secure != nil {
		o.Codec = "dense" // the error feedback below is ShareOfUpdate's
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
	val, err := ValBatches(o.ValDir, tc.SeqLen, tc.BatchSize, o.EvalBatches, o.Seed, nil, "")
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
		var sec *secureSum
		if o.Secure != nil {
			if sec, err = newSecureSum(*o.Secure, len(ws), n, seed); err != nil {
				return out, err
			}
		}
		for i := range ws {
			if err := ctx.Err(); err != nil {
				return out, err
			}
			res, err := tr.TrainLocal(ctx, ws[i].ds, global, LocalOptions{Steps: o.Steps, LR: o.LR, Stream: seed + uint64(i)*7919})
			if err != nil {
				return out, fmt.Errorf("round %d worker %d: %w", r, i, err)
			}
			if sec != nil {
				b, err := sec.add(res.Delta, ws[i].ef)
				if err != nil {
					return out, err
				}
				bytes += int64(b)
				loss += res.Loss
				continue
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
		if sec != nil {
			deltas, weights = []*compress.Sparse{sec.mean()}, []float64{1}
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

// secureSum is one simulated secure round: the ring sum of the workers'
// encoded vectors.
type secureSum struct {
	p         *secagg.Params
	positions []uint32
	sum       []uint32
	count, n  int
}

func newSecureSum(o SimSecure, workers, n int, seed uint64) (*secureSum, error) {
	keys := make([]ed25519.PublicKey, max(workers, 2))
	for i := range keys {
		keys[i] = make(ed25519.PublicKey, ed25519.PublicKeySize)
	}
	length := min(n, max(1, int(math.Round(o.Fraction*float64(n)))))
	p, err := secagg.NewParams(1, seed, keys, length, o.Clip, o.QuantBits, 0)
	if err != nil {
		return nil, err
	}
	if o.Noise > 0 {
		p.NoiseMu = secagg.SkellamFor(o.Noise, p.Sensitivity(), p.MinSurvivors)
		if p.Bits, err = secagg.Bits(len(keys), p.QuantBits, p.NoiseMu); err != nil {
			return nil, err
		}
	}
	return &secureSum{p: p, positions: secagg.Positions(seed, n, length), sum: make([]uint32, length), n: n}, nil
}

// add encodes one worker's delta and adds it to the ring sum; it returns
// the bytes the masked vector takes.
func (s *secureSum) add(delta []float32, ef *compress.State) (int, error) {
	x := ShareOfUpdate(delta, ef, s.positions, s.p.Clip)
	v, _, err := s.p.Encode(x, rand.Reader)
	if err != nil {
		return 0, err
	}
	mask := uint32(1)<<s.p.Bits - 1
	if s.p.Bits == 32 {
		mask = ^uint32(0)
	}
	for i := range v {
		s.sum[i] = (s.sum[i] + v[i]) & mask
	}
	s.count++
	return (len(v)*int(s.p.Bits) + 7) / 8, nil
}

// mean is the decoded sum over the workers, on the positions.
func (s *secureSum) mean() *compress.Sparse {
	vals := s.p.Decode(s.sum)
	for i := range vals {
		vals[i] /= float32(s.count)
	}
	return &compress.Sparse{N: s.n, Index: s.positions, Values: vals}
}

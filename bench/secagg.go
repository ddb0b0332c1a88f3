package bench

import (
	"context"
	"crypto/ed25519"
	"fmt"

	"github.com/opencluster/opencluster/compress"
	"github.com/opencluster/opencluster/protocol"
	"github.com/opencluster/opencluster/secagg"
)

// SecAggLength is the masked vector the secure-aggregation rows use: a
// 400,000-value adapter at the default 5% random-k fraction.
const SecAggLength = 20000

// SecAgg measures secure aggregation (package secagg) in-process: the
// bytes a client uploads per round at cohorts of 10, 100 and 1,000, against
// (peer) the same client's upload without secure aggregation, and the
// coordinator's compute for a round of 1,000 in which 30% vanish after
// sending their masked input, against (peer) the same round without
// dropouts. Quick skips the cohort of 1,000.
func SecAgg(ctx context.Context, quick bool, emit func(Row)) error {
	plain, err := plainUpdateBytes(20*SecAggLength, "randk:0.05+int8:256")
	if err != nil {
		return err
	}
	cohorts := []int{10, 100, 1000}
	if quick {
		cohorts = cohorts[:2]
	}
	for _, n := range cohorts {
		if err := ctx.Err(); err != nil {
			return err
		}
		c, err := secagg.MeasureRound(n, SecAggLength, 8, secagg.DefaultDropout, 0)
		if err != nil {
			emit(Row{Name: "secagg_upload", Size: fmt.Sprintf("cohort %d", n), Error: err.Error()})
			continue
		}
		emit(Row{Name: "secagg_upload", Size: fmt.Sprintf("cohort %d, %d values", n, SecAggLength),
			Peer: "the same client without secure aggregation", Ratio: c.UploadTotal / float64(plain),
			Extra: map[string]any{
				"bytes_per_client": c.UploadTotal, "advertise_bytes": c.Upload[0], "share_keys_bytes": c.Upload[1],
				"masked_input_bytes": c.Upload[2], "unmask_bytes": c.Upload[3],
				"degree": c.Degree, "threshold": c.Threshold, "ring_bits": c.Bits,
				"unmasked_same_encoding_bytes": c.Unmasked, "ratio_vs_unmasked_same_encoding": c.UploadTotal / float64(c.Unmasked),
				"plain_update_bytes": plain, "plain_codec": "randk:0.05+int8:256 (signed protocol update)",
			}})
	}
	if quick {
		return nil
	}
	const n = 1000
	peer, err := secagg.MeasureRound(n, SecAggLength, 8, 0.3, 0)
	if err != nil {
		emit(Row{Name: "secagg_coordinator", Size: "cohort 1000", Error: err.Error()})
		return nil
	}
	c, err := secagg.MeasureRound(n, SecAggLength, 8, 0.3, 0.3)
	if err != nil {
		emit(Row{Name: "secagg_coordinator", Size: "cohort 1000, 30% dropouts", Error: err.Error()})
		return nil
	}
	emit(Row{Name: "secagg_coordinator", Size: fmt.Sprintf("cohort %d, %d values, 30%% drop after masking", n, SecAggLength),
		Peer: "the same round without dropouts", Ratio: c.ServerTime.Seconds() / peer.ServerTime.Seconds(),
		Extra: map[string]any{"server_seconds": c.ServerTime.Seconds(), "peer_server_seconds": peer.ServerTime.Seconds(),
			"survivors": c.Survivors, "degree": c.Degree, "threshold": c.Threshold, "ring_bits": c.Bits}})
	return nil
}

// plainUpdateBytes is the size of a signed update of an n-value adapter
// with codec: what a worker uploads per round without secure aggregation.
func plainUpdateBytes(n int, codec string) (int, error) {
	c, err := compress.Parse(codec)
	if err != nil {
		return 0, err
	}
	delta := make([]float32, n)
	for i := range delta {
		delta[i] = float32(i%97-48) * 1e-3
	}
	p, err := c.Encode(delta, nil, 1)
	if err != nil {
		return 0, err
	}
	_, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		return 0, err
	}
	u := &protocol.Update{Round: 1, WorkerID: "w-0123456789abcdef", N: n, Shapes: []protocol.Shape{{Name: "adapter", Dims: []int{n}}},
		Codec: c.String(), Seed: 1, Tokens: 1, Payload: p.Bytes}
	b, err := protocol.MarshalUpdate(u, priv)
	if err != nil {
		return 0, err
	}
	return len(b), nil
}

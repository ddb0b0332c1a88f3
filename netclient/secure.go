package netclient

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"path/filepath"
	"time"

	"github.com/opencluster/opencluster/compress"
	"github.com/opencluster/opencluster/protocol"
	"github.com/opencluster/opencluster/secagg"
)

// A secure-aggregation round (docs/privacy.md). The worker never uploads
// its update in the clear: it advertises fresh keys, shares its secrets
// with its neighbours, trains, and sends its update clipped, quantized,
// noised (with DP) and masked on the round's shared positions; last it
// helps unmask the survivors. If the worker stops anywhere in between, its
// neighbours' shares let the coordinator remove its masks, and its update
// is simply not in the sum.

// ErrAttemptOver is returned when the coordinator ended the round's
// secure attempt (too few survivors, a timeout); the worker polls again and
// may be picked for the retry.
var ErrAttemptOver = errors.New("the secure-aggregation attempt is over")

func (w *Worker) doSecure(ctx context.Context, info protocol.RoundInfo, up0, down0 int64) error {
	st := w.o.State
	var p secagg.Params
	if err := json.Unmarshal(info.SecAgg.Params, &p); err != nil {
		return fmt.Errorf("round %d: secure-aggregation params: %w", info.Round, err)
	}
	if err := p.Validate(); err != nil {
		return fmt.Errorf("round %d: %w", info.Round, err)
	}
	idx := info.SecAgg.Index
	if p.Round != info.Round || idx < 0 || idx >= len(p.Keys) || !bytes.Equal(p.Keys[idx], st.Public()) {
		return fmt.Errorf("round %d: the secure-aggregation params do not name this worker's key at index %d", info.Round, idx)
	}
	client, err := secagg.NewClient(&p, idx, st.Key, rand.Reader)
	if err != nil {
		return err
	}
	stageWait := info.SecAgg.StageTimeout
	if stageWait <= 0 {
		stageWait = time.Minute
	}
	post := func(stage int, msg []byte) error {
		return w.retry(ctx, "secure stage "+fmt.Sprint(stage), info.Round, time.Now().Add(stageWait), func() error {
			return w.client.SecAggPost(ctx, stage, msg)
		})
	}
	// input waits for a stage's input until deadline.
	input := func(stage int, deadline time.Time) ([]byte, error) {
		for {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("round %d: secure stage %d did not start by %s: %w", info.Round, stage, deadline.Format(time.RFC3339), ErrAttemptOver)
			}
			b, ok, err := w.client.SecAggInput(ctx, st.Progress.WorkerID, st.Key, time.Now(), p.Round, p.Attempt, stage, min(30*time.Second, time.Until(deadline)+time.Second))
			var se *StatusError
			switch {
			case errors.As(err, &se) && se.Code == http.StatusGone:
				return nil, fmt.Errorf("round %d: %s: %w", info.Round, se.Message, ErrAttemptOver)
			case err != nil && !retryable(err):
				return nil, err
			case err != nil:
				if err := w.o.Clock.Sleep(ctx, w.o.Backoff.Delay(1)); err != nil {
					return nil, err
				}
			case ok:
				return b, nil
			}
		}
	}
	w.report(Event{Phase: PhaseSecure, Round: info.Round, Message: "advertise keys"})
	m, err := client.Advertise()
	if err != nil {
		return err
	}
	if err := post(secagg.StageAdvertise, m); err != nil {
		return err
	}
	b, err := input(secagg.StageShareKeys, time.Now().Add(2*stageWait))
	if err != nil {
		return err
	}
	adverts, err := secagg.DecodeAdverts(b, len(p.Keys))
	if err != nil {
		return err
	}
	w.report(Event{Phase: PhaseSecure, Round: info.Round, Message: fmt.Sprintf("share keys with %d neighbours", len(adverts))})
	if m, err = client.ShareKeys(adverts); err != nil {
		return err
	}
	if err := post(secagg.StageShareKeys, m); err != nil {
		return err
	}

	// Train while the coordinator waits for every masked input.
	tr, err := w.trainFor(ctx, info)
	if err != nil {
		return err
	}
	ef, err := st.LoadEF(tr.n, 0)
	if err != nil {
		return err
	}
	positions := secagg.Positions(p.Seed, tr.n, p.Length)
	x := ShareOfUpdate(tr.res.Delta, ef, positions, p.Clip)
	enc, norm, err := p.Encode(x, rand.Reader)
	if err != nil {
		return err
	}
	b, err = input(secagg.StageMasked, info.Deadline.Add(stageWait))
	if err != nil {
		return err
	}
	routed, err := secagg.DecodeRouted(b, len(p.Keys))
	if err != nil {
		return err
	}
	claims := secagg.Claims{Tokens: uint64(tr.res.Tokens), FLOPs: tr.res.FLOPs, EnergyWh: tr.energyJ / 3600}
	if m, err = client.MaskedInput(routed, enc, claims); err != nil {
		return err
	}
	w.report(Event{Phase: PhaseUpload, Round: info.Round, UpdateBytes: len(m)})
	if err := post(secagg.StageMasked, m); err != nil {
		return err
	}
	maskedBytes := len(m)

	b, err = input(secagg.StageConfirm, time.Now().Add(2*stageWait))
	if err != nil {
		return err
	}
	survivors, err := secagg.DecodeSurvivors(b, len(p.Keys))
	if err != nil {
		return err
	}
	if m, err = client.Confirm(survivors); err != nil {
		return err
	}
	if err := post(secagg.StageConfirm, m); err != nil {
		return err
	}
	b, err = input(secagg.StageUnmask, time.Now().Add(2*stageWait))
	if err != nil {
		return err
	}
	confirms, err := secagg.DecodeMessages(b, len(p.Keys))
	if err != nil {
		return err
	}
	if m, err = client.Unmask(confirms); err != nil {
		return err
	}
	if err := post(secagg.StageUnmask, m); err != nil {
		return err
	}
	// The masked input is in; the residual that follows it is committed.
	if err := st.CommitEF(ef, info.Round); err != nil {
		return err
	}
	st.Progress.BytesUp, st.Progress.BytesDown = w.client.BytesUp, w.client.BytesDown
	if err := st.Save(); err != nil {
		return err
	}
	accepted := true
	w.report(Event{Phase: PhaseDone, Round: info.Round, Progress: 1, Loss: tr.res.Loss, Tokens: tr.res.Tokens,
		UpdateBytes: maskedBytes, CompressionRatio: float64(4*tr.n) / float64(maskedBytes), EnergyJ: tr.energyJ, EnergyMeasured: tr.measured,
		Accepted: &accepted, Message: fmt.Sprintf("masked, %d survivors; update norm %.4g, clip %g", len(survivors), norm, p.Clip),
		RoundBytesUp: w.client.BytesUp - up0, RoundBytesDown: w.client.BytesDown - down0})
	return nil
}

// ShareOfUpdate is what a worker contributes under secure aggregation: the
// update plus its error-feedback residual, on the round's positions, with
// the norm clipped to clip. ef keeps the rest (everything off the
// positions, and what the clipping cut) for later rounds.
func ShareOfUpdate(delta []float32, ef *compress.State, positions []uint32, clip float64) []float32 {
	r := ef.Residual
	for i, v := range delta {
		r[i] += v
	}
	x := make([]float32, len(positions))
	var ss float64
	for i, p := range positions {
		x[i] = r[p]
		ss += float64(x[i]) * float64(x[i])
	}
	scale := float32(1)
	if n := math.Sqrt(ss); n > clip {
		scale = float32(clip / n)
	}
	for i, p := range positions {
		x[i] *= scale
		r[p] -= x[i]
	}
	return x
}

// CommitEF makes ef the committed error-feedback state and records round
// as done (a secure round has no pending upload to resend).
func (s *StateDir) CommitEF(ef *compress.State, round uint64) error {
	if err := ef.Save(filepath.Join(s.Dir, efFile)); err != nil {
		return fmt.Errorf("netclient: save error-feedback state: %w", err)
	}
	if round > s.Progress.LastRoundDone {
		s.Progress.LastRoundDone = round
	}
	s.Progress.RoundsDone++
	return s.Save()
}

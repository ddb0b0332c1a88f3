// Package netclient is the worker's side of the federated protocol: it
// registers an ed25519 key with a coordinator, long-polls for rounds,
// downloads the base model and the global adapter into a content-addressed
// cache, trains the adapter for a few steps on the volunteer's private
// data (under the budget controller when one is given), compresses the
// delta with error feedback, signs it and uploads it, retrying with
// exponential backoff and jitter. Every connection is outbound, so a
// worker behind a home router needs no open port. Everything a restarted
// worker needs is in its state directory (see StateDir).
package netclient

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/opencluster/opencluster/compress"
	"github.com/opencluster/opencluster/protocol"
	"github.com/opencluster/opencluster/train"
	"github.com/opencluster/opencluster/train/backend"
	"github.com/opencluster/opencluster/train/data"
	"github.com/opencluster/opencluster/train/tokenizer"
)

// Options configures a worker.
type Options struct {
	// Coordinator is the coordinator's base URL (https://host:port).
	Coordinator string
	// HTTP is the client to use (NewHTTPClient builds one with TLS trust).
	HTTP *http.Client
	// DataDir holds the volunteer's private text; it never leaves the machine.
	DataDir string
	// State is the opened state directory.
	State *StateDir
	// Name, Device and Version describe the worker at registration.
	Name, Device, Version string
	// JoinToken is the operator's join token, for coordinators that admit
	// holders of one only.
	JoinToken string
	// Limits bound what a coordinator can make this worker download and
	// allocate; zero fields take DefaultLimits' values (MaxMemoryBytes 0:
	// no memory check).
	Limits Limits
	// FreeBytes reports the free disk space of a path (for
	// Limits.MinFreeDiskBytes); nil: not checked.
	FreeBytes func(path string) (uint64, error)
	// Region is the country code the owner chose to be shown in on the
	// dashboard (protocol.LookupRegion), or "" to stay unplaced.
	Region string
	// LoadConfig returns the train, lora and quant sections for a round's
	// model name (a configs/ preset such as "tiny").
	LoadConfig func(model string) (train.Config, error)
	// Threads is the CPU threads for training (0: every core) when Backend
	// is nil.
	Threads int
	// Backend is where rounds train: the dispatched device (the CUDA
	// backend on a GPU); nil means the CPU backend with Threads.
	Backend backend.Backend
	// Governor paces training steps (device/budget's controller); nil: none.
	Governor train.Governor
	// Energy returns the cumulative energy used so far in joules and
	// whether it is a measurement (false: an estimate); nil: not metered.
	Energy func() (joules float64, measured bool)
	// Reporter receives status events; nil: LogReporter.
	Reporter Reporter
	Logger   *slog.Logger
	// Clock and Backoff pace retries; zero values use the wall clock and
	// DefaultBackoff.
	Clock   Clock
	Backoff Backoff
	// PollWait is how long one long poll may wait (default 30 s).
	PollWait time.Duration
	// MaxRounds stops the worker after that many rounds (0: until ctx ends).
	MaxRounds int
	// IdleExit stops the worker after this long without work (0: never).
	IdleExit time.Duration
}

// Worker runs rounds for one coordinator.
type Worker struct {
	o      Options
	client *Client
	cache  *Cache
	log    *slog.Logger

	trainer     *Trainer
	trainerBase string
	trainerCfg  string
	ds          *data.Dataset
	dsBatch     int
	dsSeqLen    int
	dsTokenizer string // TokenizerSHA256 the dataset was tokenized with
}

// New checks opts and returns a worker.
func New(opts Options) (*Worker, error) {
	if opts.State == nil {
		return nil, errors.New("netclient: Options.State is nil; open the state directory with OpenState")
	}
	if opts.DataDir == "" {
		return nil, errors.New("netclient: no data directory given (--data)")
	}
	if fi, err := os.Stat(opts.DataDir); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("netclient: data directory %q is not a readable directory", opts.DataDir)
	}
	if opts.LoadConfig == nil {
		return nil, errors.New("netclient: Options.LoadConfig is nil")
	}
	if opts.HTTP == nil {
		hc, err := NewHTTPClient(opts.Coordinator, TLSOptions{})
		if err != nil {
			return nil, err
		}
		opts.HTTP = hc
	}
	c, err := NewClient(opts.Coordinator, opts.HTTP)
	if err != nil {
		return nil, err
	}
	if opts.Version != "" {
		c.UserAgent = "opencluster-worker/" + opts.Version
	}
	if opts.Clock == nil {
		opts.Clock = RealClock{}
	}
	if opts.Backoff.Base == 0 {
		opts.Backoff = DefaultBackoff()
	}
	if opts.PollWait <= 0 {
		opts.PollWait = 30 * time.Second
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	if opts.Reporter == nil {
		opts.Reporter = LogReporter{Logger: log}
	}
	def := DefaultLimits()
	if opts.Limits.MaxDownloadBytes == 0 {
		opts.Limits.MaxDownloadBytes = def.MaxDownloadBytes
	}
	if opts.Limits.MinFreeDiskBytes == 0 {
		opts.Limits.MinFreeDiskBytes = def.MinFreeDiskBytes
	}
	if err := opts.Limits.Validate(); err != nil {
		return nil, fmt.Errorf("netclient: %w", err)
	}
	c.BytesUp, c.BytesDown = opts.State.Progress.BytesUp, opts.State.Progress.BytesDown
	cache := opts.State.Cache()
	cache.FreeBytes, cache.MinFree = opts.FreeBytes, opts.Limits.MinFreeDiskBytes
	return &Worker{o: opts, client: c, cache: cache, log: log}, nil
}

// Close releases the dataset's files.
func (w *Worker) Close() error {
	if w.ds != nil {
		return w.ds.Close()
	}
	return nil
}

func (w *Worker) report(e Event) {
	e.Time = w.o.Clock.Now().UTC()
	e.BytesUp, e.BytesDown = w.client.BytesUp, w.client.BytesDown
	w.o.Reporter.Report(e)
}

// retry runs f until it succeeds, fails for good, ctx ends, or the next
// attempt would start after deadline (zero: no deadline).
func (w *Worker) retry(ctx context.Context, what string, round uint64, deadline time.Time, f func() error) error {
	for attempt := 0; ; attempt++ {
		err := f()
		if err == nil || !retryable(err) || ctx.Err() != nil {
			return err
		}
		d := w.o.Backoff.Delay(attempt)
		if !deadline.IsZero() && w.o.Clock.Now().Add(d).After(deadline) {
			return fmt.Errorf("netclient: %s: giving up at the round deadline: %w", what, err)
		}
		w.report(Event{Phase: PhaseRetry, Round: round, Message: fmt.Sprintf("%s: %v (attempt %d, next in %s)", what, err, attempt+1, d.Round(time.Millisecond))})
		if err := w.o.Clock.Sleep(ctx, d); err != nil {
			return err
		}
	}
}

// Register introduces the key (idempotent) and records the worker id.
func (w *Worker) Register(ctx context.Context) error {
	st := w.o.State
	w.report(Event{Phase: PhaseRegister})
	req := protocol.RegisterRequest{
		PublicKey: protocol.EncodePublicKey(st.Public()), Name: w.o.Name,
		ClientVersion: w.o.Version, Device: w.o.Device, Region: w.o.Region, JoinToken: w.o.JoinToken,
	}
	var resp protocol.RegisterResponse
	err := w.retry(ctx, "register", 0, time.Time{}, func() error {
		var err error
		resp, err = w.client.Register(ctx, req, st.Key)
		return err
	})
	if err != nil {
		return err
	}
	if want := protocol.KeyID(st.Public()); resp.KeyID != "" && resp.KeyID != want {
		return fmt.Errorf("netclient: register: coordinator echoed key id %s, ours is %s", resp.KeyID, want)
	}
	if resp.CoordinatorKey != "" {
		ck, err := protocol.ParsePublicKey(resp.CoordinatorKey)
		if err != nil {
			return fmt.Errorf("netclient: register: coordinator key: %w", err)
		}
		w.client.CoordinatorKey = ck
	}
	if st.Progress.Coordinator != w.o.Coordinator || st.Progress.WorkerID != resp.WorkerID {
		// A different coordinator (or a reset one): its rounds are not ours.
		if st.Progress.Coordinator != "" && st.Progress.Coordinator != w.o.Coordinator {
			st.Progress.LastRoundDone = 0
			st.DropPending()
		}
		st.Progress.Coordinator, st.Progress.WorkerID = w.o.Coordinator, resp.WorkerID
		st.Progress.KeyID = protocol.KeyID(st.Public())
		if err := st.Save(); err != nil {
			return err
		}
	}
	w.log.Info("registered", "worker_id", resp.WorkerID, "key_id", protocol.KeyID(st.Public()), "new_key", st.KeyCreated, "coordinator", w.o.Coordinator)
	return nil
}

// Run registers and then works rounds until ctx ends, MaxRounds rounds are
// done, or IdleExit passes without work. Errors inside a round are
// reported and the worker goes back to waiting; only a failed registration,
// a chat template the sandbox refused (the coordinator's base model ships
// code that broke its limits: every round would try it again) or a
// cancelled ctx ends Run with an error.
func (w *Worker) Run(ctx context.Context) error {
	if err := w.Register(ctx); err != nil {
		return err
	}
	done := 0
	idleSince := w.o.Clock.Now()
	for ctx.Err() == nil {
		if w.o.MaxRounds > 0 && done >= w.o.MaxRounds {
			return nil
		}
		if w.o.IdleExit > 0 && w.o.Clock.Now().Sub(idleSince) > w.o.IdleExit {
			w.log.Info("no work; exiting", "idle_for", w.o.IdleExit)
			return nil
		}
		w.report(Event{Phase: PhaseWait})
		var info protocol.RoundInfo
		var ok bool
		err := w.retry(ctx, "wait for a round", 0, time.Time{}, func() error {
			var err error
			info, ok, err = w.client.Round(ctx, w.o.State.Progress.WorkerID, w.o.State.Key, time.Now(), w.o.PollWait)
			return err
		})
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			var se *StatusError
			if errors.As(err, &se) && (se.Code == http.StatusUnauthorized || se.Code == http.StatusForbidden || se.Code == http.StatusNotFound) {
				// The coordinator forgot us (a reset database): register again.
				w.log.Warn("coordinator does not know this worker; registering again", "error", err)
				if err := w.Register(ctx); err != nil {
					return err
				}
				continue
			}
			w.report(Event{Phase: PhaseRetry, Message: err.Error()})
			if err := w.o.Clock.Sleep(ctx, w.o.Backoff.Delay(3)); err != nil {
				break
			}
			continue
		}
		if !ok {
			continue
		}
		// A secure round is offered only to a cohort member that has not
		// advertised in the current attempt, so a retried attempt of a
		// round this worker finished before is new work.
		if info.Round <= w.o.State.Progress.LastRoundDone && info.SecAgg == nil {
			// Already answered; the coordinator is still collecting.
			if err := w.o.Clock.Sleep(ctx, w.o.Backoff.Delay(0)); err != nil {
				break
			}
			continue
		}
		if err := w.DoRound(ctx, info); err != nil {
			if ctx.Err() != nil {
				break
			}
			if errors.Is(err, tokenizer.ErrTemplateRefused) {
				return fmt.Errorf("round %d: this coordinator's base model has a chat template this worker refuses to run: %w", info.Round, err)
			}
			w.log.Error("round failed", "round", info.Round, "error", err)
			w.report(Event{Phase: PhaseRetry, Round: info.Round, Message: err.Error()})
			if err := w.o.Clock.Sleep(ctx, w.o.Backoff.Delay(2)); err != nil {
				break
			}
			continue
		}
		done++
		idleSince = w.o.Clock.Now()
	}
	w.o.State.Progress.BytesUp, w.o.State.Progress.BytesDown = w.client.BytesUp, w.client.BytesDown
	_ = w.o.State.Save()
	return ctx.Err()
}

// fetch downloads one blob, of at most the declared size (0: not
// declared) and the worker's limit, into the cache with retries.
func (w *Worker) fetch(ctx context.Context, round uint64, deadline time.Time, sha, url string, declared int64) (string, error) {
	if url == "" {
		url = PathBlobs + sha
	}
	limit, err := w.o.Limits.downloadCap(declared)
	if err != nil {
		return "", err
	}
	full := w.client.url(url)
	var path string
	err = w.retry(ctx, "download "+sha[:min(12, len(sha))], round, deadline, func() error {
		p, n, err := w.cache.Fetch(ctx, w.client.HTTP, full, sha, limit)
		w.client.BytesDown += n
		path = p
		return err
	})
	return path, err
}

// backend is where rounds train, opened once.
func (w *Worker) backend() backend.Backend {
	if w.o.Backend == nil {
		w.o.Backend = backend.NewCPU(w.o.Threads)
	}
	return w.o.Backend
}

// prepare makes the trainer and the dataset for a round.
func (w *Worker) prepare(info protocol.RoundInfo, basePath string) error {
	cfg, err := w.o.LoadConfig(info.Model)
	if err != nil {
		return fmt.Errorf("netclient: round %d model %q: %w", info.Round, info.Model, err)
	}
	// The plan comes first, from the base's config alone: a recipe that
	// cannot fit is refused before the base is loaded.
	mc, err := train.ReadBaseConfig(basePath)
	if err != nil {
		return fmt.Errorf("netclient: base %s: %w", basePath, err)
	}
	T := cfg.Train.SeqLen
	B := cfg.Train.BatchSize
	if info.Recipe.BatchTokens > 0 && T > 0 {
		B = max(1, info.Recipe.BatchTokens/T)
	}
	planCfg := cfg
	planCfg.Model = mc
	plan, err := planRecipe(info, planCfg, B, T, w.o.Limits.MaxMemoryBytes, w.backend().Name() != "cpu")
	if err != nil {
		return err
	}
	key := fmt.Sprintf("%+v", cfg)
	if w.trainer == nil || w.trainerBase != info.BaseSHA256 || w.trainerCfg != key {
		if w.trainer != nil {
			w.trainer.Free()
			w.trainer = nil
		}
		t, err := NewTrainerOn(cfg, basePath, w.backend())
		if err != nil {
			return err
		}
		w.trainer, w.trainerBase, w.trainerCfg = t, info.BaseSHA256, key
		w.log.Info("trainer ready", "round", info.Round, "backend", w.backend().Name(), "frozen_products", t.ComputeDType())
	}
	if plan != nil {
		w.trainer.ApplyPlan(*plan)
		w.log.Debug("memory plan", "round", info.Round, "micro_batch", plan.MicroBatch, "batch", B,
			"checkpointing", plan.Checkpointing, "estimate", train.FormatBytes(plan.Estimate.Peak()))
	}
	if w.ds == nil || w.dsBatch != B || w.dsSeqLen != T || w.dsTokenizer != info.TokenizerSHA256 {
		if w.ds != nil {
			w.ds.Close()
		}
		// The volunteer's text is tokenized with the base's own tokenizer.
		tok, err := roundTokenizer(info, basePath)
		if err != nil {
			return err
		}
		if err := train.CheckTokenizer(w.trainer.Config().Model, tok); err != nil {
			return fmt.Errorf("netclient: round %d: %w", info.Round, err)
		}
		tc := w.trainer.Config().Train
		ds, err := data.Open(data.Options{Dir: w.o.DataDir, SeqLen: T, BatchSize: B, ValFraction: tc.ValFraction, Seed: tc.Seed, Logger: w.log,
			Tokenizer: tok, Pack: true, CacheDir: filepath.Join(w.o.State.Dir, tokensDir)})
		if err != nil {
			return fmt.Errorf("netclient: data %s: %w", w.o.DataDir, err)
		}
		w.ds, w.dsBatch, w.dsSeqLen, w.dsTokenizer = ds, B, T, info.TokenizerSHA256
	}
	return nil
}

// DoRound runs one round: download, train, compress, sign, upload.
func (w *Worker) DoRound(ctx context.Context, info protocol.RoundInfo) error {
	st := w.o.State
	up0, down0 := w.client.BytesUp, w.client.BytesDown
	if p, body, ok := st.Pending(); ok {
		if p.Round == info.Round && p.AdapterSHA256 == info.AdapterSHA256 {
			w.log.Info("resending the update stored before a restart", "round", info.Round, "bytes", len(body))
			return w.upload(ctx, info, p, body, up0, down0)
		}
		st.DropPending() // a round that is over: its delta can no longer apply
	}
	if info.SecAgg != nil {
		return w.doSecure(ctx, info, up0, down0)
	}
	codec, err := compress.Parse(info.Recipe.Codec)
	if err != nil {
		return fmt.Errorf("round %d recipe: %w", info.Round, err)
	}
	tr, err := w.trainFor(ctx, info)
	if err != nil {
		return err
	}
	n, res, energyJ, measured := tr.n, tr.res, tr.energyJ, tr.measured

	var ef *compress.State
	if !codec.Scaled {
		if ef, err = st.LoadEF(n, info.Recipe.Momentum); err != nil {
			return err
		}
	}
	payload, err := codec.Encode(res.Delta, ef, info.Seed)
	if err != nil {
		return fmt.Errorf("round %d: compress: %w", info.Round, err)
	}
	var base [32]byte
	hb, _ := hex.DecodeString(info.AdapterSHA256)
	copy(base[:], hb)
	u := &protocol.Update{
		Round: info.Round, BaseSHA256: base, WorkerID: st.Progress.WorkerID, N: n,
		Shapes: info.Shapes, Codec: codec.String(), Seed: info.Seed,
		Tokens: uint64(res.Tokens), FLOPs: res.FLOPs, EnergyWh: energyJ / 3600,
		Started: res.Started, Finished: res.Finished, Payload: payload.Bytes,
	}
	body, err := protocol.MarshalUpdate(u, st.Key)
	if err != nil {
		return fmt.Errorf("round %d: %w", info.Round, err)
	}
	if info.MaxUpdateBytes > 0 && int64(len(body)) > info.MaxUpdateBytes {
		return fmt.Errorf("round %d: the update is %d bytes, over the coordinator's limit of %d; codec %s is too dense", info.Round, len(body), info.MaxUpdateBytes, codec)
	}
	p := pendingRound{Round: info.Round, AdapterSHA256: info.AdapterSHA256, Loss: res.Loss, Tokens: res.Tokens, EnergyJ: energyJ, Measured: measured, Ratio: payload.Ratio()}
	if ef == nil {
		ef, _ = compress.NewState(n, 0)
	}
	if err := st.SavePending(p, body, ef); err != nil {
		return err
	}
	return w.upload(ctx, info, p, body, up0, down0)
}

// trainedRound is a round's local training result.
type trainedRound struct {
	n        int
	res      LocalResult
	energyJ  float64
	measured bool
}

// trainFor downloads the round's base and adapter and trains on them.
func (w *Worker) trainFor(ctx context.Context, info protocol.RoundInfo) (*trainedRound, error) {
	if !isSHA256(info.AdapterSHA256) || !isSHA256(info.BaseSHA256) {
		return nil, fmt.Errorf("netclient: round %d: base %q or adapter %q is not a SHA-256", info.Round, info.BaseSHA256, info.AdapterSHA256)
	}
	deadline := info.Deadline
	w.report(Event{Phase: PhaseDownload, Round: info.Round})
	basePath, err := w.fetchBase(ctx, info)
	if err != nil {
		return nil, err
	}
	if info.AdapterBytes < 0 || (info.AdapterBytes > 0 && info.AdapterBytes != 4*int64(ShapesLen(info.Shapes))) {
		return nil, fmt.Errorf("netclient: round %d: adapter_bytes %d does not fit the round's shapes (%d float32)", info.Round, info.AdapterBytes, ShapesLen(info.Shapes))
	}
	adapterPath, err := w.fetch(ctx, info.Round, deadline, info.AdapterSHA256, info.AdapterURL, 4*int64(ShapesLen(info.Shapes)))
	if err != nil {
		return nil, err
	}
	w.report(Event{Phase: PhaseDownload, Round: info.Round, Progress: 1})
	if err := w.prepare(info, basePath); err != nil {
		return nil, err
	}
	if err := SameShapes(w.trainer.Shapes(), info.Shapes); err != nil {
		return nil, fmt.Errorf("round %d: the coordinator's adapter does not fit base %s with model %q: %w", info.Round, info.BaseSHA256[:12], info.Model, err)
	}
	n := w.trainer.NumParams()
	if fi, err := os.Stat(adapterPath); err != nil {
		return nil, fmt.Errorf("netclient: %w", err)
	} else if fi.Size() != 4*int64(n) {
		return nil, fmt.Errorf("round %d adapter %s: %d bytes, the model's adapter is %d float32 (%d bytes)", info.Round, info.AdapterSHA256[:12], fi.Size(), n, 4*n)
	}
	blob, err := os.ReadFile(adapterPath)
	if err != nil {
		return nil, fmt.Errorf("netclient: %w", err)
	}
	global, err := DecodeAdapter(blob, n)
	if err != nil {
		return nil, fmt.Errorf("round %d adapter %s: %w", info.Round, info.AdapterSHA256[:12], err)
	}

	var e0 float64
	var measured bool
	if w.o.Energy != nil {
		e0, _ = w.o.Energy()
	}
	w.report(Event{Phase: PhaseTrain, Round: info.Round, Steps: info.Recipe.Steps})
	res, err := w.trainer.TrainLocal(ctx, w.ds, global, LocalOptions{
		Steps: info.Recipe.Steps, LR: info.Recipe.LR, MaxTokens: info.Recipe.MaxTokens,
		Stream: info.Seed, Governor: w.o.Governor,
		Progress: func(step, steps int, loss float64) {
			w.report(Event{Phase: PhaseTrain, Round: info.Round, Step: step, Steps: steps, Loss: loss, Progress: float64(step) / float64(steps)})
		},
	})
	if err != nil {
		return nil, fmt.Errorf("round %d: %w", info.Round, err)
	}
	var energyJ float64
	if w.o.Energy != nil {
		var e1 float64
		e1, measured = w.o.Energy()
		energyJ = math.Max(0, e1-e0)
	}

	return &trainedRound{n: n, res: res, energyJ: energyJ, measured: measured}, nil
}

// upload sends a stored update and finishes the round by the answer.
func (w *Worker) upload(ctx context.Context, info protocol.RoundInfo, p pendingRound, body []byte, up0, down0 int64) error {
	st := w.o.State
	w.report(Event{Phase: PhaseUpload, Round: info.Round, UpdateBytes: len(body)})
	var resp protocol.UploadResponse
	err := w.retry(ctx, "upload", info.Round, info.Deadline, func() error {
		var err error
		resp, err = w.client.Upload(ctx, body)
		return err
	})
	accepted := false
	var msg string
	switch {
	case err == nil && resp.Accepted:
		accepted = true
	case err == nil:
		msg = "not accepted: " + resp.Reason
	default:
		var se *StatusError
		if !errors.As(err, &se) {
			return err // network trouble past the deadline, or ctx: keep the pending update
		}
		if se.Code == http.StatusConflict && (strings.HasPrefix(se.Message, "duplicate") || strings.HasPrefix(se.Message, "replay")) {
			// The coordinator already holds this update (sent before a
			// restart whose answer was lost).
			accepted, msg = true, "already received: "+se.Message
		} else {
			msg = "refused: " + se.Message
		}
	}
	if err := st.FinishPending(info.Round, accepted); err != nil {
		return err
	}
	st.Progress.BytesUp, st.Progress.BytesDown = w.client.BytesUp, w.client.BytesDown
	if err := st.Save(); err != nil {
		return err
	}
	w.report(Event{Phase: PhaseDone, Round: info.Round, Progress: 1, Loss: p.Loss, Tokens: p.Tokens,
		UpdateBytes: len(body), CompressionRatio: p.Ratio, EnergyJ: p.EnergyJ, EnergyMeasured: p.Measured, Accepted: &accepted, Message: msg,
		RoundBytesUp: w.client.BytesUp - up0, RoundBytesDown: w.client.BytesDown - down0})
	if !accepted {
		w.log.Warn("update not accepted", "round", info.Round, "reason", msg)
	}
	return nil
}

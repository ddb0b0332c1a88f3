package train

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/opencluster/opencluster/train/backend"
	"github.com/opencluster/opencluster/train/data"
	"github.com/opencluster/opencluster/train/tokenizer"
)

// Mode is what a run trains.
type Mode string

const (
	// ModePretrain trains every weight of a freshly initialised model.
	ModePretrain Mode = "pretrain"
	// ModeQLoRA freezes a base model in 4-bit and trains LoRA adapters.
	ModeQLoRA Mode = "qlora"
)

// Governor paces training between optimizer steps, for example to keep a
// volunteer's machine inside its power, temperature and schedule limits.
// Wait blocks until the next step may start (an error stops the run after a
// checkpoint); StepDone reports how long the step just finished computed.
type Governor interface {
	Wait(ctx context.Context) error
	StepDone(busy time.Duration)
}

// ErrInterrupted is wrapped by the error Run returns when its context is
// cancelled (Ctrl-C): the state was saved and --resume continues it.
var ErrInterrupted = errors.New("interrupted")

// RunOptions describes one training run.
type RunOptions struct {
	Mode Mode
	// Config holds the train, lora and quant sections. Its model section
	// shapes a pretrain run; in QLoRA mode the base checkpoint's shape wins.
	Config Config
	// DataDir is the directory of text files to train on.
	DataDir string
	// Base is the base checkpoint of a QLoRA run (LoadModel's path).
	Base string
	// BaseName is the adapter's base_model_name_or_path; "" means the
	// base's _name_or_path, else its absolute path (see BaseName).
	BaseName string
	// Out is where the result goes: the Hugging Face base folder of a
	// pretrain run, or the PEFT adapter folder of a QLoRA run.
	Out string
	// Checkpoint is the training-state file; "" means CheckpointPath(Mode, Out).
	Checkpoint string
	// Resume continues from Checkpoint instead of starting fresh.
	Resume bool
	// Backend runs the model; nil means the CPU backend with train.threads.
	Backend backend.Backend
	// MaxMemory is the memory the job may use (bytes; device memory on a
	// GPU, RAM otherwise): PlanMemory picks the micro-batch and activation
	// checkpointing within it, and a job that cannot fit stops before the
	// model is loaded, saying what it needs. 0 runs as configured.
	MaxMemory int64
	// Governor is consulted between steps; nil means none.
	Governor Governor
	// Reporter receives progress events; nil means none.
	Reporter Reporter
	// Logger receives log records; nil means slog.Default().
	Logger *slog.Logger

	// Tokenizer encodes the data; nil means the byte-level tokenizer. Its
	// vocabulary must fit the model's embedding.
	Tokenizer *tokenizer.Tokenizer
	// TokenizerDir holds the tokenizer's files (tokenizer.json,
	// tokenizer_config.json); a pretrain run copies them into its folder.
	TokenizerDir string
	// ChatTemplate is a template that replaced the tokenizer's own
	// (--chat-template); a pretrain run writes it into its folder as
	// chat_template.jinja. "" keeps the tokenizer's files as they are.
	ChatTemplate string
	// NoPack gives every tokenized example a row of its own (cut as
	// Truncation says, padded) instead of packing examples into windows.
	NoPack bool
	// Truncation is data.TruncateRight (default) or data.TruncateLeft.
	Truncation string
	// SkipBadLines skips malformed JSONL lines instead of failing.
	SkipBadLines bool
	// TokenCache is the folder of the token cache; "" is the user's cache.
	TokenCache string

	// poison and poisonVal, set by tests, replace the loss of a step or
	// the validation loss after it to inject NaN.
	poison, poisonVal func(step int, loss float64) float64
	// slowSave, set by tests, runs in a background save before it writes.
	slowSave func()
}

// Result summarises a run.
type Result struct {
	Mode           Mode
	StartStep      int       // steps already done when this run started (resume)
	Step           int       // steps done at the end
	Losses         []float64 // training loss of each step this run did, from StartStep+1
	InitialValLoss float64   // validation loss before this run's first step
	ValLoss        float64   // validation loss at the end
	Tokens         int64     // training tokens processed by this run
	Elapsed        time.Duration
	Out            string // file or folder written
	// Checkpoint is the training-state file written at the end, or "" when
	// train.save_final_state is false.
	Checkpoint string
	// FinalSave is how long the run waited for its end's files after the
	// last step and its evaluation; FinalWrite how long writing them took in
	// all (it starts right after the last step, beside the evaluation).
	FinalSave, FinalWrite time.Duration
	NumTrainable          int
	// Plan is the memory plan the run followed (zero without MaxMemory).
	Plan MemoryPlan
}

// CheckpointPath is where a run that writes out keeps its training state:
// out + ".ckpt" beside a pretrained base file, trainer_state.ckpt inside an
// adapter folder.
func CheckpointPath(mode Mode, out string) string {
	if mode == ModeQLoRA {
		return filepath.Join(out, "trainer_state.ckpt")
	}
	return out + ".ckpt"
}

// Checkpoint meta keys written by Run.
const (
	ckptKeyStep       = "step"
	ckptKeyConfigHash = "config_hash"
	ckptKeySeed       = "seed"
	ckptKeyMode       = "mode"
	ckptKeyTokens     = "tokens"
)

// ConfigHash fingerprints the settings that change a run's numbers, so a
// resume under different settings is refused. train.steps, the evaluation
// and checkpoint cadence and the thread count are left out: a run may be
// extended or observed differently and still continue.
func ConfigHash(cfg Config) string {
	c := cfg
	c.Train.Steps, c.Train.EvalEvery, c.Train.EvalBatches, c.Train.CheckpointEvery, c.Train.Threads = 0, 0, 0, 0, 0
	c.Train.SaveFinalState = false
	b, _ := json.Marshal(c)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// CheckTokenizer refuses a tokenizer whose ids do not all have a row in
// the model's embedding (nil is the byte-level tokenizer, 256 ids).
func CheckTokenizer(mc ModelConfig, tok *tokenizer.Tokenizer) error {
	if tok == nil {
		if v := (data.ByteTokenizer{}).VocabSize(); mc.VocabSize < v {
			return fmt.Errorf("model vocab_size %d is smaller than the byte tokenizer's %d; pass --tokenizer", mc.VocabSize, v)
		}
		return nil
	}
	if v := tok.VocabSize(); v > mc.VocabSize {
		return fmt.Errorf("the tokenizer has %d ids but the model's embedding has %d rows (vocab_size): they do not belong together", v, mc.VocabSize)
	}
	return nil
}

// dataHash extends ConfigHash with the tokenizer and data settings that
// change a run's numbers; it is empty for the byte-level defaults, so older
// checkpoints still resume.
func dataHash(opts RunOptions) string {
	if opts.Tokenizer == nil && !opts.NoPack && opts.Truncation == "" && !opts.SkipBadLines {
		return ""
	}
	fp := "bytes"
	if opts.Tokenizer != nil {
		fp = opts.Tokenizer.Fingerprint()
	}
	sum := sha256.Sum256([]byte(fmt.Sprintf("%s|nopack=%v|trunc=%s|skip=%v", fp, opts.NoPack, opts.Truncation, opts.SkipBadLines)))
	return "-" + hex.EncodeToString(sum[:4])
}

// openData opens opts.DataDir as a run reads it (Eval reads it the same way).
func openData(opts RunOptions, log *slog.Logger) (*data.Dataset, error) {
	tc := opts.Config.Train
	return data.Open(data.Options{
		Dir: opts.DataDir, SeqLen: tc.SeqLen, BatchSize: tc.BatchSize,
		ValFraction: tc.ValFraction, Seed: tc.Seed, Logger: log,
		Tokenizer: opts.Tokenizer, Pack: !opts.NoPack, Truncation: opts.Truncation,
		SkipBadLines: opts.SkipBadLines, CacheDir: opts.TokenCache,
	})
}

// Run trains as opts says: it builds the model (pretrain: NewModel; QLoRA:
// LoadQuantized, which quantizes as it streams unless the base is already
// 4-bit, then EnableLoRA),
// streams batches from opts.DataDir, and runs train.steps optimizer steps of
// grad_accum micro-batches each, with clipping, the learning-rate schedule
// and AdamW. It evaluates before the first step, every eval_every steps and at
// the end; saves the training state every checkpoint_every steps, on
// cancellation and at the end; and finally writes opts.Out.
//
// A cancelled ctx abandons the step in progress, saves the state of the last
// finished step and returns an error wrapping ErrInterrupted. A NaN or
// infinite loss or gradient norm stops the run with an error naming the step
// and leaves the last good checkpoint untouched.
func Run(ctx context.Context, opts RunOptions) (Result, error) {
	start := time.Now()
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	res := Result{Mode: opts.Mode}
	cfg := opts.Config
	if err := checkOptions(&opts); err != nil {
		return res, err
	}
	tc := cfg.Train

	// Data first: it is cheap and its errors are the most common.
	ds, err := openData(opts, log)
	if err != nil {
		return res, err
	}
	defer ds.Close()
	st := ds.Stats()
	log.Info("data indexed", "dir", opts.DataDir, "files", st.Files, "bytes", st.Bytes,
		"skipped_binary", len(st.Skipped), "val_windows", st.ValWindows)
	if st.Examples > 0 {
		log.Info("data tokenized", "examples", st.Examples, "train_tokens", st.TrainTokens, "val_tokens", st.ValTokens,
			"bad_lines_skipped", st.BadLines, "dropped", st.Dropped, "packed", !opts.NoPack)
	}

	be, err := opts.backend(tc)
	if err != nil {
		return res, err
	}
	var plan *MemoryPlan
	if opts.MaxMemory > 0 {
		p, err := planRun(cfg, opts, be)
		if err != nil {
			return res, err
		}
		plan, res.Plan = &p, p
		log.Info("memory plan", "budget", FormatBytes(p.Budget), "estimate", FormatBytes(p.Estimate.Peak()),
			"micro_batch", p.MicroBatch, "batch", tc.BatchSize, "checkpointing", p.Checkpointing, "host_optimizer", p.HostOptimizer)
	}
	m, err := buildModel(&cfg, opts, be, log)
	if err != nil {
		return res, err
	}
	if plan != nil {
		m.SetMicroBatch(plan.MicroBatch)
		m.SetCheckpointing(plan.Checkpointing)
		m.SetHostOptimizer(plan.HostOptimizer)
	}
	res.NumTrainable = m.NumTrainable()
	if err := CheckTokenizer(m.Config, opts.Tokenizer); err != nil {
		return res, err
	}
	hash := ConfigHash(cfg) + dataHash(opts)
	ckpt := opts.Checkpoint
	res.Checkpoint = ckpt

	step := 0
	var tokensBefore int64
	if opts.Resume {
		meta, err := m.LoadTrainState(ckpt)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return res, fmt.Errorf("resume: no checkpoint at %s; run without --resume to start fresh", ckpt)
			}
			return res, fmt.Errorf("resume from %s: %w", ckpt, err)
		}
		if step, err = checkMeta(meta, opts.Mode, hash, ckpt); err != nil {
			return res, err
		}
		tokensBefore, _ = strconv.ParseInt(meta[ckptKeyTokens], 10, 64)
		if step > tc.Steps {
			return res, fmt.Errorf("resume: checkpoint %s is at step %d, past train.steps=%d; raise --steps", ckpt, step, tc.Steps)
		}
		log.Info("resuming", "checkpoint", ckpt, "step", step)
	} else if _, err := os.Stat(ckpt); err == nil {
		log.Warn("starting fresh; the existing checkpoint will be replaced (use --resume to continue it)", "checkpoint", ckpt)
	}
	res.StartStep, res.Step = step, step

	lastGood := "none yet"
	if opts.Resume {
		lastGood = fmt.Sprintf("step %d", step)
	}
	// A checkpoint is written from the live parameters and moments (no
	// copies on the CPU). A periodic one is written in the background while
	// the next step's forward and backward run, and OptimizerStep, the only
	// thing that changes what it writes, waits for it (waitSave), so the file
	// holds exactly the state after its step.
	var pending chan error // the background save in flight, or nil
	pendingAt := 0
	waitSave := func() error {
		if pending == nil {
			return nil
		}
		err := <-pending
		pending = nil
		if err != nil {
			return fmt.Errorf("checkpoint at step %d: %w", pendingAt, err)
		}
		lastGood = fmt.Sprintf("step %d", pendingAt)
		log.Debug("checkpoint saved", "path", ckpt, "step", pendingAt)
		return nil
	}
	defer waitSave() // no save outlives Run
	startSave := func(at int, tokens int64) (func() (staged, error), error) {
		if err := waitSave(); err != nil {
			return nil, err
		}
		meta := map[string]string{
			ckptKeyStep: strconv.Itoa(at), ckptKeyConfigHash: hash, ckptKeySeed: strconv.FormatUint(tc.Seed, 10),
			ckptKeyMode: string(opts.Mode), ckptKeyTokens: strconv.FormatInt(tokens, 10),
		}
		if err := os.MkdirAll(filepath.Dir(ckpt), 0o755); err != nil {
			return nil, fmt.Errorf("checkpoint %s: %w", ckpt, err)
		}
		stage, err := m.PrepareTrainState(ckpt, meta)
		if err != nil {
			return nil, fmt.Errorf("checkpoint at step %d: %w", at, err)
		}
		return stage, nil
	}
	save := func(at int, tokens int64) error {
		stage, err := startSave(at, tokens)
		if err != nil {
			return err
		}
		if err := commitStaged(stage); err != nil {
			return fmt.Errorf("checkpoint at step %d: %w", at, err)
		}
		lastGood = fmt.Sprintf("step %d", at)
		log.Debug("checkpoint saved", "path", ckpt, "step", at)
		return nil
	}
	saveInBackground := func(at int, tokens int64) error {
		stage, err := startSave(at, tokens)
		if err != nil {
			return err
		}
		pending, pendingAt = make(chan error, 1), at
		go func(done chan<- error) {
			if opts.slowSave != nil {
				opts.slowSave()
			}
			done <- commitStaged(stage)
		}(pending)
		return nil
	}
	// The end of the run writes what --out asks for (and the training state
	// when train.save_final_state asks: for a big model it is three times
	// the weights) in the background, starting right after the last step,
	// while the final evaluation runs; the files are put in place only once
	// that evaluation has passed.
	type finalFiles struct {
		files staged
		err   error
		took  time.Duration
	}
	var final chan finalFiles
	startFinal := func(at int, tokens int64) error {
		var stageState func() (staged, error)
		if tc.SaveFinalState {
			var err error
			if stageState, err = startSave(at, tokens); err != nil {
				return err
			}
		}
		stageOut, err := prepareOut(m, opts)
		if err != nil {
			return err
		}
		final = make(chan finalFiles, 1)
		writeFinal := func(out chan<- finalFiles) {
			t0 := time.Now()
			var ff finalFiles
			if stageState != nil {
				ff.files, ff.err = stageState()
			}
			if ff.err == nil {
				var o staged
				o, ff.err = stageOut()
				ff.files = append(ff.files, o...)
			}
			if ff.err != nil {
				ff.files.abort()
				ff.files = nil
			}
			ff.took = time.Since(t0)
			out <- ff
		}
		if m.hostResident() {
			go writeFinal(final)
		} else { // device buffers are copied as they are written: not beside the evaluation
			writeFinal(final)
		}
		return nil
	}
	abortFinal := func() {
		if final != nil {
			(<-final).files.abort()
			final = nil
		}
	}
	defer abortFinal()
	// intact names the last good checkpoint for an error that stops the
	// run without saving, once any save in flight has finished.
	intact := func() string {
		waitSave()
		return ckpt + ", " + lastGood
	}
	interrupted := func(at int, cause error) error {
		if err := save(at, tokensBefore+res.Tokens); err != nil {
			return fmt.Errorf("interrupted at step %d, and saving failed: %w", at, err)
		}
		return fmt.Errorf("%w at step %d (%v); state saved to %s; resume with --resume", ErrInterrupted, at, cause, ckpt)
	}
	report := func(e Event) {
		if opts.Reporter != nil {
			e.Steps, e.Elapsed = tc.Steps, time.Since(start)
			opts.Reporter.Report(e)
		}
	}

	evalN := max(1, tc.EvalBatches)
	val, err := ds.ValBatches(evalN)
	if err != nil {
		return res, err
	}
	evaluate := func() (float64, error) { // the same number as the eval command's
		r, err := Evaluate(ctx, m, val)
		if err != nil {
			return 0, fmt.Errorf("validation loss: %w", err)
		}
		return r.Loss, nil
	}
	if res.InitialValLoss, err = evaluate(); err != nil {
		if ctx.Err() != nil {
			return res, fmt.Errorf("%w before the first step; nothing to save", ErrInterrupted)
		}
		return res, err
	}
	res.ValLoss = res.InitialValLoss
	report(Event{Kind: EventEval, Step: step, ValLoss: res.InitialValLoss, HasVal: true})

	var busyTotal, busyWarmup time.Duration
	done := 0 // steps this run
	scale := float32(1) / float32(tc.GradAccum)
	tokensPerStep := int64(tc.GradAccum * tc.BatchSize * tc.SeqLen)
	for step < tc.Steps {
		next := step + 1
		if err := ctx.Err(); err != nil {
			return res, interrupted(step, err)
		}
		if opts.Governor != nil {
			if err := opts.Governor.Wait(ctx); err != nil {
				if ctx.Err() != nil {
					return res, interrupted(step, ctx.Err())
				}
				if serr := save(step, tokensBefore+res.Tokens); serr != nil {
					return res, errors.Join(fmt.Errorf("governor stopped training at step %d: %w", step, err), serr)
				}
				return res, fmt.Errorf("governor stopped training at step %d (state saved to %s): %w", step, ckpt, err)
			}
		}
		t0 := time.Now()
		m.ZeroGrad()
		var loss float64
		for micro := 0; micro < tc.GradAccum; micro++ {
			if err := ctx.Err(); err != nil {
				return res, interrupted(step, err) // abandon the half-done step
			}
			b, err := ds.TrainBatch(next, micro)
			if err != nil {
				return res, fmt.Errorf("step %d: %w", next, err)
			}
			l, err := m.ForwardBackward(b.Tokens, b.Targets, b.B, b.T, scale, next)
			if err != nil {
				return res, fmt.Errorf("step %d: %w", next, err)
			}
			loss += l
		}
		loss /= float64(tc.GradAccum)
		if opts.poison != nil {
			loss = opts.poison(next, loss)
		}
		if math.IsNaN(loss) || math.IsInf(loss, 0) {
			return res, fmt.Errorf("step %d: training loss is %v; stopped without saving, the last good checkpoint (%s) is intact; lower train.lr or check the data", next, loss, intact())
		}
		norm := m.ClipGradNorm(tc.GradClip)
		if math.IsNaN(norm) || math.IsInf(norm, 0) {
			return res, fmt.Errorf("step %d: gradient norm is %v; stopped without saving, the last good checkpoint (%s) is intact; lower train.lr or set train.grad_clip", next, norm, intact())
		}
		lr := LearningRate(tc, next)
		if err := waitSave(); err != nil { // the checkpoint reads what this step changes
			return res, err
		}
		m.OptimizerStep(tc, lr, next)
		busy := time.Since(t0)
		busyTotal += busy
		if done < WarmupSteps {
			busyWarmup += busy
		}
		done++
		if opts.Governor != nil {
			opts.Governor.StepDone(busy)
		}
		step = next
		res.Step = step
		res.Tokens += tokensPerStep
		res.Losses = append(res.Losses, loss)

		if step == tc.Steps {
			if err := startFinal(step, tokensBefore+res.Tokens); err != nil {
				return res, err
			}
		}
		steady, incl := rates(res.Tokens, tokensPerStep, done, busyTotal, busyWarmup)
		e := Event{Kind: EventStep, Step: step, Loss: loss, LR: lr, GradNorm: norm, TokensPerS: steady, TokensPerSInclWarmup: incl}
		if (tc.EvalEvery > 0 && step%tc.EvalEvery == 0) || step == tc.Steps {
			v, err := evaluate()
			if opts.poisonVal != nil {
				v = opts.poisonVal(step, v)
			}
			if err != nil {
				if ctx.Err() != nil {
					return res, interrupted(step, ctx.Err())
				}
				return res, fmt.Errorf("step %d: %w", step, err)
			}
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return res, fmt.Errorf("step %d: validation loss is %v; stopped without saving, the last good checkpoint (%s) is intact", step, v, intact())
			}
			res.ValLoss, e.ValLoss, e.HasVal = v, v, true
		}
		report(e)
		if tc.CheckpointEvery > 0 && step%tc.CheckpointEvery == 0 && step < tc.Steps {
			if err := saveInBackground(step, tokensBefore+res.Tokens); err != nil {
				return res, err
			}
		}
	}

	saveStart := time.Now()
	if err := waitSave(); err != nil {
		return res, err
	}
	if final == nil { // no step ran (a resume at train.steps): write now
		if err := startFinal(step, tokensBefore+res.Tokens); err != nil {
			return res, err
		}
	}
	ff := <-final
	final = nil
	if ff.err == nil {
		ff.err = ff.files.commit()
	}
	if ff.err != nil {
		return res, fmt.Errorf("writing the end of the run: %w", ff.err)
	}
	res.FinalSave, res.FinalWrite = time.Since(saveStart), ff.took
	res.Checkpoint = ""
	if tc.SaveFinalState {
		res.Checkpoint = ckpt
	} else if lastGood != "none yet" {
		log.Info("training state not written at the end (train.save_final_state is false); --resume would continue from the last checkpoint", "checkpoint", ckpt, "at", lastGood)
	}
	res.Out = opts.Out
	res.Elapsed = time.Since(start)
	steady, incl := rates(res.Tokens, tokensPerStep, done, busyTotal, busyWarmup)
	report(Event{Kind: EventSummary, Step: step, Loss: lastOr(res.Losses, math.NaN()), ValLoss: res.ValLoss, HasVal: true,
		InitialValLoss: res.InitialValLoss, Tokens: res.Tokens, TokensPerS: steady, TokensPerSInclWarmup: incl, Out: opts.Out,
		FinalSave: res.FinalSave, FinalWrite: res.FinalWrite})
	return res, nil
}

// WarmupSteps is how many first steps of a run the steady tokens/s leaves
// out: the first step allocates the activations and AdamW moments, faults
// their pages in and runs on cold caches (2x slower or more on a 113M model).
const WarmupSteps = 1

// rates returns the steady tokens/s (steps after the warm-up; 0 while there
// are none) and the rate over every step of the run.
func rates(tokens, tokensPerStep int64, steps int, busy, busyWarmup time.Duration) (steady, incl float64) {
	if busy > 0 {
		incl = float64(tokens) / busy.Seconds()
	}
	if steps > WarmupSteps && busy > busyWarmup {
		steady = float64(tokens-int64(WarmupSteps)*tokensPerStep) / (busy - busyWarmup).Seconds()
	}
	return steady, incl
}

func lastOr(xs []float64, def float64) float64 {
	if len(xs) == 0 {
		return def
	}
	return xs[len(xs)-1]
}

// checkOptions validates opts and fills its defaults.
func checkOptions(opts *RunOptions) error {
	switch opts.Mode {
	case ModePretrain:
	case ModeQLoRA:
		if opts.Base == "" {
			return errors.New("qlora run: no base checkpoint given")
		}
		if err := opts.Config.LoRA.Validate(); err != nil {
			return err
		}
		if err := opts.Config.Quant.Validate(); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unknown training mode %q (want %q or %q)", opts.Mode, ModePretrain, ModeQLoRA)
	}
	if opts.DataDir == "" {
		return errors.New("no data directory given")
	}
	if opts.Out == "" {
		return errors.New("no output path given")
	}
	if err := opts.Config.Train.Validate(); err != nil {
		return err
	}
	if opts.Checkpoint == "" {
		opts.Checkpoint = CheckpointPath(opts.Mode, opts.Out)
	}
	return nil
}

// buildModel makes the model of opts.Mode and sets cfg.Model to its shape.
func buildModel(cfg *Config, opts RunOptions, be backend.Backend, log *slog.Logger) (*Model, error) {
	seed := cfg.Train.Seed
	if opts.Mode == ModePretrain {
		if err := cfg.Validate(); err != nil {
			return nil, err
		}
		m, err := NewModel(cfg.Model, be, seed)
		if err != nil {
			return nil, fmt.Errorf("new model: %w", err)
		}
		log.Info("model initialised", "params", cfg.Model.NumParams(), "backend", be.Name())
		return m, nil
	}
	// Quantized as it streams in: the fp32 base is never in memory.
	m, err := LoadQuantized(opts.Base, be, cfg.Quant)
	if err != nil {
		return nil, fmt.Errorf("base %s: %w", opts.Base, err)
	}
	cfg.Model = m.Config
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("base %s with this config: %w", opts.Base, err)
	}
	log.Info("base loaded in 4-bit", "format", cfg.Quant.Format, "block", cfg.Quant.BlockSize, "double_quant", cfg.Quant.DoubleQuant)
	if err := m.EnableLoRA(cfg.LoRA, seed); err != nil {
		return nil, fmt.Errorf("enable LoRA: %w", err)
	}
	log.Info("QLoRA ready", "base", opts.Base, "rank", cfg.LoRA.Rank, "trainable", m.NumTrainable(), "backend", be.Name(),
		"frozen_products", frozenDType(be))
	return m, nil
}

// backend is the backend a run (or an evaluation) computes on: opts.Backend
// or the CPU with train.threads, set to train.compute_dtype.
func (opts RunOptions) backend(tc TrainConfig) (backend.Backend, error) {
	be := opts.Backend
	if be == nil {
		be = backend.NewCPU(tc.Threads)
	}
	if _, err := backend.ApplyComputeDType(be, tc.ComputeDType); err != nil {
		return nil, err
	}
	return be, nil
}

// frozenDType names the arithmetic of the frozen base's products on be.
func frozenDType(be backend.Backend) string {
	if fd, ok := be.(backend.FrozenDTyper); ok {
		return fd.FrozenDType()
	}
	return backend.ComputeFP32
}

// planRun fits the run into opts.MaxMemory before any weight is loaded (a
// QLoRA base's shape comes from its config alone).
func planRun(cfg Config, opts RunOptions, be backend.Backend) (MemoryPlan, error) {
	mc := cfg.Model
	if opts.Mode == ModeQLoRA {
		var err error
		if mc, err = ReadBaseConfig(opts.Base); err != nil {
			return MemoryPlan{}, fmt.Errorf("base %s: %w", opts.Base, err)
		}
	}
	job := MemoryJob{Model: mc, Mode: opts.Mode, LoRA: cfg.LoRA, Quant: cfg.Quant,
		MicroBatch: cfg.Train.BatchSize, SeqLen: cfg.Train.SeqLen, CUDA: be.Name() != "cpu"}
	p, err := PlanMemory(job, opts.MaxMemory, job.CUDA)
	if err != nil {
		return p, fmt.Errorf("memory: %w", err)
	}
	return p, nil
}

// checkMeta validates a checkpoint's meta against this run and returns its step.
func checkMeta(meta map[string]string, mode Mode, hash, path string) (int, error) {
	if got := meta[ckptKeyMode]; got != string(mode) {
		return 0, fmt.Errorf("resume: checkpoint %s is from a %q run, not %q", path, got, mode)
	}
	if got := meta[ckptKeyConfigHash]; got != hash {
		return 0, fmt.Errorf("resume: checkpoint %s was written under a different config (hash %s, now %s); resume with the same settings or start fresh", path, got, hash)
	}
	step, err := strconv.Atoi(meta[ckptKeyStep])
	if err != nil || step < 0 {
		return 0, fmt.Errorf("resume: checkpoint %s has a bad step %q", path, meta[ckptKeyStep])
	}
	return step, nil
}

// prepareOut gathers the run's result (the base file or the adapter folder)
// and returns the function that writes it beside its place.
func prepareOut(m *Model, opts RunOptions) (func() (staged, error), error) {
	if opts.Mode == ModeQLoRA {
		stage, err := m.prepareAdapter(opts.Out, BaseName(opts.BaseName, m, opts.Base))
		if err != nil {
			return nil, fmt.Errorf("write adapter %s: %w", opts.Out, err)
		}
		return stage, nil
	}
	if tok := opts.Tokenizer; tok != nil { // config.json names the tokenizer's BOS and EOS
		if _, id, ok := tok.BOS(); ok {
			m.Info.BOS, m.Info.HasBOS = id, true
		}
		if _, id, ok := tok.EOS(); ok {
			m.Info.EOS = []int32{id}
		}
	}
	stage, err := m.prepareHF(opts.Out, SaveOptions{TokenizerDir: opts.TokenizerDir, ChatTemplate: opts.ChatTemplate})
	if err != nil {
		return nil, fmt.Errorf("write base %s: %w", opts.Out, err)
	}
	return stage, nil
}

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/opencluster/opencluster/internal/atomicfile"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/opencluster/opencluster/coordinator/ledger"
	"github.com/opencluster/opencluster/netclient"
	"github.com/opencluster/opencluster/protocol"
	"github.com/opencluster/opencluster/train"
	"github.com/opencluster/opencluster/train/data"
	"github.com/opencluster/opencluster/train/tokenizer"
	"github.com/spf13/cobra"
)

func init() { rootCmd.AddCommand(newDemoCmd()) }

// Demo defaults, tuned so `make demo` stays well under 3 minutes on 2 cores.
const (
	demoPretrainSteps = 300
	// demoVocab is the demo tokenizer's size: byte-level BPE trained on the
	// pretraining text, so the demo runs the code path of real models
	// (tokenizer.json, the base folder naming it, workers tokenizing with
	// it) while staying close to the tiny preset's cost.
	demoVocab  = 384
	demoCodec  = "topk:0.05+q4:64" // 50x, within 2% of dense FedAvg in the sweep (docs/compression.md)
	demoPrompt = "// Package "
	// Under secure aggregation the codec is the round's shared random-k
	// positions (the same for every worker) in an 8-bit ring value each.
	demoSecureFraction = 0.05
	demoClip           = 10.0 // the measured cost of clip 1 on this model is in docs/compression.md
	demoSecureBits     = 8
	// demoValBatches is what the demo scores each round's adapter on (its
	// own process, on the workers' cores: --calibrate-demo counts it).
	demoValBatches = 8
)

func newDemoCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "demo [--workers 4] [--rounds R] [--dir _demo] [--data DIR] [--json]",
		Short: "Run a federated QLoRA demo on this machine: one coordinator and N worker processes on loopback",
		Long: `demo trains a small byte-level BPE tokenizer and pretrains a tiny base on
$GOROOT/doc (a Hugging Face folder, cached in --dir), splits a corpus
into non-IID shards (the Go standard library's source by package group, or
--data DIR by subfolder), starts one coordinator (the real opencluster
coordinator command, HTTP/2 over TLS with the self-signed certificate it
makes in DIR/coordinator) and --workers worker processes of this same binary
on loopback, trusting that certificate with --ca, and runs --rounds rounds of
federated QLoRA with compressed, signed updates. After each round it prints the participants,
bytes up and down, the compression ratio, the workers' training loss, the
validation loss of the published global adapter on files no worker trained
on, and the energy the workers report. It ends with a generation before and
after, and verifies the ledger, recomputing every round's aggregate from the
stored updates (ledger verify --coordinator-dir).`,
		Args: cobra.NoArgs,
		RunE: runDemo,
	}
	f := cmd.Flags()
	f.Int("workers", 4, "worker processes")
	f.Int("rounds", 8, "federated rounds")
	f.Int("steps", 10, "local steps per round")
	f.Float64("lr", 1e-2, "local learning rate")
	f.String("codec", demoCodec, "update codec (see docs/compression.md)")
	f.String("dir", "_demo", "working folder: base model cache, shards, coordinator and worker state (the _ keeps `go test ./...` out of the Go sources it copies)")
	f.String("data", "", "your own corpus: a folder split into shards by subfolder (default: $GOROOT/src)")
	f.Bool("json", false, "print one JSON object per round on stdout")
	f.Int("threads", 1, "CPU threads per worker")
	f.Duration("timeout", 5*time.Minute, "give up after this long")
	f.Bool("secure-agg", true, "secure aggregation: the coordinator sees only each round's sum (--secure-agg=false for plain signed uploads)")
	f.Float64("dp", 0, "with --secure-agg: differential privacy with this noise multiplier (the workers add Skellam noise; each round's epsilon goes on the ledger)")
	f.Float64("clip", demoClip, "with --secure-agg: the L2 norm each worker clips its update to")
	f.Uint("secure-bits", demoSecureBits, "with --secure-agg: bits per quantized value (the ring adds headroom for the cohort's sum)")
	f.Float64("secure-fraction", demoSecureFraction, "with --secure-agg: the share of the adapter masked and sent per round (random-k positions shared by the cohort)")
	f.StringSlice("regions", nil, "countries to show workers in on the dashboard, in worker order (ISO codes, e.g. DE,BR,IN); workers past the list stay unplaced")

	return cmd
}

// demoTrainConfig is the tiny preset (train, lora and quant sections).
func demoTrainConfig() (train.Config, error) {
	var c train.Config
	err := loadConfig("tiny", nil, nil, &c)
	return c, err
}

// workerExit is how a demo worker process ended.
type workerExit struct {
	index int
	err   error
}

// demoRound collects one round's numbers.
type demoRound struct {
	Event            string  `json:"event"` // "round"
	Round            uint64  `json:"round"`
	Participants     int     `json:"participants"`
	BytesUp          int64   `json:"round_bytes_up"`
	BytesDown        int64   `json:"round_bytes_down"`
	CompressionRatio float64 `json:"compression_ratio"` // dense fp32 delta / codec payload
	WireRatio        float64 `json:"wire_ratio"`        // dense fp32 delta / whole signed update (header, shapes digest, signature)
	TrainLoss        float64 `json:"loss"`              // the workers' mean training loss
	ValLoss          float64 `json:"val_loss"`
	EnergyJ          float64 `json:"energy_j"` // the accepted updates' claims (secure rounds: from the masked inputs)
	FLOPs            float64 `json:"flops"`    // the same for FLOPs
	EnergyMeasured   bool    `json:"energy_measured"`
	ElapsedS         float64 `json:"elapsed_s"`
	SecureAgg        bool    `json:"secure_agg"`
	Epsilon          float64 `json:"epsilon,omitempty"` // spent so far (with --dp)
}

func runDemo(cmd *cobra.Command, _ []string) error {
	f := cmd.Flags()
	workers, _ := f.GetInt("workers")
	rounds, _ := f.GetInt("rounds")
	steps, _ := f.GetInt("steps")
	lr, _ := f.GetFloat64("lr")
	codec, _ := f.GetString("codec")
	dir, _ := f.GetString("dir")
	dataDir, _ := f.GetString("data")
	jsonOut, _ := f.GetBool("json")
	threads, _ := f.GetInt("threads")
	timeout, _ := f.GetDuration("timeout")
	secure, _ := f.GetBool("secure-agg")
	dp, _ := f.GetFloat64("dp")
	clip, _ := f.GetFloat64("clip")
	fraction, _ := f.GetFloat64("secure-fraction")
	qbits, _ := f.GetUint("secure-bits")
	if dp != 0 && !secure {
		return fmt.Errorf("--dp %g needs --secure-agg: the noise is added by the workers and only secure aggregation keeps it from the coordinator", dp)
	}
	if workers < 2 && secure {
		return fmt.Errorf("--secure-agg needs at least 2 workers (a sum of one is that worker's update); use --secure-agg=false")
	}
	regions, _ := f.GetStringSlice("regions")
	if workers < 1 || rounds < 1 || steps < 1 {
		return fmt.Errorf("--workers (%d), --rounds (%d) and --steps (%d) must be at least 1", workers, rounds, steps)
	}
	for _, r := range regions {
		if _, _, err := protocol.LookupRegion(r); err != nil {
			return fmt.Errorf("--regions: %w", err)
		}
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
	defer cancel()
	out := cmd.OutOrStdout()
	say := func(format string, a ...any) {
		if !jsonOut {
			fmt.Fprintf(out, format+"\n", a...)
		}
	}
	start := time.Now()
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tc, err := demoTrainConfig()
	if err != nil {
		return err
	}
	goroot, err := goRoot()
	if err != nil {
		return err
	}

	// 1. The tokenizer and the base: made once, cached. The base is a
	// Hugging Face folder naming its tokenizer, which the coordinator
	// serves and every worker encodes its text with.
	tokDir, tokens := filepath.Join(dir, "tokenizer"), filepath.Join(dir, "tokens")
	tok, err := demoTokenizer(tokDir, filepath.Join(goroot, "doc"))
	if err != nil {
		return err
	}
	base := filepath.Join(dir, "base")
	if _, err := os.Stat(filepath.Join(base, "config.json")); err != nil {
		say("== pretraining the tiny base on %s (%d steps, a %d-token BPE tokenizer; cached in %s)", filepath.Join(goroot, "doc"), demoPretrainSteps, tok.VocabSize(), base)
		pc := tc
		pc.Train.Steps, pc.Train.EvalEvery, pc.Train.CheckpointEvery = demoPretrainSteps, 0, 0
		pc.Model.VocabSize = tok.VocabSize()
		if _, err := train.Run(ctx, train.RunOptions{Mode: train.ModePretrain, Config: pc, DataDir: filepath.Join(goroot, "doc"),
			Out: base, Tokenizer: tok, TokenizerDir: tokDir, TokenCache: tokens,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}); err != nil {
			return fmt.Errorf("pretrain the demo base: %w", err)
		}
	}

	// 2. Non-IID shards and a held-out validation set.
	src, ext := filepath.Join(goroot, "src"), ".go"
	if dataDir != "" {
		src, ext = dataDir, ""
	}
	os.RemoveAll(filepath.Join(dir, "corpus"))
	corpus, err := netclient.SplitCorpus(netclient.CorpusOptions{Src: src, Out: filepath.Join(dir, "corpus"), Shards: workers,
		Ext: ext, MaxShardBytes: 2 << 20, MaxValBytes: 512 << 10, ValEvery: 10})
	if err != nil {
		return err
	}
	for i, g := range corpus.Groups {
		say("   worker %d: %d KB of %s", i, corpus.ShardBytes[i]>>10, summarize(g))
	}
	say("   validation: %d KB held out from every group", corpus.ValBytes>>10)

	// The driver's own model, for validation and generation.
	tr, err := netclient.NewTrainer(tc, base, 0)
	if err != nil {
		return err
	}
	val, err := netclient.ValBatches(corpus.Val, tc.Train.SeqLen, tc.Train.BatchSize, demoValBatches, 1, tok, tokens)
	if err != nil {
		return err
	}
	initAdapter, err := tr.InitialAdapter() // B = 0: the base alone
	if err != nil {
		return err
	}
	v0, err := tr.Loss(initAdapter, val)
	if err != nil {
		return err
	}

	// 3. The coordinator: the real `opencluster coordinator` command in its
	// own process, serving HTTP/2 over TLS with the self-signed certificate
	// it makes in its --dir; the workers and this driver trust exactly that
	// certificate (--ca), nothing else.
	coordDir := filepath.Join(dir, "coordinator")
	os.RemoveAll(coordDir)
	os.RemoveAll(filepath.Join(dir, "workers"))
	if err := os.MkdirAll(coordDir, 0o755); err != nil {
		return err
	}
	coordCfg := filepath.Join(coordDir, "coordinator.yaml")
	if err := writeDemoCoordinatorConfig(coordCfg, demoCoordinatorConfig{Base: base, Shapes: tr.Shapes(), Workers: workers,
		Rounds: rounds, Steps: steps, LR: lr, BatchTokens: tc.Train.BatchSize * tc.Train.SeqLen, Codec: codec,
		Secure: secure, Clip: clip, Noise: dp, Fraction: fraction, Bits: qbits}); err != nil {
		return err
	}
	ccmd := exec.CommandContext(ctx, exe, "coordinator", "--dir", coordDir, "--config", coordCfg,
		"--listen", "127.0.0.1:0", "--log-level", "warn", "--device", "cpu")
	ccmd.Stderr = os.Stderr
	cout, err := ccmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := ccmd.Start(); err != nil {
		return err
	}
	coordExited := false
	defer func() {
		if !coordExited {
			ccmd.Process.Signal(syscall.SIGTERM)
			ccmd.Wait()
		}
	}()
	url, err := readCoordinatorURL(cout)
	if err != nil {
		return err
	}
	go io.Copy(io.Discard, cout)
	caFile := filepath.Join(coordDir, "tls.crt")
	hc, err := netclient.NewHTTPClient(url, netclient.TLSOptions{CAFile: caFile})
	if err != nil {
		return err
	}
	defer hc.CloseIdleConnections()
	if secure {
		codec = fmt.Sprintf("secure aggregation (the coordinator sees only sums: random-k %g shared by the cohort, %d-bit values in a ring, clip %g", fraction, qbits, clip)
		if dp > 0 {
			codec += fmt.Sprintf(", DP noise multiplier %g", dp)
		}
		codec += ")"
	}
	say("== coordinator on %s (HTTP/2 over TLS, certificate %s; state in %s); %d workers, %d rounds of %d local steps, codec %s",
		url, caFile, coordDir, workers, rounds, steps, codec)
	say("   dashboard: open %s/ (trust the certificate %s)", url, caFile)
	say("   round 0: val_loss %.4f (the base alone)", v0)

	// 4. The workers. They share this machine with each other, so the
	// budget must not pause them for "the owner is using the machine".
	workerCfg := filepath.Join(dir, "worker.yaml")
	if err := atomicfile.WriteFile(workerCfg, []byte("# Written by `opencluster demo`: keys as in configs/worker.yaml.\n"+
		"# The demo's workers share this machine; another worker is not its owner.\nbudget:\n  pause_when_user_active: false\n"), 0o644); err != nil {
		return err
	}
	var mu sync.Mutex
	events := map[uint64][]netclient.Event{}
	var procs []*exec.Cmd
	// The workers train where --device says (cpu, auto or cuda[:N], as
	// for train): a worker that cannot start there stops the demo.
	dev, err := deviceRequest(cmd)
	if err != nil {
		return err
	}
	exited := make(chan workerExit, workers)
	pending := 0 // workers started and not yet seen to exit
	for i := 0; i < workers; i++ {
		w := exec.CommandContext(ctx, exe, "worker", "--coordinator", url, "--ca", caFile, "--data", corpus.Shards[i],
			"--state", filepath.Join(dir, "workers", strconv.Itoa(i)), "--config", workerCfg, "--json", "--threads", strconv.Itoa(threads),
			"--rounds", strconv.Itoa(rounds), "--idle-exit", "30s", "--poll", "5s", "--name", fmt.Sprintf("demo-%d", i),
			"--log-level", "warn", "--device", dev.String())
		if i < len(regions) {
			w.Args = append(w.Args, "--region", regions[i])
		}
		w.Stderr = os.Stderr
		pipe, err := w.StdoutPipe()
		if err != nil {
			return err
		}
		if err := w.Start(); err != nil {
			return err
		}
		procs = append(procs, w)
		pending++
		go func() {
			sc := bufio.NewScanner(pipe)
			for sc.Scan() {
				var e netclient.Event
				if json.Unmarshal(sc.Bytes(), &e) == nil && e.Phase == netclient.PhaseDone {
					mu.Lock()
					events[e.Round] = append(events[e.Round], e)
					mu.Unlock()
				}
			}
			// Wait only once the output is read (Wait closes the pipe).
			exited <- workerExit{i, w.Wait()}
		}()
	}
	defer func() {
		for _, p := range procs {
			p.Process.Signal(syscall.SIGTERM)
		}
		for ; pending > 0; pending-- {
			<-exited
		}
	}()

	// 5. Follow the ledger; evaluate each published adapter.
	seen := 0
	final := initAdapter
	var first, last float64 = v0, v0
	for seen < rounds {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("demo: %d of %d rounds done before the timeout: %w", seen, rounds, err)
		}
		select {
		case x := <-exited: // a worker that ends well ends after its last round
			pending--
			if x.err != nil {
				return fmt.Errorf("demo: worker %d (--device %s) stopped after %d of %d rounds: %v (its error is above)", x.index, dev, seen, rounds, x.err)
			}
		default:
		}
		recs, err := fetchLedger(ctx, hc, url)
		if err != nil || len(recs) <= seen {
			time.Sleep(300 * time.Millisecond)
			continue
		}
		for _, rec := range recs[seen:] {
			blob, err := httpGet(ctx, hc, url+netclient.PathBlobs+rec.AdapterAfter)
			if err != nil {
				return err
			}
			adapter, err := netclient.DecodeAdapter(blob, tr.NumParams())
			if err != nil {
				return err
			}
			v, err := tr.Loss(adapter, val)
			if err != nil {
				return err
			}
			final, last = adapter, v
			time.Sleep(200 * time.Millisecond) // the workers' done lines trail the upload answer
			mu.Lock()
			evs := events[rec.Round]
			mu.Unlock()
			r := demoRound{Event: "round", Round: rec.Round, ValLoss: v, ElapsedS: time.Since(start).Seconds(), EnergyMeasured: len(evs) > 0,
				SecureAgg: rec.Aggregation.Options["secure_aggregation"] != "", Epsilon: rec.Aggregation.Params["epsilon_spent"]}
			for _, u := range rec.Updates {
				if u.Accepted {
					r.Participants++
					r.BytesUp += u.Bytes
					r.EnergyJ += u.EnergyWh * 3600
					r.FLOPs += u.FLOPs
				}
			}
			for _, e := range evs {
				r.BytesDown += e.RoundBytesDown
				r.TrainLoss += e.Loss / float64(len(evs))
				r.EnergyMeasured = r.EnergyMeasured && e.EnergyMeasured
				r.CompressionRatio += e.CompressionRatio / float64(len(evs))
			}
			if r.SecureAgg { // every stage's messages, not only the masked vector
				r.BytesUp = 0
				for _, e := range evs {
					r.BytesUp += e.RoundBytesUp
				}
			}
			if r.BytesUp > 0 && r.Participants > 0 {
				dense := float64(4 * tr.NumParams())
				r.WireRatio = dense / (float64(r.BytesUp) / float64(r.Participants))
			}
			if jsonOut {
				json.NewEncoder(out).Encode(r)
			} else {
				est := "estimated"
				if r.EnergyMeasured {
					est = "measured"
				}
				fmt.Fprintf(out, "   round %d: participants %d, up %s, down %s, compression_ratio %.1fx (%.1fx with headers), train_loss %.4f, val_loss %.4f, %.3g FLOPs, energy %.0f J (%s), %.0fs\n",
					r.Round, r.Participants, human(r.BytesUp), human(r.BytesDown), r.CompressionRatio, r.WireRatio, r.TrainLoss, r.ValLoss, r.FLOPs, r.EnergyJ, est, r.ElapsedS)
				if r.Epsilon > 0 {
					fmt.Fprintf(out, "      privacy spent so far: epsilon %.3g at delta 1e-5 (client level)\n", r.Epsilon)
				}
			}
		}
		seen = len(recs)
	}

	// 6. Before and after, and the ledger.
	ledgerPath := filepath.Join(coordDir, "ledger.jsonl")
	if !jsonOut {
		say("== val_loss %.4f -> %.4f (%+.1f%%) over %d rounds", first, last, 100*(last-first)/first, rounds)
		for _, g := range []struct {
			name    string
			adapter []float32
		}{{"before (the base alone)", initAdapter}, {"after (base + federated adapter)", final}} {
			text, err := demoGenerate(ctx, tr, tok, g.adapter)
			if err != nil {
				return err
			}
			say("== generation %s, prompt %q:\n%s%s\n", g.name, demoPrompt, demoPrompt, text)
		}
		say("== ledger: %s", ledgerPath)
	}
	// The coordinator serves until stopped: stop it so the ledger and the
	// database are closed, then check every hash and signature and
	// recompute every round's aggregate from the stored updates.
	ccmd.Process.Signal(syscall.SIGTERM)
	ccmd.Wait()
	coordExited = true
	vc := exec.CommandContext(ctx, exe, "ledger", "verify", "--coordinator-dir", coordDir, ledgerPath)
	vout, verr := vc.CombinedOutput()
	if !jsonOut {
		fmt.Fprint(out, "   ledger verify: ", string(vout))
	}
	if verr != nil {
		return fmt.Errorf("ledger verify %s failed: %v", ledgerPath, verr)
	}
	say("demo: done in %.0fs", time.Since(start).Seconds())
	return nil
}

// demoCoordinatorConfig is what the demo's coordinator.yaml sets.
type demoCoordinatorConfig struct {
	Base                                string
	Shapes                              []protocol.Shape
	Workers, Rounds, Steps, BatchTokens int
	LR                                  float64
	Codec                               string
	Secure                              bool
	Clip, Noise, Fraction               float64
	Bits                                uint
}

// writeDemoCoordinatorConfig writes the coordinator's config file
// (configs/coordinator.yaml's keys) for the demo: the adapter shapes of the
// tiny model, a cohort of every worker closing at all of them (at least
// all but one by the deadline), the demo's recipe, and no rate limit (the
// workers share one loopback address). JSON is valid YAML, so the file is
// written with encoding/json; `ledger verify --coordinator-dir` reads it
// back to recompute the aggregates.
func writeDemoCoordinatorConfig(path string, c demoCoordinatorConfig) error {
	cfg := map[string]any{
		"listen":          "127.0.0.1:0",
		"base_model":      c.Base,
		"rate_per_second": 0,
		"tick":            "200ms",
		"rounds": map[string]any{
			"model":         "tiny",
			"shapes":        c.Shapes,
			"cohort_size":   c.Workers,
			"quorum":        c.Workers,
			"min_workers":   c.Workers,
			"min_updates":   max(1, c.Workers-1),
			"round_timeout": "90s",
			"max_rounds":    c.Rounds,
			// Plain error feedback, no momentum: see netclient/sweep_test.go.
			"recipe": map[string]any{"steps": c.Steps, "lr": c.LR, "batch_tokens": c.BatchTokens, "codec": c.Codec, "momentum": 0},
		},
	}
	if c.Secure {
		cfg["rounds"].(map[string]any)["secure_agg"] = map[string]any{"enabled": true, "fraction": c.Fraction, "clip": c.Clip,
			"quant_bits": c.Bits, "stage_timeout": "30s", "noise_multiplier": c.Noise, "delta": 1e-5}
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	b = append([]byte("# Written by `opencluster demo`; keys as in configs/coordinator.yaml (JSON is YAML).\n"), b...)
	return atomicfile.WriteFile(path, append(b, '\n'), 0o644)
}

// readCoordinatorURL reads the coordinator's stdout until its
// "coordinator listening on https://ADDR" line and returns the URL.
func readCoordinatorURL(r io.Reader) (string, error) {
	br := bufio.NewReader(r)
	for {
		line, err := br.ReadString('\n')
		if _, u, ok := strings.Cut(strings.TrimSpace(line), "listening on "); ok && strings.HasPrefix(u, "https://") {
			return u, nil
		}
		if err != nil {
			return "", fmt.Errorf("demo: the coordinator exited before it was listening (last output %q): %w", line, err)
		}
	}
}

func demoGenerate(ctx context.Context, tr *netclient.Trainer, tok *tokenizer.Tokenizer, adapter []float32) (string, error) {
	m := tr.Model()
	if err := m.SetTrainableParams(adapter); err != nil {
		return "", err
	}
	enc := data.HFTokenizer{T: tok}
	ids, err := train.Sample(ctx, m, enc.Encode([]byte(demoPrompt)), train.SampleOptions{MaxTokens: 60, Temperature: 0.8, TopK: 20, Seed: 1,
		Stop: m.StopTokens(tok)})
	if err != nil {
		return "", err
	}
	b, err := enc.Decode(ids)
	if err != nil {
		return "", err
	}
	return data.Printable(b), nil
}

// demoTokenizer trains the demo's byte-level BPE tokenizer on the files
// under corpus and writes it to dir, or loads it from there.
func demoTokenizer(dir, corpus string) (*tokenizer.Tokenizer, error) {
	if tok, err := tokenizer.Load(dir); err == nil && tok.VocabSize() == demoVocab {
		return tok, nil
	}
	var docs []string
	err := filepath.WalkDir(corpus, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err == nil && utf8.Valid(b) {
			docs = append(docs, string(b))
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("demo tokenizer: %w", err)
	}
	tok, raw, err := tokenizer.Train(docs, demoVocab)
	if err != nil {
		return nil, fmt.Errorf("demo tokenizer: %w", err)
	}
	if err := tokenizer.WriteFolder(dir, raw); err != nil {
		return nil, err
	}
	return tok, nil
}

func fetchLedger(ctx context.Context, hc *http.Client, url string) ([]ledger.Record, error) {
	b, err := httpGet(ctx, hc, url+netclient.PathLedger)
	if err != nil {
		return nil, err
	}
	var recs []ledger.Record
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if line == "" {
			continue
		}
		var r ledger.Record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			return nil, fmt.Errorf("ledger line %d: %w", len(recs)+1, err)
		}
		recs = append(recs, r)
	}
	return recs, nil
}

func httpGet(ctx context.Context, hc *http.Client, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return b, err
}

func goRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOROOT").Output()
	if err == nil {
		return strings.TrimSpace(string(out)), nil
	}
	if r := os.Getenv("GOROOT"); r != "" {
		return r, nil
	}
	return "", errors.New("demo: cannot find the Go installation (go env GOROOT failed); pass --data DIR")
}

func summarize(groups []string) string {
	if len(groups) > 6 {
		return strings.Join(groups[:6], ", ") + fmt.Sprintf(" and %d more package groups", len(groups)-6)
	}
	return strings.Join(groups, ", ")
}

func human(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

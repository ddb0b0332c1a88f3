package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/opencluster/opencluster/coordinator"
	"github.com/opencluster/opencluster/coordinator/ledger"
	"github.com/opencluster/opencluster/netclient"
	"github.com/opencluster/opencluster/protocol"
	"github.com/opencluster/opencluster/train"
	"github.com/opencluster/opencluster/train/backend"
	"github.com/opencluster/opencluster/train/data"
	"github.com/spf13/cobra"
)

func init() { rootCmd.AddCommand(newDemoCmd()) }

// Demo defaults, tuned so `make demo` stays well under 3 minutes on 2 cores.
const (
	demoPretrainSteps = 300
	demoCodec         = "topk:0.05+q4:64" // 50x, within 2% of dense FedAvg in the sweep (docs/compression.md)
	demoPrompt        = "// Package "
)

func newDemoCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "demo [--workers 4] [--rounds R] [--dir DIR] [--data DIR] [--json]",
		Short: "Run a federated QLoRA demo on this machine: one coordinator and N worker processes on loopback",
		Long: `demo pretrains a tiny base on $GOROOT/doc (cached in --dir), splits a corpus
into non-IID shards (the Go standard library's source by package group, or
--data DIR by subfolder), starts one coordinator and --workers worker processes
of this same binary on loopback, and runs --rounds rounds of federated QLoRA
with compressed, signed updates. After each round it prints the participants,
bytes up and down, the compression ratio, the workers' training loss, the
validation loss of the published global adapter on files no worker trained
on, and the energy the workers report. It ends with a generation before and
after, and verifies the ledger.`,
		Args: cobra.NoArgs,
		RunE: runDemo,
	}
	f := cmd.Flags()
	f.Int("workers", 4, "worker processes")
	f.Int("rounds", 8, "federated rounds")
	f.Int("steps", 10, "local steps per round")
	f.Float64("lr", 1e-2, "local learning rate")
	f.String("codec", demoCodec, "update codec (see docs/compression.md)")
	f.String("dir", "demo-out", "working folder: base model cache, shards, coordinator and worker state")
	f.String("data", "", "your own corpus: a folder split into shards by subfolder (default: $GOROOT/src)")
	f.Bool("json", false, "print one JSON object per round on stdout")
	f.Int("threads", 1, "CPU threads per worker")
	f.Duration("timeout", 5*time.Minute, "give up after this long")

	child := &cobra.Command{
		Use:    "coordinator-process",
		Short:  "the demo's coordinator (started by demo)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE:   runDemoCoordinator,
	}
	cf := child.Flags()
	cf.String("dir", "", "coordinator folder")
	cf.String("base", "", "base model file")
	cf.String("listen", "127.0.0.1:0", "address")
	cf.Int("workers", 4, "cohort size")
	cf.Int("rounds", 8, "rounds")
	cf.Int("steps", 10, "local steps")
	cf.Float64("lr", 1e-2, "local lr")
	cf.String("codec", demoCodec, "codec")
	cmd.AddCommand(child)
	return cmd
}

// demoTrainConfig is the tiny preset (train, lora and quant sections).
func demoTrainConfig() (train.Config, error) {
	var c train.Config
	err := loadConfig("tiny", nil, nil, &c)
	return c, err
}

// runDemoCoordinator serves one coordinator over plain HTTP on loopback
// until its last round is closed and the ledger written, then exits.
func runDemoCoordinator(cmd *cobra.Command, _ []string) error {
	f := cmd.Flags()
	dir, _ := f.GetString("dir")
	base, _ := f.GetString("base")
	listen, _ := f.GetString("listen")
	workers, _ := f.GetInt("workers")
	rounds, _ := f.GetInt("rounds")
	steps, _ := f.GetInt("steps")
	lr, _ := f.GetFloat64("lr")
	codec, _ := f.GetString("codec")
	ctx := cmd.Context()
	tc, err := demoTrainConfig()
	if err != nil {
		return err
	}
	m, err := train.LoadModel(base, backend.NewCPU(1))
	if err != nil {
		return err
	}
	cfg := coordinator.DefaultConfig()
	cfg.Shapes = netclient.AdapterShapes(m.Config, tc.LoRA)
	cfg.CohortSize, cfg.Quorum, cfg.MinWorkers, cfg.MinUpdates = workers, workers, workers, max(1, workers-1)
	cfg.RoundTimeout = 90 * time.Second
	cfg.MaxRounds = uint64(rounds)
	cfg.Recipe = protocol.Recipe{Steps: steps, LR: lr, BatchTokens: tc.Train.BatchSize * tc.Train.SeqLen, Codec: codec, Momentum: 0} // plain error feedback: see netclient/sweep_test.go
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	store, err := coordinator.OpenSQLite(ctx, filepath.Join(dir, "coordinator.db"))
	if err != nil {
		return err
	}
	defer store.Close()
	lg, err := ledger.Open(dir)
	if err != nil {
		return err
	}
	key, _, err := protocol.LoadOrCreateKey(filepath.Join(dir, "coordinator.key"))
	if err != nil {
		return err
	}
	c, err := coordinator.New(ctx, cfg, coordinator.Options{Dir: dir, Store: store, Ledger: lg, Key: key, BaseModelPath: base})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: coordinator.NewServer(c, coordinator.ServerOptions{}), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	fmt.Fprintln(cmd.OutOrStdout(), "listening", ln.Addr().String())
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go c.Run(runCtx, 200*time.Millisecond)
	for !c.Done() && ctx.Err() == nil {
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // let the driver read the last record
	shut, cancel2 := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel2()
	srv.Shutdown(shut)
	return nil
}

// demoRound collects one round's numbers.
type demoRound struct {
	Round            uint64  `json:"round"`
	Participants     int     `json:"participants"`
	BytesUp          int64   `json:"bytes_up"`
	BytesDown        int64   `json:"bytes_down"`
	CompressionRatio float64 `json:"compression_ratio"` // dense fp32 delta / codec payload
	WireRatio        float64 `json:"wire_ratio"`        // dense fp32 delta / whole signed update (header, shapes, signature)
	TrainLoss        float64 `json:"train_loss"`
	ValLoss          float64 `json:"val_loss"`
	EnergyJ          float64 `json:"energy_j"`
	EnergyMeasured   bool    `json:"energy_measured"`
	ElapsedS         float64 `json:"elapsed_s"`
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
	if workers < 1 || rounds < 1 || steps < 1 {
		return fmt.Errorf("--workers (%d), --rounds (%d) and --steps (%d) must be at least 1", workers, rounds, steps)
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

	// 1. The base: pretrained once, cached.
	base := filepath.Join(dir, "base.safetensors")
	if _, err := os.Stat(base); err != nil {
		say("== pretraining the tiny base on %s (%d steps; cached in %s)", filepath.Join(goroot, "doc"), demoPretrainSteps, base)
		pc := tc
		pc.Train.Steps, pc.Train.EvalEvery, pc.Train.CheckpointEvery = demoPretrainSteps, 0, 0
		if _, err := train.Run(ctx, train.RunOptions{Mode: train.ModePretrain, Config: pc, DataDir: filepath.Join(goroot, "doc"),
			Out: base, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}); err != nil {
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
	val, err := netclient.ValBatches(corpus.Val, tc.Train.SeqLen, tc.Train.BatchSize, 8, 1)
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

	// 3. The coordinator process.
	coordDir := filepath.Join(dir, "coordinator")
	os.RemoveAll(coordDir)
	os.RemoveAll(filepath.Join(dir, "workers"))
	ccmd := exec.CommandContext(ctx, exe, "demo", "coordinator-process", "--dir", coordDir, "--base", base,
		"--workers", strconv.Itoa(workers), "--rounds", strconv.Itoa(rounds), "--steps", strconv.Itoa(steps),
		"--lr", strconv.FormatFloat(lr, 'g', -1, 64), "--codec", codec, "--log-level", "warn", "--device", "cpu")
	ccmd.Stderr = os.Stderr
	cout, err := ccmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := ccmd.Start(); err != nil {
		return err
	}
	defer func() { ccmd.Process.Signal(syscall.SIGTERM); ccmd.Wait() }()
	line, err := bufio.NewReader(cout).ReadString('\n')
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening ")
	if err != nil || !ok {
		return fmt.Errorf("the demo coordinator did not start (said %q): %v", line, err)
	}
	url := "http://" + addr
	say("== coordinator on %s (state in %s); %d workers, %d rounds of %d local steps, codec %s", url, coordDir, workers, rounds, steps, codec)
	say("   round 0: val_loss %.4f (the base alone)", v0)

	// 4. The workers.
	var mu sync.Mutex
	events := map[uint64][]netclient.Event{}
	var procs []*exec.Cmd
	for i := 0; i < workers; i++ {
		w := exec.CommandContext(ctx, exe, "worker", "--coordinator", url, "--data", corpus.Shards[i],
			"--state", filepath.Join(dir, "workers", strconv.Itoa(i)), "--json", "--threads", strconv.Itoa(threads),
			"--rounds", strconv.Itoa(rounds), "--idle-exit", "30s", "--poll", "5s", "--name", fmt.Sprintf("demo-%d", i),
			"--log-level", "warn", "--device", "cpu")
		w.Stderr = os.Stderr
		pipe, err := w.StdoutPipe()
		if err != nil {
			return err
		}
		if err := w.Start(); err != nil {
			return err
		}
		procs = append(procs, w)
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
		}()
	}
	defer func() {
		for _, p := range procs {
			p.Process.Signal(syscall.SIGTERM)
			p.Wait()
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
		recs, err := fetchLedger(ctx, url)
		if err != nil || len(recs) <= seen {
			time.Sleep(300 * time.Millisecond)
			continue
		}
		for _, rec := range recs[seen:] {
			blob, err := httpGet(ctx, url+netclient.PathBlobs+rec.AdapterAfter)
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
			r := demoRound{Round: rec.Round, ValLoss: v, ElapsedS: time.Since(start).Seconds(), EnergyMeasured: len(evs) > 0}
			for _, u := range rec.Updates {
				if u.Accepted {
					r.Participants++
					r.BytesUp += u.Bytes
					r.EnergyJ += u.EnergyWh * 3600
				}
			}
			for _, e := range evs {
				r.BytesDown += e.RoundBytesDown
				r.TrainLoss += e.Loss / float64(len(evs))
				r.EnergyMeasured = r.EnergyMeasured && e.EnergyMeasured
				r.CompressionRatio += e.CompressionRatio / float64(len(evs))
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
				fmt.Fprintf(out, "   round %d: participants %d, up %s, down %s, compression_ratio %.1fx (%.1fx with headers), train_loss %.4f, val_loss %.4f, energy %.0f J (%s), %.0fs\n",
					r.Round, r.Participants, human(r.BytesUp), human(r.BytesDown), r.CompressionRatio, r.WireRatio, r.TrainLoss, r.ValLoss, r.EnergyJ, est, r.ElapsedS)
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
			text, err := demoGenerate(ctx, tr, g.adapter)
			if err != nil {
				return err
			}
			say("== generation %s, prompt %q:\n%s%s\n", g.name, demoPrompt, demoPrompt, text)
		}
		say("== ledger: %s", ledgerPath)
	}
	ccmd.Wait() // the coordinator exits after its last round; the ledger is closed
	vc := exec.CommandContext(ctx, exe, "ledger", "verify", ledgerPath)
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

func demoGenerate(ctx context.Context, tr *netclient.Trainer, adapter []float32) (string, error) {
	m := tr.Model()
	if err := m.SetTrainableParams(adapter); err != nil {
		return "", err
	}
	ids, err := train.Sample(ctx, m, data.ByteTokenizer{}.Encode([]byte(demoPrompt)), train.SampleOptions{MaxTokens: 160, Temperature: 0.8, TopK: 20, Seed: 1})
	if err != nil {
		return "", err
	}
	b, err := data.ByteTokenizer{}.Decode(ids)
	if err != nil {
		return "", err
	}
	return data.Printable(b), nil
}

func fetchLedger(ctx context.Context, url string) ([]ledger.Record, error) {
	b, err := httpGet(ctx, url+netclient.PathLedger)
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

func httpGet(ctx context.Context, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
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

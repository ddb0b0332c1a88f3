package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/opencluster/opencluster/device/budget"
	"github.com/opencluster/opencluster/train"
	"github.com/opencluster/opencluster/train/tokenizer"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"
)

func init() {
	rootCmd.AddCommand(newTrainCmd())
}

// trainFlagKeys maps config keys to the flags that override them, for both
// pretrain and train.
var trainFlagKeys = map[string]string{
	"train.steps":      "steps",
	"train.lr":         "lr",
	"train.seed":       "seed",
	"train.batch_size": "batch-size",
	"train.seq_len":    "seq-len",
	"train.threads":    "threads",
	"lora.rank":        "rank",
}

// addDataFlags adds the flags that say how --data is read and split:
// pretrain, train and eval share them, so eval reads data as training does.
func addDataFlags(f *pflag.FlagSet) {
	f.String("config", "tiny", "YAML config file or preset name ("+presetNames()+")")
	f.String("data", "", "training data: a folder of text files (read recursively; binary files skipped) and/or .jsonl files of {\"text\"} or chat {\"messages\"}, or one such file")
	f.String("tokenizer", "", "tokenizer.json or a folder holding it (default: the --base folder's tokenizer.json when it has one, else byte-level)")
	f.String("chat-template", "", "a Jinja chat template file to use instead of the tokenizer's (for chat .jsonl data); pretrain writes it into --out as chat_template.jinja")
	f.Bool("pack", true, "pack examples into full windows of seq-len tokens (documents end with EOS); --pack=false gives each example its own padded row")
	f.String("truncation", "right", "with --pack=false, which end of a too-long example to keep: right keeps the beginning, left the end")
	f.Bool("skip-bad-lines", false, "skip malformed JSONL lines (and count them) instead of stopping at the first")
	f.Int("batch-size", 0, "sequences per micro-batch (overrides train.batch_size)")
	f.Int("seq-len", 0, "tokens per sequence (overrides train.seq_len)")
	f.Int("threads", 0, "CPU threads; 0 uses every core (overrides train.threads)")
}

// readDataFlags fills the data settings of opts from addDataFlags' flags,
// with the tokenizer found for base.
func readDataFlags(f *pflag.FlagSet, base string, opts *train.RunOptions) error {
	tokPath, _ := f.GetString("tokenizer")
	pack, _ := f.GetBool("pack")
	opts.NoPack = !pack
	opts.Truncation, _ = f.GetString("truncation")
	opts.SkipBadLines, _ = f.GetBool("skip-bad-lines")
	tok, err := tokenizer.ForModel(tokPath, base)
	if err != nil {
		return fmt.Errorf("--tokenizer: %w", err)
	}
	if tok != nil {
		for _, w := range tok.Warnings() {
			slog.Warn(w)
		}
	}
	if path, _ := f.GetString("chat-template"); path != "" {
		if tok == nil {
			return errors.New("--chat-template needs a tokenizer (--tokenizer, or a --base folder with tokenizer.json)")
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("--chat-template: %w", err)
		}
		tok.SetChatTemplate(string(src))
		opts.ChatTemplate = string(src)
	}
	opts.Tokenizer, opts.TokenizerDir = tok, tokPath
	if st, err := os.Stat(tokPath); err == nil && !st.IsDir() {
		opts.TokenizerDir = filepath.Dir(tokPath)
	}
	return nil
}

// addRunFlags adds the flags pretrain and train share.
func addRunFlags(f *pflag.FlagSet) {
	addDataFlags(f)
	f.Int("steps", 0, "optimizer steps (overrides train.steps)")
	f.Float64("lr", 0, "peak learning rate (overrides train.lr)")
	f.Uint64("seed", 0, "seed for initialisation and batches (overrides train.seed)")
	f.Bool("json", false, "print one JSON object per step and a summary object on stdout")
	f.Bool("resume", false, "continue from the checkpoint beside --out")
	f.String("checkpoint", "", "training-state file (default: beside or inside --out)")
	f.String("budget", "", "obey a power, temperature and schedule budget: a worker config file or preset (worker); default none")
	addMaxMemoryFlag(f)
	addProfileFlags(f)
}

func newTrainCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "train --base BASE --data DIR --out ADAPTER_DIR",
		Short: "QLoRA fine-tune: freeze a base in 4-bit and train LoRA adapters on your text",
		Long: `train fine-tunes a base model QLoRA-style on the text files under --data:
the base's linear weights are frozen in 4-bit NF4 (quantized on load unless the
file already holds them packed), and only small LoRA adapters are trained. The
adapters are written to --out in the PEFT layout (adapter_model.safetensors,
adapter_config.json), with the training state (trainer_state.ckpt) beside them
for --resume (every train.checkpoint_every steps, on Ctrl-C, and at the end
with train.save_final_state: true). Your text never leaves the machine.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runTraining(cmd, train.ModeQLoRA)
		},
	}
	f := cmd.Flags()
	f.String("base", "", "base checkpoint: a safetensors file from pretrain, or a Hugging Face Llama folder")
	f.String("out", "", "adapter folder to write (PEFT layout)")
	f.String("base-name", "", "base_model_name_or_path to record in the adapter (default: the base's _name_or_path, else its absolute path)")
	f.Int("rank", 0, "LoRA rank (overrides lora.rank)")
	addRunFlags(f)
	return cmd
}

// runTraining wires flags and config into train.Run for pretrain and train.
func runTraining(cmd *cobra.Command, mode train.Mode) error {
	f := cmd.Flags()
	source, _ := f.GetString("config")
	dataDir, _ := f.GetString("data")
	out, _ := f.GetString("out")
	base, baseName := "", ""
	if mode == train.ModeQLoRA {
		baseName, _ = f.GetString("base-name")
		base, _ = f.GetString("base")
		if base == "" {
			return errors.New("--base is required: the base checkpoint to fine-tune")
		}
	}
	if dataDir == "" {
		return errors.New("--data is required: a folder of text or .jsonl files, or one .jsonl file")
	}
	if out == "" {
		if mode == train.ModeQLoRA {
			return errors.New("--out is required: the adapter folder to write")
		}
		return errors.New("--out is required: the base model folder to write")
	}
	var cfg train.Config
	if err := loadModelConfig(source, f, trainFlagKeys, &cfg); err != nil {
		return err
	}
	jsonOut, _ := f.GetBool("json")
	resume, _ := f.GetBool("resume")
	ckpt, _ := f.GetString("checkpoint")
	var dataOpts train.RunOptions
	if err := readDataFlags(f, base, &dataOpts); err != nil {
		return err
	}

	var rep train.Reporter
	stderr := cmd.ErrOrStderr()
	switch {
	case jsonOut:
		rep = train.NewJSONReporter(cmd.OutOrStdout())
	case isTerminal(stderr):
		rep = &train.ProgressBar{W: stderr}
	default:
		rep = train.LogReporter{Logger: slog.Default()}
	}
	be, err := commandBackend(cmd, cfg.Train.Threads)
	if err != nil {
		return err
	}
	memFlag, _ := f.GetString("max-memory")
	maxMem, memSource, err := maxMemory(cmd.Context(), memFlag, be.Name())
	if err != nil {
		return err
	}
	slog.Debug("memory budget", "bytes", maxMem, "from", memSource)
	if be.Name() == "cpu" {
		limitHeap(maxMem)
	}
	gov, err := trainingGovernor(cmd, be.Name())
	if err != nil {
		return err
	}
	defer gov.Close()
	var governor train.Governor
	if gov != nil {
		governor = gov
	}
	stopProfiles, err := startProfiles(f)
	if err != nil {
		return err
	}
	res, err := train.Run(cmd.Context(), train.RunOptions{
		Mode: mode, Config: cfg, DataDir: dataDir, Base: base, BaseName: baseName, Out: out, Backend: be, MaxMemory: maxMem,
		Checkpoint: ckpt, Resume: resume, Governor: governor, Reporter: rep, Logger: slog.Default(),
		Tokenizer: dataOpts.Tokenizer, TokenizerDir: dataOpts.TokenizerDir, ChatTemplate: dataOpts.ChatTemplate, NoPack: dataOpts.NoPack, Truncation: dataOpts.Truncation, SkipBadLines: dataOpts.SkipBadLines,
	})
	if perr := stopProfiles(); perr != nil && err == nil {
		err = perr
	}
	budgetLine := ""
	if gov != nil {
		budgetLine = gov.Summary()
		if err != nil {
			defer fmt.Fprintln(stderr, budgetLine) // say why a paused run made no progress
		}
	}
	if _, bar := rep.(*train.ProgressBar); bar && err != nil {
		fmt.Fprintln(stderr) // end the bar's line before the error is printed
	}
	if errors.Is(err, train.ErrInterrupted) {
		return interruptedError{err}
	}
	if err != nil {
		return err
	}
	if !jsonOut {
		change := 0.0
		if res.InitialValLoss != 0 {
			change = 100 * (res.ValLoss - res.InitialValLoss) / res.InitialValLoss
		}
		what := "base"
		if mode == train.ModeQLoRA {
			what = "adapter"
		}
		fmt.Fprintf(cmd.OutOrStdout(), "%s: steps %d-%d, val loss %.4f -> %.4f (%+.1f%%), %d trainable params, %s written to %s\n",
			mode, res.StartStep, res.Step, res.InitialValLoss, res.ValLoss, change, res.NumTrainable, what, filepath.Clean(res.Out))
		if budgetLine != "" {
			fmt.Fprintln(cmd.OutOrStdout(), budgetLine)
		}
	} else if gov != nil {
		b, _ := json.Marshal(struct {
			Event   string `json:"event"`
			Sensors string `json:"sensors"`
			budget.Status
		}{"budget", gov.Source, gov.Status()})
		fmt.Fprintln(cmd.OutOrStdout(), string(b))
	}
	return nil
}

// isTerminal reports whether w is an interactive terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// interruptedError exits with 130, the shell's status for a Ctrl-C, so
// scripts can tell a saved interruption from a failure.
type interruptedError struct{ error }

func (e interruptedError) Unwrap() error { return e.error }

// ExitCode is 130.
func (interruptedError) ExitCode() int { return 130 }

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"

	"github.com/opencluster/opencluster/train"
	"github.com/spf13/cobra"
)

func init() {
	rootCmd.AddCommand(newEvalCmd())
}

// evalFlagKeys maps config keys to the flags of eval that override them.
var evalFlagKeys = map[string]string{
	"train.batch_size": "batch-size",
	"train.seq_len":    "seq-len",
	"train.threads":    "threads",
}

func newEvalCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "eval --base DIR [--adapter DIR] --data PATH [--json]",
		Short: "Print a model's mean loss (nats per token) on the validation split of your data",
		Long: `eval scores the base (plus the adapter) on the validation batches that a
training run with the same --config, --data and tokenizer settings evaluates,
and prints the mean cross-entropy in nats per scored token and the token
count: the number that run reports as its validation loss, so you can compare
before and after training. With --adapter the base is held in 4-bit as
training holds it (the quant section of --config, unless the base is a
bitsandbytes folder already); --quantize does that without an adapter, which
gives the run's initial validation loss.`,
		Args: cobra.NoArgs,
		RunE: runEval,
	}
	f := cmd.Flags()
	f.String("base", "", "base model: a Hugging Face folder (or a safetensors file from older versions)")
	f.String("adapter", "", "PEFT adapter folder to apply")
	f.Bool("quantize", false, "hold a dense base in 4-bit as training does (implied by --adapter)")
	f.Bool("all", false, "score every validation batch instead of train.eval_batches of them")
	f.Bool("json", false, "print one JSON object")
	addDataFlags(f)
	return cmd
}

func runEval(cmd *cobra.Command, _ []string) error {
	f := cmd.Flags()
	var opts train.EvalOptions
	opts.Base, _ = f.GetString("base")
	opts.Adapter, _ = f.GetString("adapter")
	opts.DataDir, _ = f.GetString("data")
	opts.Quantize, _ = f.GetBool("quantize")
	opts.AllBatches, _ = f.GetBool("all")
	jsonOut, _ := f.GetBool("json")
	source, _ := f.GetString("config")
	if opts.Base == "" {
		return errors.New("--base is required: the model folder to score")
	}
	if opts.DataDir == "" {
		return errors.New("--data is required: a folder of text or .jsonl files, or one .jsonl file")
	}
	if err := loadModelConfig(source, f, evalFlagKeys, &opts.Config); err != nil {
		return err
	}
	if err := readDataFlags(f, opts.Base, &opts.RunOptions); err != nil {
		return err
	}
	be, err := commandBackend(cmd, opts.Config.Train.Threads)
	if err != nil {
		return err
	}
	opts.Backend, opts.Logger = be, slog.Default()
	res, err := train.Eval(cmd.Context(), opts)
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	if jsonOut {
		b, _ := json.Marshal(evalOutput{res, math.Exp(res.Loss), opts.Base, opts.Adapter, opts.DataDir})
		fmt.Fprintln(out, string(b))
		return nil
	}
	fmt.Fprintf(out, "loss %.4f nats/token over %d tokens (perplexity %.2f)\n", res.Loss, res.Tokens, math.Exp(res.Loss))
	return nil
}

// evalOutput is eval's --json object (docs/json.md).
type evalOutput struct {
	train.EvalResult
	Perplexity float64 `json:"perplexity"`
	Base       string  `json:"base"`
	Adapter    string  `json:"adapter,omitempty"`
	Data       string  `json:"data"`
}

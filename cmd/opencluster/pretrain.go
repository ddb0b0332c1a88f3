package main

import (
	"fmt"
	"slices"
	"strings"

	"github.com/opencluster/opencluster/configs"
	"github.com/opencluster/opencluster/train"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func init() {
	rootCmd.AddCommand(newPretrainCmd())
}

func newPretrainCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "pretrain --data DIR --out BASE_DIR",
		Short: "Train a small base model from scratch on a directory of text",
		Long: `pretrain initialises the model shape of --config (a preset such as tiny, or a
YAML file) and trains every weight on the text files under --data. The result
is a Hugging Face model folder (config.json, model.safetensors and, with
--tokenizer, the tokenizer's files) that train fine-tunes, generate samples
from and transformers loads; the training state goes beside it
(BASE_DIR.ckpt) for --resume: every train.checkpoint_every steps, on Ctrl-C,
and at the end with train.save_final_state: true.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runTraining(cmd, train.ModePretrain)
		},
	}
	cmd.Flags().String("out", "", "base model folder to write (Hugging Face layout)")
	addRunFlags(cmd.Flags())
	return cmd
}

// presetNames lists the embedded model presets for help texts.
func presetNames() string { return strings.Join(configs.ModelNames(), ", ") }

// loadModelConfig is loadConfig for a model config (pretrain, train, eval,
// generate, a worker's round): a preset name must be a model preset, so
// --config worker says so instead of failing on the worker file's keys.
func loadModelConfig(source string, flags *pflag.FlagSet, flagKeys map[string]string, out *train.Config) error {
	if !strings.ContainsAny(source, "/\\") && !strings.HasSuffix(source, ".yaml") && !strings.HasSuffix(source, ".yml") &&
		slices.Contains(configs.Names(), source) && !slices.Contains(configs.ModelNames(), source) {
		return fmt.Errorf("--config %s: that preset configures a command, not a model; the model presets are %s", source, presetNames())
	}
	return loadConfig(source, flags, flagKeys, out)
}

package main

import (
	"strings"

	"github.com/opencluster/opencluster/configs"
	"github.com/opencluster/opencluster/train"
	"github.com/spf13/cobra"
)

func init() {
	rootCmd.AddCommand(newPretrainCmd())
}

func newPretrainCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "pretrain --data DIR --out BASE.safetensors",
		Short: "Train a small base model from scratch on a directory of text",
		Long: `pretrain initialises the model shape of --config (a preset such as tiny, or a
YAML file) and trains every weight on the text files under --data. The result
is a safetensors base that train fine-tunes and generate samples from; the
training state goes beside it (BASE.safetensors.ckpt) for --resume.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runTraining(cmd, train.ModePretrain)
		},
	}
	cmd.Flags().String("out", "", "base checkpoint file to write (safetensors)")
	addRunFlags(cmd.Flags())
	return cmd
}

// presetNames lists the embedded presets for help texts.
func presetNames() string { return strings.Join(configs.Names(), ", ") }

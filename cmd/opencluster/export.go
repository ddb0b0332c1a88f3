package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/opencluster/opencluster/train"
	"github.com/spf13/cobra"
)

func init() {
	rootCmd.AddCommand(newExportCmd())
}

func newExportCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "export --base DIR --adapter DIR --out DIR [--dtype bf16|f16|f32]",
		Short: "Merge a LoRA adapter into its base and write a Hugging Face folder transformers loads as it is",
		Long: `export writes the fine-tuned model as one plain Hugging Face folder: every
linear of the base is dequantized (when the base is 4-bit) and the adapter's
(alpha/r)·B·A is added to it; the folder holds config.json, the safetensors
weights in --dtype and the base's tokenizer files. The adapter is applied to
the base as it is stored: a bitsandbytes folder is dequantized exactly as the
adapter saw it in training; a dense base is used dense.`,
		Args: cobra.NoArgs,
		RunE: runExport,
	}
	f := cmd.Flags()
	f.String("base", "", "base model folder the adapter was trained on")
	f.String("adapter", "", "PEFT adapter folder")
	f.String("out", "", "folder to write (replaced if it is a model folder)")
	f.String("dtype", "bf16", "dtype of the weights: bf16, f16 or f32")
	f.String("name", "", "_name_or_path to record (default: the base's)")
	f.Int("threads", 0, "CPU threads; 0 uses every core")
	return cmd
}

func runExport(cmd *cobra.Command, _ []string) error {
	f := cmd.Flags()
	base, _ := f.GetString("base")
	adapter, _ := f.GetString("adapter")
	out, _ := f.GetString("out")
	dtype, _ := f.GetString("dtype")
	name, _ := f.GetString("name")
	threads, _ := f.GetInt("threads")
	if base == "" || adapter == "" || out == "" {
		return errors.New("export: --base, --adapter and --out are required")
	}
	st, ok := map[string]string{"bf16": "BF16", "f16": "F16", "f32": "F32"}[strings.ToLower(dtype)]
	if !ok {
		return fmt.Errorf("--dtype %q: want bf16, f16 or f32", dtype)
	}
	be, err := commandBackend(cmd, threads)
	if err != nil {
		return err
	}
	m, err := train.LoadModel(base, be)
	if err != nil {
		return fmt.Errorf("base %s: %w", base, err)
	}
	defer m.Free()
	if err := m.LoadAdapter(adapter); err != nil {
		return err
	}
	if err := m.SaveHF(out, train.SaveOptions{DType: st, Merge: true, NameOrPath: name}); err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "merged %s into %s: %s written (%s)\n", adapter, base, out, strings.ToLower(dtype))
	return nil
}

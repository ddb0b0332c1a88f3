package main

import (
	"errors"
	"fmt"

	"github.com/opencluster/opencluster/quant"
	"github.com/spf13/cobra"
)

// quantizeCmd turns a safetensors checkpoint into the Hugging Face
// bitsandbytes 4-bit layout. The work is quant.QuantizeFile; this only reads
// flags and prints the summary.
var quantizeCmd = &cobra.Command{
	Use:   "quantize --in IN.safetensors --out OUT.safetensors",
	Short: "Quantize a safetensors checkpoint's linear weights to 4 bits (bitsandbytes layout)",
	Long: `Quantize every 2-D linear weight of a safetensors checkpoint to NF4 or FP4,
exactly as bitsandbytes does, and write it in the Hugging Face bitsandbytes
layout (packed weight, absmax, quant_map, quant_state). Embeddings, norms and
lm_head stay as they are unless asked for; every other tensor and the file's
metadata are copied unchanged. The output is written atomically.`,
	Args: cobra.NoArgs,
	RunE: runQuantize,
}

func init() {
	f := quantizeCmd.Flags()
	f.String("in", "", "input safetensors file (required)")
	f.String("out", "", "output safetensors file (required)")
	f.String("format", "nf4", "4-bit code book: nf4 or fp4")
	f.Int("block-size", quant.DefaultBlockSize, "elements per absmax block: a power of two in 32..4096")
	f.Bool("double-quant", false, "also quantize the absmax values to 8 bits (about 4.127 instead of 4.5 bits/param at block 64)")
	f.Bool("include-lm-head", false, "also quantize lm_head.weight")
	f.Bool("include-embeddings", false, "also quantize embeddings (embed_tokens, wte, wpe)")
	rootCmd.AddCommand(quantizeCmd)
}

func runQuantize(cmd *cobra.Command, _ []string) error {
	fl := cmd.Flags()
	in, _ := fl.GetString("in")
	out, _ := fl.GetString("out")
	formatName, _ := fl.GetString("format")
	var opts quant.Options
	opts.BlockSize, _ = fl.GetInt("block-size")
	opts.DoubleQuant, _ = fl.GetBool("double-quant")
	opts.IncludeLMHead, _ = fl.GetBool("include-lm-head")
	opts.IncludeEmbeddings, _ = fl.GetBool("include-embeddings")
	if in == "" || out == "" {
		return errors.New("quantize: --in and --out are required")
	}
	if in == out {
		return fmt.Errorf("quantize: --out %s is the input file; write to a new file", out)
	}
	format, err := quant.ParseFormat(formatName)
	if err != nil {
		return fmt.Errorf("--format: %w", err)
	}
	opts.Format = format
	if opts.BlockSize < 32 || opts.BlockSize > 4096 || opts.BlockSize&(opts.BlockSize-1) != 0 {
		return fmt.Errorf("--block-size %d: want a power of two in 32..4096", opts.BlockSize)
	}
	rep, err := quant.QuantizeFile(in, out, opts)
	if err != nil {
		return err
	}
	dq := ""
	if opts.DoubleQuant {
		dq = ", double quant"
	}
	fmt.Fprintf(cmd.OutOrStdout(), "quantized %d tensors (%s, block %d%s), copied %d: %d -> %d bytes, %.3f bits/param\n",
		rep.Quantized, format, opts.BlockSize, dq, rep.Copied, rep.BytesBefore, rep.BytesAfter, rep.BitsPerParam)
	return nil
}

package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/opencluster/opencluster/quant"
	"github.com/opencluster/opencluster/train"
	"github.com/opencluster/opencluster/train/backend"
	"github.com/spf13/cobra"
)

// newQuantizeCmd turns a model folder or a safetensors checkpoint into the
// Hugging Face bitsandbytes 4-bit layout. The work is train.LoadQuantized
// with SaveHF, or quant.QuantizeFile; this only reads flags and prints the
// summary.
func newQuantizeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "quantize --in MODEL_DIR --out BNB_DIR  (or --in IN.safetensors --out OUT.safetensors)",
		Short: "Quantize a model's linear weights to 4 bits (bitsandbytes layout)",
		Long: `Quantize every decoder linear weight to NF4 or FP4, exactly as bitsandbytes
does, and write it in the Hugging Face bitsandbytes layout (packed weight,
absmax, quant_map, quant_state).

With a Hugging Face model folder as --in, --out is a folder transformers loads
as a bitsandbytes 4-bit model: config.json with quantization_config, the
weights (norms and biases in fp32, embedding and lm_head in bfloat16) and the
tokenizer files. The model streams in a linear at a time.

With a safetensors file as --in, every 2-D weight is quantized except
embeddings and lm_head (unless asked for); every other tensor and the file's
metadata are copied unchanged. Outputs are written atomically.`,
		Args: cobra.NoArgs,
		RunE: runQuantize,
	}
	f := cmd.Flags()
	f.String("in", "", "input safetensors file (required)")
	f.String("out", "", "output safetensors file (required)")
	f.String("format", "nf4", "4-bit code book: nf4 or fp4")
	f.Int("block-size", quant.DefaultBlockSize, "elements per absmax block: a power of two in 32..4096")
	f.Bool("double-quant", false, "also quantize the absmax values to 8 bits (about 4.127 instead of 4.5 bits/param at block 64)")
	f.Bool("include-lm-head", false, "also quantize lm_head.weight")
	f.Bool("include-embeddings", false, "also quantize embeddings (embed_tokens, wte, wpe)")
	return cmd
}

func init() {
	rootCmd.AddCommand(newQuantizeCmd())
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
	if st, err := os.Stat(in); err == nil && st.IsDir() {
		if opts.IncludeLMHead || opts.IncludeEmbeddings {
			return errors.New("quantize: --include-lm-head and --include-embeddings apply to single files; a bitsandbytes model folder keeps them in bfloat16")
		}
		return quantizeFolder(cmd, in, out, train.QuantConfig{Format: format.String(), BlockSize: opts.BlockSize, DoubleQuant: opts.DoubleQuant})
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

// quantizeFolder writes the bitsandbytes 4-bit folder of the model in dir in.
func quantizeFolder(cmd *cobra.Command, in, out string, q train.QuantConfig) error {
	if filepath.Clean(in) == filepath.Clean(out) {
		return fmt.Errorf("quantize: --out %s is the input folder; write to a new folder", out)
	}
	m, err := train.LoadQuantized(in, backend.NewCPU(0), q)
	if err != nil {
		return err
	}
	defer m.Free()
	if err := m.SaveHF(out, train.SaveOptions{}); err != nil {
		return err
	}
	before, after := weightBytes(in), weightBytes(out)
	dq := ""
	if q.DoubleQuant {
		dq = ", double quant"
	}
	fmt.Fprintf(cmd.OutOrStdout(), "quantized %d linears (%s, block %d%s): %s -> %s, weights %d -> %d bytes\n",
		m.Config.Layers*len(train.LinearNames), q.Format, q.BlockSize, dq, in, out, before, after)
	return nil
}

// weightBytes is the size of a folder's safetensors files.
func weightBytes(dir string) int64 {
	var n int64
	files, _ := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	for _, f := range files {
		if st, err := os.Stat(f); err == nil {
			n += st.Size()
		}
	}
	return n
}

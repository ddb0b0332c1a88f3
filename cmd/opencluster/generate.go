package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/opencluster/opencluster/train"
	"github.com/opencluster/opencluster/train/data"
	"github.com/opencluster/opencluster/train/tokenizer"
	"github.com/spf13/cobra"
)

func init() {
	rootCmd.AddCommand(newGenerateCmd())
}

func newGenerateCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "generate --base BASE [--adapter DIR] --prompt TEXT [--chat]",
		Short: "Sample text from a base model, optionally with a trained adapter",
		Long: `generate continues --prompt with text sampled from the model, so you can see
what training did. It keeps a KV cache (the prompt runs once, then each token
costs one position), samples with --temperature, --top-k and --top-p from
--seed, and stops at the model's end-of-sequence tokens (config.json,
generation_config.json and the tokenizer's EOS). With --chat the prompt is
the user's turn of a conversation rendered with the tokenizer's chat
template, and only the reply is printed. Text is printed as it is sampled
(a character split over several tokens once it is whole). With --adapter,
the base is quantized as in training (the quant section of --config, unless
the base is already 4-bit) and the PEFT adapter is applied. Control
characters and bytes that are not valid UTF-8 are printed as \xNN escapes.`,
		Args: cobra.NoArgs,
		RunE: runGenerate,
	}
	f := cmd.Flags()
	f.String("base", "", "base checkpoint (safetensors file or Hugging Face Llama folder)")
	f.String("adapter", "", "PEFT adapter folder written by train")
	f.String("prompt", "", "text to continue")
	f.Int("max-tokens", 200, "tokens to generate")
	f.Float64("temperature", 0.8, "sampling temperature; 0 always picks the most likely token")
	f.Int("top-k", 40, "sample among the K most likely tokens; 0 uses all")
	f.Float64("top-p", 0.95, "sample among the most likely tokens whose probabilities add up to P; 1 uses all")
	f.Bool("chat", false, "render --prompt as a user turn with the tokenizer's chat template and print only the reply")
	f.String("system", "", "with --chat, a system message before the user turn")
	f.Uint64("seed", 1, "sampling seed: the same seed gives the same text")
	f.Int("threads", 0, "CPU threads; 0 uses every core")
	f.String("config", "tiny", "config whose quant section applies when --adapter is used")
	f.String("tokenizer", "", "tokenizer.json or a folder holding it (default: the --base folder's tokenizer.json when it has one, else byte-level)")
	return cmd
}

func runGenerate(cmd *cobra.Command, args []string) error {
	f := cmd.Flags()
	base, _ := f.GetString("base")
	adapter, _ := f.GetString("adapter")
	prompt, _ := f.GetString("prompt")
	maxTokens, _ := f.GetInt("max-tokens")
	temperature, _ := f.GetFloat64("temperature")
	topK, _ := f.GetInt("top-k")
	topP, _ := f.GetFloat64("top-p")
	chat, _ := f.GetBool("chat")
	system, _ := f.GetString("system")
	seed, _ := f.GetUint64("seed")
	threads, _ := f.GetInt("threads")
	source, _ := f.GetString("config")
	if base == "" {
		return errors.New("--base is required: the base checkpoint to sample from")
	}
	if prompt == "" {
		return errors.New("--prompt is required: the text to continue")
	}
	if maxTokens < 0 || topK < 0 || temperature < 0 {
		return fmt.Errorf("--max-tokens (%d), --top-k (%d) and --temperature (%g) must not be negative", maxTokens, topK, temperature)
	}
	if !(topP > 0 && topP <= 1) {
		return fmt.Errorf("--top-p %g: want a probability in (0,1]", topP)
	}
	if system != "" && !chat {
		return errors.New("--system needs --chat")
	}
	be, err := commandBackend(cmd, threads)
	if err != nil {
		return err
	}
	var m *train.Model
	if adapter != "" { // the adapter's base is frozen in 4-bit, quantized as it loads
		var cfg train.Config
		if err := loadModelConfig(source, f, nil, &cfg); err != nil {
			return err
		}
		if err := cfg.Quant.Validate(); err != nil {
			return err
		}
		m, err = train.LoadQuantized(base, be, cfg.Quant)
	} else {
		m, err = train.LoadModel(base, be)
	}
	if err != nil {
		return fmt.Errorf("base %s: %w", base, err)
	}
	if adapter != "" {
		if err := m.LoadAdapter(adapter); err != nil {
			return fmt.Errorf("adapter %s: %w", adapter, err)
		}
	}
	tokPath, _ := f.GetString("tokenizer")
	hf, err := tokenizer.ForModel(tokPath, base)
	if err != nil {
		return fmt.Errorf("--tokenizer: %w", err)
	}
	if err := train.CheckTokenizer(m.Config, hf); err != nil {
		return fmt.Errorf("base %s: %w", base, err)
	}
	var tok data.Tokenizer = data.ByteTokenizer{}
	if hf != nil {
		tok = data.HFTokenizer{T: hf}
	}
	promptIDs := tok.Encode([]byte(prompt))
	if chat {
		if hf == nil {
			return errors.New("--chat needs a tokenizer with a chat template (--tokenizer, or a --base folder with tokenizer.json and tokenizer_config.json)")
		}
		if promptIDs, err = train.ChatPrompt(hf, system, prompt); err != nil {
			return err
		}
	}
	// Print each piece of text as soon as it is final; a decoding error
	// (an id the tokenizer lacks) stops sampling.
	w := cmd.OutOrStdout()
	stream := data.NewTextStream(tok)
	if !chat {
		fmt.Fprint(w, stream.Text([]byte(prompt)))
	}
	ctx, stop := context.WithCancel(cmd.Context())
	defer stop()
	var decodeErr error
	_, err = train.Sample(ctx, m, promptIDs, train.SampleOptions{
		MaxTokens: maxTokens, Temperature: temperature, TopK: topK, TopP: topP, Seed: seed,
		Stop: m.StopTokens(hf),
		OnToken: func(id int32) {
			text, err := stream.Add(id)
			if err != nil {
				decodeErr = err
				stop()
				return
			}
			if text != "" {
				fmt.Fprint(w, text)
			}
		},
	})
	rest, ferr := stream.Flush()
	fmt.Fprintln(w, rest)
	if decodeErr != nil {
		return decodeErr
	}
	return errors.Join(err, ferr)
}

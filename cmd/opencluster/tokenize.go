package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/opencluster/opencluster/train/tokenizer"
	"github.com/spf13/cobra"
)

func init() { rootCmd.AddCommand(newTokenizeCmd()) }

func newTokenizeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "tokenize --tokenizer DIR|FILE [--decode] [--json]",
		Short: "Encode stdin to token ids (or decode ids back to text) with a Hugging Face tokenizer",
		Long: `tokenize reads text on stdin and prints its token ids as the Hugging Face
tokenizers library would (space-separated, or a JSON array with --json). With
--decode it reads ids (a JSON array, or integers separated by spaces, commas
or newlines) and prints the text. --tokenizer is a tokenizer.json file or a
model folder holding one (tokenizer_config.json beside it is read too).`,
		Args: cobra.NoArgs,
		RunE: runTokenize,
	}
	f := cmd.Flags()
	f.String("tokenizer", "", "tokenizer.json, or a folder holding it (required)")
	f.Bool("decode", false, "read token ids and print text")
	f.Bool("json", false, "print ids as a JSON array")
	f.Bool("add-special-tokens", true, "let the post-processor add BOS/EOS, as the library's encode does by default")
	f.Bool("skip-special-tokens", false, "with --decode, leave special tokens out")
	return cmd
}

func runTokenize(cmd *cobra.Command, _ []string) error {
	f := cmd.Flags()
	path, _ := f.GetString("tokenizer")
	decode, _ := f.GetBool("decode")
	asJSON, _ := f.GetBool("json")
	addSpecial, _ := f.GetBool("add-special-tokens")
	skipSpecial, _ := f.GetBool("skip-special-tokens")
	if path == "" {
		return errors.New("--tokenizer is required: a tokenizer.json file or a folder holding one")
	}
	tok, err := tokenizer.Load(path)
	if err != nil {
		return err
	}
	for _, w := range tok.Warnings() {
		fmt.Fprintln(cmd.ErrOrStderr(), "warning:", w)
	}
	in, err := io.ReadAll(cmd.InOrStdin())
	if err != nil {
		return fmt.Errorf("reading stdin: %w", err)
	}
	out := cmd.OutOrStdout()
	if decode {
		ids, err := tokenizer.ParseIDs(string(in))
		if err != nil {
			return err
		}
		text, err := tok.Decode(ids, skipSpecial)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(out, text)
		return err
	}
	if !utf8.Valid(in) {
		return errors.New("stdin is not valid UTF-8 text (the tokenizers library encodes text, not bytes)")
	}
	ids := tok.Encode(string(in), addSpecial)
	if asJSON {
		b, _ := json.Marshal(ids)
		_, err = fmt.Fprintln(out, string(b))
		return err
	}
	parts := make([]string, len(ids))
	for i, id := range ids {
		parts[i] = fmt.Sprint(id)
	}
	_, err = fmt.Fprintln(out, strings.Join(parts, " "))
	return err
}

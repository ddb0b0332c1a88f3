// Command opencluster trains open models together: QLoRA fine-tuning on a
// volunteer's CPU or GPU, federated rounds with a coordinator, and benches.
// This package only wires flags and configuration; the logic lives below it.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

var rootCmd = &cobra.Command{
	Use:           "opencluster",
	Short:         "Donate GPU or CPU time to train open AI models together",
	SilenceUsage:  true,
	SilenceErrors: true,
	PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
		if err := setupLogging(cmd); err != nil {
			return err
		}
		warnUnknownEnv(os.Environ(), slog.Default())
		return nil
	},
}

func init() {
	rootCmd.PersistentFlags().String("log-level", "info", "log level: debug, info, warn or error")
	rootCmd.PersistentFlags().String("log-format", "text", "log format: text or json")
}

// setupLogging installs the slog handler named by --log-level and --log-format.
func setupLogging(cmd *cobra.Command) error {
	levelName, _ := cmd.Flags().GetString("log-level")
	format, _ := cmd.Flags().GetString("log-format")
	var level slog.Level
	if err := level.UnmarshalText([]byte(levelName)); err != nil {
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", levelName)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch format {
	case "text":
		slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, opts)))
	case "json":
		slog.SetDefault(slog.New(slog.NewJSONHandler(os.Stderr, opts)))
	default:
		return fmt.Errorf("--log-format %q: want text or json", format)
	}
	return nil
}

func main() {
	// The first Ctrl-C cancels the context so long commands can save and
	// exit cleanly; a second one kills the process the usual way.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop()
	}()
	if err := rootCmd.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "opencluster:", err)
		var ec exitCoder
		if errors.As(err, &ec) {
			os.Exit(ec.ExitCode())
		}
		os.Exit(1)
	}
}

// exitCoder lets a command choose its exit status (e.g. ledger verify).
type exitCoder interface{ ExitCode() int }

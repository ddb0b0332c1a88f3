package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/opencluster/opencluster/bench"
	"github.com/spf13/cobra"
)

var benchCmd = &cobra.Command{
	Use:   "bench",
	Short: "Measure this machine's CPU kernels against OpenBLAS",
	Long: `bench measures the CPU paths training runs on: the fp32 matrix product at
512, 1024 and 2048 next to OpenBLAS's sgemm in the same run (when the library
is installed; scripts/install-bench-deps.sh installs it), NF4 dequantization
and the NF4 x fp32 product, against the machine's theoretical peak.

It prints a table, or with --json one JSON object per row.`,
	Args: cobra.NoArgs,
	RunE: runBench,
}

func init() {
	f := benchCmd.Flags()
	f.Bool("json", false, "print one JSON object per row instead of a table")
	f.Bool("quick", false, "fewer repetitions and smaller sizes (for CI)")
	f.Int("threads", 0, "threads for our kernels and the peer (0: every core)")
	f.Bool("no-peer", false, "skip the OpenBLAS peer even when it is installed")
	f.String("out", "", "also write the JSON rows to this file (atomically)")
	rootCmd.AddCommand(benchCmd)
}

func runBench(cmd *cobra.Command, _ []string) error {
	f := cmd.Flags()
	// --device is the root's persistent flag (dispatch.go), which moves the
	// command to opencluster-cuda when a GPU is there; here it is checked
	// once more so this build never claims to bench a GPU.
	device := "auto"
	if fl := f.Lookup("device"); fl != nil {
		device = fl.Value.String()
	}
	asJSON, _ := f.GetBool("json")
	quick, _ := f.GetBool("quick")
	threads, _ := f.GetInt("threads")
	noPeer, _ := f.GetBool("no-peer")
	out, _ := f.GetString("out")
	if onGPU, err := benchGPU(cmd, device); onGPU { // the CUDA build on a GPU (backend_cuda.go)
		return err
	}
	switch {
	case device == "cpu" || device == "auto":
	case device == "cuda" || strings.HasPrefix(device, "cuda:"):
		return errors.New("--device cuda: the CUDA bench needs the opencluster-cuda build (make cuda); this build benches the CPU only")
	default:
		return fmt.Errorf("--device %q: want cpu, auto or cuda[:N]", device)
	}
	if threads < 0 {
		return fmt.Errorf("--threads %d: must be 0 (every core) or more", threads)
	}

	opt := bench.Options{Quick: quick, Threads: threads, NoPeer: noPeer}
	w := cmd.OutOrStdout()
	table := bench.NewTable(w)
	var rows []bench.Row
	var writeErr error
	emit := func(r bench.Row) {
		rows = append(rows, r)
		if asJSON {
			if err := bench.WriteJSON(w, r); err != nil && writeErr == nil {
				writeErr = err
			}
			return
		}
		table.Row(r)
	}
	if !asJSON {
		fmt.Fprintln(cmd.ErrOrStderr(), "bench: measuring (about a minute; --quick for less)...")
	}
	err := bench.Run(cmd.Context(), opt, emit)
	if !asJSON {
		if ferr := table.Flush(); ferr != nil && writeErr == nil {
			writeErr = ferr
		}
	}
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if writeErr != nil {
		return fmt.Errorf("bench: writing the results: %w", writeErr)
	}
	if out != "" {
		var sb strings.Builder
		for _, r := range rows {
			if err := bench.WriteJSON(&sb, r); err != nil {
				return err
			}
		}
		if err := bench.WriteFileAtomic(out, []byte(sb.String())); err != nil {
			return fmt.Errorf("bench --out: %w", err)
		}
		fmt.Fprintln(cmd.ErrOrStderr(), "bench: rows written to", out)
	}
	return nil
}

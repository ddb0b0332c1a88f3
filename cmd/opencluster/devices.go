package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/opencluster/opencluster/device"
	"github.com/spf13/cobra"
)

// Hooks the CUDA build (and tests) replace.
var (
	// inCUDABuild is true in opencluster-cuda: a GPU needs no exec.
	inCUDABuild = false
	// cudaProbe initialises the CUDA backend on a GPU; nil in the plain
	// build, which therefore fails `devices --probe`.
	cudaProbe func(ctx context.Context) error
	// newNVML opens the NVML library (go-nvml dlopens it at Init).
	newNVML = func() nvml.Interface { return nvml.New() }
	// deviceProber runs the CUDA build's probe.
	deviceProber device.Prober
)

func init() { rootCmd.AddCommand(newDevicesCmd()) }

func newDevicesCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "devices",
		Short: "List CPUs and GPUs with live readings, and which one the worker would use and why",
		Args:  cobra.NoArgs,
		RunE:  runDevices,
	}
	f := cmd.Flags()
	f.Bool("json", false, `print JSON: {"devices":[...], "selected":{...}, "nvml":{...}}`)
	f.String("device", "auto", "device request to resolve: auto, cpu, cuda or cuda:N")
	f.Bool("probe", false, "exit 0 only if this binary can compute on a GPU (the dispatch probe)")
	f.Bool("no-probe", false, "do not run opencluster-cuda's probe")
	f.Duration("probe-timeout", 30*time.Second, "time limit for the opencluster-cuda probe")
	return cmd
}

func runDevices(cmd *cobra.Command, _ []string) error {
	f := cmd.Flags()
	ctx := cmd.Context()
	if probe, _ := f.GetBool("probe"); probe {
		if cudaProbe == nil {
			return errors.New("probe: this build has no CUDA backend (the probe is answered by opencluster-cuda)")
		}
		if err := cudaProbe(ctx); err != nil {
			return fmt.Errorf("probe: %w", err)
		}
		fmt.Fprintln(cmd.OutOrStdout(), "ok")
		return nil
	}
	asJSON, _ := f.GetBool("json")
	sel, _ := f.GetString("device")
	noProbe, _ := f.GetBool("no-probe")
	timeout, _ := f.GetDuration("probe-timeout")
	req, err := device.ParseRequest(sel)
	if err != nil {
		return err
	}
	exe, _ := os.Executable()
	prober := deviceProber
	if prober == nil {
		prober = device.ExecProber{Timeout: timeout}
	}
	visible, visibleSet := os.LookupEnv(device.CUDAVisibleEnv)
	rep, selErr := device.Gather(ctx, device.GatherOptions{
		Request:        req,
		NVML:           newNVML(),
		RAPL:           &device.RAPL{},
		Exe:            exe,
		Prober:         prober,
		InCUDABuild:    inCUDABuild,
		SkipProbe:      noProbe,
		CUDAVisible:    visible,
		CUDAVisibleSet: visibleSet,
	})
	out := cmd.OutOrStdout()
	if asJSON {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		fmt.Fprintln(out, string(b))
	} else {
		fmt.Fprint(out, rep.Text())
	}
	return selErr
}

package main

// Dispatch: DESIGN.md, "One binary, two builds". The plain `opencluster`
// runs every command on the CPU; before a command that trains or benches it
// asks NVML for a GPU and, when opencluster-cuda (beside it or on PATH)
// passes a probe run, replaces itself with that binary, same arguments and
// environment. The decision is decideDispatch, a pure function of what was
// discovered; the exec is behind the execFunc hook so tests never exec.

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/opencluster/opencluster/device"
	"github.com/opencluster/opencluster/train/backend"
	"github.com/spf13/cobra"
)

// dispatchAnnotation marks a command that runs a model and so may move to
// the CUDA build; commands added later opt in with
// Annotations[dispatchAnnotation] = "true".
const dispatchAnnotation = "opencluster.dispatch"

// dispatchCommands are the commands that train, bench or sample, by name
// (worker trains federated rounds).
var dispatchCommands = map[string]bool{"pretrain": true, "train": true, "bench": true, "generate": true, "worker": true}

// deviceEnv is the environment variable behind --device when the flag is
// not given (flag > env > default, as for every other setting).
const deviceEnv = "OPENCLUSTER_DEVICE"

// Hooks tests replace.
var (
	// execFunc replaces the process image (syscall.Exec never returns on success).
	execFunc = syscall.Exec
	// dispatchProbeTimeout bounds the probe run of opencluster-cuda.
	dispatchProbeTimeout = 30 * time.Second
)

func init() {
	pf := rootCmd.PersistentFlags()
	if pf.Lookup("device") == nil {
		pf.String("device", "auto", "where to run: auto (a GPU when opencluster-cuda can use one, else the CPU), cpu, cuda or cuda:N (env "+deviceEnv+")")
	}
	// Chain after the root's own pre-run (logging), so the one-line reason
	// goes through the configured logger.
	prev := rootCmd.PersistentPreRunE
	rootCmd.PersistentPreRunE = func(cmd *cobra.Command, args []string) error {
		if prev != nil {
			if err := prev(cmd, args); err != nil {
				return err
			}
		}
		return dispatchCommand(cmd)
	}
}

// wantsDispatch reports whether cmd runs a model (and so may use a GPU).
func wantsDispatch(cmd *cobra.Command) bool {
	if cmd.Annotations[dispatchAnnotation] == "true" {
		return true
	}
	return cmd.Parent() == cmd.Root() && dispatchCommands[cmd.Name()]
}

// deviceRequest reads --device (or OPENCLUSTER_DEVICE when the flag was not
// given); a command tree without the flag (tests) means auto.
func deviceRequest(cmd *cobra.Command) (device.Request, error) {
	s := "auto"
	if f := cmd.Flag("device"); f != nil { // local, or inherited from the root
		s = f.Value.String()
		if !f.Changed {
			if env, ok := os.LookupEnv(deviceEnv); ok && env != "" {
				s = env
			}
		}
	} else if env, ok := os.LookupEnv(deviceEnv); ok && env != "" {
		s = env
	}
	req, err := device.ParseRequest(s)
	if err != nil {
		return device.Request{}, err
	}
	return req, nil
}

// dispatchInput is everything decideDispatch decides from. Production fills
// it from NVML, the file system and a probe run; tests from fakes.
type dispatchInput struct {
	Request device.Request
	// InCUDABuild is true in opencluster-cuda, which never execs.
	InCUDABuild bool
	// Discover asks NVML for GPUs (device.DiscoverGPUs).
	Discover func() (device.NVMLStatus, []device.GPU)
	// FindCUDABuild locates opencluster-cuda (device.FindCUDABuild).
	FindCUDABuild func() (string, error)
	// Probe runs the found binary's probe; nil error means it can compute.
	Probe func(ctx context.Context, path string) error
	// CUDAVisible is CUDA_VISIBLE_DEVICES when CUDAVisibleSet.
	CUDAVisible    string
	CUDAVisibleSet bool
}

// decideDispatch applies DESIGN.md's rule. --device cpu touches nothing;
// otherwise NVML is asked first, the CUDA build is looked for and probed only
// when a GPU is there (and only in the plain build), and device.Select makes
// the decision: Exec set means "exec this binary", Kind "cpu" means run here
// on the CPU for Reason, and an error means --device cuda cannot be honoured.
func decideDispatch(ctx context.Context, in dispatchInput) (device.Decision, error) {
	if in.Request.Kind == "cpu" {
		return device.Select(in.Request, device.Environment{})
	}
	env := device.Environment{InCUDABuild: in.InCUDABuild, CUDAVisible: in.CUDAVisible, CUDAVisibleSet: in.CUDAVisibleSet}
	env.NVML, env.GPUs = in.Discover()
	if !in.InCUDABuild && env.NVML.Available && len(env.GPUs) > 0 {
		path, err := in.FindCUDABuild()
		env.CUDABuild, env.CUDABuildErr = path, err
		if err == nil {
			env.CUDABuildErr = in.Probe(ctx, path)
		}
	}
	return device.Select(in.Request, env)
}

// liveDispatchInput wires decideDispatch to this machine.
func liveDispatchInput(req device.Request) dispatchInput {
	visible, visibleSet := os.LookupEnv(device.CUDAVisibleEnv)
	return dispatchInput{
		CUDAVisible: visible, CUDAVisibleSet: visibleSet,
		Request:     req,
		InCUDABuild: inCUDABuild,
		Discover: func() (device.NVMLStatus, []device.GPU) {
			st, gpus, errs := device.DiscoverGPUs(newNVML())
			for _, err := range errs {
				slog.Debug("device: GPU skipped", "err", err)
			}
			return st, gpus
		},
		FindCUDABuild: func() (string, error) {
			exe, err := os.Executable()
			if err != nil {
				exe = os.Args[0]
			}
			return device.FindCUDABuild(exe, nil)
		},
		Probe: func(ctx context.Context, path string) error {
			if deviceProber != nil {
				return deviceProber.Probe(ctx, path)
			}
			return device.ExecProber{Timeout: dispatchProbeTimeout}.Probe(ctx, path)
		},
	}
}

// dispatchCommand runs before every command: for one that runs a model it
// decides where, logs why in one line, and execs opencluster-cuda when that
// is the answer. In the CUDA build it only validates --device (the backend
// is opened by newBackend).
func dispatchCommand(cmd *cobra.Command) error {
	if !wantsDispatch(cmd) {
		return nil
	}
	req, err := deviceRequest(cmd)
	if err != nil {
		return err
	}
	if req.Kind == "cpu" || inCUDABuild {
		return nil
	}
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	d, err := decideDispatch(ctx, liveDispatchInput(req))
	if err != nil {
		return err
	}
	if d.Exec == "" {
		slog.Info(d.Reason)
		return nil
	}
	return execCUDABuild(d, os.Args, os.Environ())
}

// execCUDABuild replaces this process with d.Exec, keeping the arguments and
// the environment. One variable is added when unset: CUDA_DEVICE_ORDER=
// PCI_BUS_ID, so CUDA numbers GPUs as NVML does and cuda:N (and the index
// the selection picked) means the same card in both builds. It returns
// only when the exec failed.
func execCUDABuild(d device.Decision, args, env []string) error {
	slog.Info("running on the CUDA build: "+d.Reason, "exec", d.Exec)
	argv := append([]string{d.Exec}, args[1:]...)
	if !hasEnv(env, "CUDA_DEVICE_ORDER") {
		env = append(env[:len(env):len(env)], "CUDA_DEVICE_ORDER=PCI_BUS_ID")
	}
	if err := execFunc(d.Exec, argv, env); err != nil {
		return fmt.Errorf("exec %s: %w", d.Exec, err)
	}
	return nil
}

// commandBackend opens the Backend for a command that runs a model: the
// --device request (flag, then OPENCLUSTER_DEVICE) and the CPU thread count
// go to newBackend, which each build provides (backend_cpu.go,
// backend_cuda.go).
func commandBackend(cmd *cobra.Command, threads int) (backend.Backend, error) {
	req, err := deviceRequest(cmd)
	if err != nil {
		return nil, err
	}
	return newBackend(req.String(), threads)
}

// hasEnv reports whether env (KEY=value entries) sets key.
func hasEnv(env []string, key string) bool {
	for _, kv := range env {
		if k, _, ok := strings.Cut(kv, "="); ok && k == key {
			return true
		}
	}
	return false
}

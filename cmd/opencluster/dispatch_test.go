package main

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/opencluster/opencluster/device"
	"github.com/spf13/cobra"
)

// fakeMachine builds a dispatchInput from canned answers and counts what
// decideDispatch asked for.
type fakeMachine struct {
	nvml     device.NVMLStatus
	gpus     []device.GPU
	path     string
	findErr  error
	probeErr error

	discovered, found, probed int
}

func (f *fakeMachine) input(req string, inCUDA bool, t *testing.T) dispatchInput {
	t.Helper()
	r, err := device.ParseRequest(req)
	if err != nil {
		t.Fatal(err)
	}
	return dispatchInput{
		Request:     r,
		InCUDABuild: inCUDA,
		Discover: func() (device.NVMLStatus, []device.GPU) {
			f.discovered++
			return f.nvml, f.gpus
		},
		FindCUDABuild: func() (string, error) { f.found++; return f.path, f.findErr },
		Probe: func(_ context.Context, path string) error {
			f.probed++
			if path != f.path {
				t.Errorf("probed %q, want the found binary %q", path, f.path)
			}
			return f.probeErr
		},
	}
}

var (
	nvmlOK   = device.NVMLStatus{Available: true, DeviceCount: 2}
	nvmlNone = device.NVMLStatus{Reason: "library not found (libnvidia-ml.so.1 is not installed: no NVIDIA driver)"}
	twoGPUs  = []device.GPU{
		{Index: 0, Name: "GeForce RTX 3060", MemoryTotalBytes: 12 << 30, MemoryFreeBytes: 2 << 30},
		{Index: 1, Name: "GeForce RTX 4070", MemoryTotalBytes: 12 << 30, MemoryFreeBytes: 10 << 30},
	}
	cudaPath = "/opt/oc/opencluster-cuda"
)

func TestDecideDispatch(t *testing.T) {
	probeFailed := errors.New(cudaPath + " probe failed (exit status 1): CUDA_ERROR_NO_DEVICE")
	tests := []struct {
		name   string
		req    string
		inCUDA bool
		m      fakeMachine
		// want
		kind, exec string
		index      int
		reason     string // substring of Reason (or of the error)
		wantErr    bool
		// what must (not) have been asked
		discovered, found, probed int
	}{
		{name: "cpu asks nothing", req: "cpu", m: fakeMachine{nvml: nvmlOK, gpus: twoGPUs, path: cudaPath},
			kind: "cpu", index: -1, reason: "--device cpu"},
		{name: "auto without NVML runs on CPU", req: "auto", m: fakeMachine{nvml: nvmlNone},
			kind: "cpu", index: -1, reason: "NVML unavailable: library not found", discovered: 1},
		{name: "auto with NVML but no GPU", req: "auto", m: fakeMachine{nvml: device.NVMLStatus{Available: true}},
			kind: "cpu", index: -1, reason: "no readable GPU", discovered: 1},
		{name: "auto without opencluster-cuda", req: "auto",
			m:    fakeMachine{nvml: nvmlOK, gpus: twoGPUs, findErr: errors.New("opencluster-cuda not found beside opencluster or on PATH")},
			kind: "cpu", index: -1, reason: "opencluster-cuda not found", discovered: 1, found: 1},
		{name: "auto with a failing probe", req: "auto", m: fakeMachine{nvml: nvmlOK, gpus: twoGPUs, path: cudaPath, probeErr: probeFailed},
			kind: "cpu", index: -1, reason: "CUDA_ERROR_NO_DEVICE", discovered: 1, found: 1, probed: 1},
		{name: "auto execs onto the GPU with most free memory", req: "auto", m: fakeMachine{nvml: nvmlOK, gpus: twoGPUs, path: cudaPath},
			kind: "cuda", index: 1, exec: cudaPath, reason: "GeForce RTX 4070", discovered: 1, found: 1, probed: 1},
		{name: "cuda:0 picks that GPU", req: "cuda:0", m: fakeMachine{nvml: nvmlOK, gpus: twoGPUs, path: cudaPath},
			kind: "cuda", index: 0, exec: cudaPath, reason: "GeForce RTX 3060", discovered: 1, found: 1, probed: 1},
		{name: "cuda without NVML is an error", req: "cuda", m: fakeMachine{nvml: nvmlNone},
			wantErr: true, reason: "NVML unavailable", discovered: 1},
		{name: "cuda:5 that is not there", req: "cuda:5", m: fakeMachine{nvml: nvmlOK, gpus: twoGPUs, path: cudaPath},
			wantErr: true, reason: "no GPU 5", discovered: 1, found: 1, probed: 1},
		{name: "cuda with a failing probe names its output", req: "cuda", m: fakeMachine{nvml: nvmlOK, gpus: twoGPUs, path: cudaPath, probeErr: probeFailed},
			wantErr: true, reason: "CUDA_ERROR_NO_DEVICE", discovered: 1, found: 1, probed: 1},
		{name: "cuda without opencluster-cuda", req: "cuda", m: fakeMachine{nvml: nvmlOK, gpus: twoGPUs, findErr: errors.New("opencluster-cuda not found beside opencluster or on PATH")},
			wantErr: true, reason: "opencluster-cuda not found", discovered: 1, found: 1},
		{name: "the CUDA build never looks for itself or execs", req: "auto", inCUDA: true, m: fakeMachine{nvml: nvmlOK, gpus: twoGPUs},
			kind: "cuda", index: 1, reason: "GeForce RTX 4070", discovered: 1},
		{name: "the CUDA build without a GPU falls back on auto", req: "auto", inCUDA: true, m: fakeMachine{nvml: nvmlNone},
			kind: "cpu", index: -1, reason: "NVML unavailable", discovered: 1},
		{name: "the CUDA build refuses cuda without a GPU", req: "cuda", inCUDA: true, m: fakeMachine{nvml: nvmlNone},
			wantErr: true, reason: "no usable GPU", discovered: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := tc.m
			d, err := decideDispatch(context.Background(), m.input(tc.req, tc.inCUDA, t))
			if tc.wantErr {
				if err == nil {
					t.Fatalf("decision %+v, want an error", d)
				}
				if !errors.Is(err, device.ErrNoUsableGPU) {
					t.Errorf("error %v does not wrap device.ErrNoUsableGPU", err)
				}
				if !strings.Contains(err.Error(), tc.reason) || !strings.Contains(err.Error(), "--device "+tc.req) {
					t.Errorf("error %q should name --device %s and say %q", err, tc.req, tc.reason)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				if d.Kind != tc.kind || d.Index != tc.index || d.Exec != tc.exec {
					t.Errorf("decision kind %q index %d exec %q, want %q %d %q", d.Kind, d.Index, d.Exec, tc.kind, tc.index, tc.exec)
				}
				if !strings.Contains(d.Reason, tc.reason) {
					t.Errorf("reason %q, want it to say %q", d.Reason, tc.reason)
				}
				if strings.Contains(d.Reason, "\n") {
					t.Errorf("reason %q is not one line", d.Reason)
				}
			}
			if m.discovered != tc.discovered || m.found != tc.found || m.probed != tc.probed {
				t.Errorf("asked NVML %d, looked for the binary %d, probed %d times; want %d %d %d",
					m.discovered, m.found, m.probed, tc.discovered, tc.found, tc.probed)
			}
		})
	}
}

func TestExecCUDABuildKeepsArgumentsAndEnvironment(t *testing.T) {
	old := execFunc
	defer func() { execFunc = old }()
	var gotPath string
	var gotArgv, gotEnv []string
	execFunc = func(path string, argv, env []string) error {
		gotPath, gotArgv, gotEnv = path, argv, env
		return nil
	}
	d := device.Decision{Kind: "cuda", Index: 0, Exec: cudaPath, Reason: "GPU 0 test"}
	args := []string{"/usr/bin/opencluster", "train", "--device", "cuda:0", "--data", "x y"}
	env := []string{"HOME=/home/v", "OPENCLUSTER_TRAIN_LR=0.001"}
	if err := execCUDABuild(d, args, env); err != nil {
		t.Fatal(err)
	}
	if gotPath != cudaPath {
		t.Errorf("exec path %q, want %q", gotPath, cudaPath)
	}
	wantArgv := append([]string{cudaPath}, args[1:]...)
	if !slices.Equal(gotArgv, wantArgv) {
		t.Errorf("argv %q, want %q", gotArgv, wantArgv)
	}
	wantEnv := append(slices.Clone(env), "CUDA_DEVICE_ORDER=PCI_BUS_ID")
	if !slices.Equal(gotEnv, wantEnv) {
		t.Errorf("env %q, want %q", gotEnv, wantEnv)
	}
	if len(env) != 2 {
		t.Errorf("the caller's environment slice was modified: %q", env)
	}

	// A CUDA_DEVICE_ORDER the user chose is kept as it is.
	env = []string{"CUDA_DEVICE_ORDER=FASTEST_FIRST"}
	if err := execCUDABuild(d, args, env); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(gotEnv, env) {
		t.Errorf("env %q, want it unchanged %q", gotEnv, env)
	}

	execFunc = func(string, []string, []string) error { return errors.New("permission denied") }
	err := execCUDABuild(d, args, nil)
	if err == nil || !strings.Contains(err.Error(), cudaPath) || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("failed exec: error %v, want it to name %s and the cause", err, cudaPath)
	}
}

// noNVML is an NVML library that is not installed.
type noNVML struct{ nvml.Interface }

func (noNVML) Init() nvml.Return     { return nvml.ERROR_LIBRARY_NOT_FOUND }
func (noNVML) Shutdown() nvml.Return { return nvml.SUCCESS }

// TestDispatchCommandWithoutGPU runs the pre-run hook the way main does on a
// machine without a driver: auto and cpu go on (no exec), cuda fails, and
// commands that run no model are left alone.
func TestDispatchCommandWithoutGPU(t *testing.T) {
	oldNVML, oldExec := newNVML, execFunc
	defer func() { newNVML, execFunc = oldNVML, oldExec }()
	newNVML = func() nvml.Interface { return noNVML{} }
	execFunc = func(path string, _, _ []string) error {
		t.Errorf("exec %s on a machine without a GPU", path)
		return nil
	}
	t.Setenv(deviceEnv, "")
	tests := []struct {
		cmd, device string
		wantErr     string
	}{
		{"train", "auto", ""},
		{"bench", "cpu", ""},
		{"pretrain", "cuda", "no usable GPU: NVML unavailable: library not found"},
		{"generate", "cuda:1", "--device cuda:1"},
		{"devices", "cuda", ""}, // not a model command: devices reports for itself
		// The federated worker (what the demo starts): auto trains on the CPU, cuda stops.
		{"worker", "auto", ""},
		{"worker", "cuda", "no usable GPU: NVML unavailable: library not found"},
		{"train", "tpu", `--device "tpu"`},
	}
	for _, tc := range tests {
		root := &cobra.Command{Use: "opencluster"}
		root.PersistentFlags().String("device", "auto", "")
		sub := &cobra.Command{Use: tc.cmd}
		root.AddCommand(sub)
		if err := root.PersistentFlags().Set("device", tc.device); err != nil {
			t.Fatal(err)
		}
		sub.SetContext(context.Background())
		err := dispatchCommand(sub)
		if tc.wantErr == "" {
			if err != nil {
				t.Errorf("%s --device %s: %v", tc.cmd, tc.device, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%s --device %s: error %v, want it to say %q", tc.cmd, tc.device, err, tc.wantErr)
		}
	}
}

func TestDeviceRequestPrecedence(t *testing.T) {
	newCmd := func() *cobra.Command {
		c := &cobra.Command{Use: "train"}
		c.Flags().String("device", "auto", "")
		return c
	}
	tests := []struct {
		flag, env, want string
	}{
		{"", "", "auto"},
		{"", "cpu", "cpu"},             // env beats the default
		{"cuda:1", "cpu", "cuda:1"},    // the flag beats env
		{"CUDA", "", "cuda"},           // case does not matter
		{"cpu", "not-a-device", "cpu"}, // a bad env is ignored when the flag is given
	}
	for _, tc := range tests {
		t.Setenv(deviceEnv, tc.env)
		c := newCmd()
		if tc.flag != "" {
			if err := c.Flags().Set("device", tc.flag); err != nil {
				t.Fatal(err)
			}
		}
		req, err := deviceRequest(c)
		if err != nil {
			t.Fatalf("flag %q env %q: %v", tc.flag, tc.env, err)
		}
		if req.String() != tc.want {
			t.Errorf("flag %q env %q: request %s, want %s", tc.flag, tc.env, req, tc.want)
		}
	}
	// A command tree without the flag (as in tests) means auto, or env.
	t.Setenv(deviceEnv, "")
	if req, err := deviceRequest(&cobra.Command{Use: "x"}); err != nil || req.Kind != "auto" {
		t.Errorf("no flag: %v %v, want auto", req, err)
	}
	t.Setenv(deviceEnv, "cuda:x")
	if _, err := deviceRequest(newCmd()); err == nil || !strings.Contains(err.Error(), "cuda:x") {
		t.Errorf("bad %s: error %v, want it to name the value", deviceEnv, err)
	}
}

func TestWantsDispatch(t *testing.T) {
	root := &cobra.Command{Use: "opencluster"}
	mk := func(name string) *cobra.Command {
		c := &cobra.Command{Use: name}
		root.AddCommand(c)
		return c
	}
	for name, want := range map[string]bool{"pretrain": true, "train": true, "bench": true, "generate": true, "worker": true, "devices": false, "quantize": false} {
		if got := wantsDispatch(mk(name)); got != want {
			t.Errorf("%s: wantsDispatch %v, want %v", name, got, want)
		}
	}
	join := mk("join")
	join.Annotations = map[string]string{dispatchAnnotation: "true"}
	if !wantsDispatch(join) {
		t.Error("a command annotated for dispatch is not dispatched")
	}
	// A nested command that happens to be named train is not the train command.
	nested := &cobra.Command{Use: "train"}
	mk("ledger").AddCommand(nested)
	if wantsDispatch(nested) {
		t.Error("ledger train is dispatched like train")
	}
}

func TestRootHasDeviceFlagAndDispatchHook(t *testing.T) {
	f := rootCmd.PersistentFlags().Lookup("device")
	if f == nil || f.DefValue != "auto" {
		t.Fatalf("root --device flag %+v, want a persistent flag defaulting to auto", f)
	}
	if rootCmd.PersistentPreRunE == nil {
		t.Fatal("root has no pre-run hook")
	}
}

func TestNewBackendCPUBuild(t *testing.T) {
	if inCUDABuild {
		t.Skip("the CUDA build opens the GPU")
	}
	be, err := newBackend("auto", 1)
	if err != nil || be.Name() != "cpu" {
		t.Fatalf("auto: %v, %v; want the CPU backend", be, err)
	}
	if _, err := newBackend("cuda:0", 1); err == nil || !strings.Contains(err.Error(), "opencluster-cuda") {
		t.Errorf("cuda:0 in the CPU build: error %v, want it to point at opencluster-cuda", err)
	}
	if _, err := newBackend("cpu", -2); err == nil || !strings.Contains(err.Error(), "-2") {
		t.Errorf("threads -2: error %v, want it named", err)
	}
}

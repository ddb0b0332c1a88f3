package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/spf13/cobra"
)

// runCmd runs one command on a fresh tree of the device and budget commands.
func runCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := &cobra.Command{Use: "opencluster", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(newDevicesCmd(), newBudgetCmd())
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func withoutNVML(t *testing.T) {
	t.Helper()
	old := newNVML
	newNVML = func() nvml.Interface {
		return &mock.Interface{InitFunc: func() nvml.Return { return nvml.ERROR_LIBRARY_NOT_FOUND }}
	}
	t.Cleanup(func() { newNVML = old })
}

func TestDevicesJSONWithoutGPU(t *testing.T) {
	withoutNVML(t)
	out, err := runCmd(t, "devices", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Devices  []map[string]any `json:"devices"`
		Selected struct {
			Kind, Reason string
		} `json:"selected"`
		NVML struct {
			Available bool
			Reason    string
		} `json:"nvml"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(rep.Devices) != 1 || rep.Devices[0]["kind"] != "cpu" || !(rep.Devices[0]["cores"].(float64) >= 1) {
		t.Errorf("devices %v", rep.Devices)
	}
	if rep.NVML.Available || !strings.Contains(rep.NVML.Reason, "library not found") {
		t.Errorf("nvml %+v", rep.NVML)
	}
	if rep.Selected.Kind != "cpu" || !strings.Contains(rep.Selected.Reason, "NVML unavailable") {
		t.Errorf("selected %+v", rep.Selected)
	}
}

func TestDevicesCUDAWithoutGPUIsAnError(t *testing.T) {
	withoutNVML(t)
	if _, err := runCmd(t, "devices", "--device", "cuda"); err == nil || !strings.Contains(err.Error(), "no usable GPU") {
		t.Errorf("err = %v", err)
	}
	if _, err := runCmd(t, "devices", "--device", "tpu"); err == nil {
		t.Error("--device tpu accepted")
	}
}

func TestDevicesProbeFailsInPlainBuild(t *testing.T) {
	if cudaProbe != nil {
		t.Skip("CUDA build")
	}
	if _, err := runCmd(t, "devices", "--probe"); err == nil || !strings.Contains(err.Error(), "no CUDA backend") {
		t.Errorf("err = %v", err)
	}
}

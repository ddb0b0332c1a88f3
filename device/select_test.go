package device

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseRequest(t *testing.T) {
	tests := []struct {
		in   string
		want Request
		ok   bool
	}{
		{"", Request{"auto", -1}, true},
		{"auto", Request{"auto", -1}, true},
		{"CPU", Request{"cpu", -1}, true},
		{"cuda", Request{"cuda", -1}, true},
		{"cuda:2", Request{"cuda", 2}, true},
		{"cuda:-1", Request{}, false},
		{"cuda:x", Request{}, false},
		{"tpu", Request{}, false},
	}
	for _, tc := range tests {
		got, err := ParseRequest(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseRequest(%q) = %v, %v", tc.in, got, err)
		}
	}
}

func TestSelect(t *testing.T) {
	gpus := []GPU{{Index: 0, Name: "RTX 3060", MemoryFreeBytes: 6 << 30, MemoryTotalBytes: 12 << 30}, {Index: 1, Name: "RTX 4090", MemoryFreeBytes: 20 << 30, MemoryTotalBytes: 24 << 30}}
	ok := NVMLStatus{Available: true, DeviceCount: 2}
	noLib := NVMLStatus{Reason: "library not found"}
	build := "/opt/oc/opencluster-cuda"
	tests := []struct {
		name, req string
		env       Environment
		kind      string
		index     int
		exec      string
		reason    string // substring of the reason or error
		wantErr   bool
	}{
		{"cpu asked", "cpu", Environment{NVML: ok, GPUs: gpus, CUDABuild: build}, "cpu", -1, "", "--device cpu", false},
		{"auto no nvml", "auto", Environment{NVML: noLib}, "cpu", -1, "", "NVML unavailable: library not found", false},
		{"auto no build", "auto", Environment{NVML: ok, GPUs: gpus}, "cpu", -1, "", "opencluster-cuda not found", false},
		{"auto probe failed", "auto", Environment{NVML: ok, GPUs: gpus, CUDABuild: build, CUDABuildErr: errors.New("probe failed: CUDA_ERROR_NO_DEVICE")}, "cpu", -1, "", "CUDA_ERROR_NO_DEVICE", false},
		{"auto most free", "auto", Environment{NVML: ok, GPUs: gpus, CUDABuild: build}, "cuda", 1, build, "most free memory", false},
		{"inside cuda build", "auto", Environment{NVML: ok, GPUs: gpus, InCUDABuild: true}, "cuda", 1, "", "RTX 4090", false},
		{"cuda:0", "cuda:0", Environment{NVML: ok, GPUs: gpus, CUDABuild: build}, "cuda", 0, build, "RTX 3060", false},
		{"cuda no nvml", "cuda", Environment{NVML: noLib}, "", 0, "", "no usable GPU: NVML unavailable", true},
		{"cuda no build", "cuda", Environment{NVML: ok, GPUs: gpus}, "", 0, "", "opencluster-cuda not found", true},
		{"cuda:5", "cuda:5", Environment{NVML: ok, GPUs: gpus, CUDABuild: build}, "", 0, "", "no GPU 5 (found 2: 0, 1)", true},
	}
	for _, tc := range tests {
		req, err := ParseRequest(tc.req)
		if err != nil {
			t.Fatal(err)
		}
		d, err := Select(req, tc.env)
		if tc.wantErr {
			if err == nil || !errors.Is(err, ErrNoUsableGPU) || !strings.Contains(err.Error(), tc.reason) {
				t.Errorf("%s: err = %v, want ErrNoUsableGPU with %q", tc.name, err, tc.reason)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if d.Kind != tc.kind || d.Index != tc.index || d.Exec != tc.exec || !strings.Contains(d.Reason, tc.reason) || strings.Contains(d.Reason, "\n") {
			t.Errorf("%s: %+v, want kind %s index %d exec %q reason ~%q", tc.name, d, tc.kind, tc.index, tc.exec, tc.reason)
		}
	}
}

func writeScript(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
}

func TestFindCUDABuildAndProbe(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "opencluster")
	noPath := func(string) (string, error) { return "", errors.New("not on PATH") }
	if _, err := FindCUDABuild(exe, noPath); err == nil {
		t.Fatal("found a build that is not there")
	}
	onPath := func(string) (string, error) { return "/usr/bin/opencluster-cuda", nil }
	if p, err := FindCUDABuild(exe, onPath); err != nil || p != "/usr/bin/opencluster-cuda" {
		t.Errorf("PATH lookup: %q %v", p, err)
	}
	beside := filepath.Join(dir, CUDABinary)
	writeScript(t, beside, `[ "$1 $2" = "devices --probe" ] || exit 3; exit 0`)
	p, err := FindCUDABuild(exe, onPath)
	if err != nil || p != beside {
		t.Fatalf("beside: %q %v", p, err)
	}
	if err := (ExecProber{}).Probe(context.Background(), p); err != nil {
		t.Errorf("good probe: %v", err)
	}
	writeScript(t, beside, `echo "cuInit: CUDA_ERROR_NO_DEVICE" >&2; exit 1`)
	if err := (ExecProber{}).Probe(context.Background(), p); err == nil || !strings.Contains(err.Error(), "CUDA_ERROR_NO_DEVICE") {
		t.Errorf("failing probe: %v", err)
	}
}

type fakeProber struct{ err error }

func (f fakeProber) Probe(context.Context, string) error { return f.err }

func TestGatherWithFakeGPUs(t *testing.T) {
	dir := t.TempDir()
	writeScript(t, filepath.Join(dir, CUDABinary), "exit 0")
	o := GatherOptions{
		Request: Request{Kind: "auto", Index: -1}, NVML: fakeServer(8<<30, 30<<30, 12<<30),
		CPU: fakeCPU{}, Exe: filepath.Join(dir, "opencluster"), Prober: fakeProber{},
	}
	rep, err := Gather(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Devices) != 4 || rep.Selected.Kind != "cuda" || rep.Selected.Index != 1 || !rep.CUDABuild.Usable {
		t.Errorf("report %+v", rep)
	}
	o.Prober = fakeProber{errors.New("probe failed: no kernel image")}
	o.NVML = fakeServer(8 << 30)
	rep, err = Gather(context.Background(), o)
	if err != nil || rep.Selected.Kind != "cpu" || !strings.Contains(rep.Selected.Reason, "no kernel image") {
		t.Errorf("probe failure: %+v %v", rep.Selected, err)
	}
	o.Request = Request{Kind: "cuda", Index: -1}
	o.NVML = fakeServer(8 << 30)
	if _, err := Gather(context.Background(), o); !errors.Is(err, ErrNoUsableGPU) {
		t.Errorf("--device cuda with a failing probe: err = %v", err)
	}
}

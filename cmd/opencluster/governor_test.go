package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"github.com/opencluster/opencluster/device/budget"
	"github.com/opencluster/opencluster/train"
	"github.com/spf13/cobra"
)

// writeBudget writes a worker config whose budget has only the given
// schedule (no caps or limits, so a hot or busy test machine never pauses
// for another reason) and a quick poll.
func writeBudget(t *testing.T, dir, schedule string) string {
	t.Helper()
	body := fmt.Sprintf(`budget:
  power_cap_w: 0
  gpu_temp_limit_c: 0
  cpu_temp_limit_c: 0
  daily_energy_kwh: 0
  pause_when_user_active: false
  run_on_battery: true
  min_battery_percent: 0
  poll_s: 0.02
  schedule: %s
`, schedule)
	p := filepath.Join(dir, "budget.yaml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// closedSchedule is a daily window that opens two hours from now.
func closedSchedule() string {
	now := time.Now()
	return fmt.Sprintf(`{daily: ["%s-%s"]}`, now.Add(2*time.Hour).Format("15:04"), now.Add(3*time.Hour).Format("15:04"))
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestGovernorFromWorkerPreset(t *testing.T) {
	cfg, err := loadWorkerConfig("worker", nil)
	if err != nil {
		t.Fatal(err)
	}
	g, err := newGovernor(cfg, "cpu", quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if !strings.HasPrefix(g.Source, "cpu: ") {
		t.Errorf("source %q, want the CPU sensors", g.Source)
	}
	if st := g.Status(); st.PowerCapW != 200 {
		t.Errorf("power cap %g, want the preset's 200 W", st.PowerCapW)
	}
	if g.Estimated && !strings.Contains(g.Summary(), "(estimated)") {
		t.Errorf("summary %q does not say the energy is estimated", g.Summary())
	}
}

func TestLoadWorkerConfigErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct{ body, want string }{
		{"budget:\n  power_cap: 100\n", "power_cap"},
		{"budget:\n  schedule: {mon: [\"25:00-07:00\"]}\n", "budget.schedule.mon"},
		{"budget:\n  poll_s: .nan\n", "budget.poll_s"},
	}
	for i, tc := range tests {
		p := filepath.Join(dir, fmt.Sprintf("w%d.yaml", i))
		if err := os.WriteFile(p, []byte(tc.body), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := loadWorkerConfig(p, nil); err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), p) {
			t.Errorf("%q: err = %v, want one naming %s and the file", tc.body, err, tc.want)
		}
	}
	t.Setenv("OPENCLUSTER_BUDGET_PAUSE_WHEN_USER_ACTIVE", "false")
	cfg, err := loadWorkerConfig("worker", nil)
	if err != nil || cfg.Budget.PauseWhenUserActive {
		t.Errorf("env override ignored: pause_when_user_active %v, err %v", cfg.Budget.PauseWhenUserActive, err)
	}
}

func TestGovernorReadsSelectedGPU(t *testing.T) {
	old := newNVML
	t.Cleanup(func() { newNVML = old })
	newNVML = func() nvml.Interface {
		srv := dgxa100.New()
		for i, d := range srv.Devices {
			dev := d.(*dgxa100.Device)
			temp := uint32(50 + i)
			dev.GetPowerUsageFunc = func() (uint32, nvml.Return) { return 150_000, nvml.SUCCESS }
			dev.GetTotalEnergyConsumptionFunc = func() (uint64, nvml.Return) { return 1_000_000, nvml.SUCCESS }
			dev.GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) { return temp, nvml.SUCCESS }
		}
		return srv
	}
	cfg := defaultWorkerConfig()
	cfg.Budget.PauseWhenUserActive = false
	cfg.Budget.GPUTempLimitC, cfg.Budget.CPUTempLimitC = 0, 0
	g, err := newGovernor(cfg, "cuda:3", quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if g.Estimated || !strings.Contains(g.Source, "gpu 3: NVML") {
		t.Fatalf("source %q estimated %v, want NVML of GPU 3", g.Source, g.Estimated)
	}
	if err := g.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	if st := g.Status(); st.GPUTempC != 53 {
		t.Errorf("GPU temperature %g, want GPU 3's 53 C", st.GPUTempC)
	}

	// A GPU NVML cannot read: the CPU is still watched, and the source says so.
	g2, err := newGovernor(cfg, "cuda:99", quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer g2.Close()
	if !strings.HasPrefix(g2.Source, "cpu: ") || !strings.Contains(g2.Source, "GPU 99 unreadable") {
		t.Errorf("source %q, want the CPU with GPU 99 unreadable", g2.Source)
	}
}

func TestGpuIndex(t *testing.T) {
	for in, want := range map[string]int{"cuda:0": 0, "cuda:7": 7, "cpu": -1, "cuda:": -1, "cuda:x": -1, "cuda:-1": -1} {
		n, ok := gpuIndex(in)
		if (ok && n != want) || ok != (want >= 0) {
			t.Errorf("gpuIndex(%q) = %d, %v; want %d", in, n, ok, want)
		}
	}
}

// The worker's governor (built as runWorker builds it) on a closed schedule
// holds the first step and lets go when the context ends.
func TestWorkerGovernorClosedSchedule(t *testing.T) {
	cfg, err := loadWorkerConfig(writeBudget(t, t.TempDir(), closedSchedule()), nil)
	if err != nil {
		t.Fatal(err)
	}
	g, err := newGovernor(cfg, "cpu", quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 150*time.Millisecond)
	defer cancel()
	if err := g.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait = %v, want the context's end", err)
	}
	st := g.Status()
	if !st.Paused || st.Kind != budget.KindSchedule || st.Steps != 0 {
		t.Errorf("status %+v, want paused for the schedule before any step", st)
	}
	if !strings.Contains(g.Summary(), "paused (schedule)") {
		t.Errorf("summary %q does not say why", g.Summary())
	}
}

// cancelOnPause is a slog handler that cancels when the budget pauses.
type cancelOnPause struct {
	slog.Handler
	cancel context.CancelFunc
	kind   string
}

func (h cancelOnPause) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "budget: pause" {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "kind" && a.Value.String() == h.kind {
				h.cancel()
			}
			return true
		})
	}
	return nil
}

func executeCtx(ctx context.Context, args ...string) (string, string, error) {
	root := &cobra.Command{Use: "opencluster", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(newPretrainCmd(), newTrainCmd())
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	return out.String(), errOut.String(), err
}

// pretrain --budget with a closed schedule pauses before the first step,
// and a cancel (Ctrl-C) ends the run at step 0 with the reason shown.
func TestPretrainObeysBudget(t *testing.T) {
	dir := t.TempDir()
	cfg := smallConfig(t, dir)
	data := writeCorpus(t, filepath.Join(dir, "a"), 1, false)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	oldLog := slog.Default()
	slog.SetDefault(slog.New(cancelOnPause{slog.NewTextHandler(io.Discard, nil), cancel, budget.KindSchedule}))
	t.Cleanup(func() { slog.SetDefault(oldLog) })

	closed := writeBudget(t, t.TempDir(), closedSchedule())
	stdout, stderr, err := executeCtx(ctx, "pretrain", "--config", cfg, "--data", data, "--out", filepath.Join(dir, "base"),
		"--steps", "5", "--json", "--budget", closed)
	if !errors.Is(err, train.ErrInterrupted) || !strings.Contains(err.Error(), "at step 0") {
		t.Fatalf("err = %v, want interrupted at step 0", err)
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatal("the budget never paused for the schedule")
	}
	if strings.Contains(stdout, `"step":1`) {
		t.Errorf("a step ran although the schedule is closed:\n%s", stdout)
	}
	if !strings.Contains(stderr, "paused (schedule): outside the schedule windows") {
		t.Errorf("stderr %q does not say the run waited for the schedule", stderr)
	}

	// An open schedule: the run completes and reports its budget.
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	open := writeBudget(t, t.TempDir(), `{daily: ["00:00-24:00"]}`)
	stdout, _, err = executeCtx(t.Context(), "pretrain", "--config", cfg, "--data", data, "--out", filepath.Join(dir, "base2.safetensors"),
		"--steps", "3", "--json", "--budget", open)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	var last struct {
		Event   string `json:"event"`
		Sensors string `json:"sensors"`
		budget.Status
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil {
		t.Fatal(err)
	}
	if last.Event != "budget" || last.Steps != 3 || last.Paused || last.Sensors == "" {
		t.Errorf("last line %s: want the budget status after 3 steps", lines[len(lines)-1])
	}

	// A bad --budget is an error naming the flag and the key, before training.
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("budget:\n  powr_cap_w: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, err = executeCtx(t.Context(), "pretrain", "--config", cfg, "--data", data, "--out", filepath.Join(dir, "b3.safetensors"), "--budget", bad)
	if err == nil || !strings.Contains(err.Error(), "--budget") || !strings.Contains(err.Error(), "powr_cap_w") {
		t.Errorf("bad --budget: err = %v", err)
	}
}

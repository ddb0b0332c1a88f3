package demotest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/opencluster/opencluster/coordinator"
	"github.com/opencluster/opencluster/internal/testbin"
)

// bin is the opencluster binary TestMain builds (without -race: the
// processes it starts are what is measured).
var bin string

// enabled: the test times the real demo, so `make test` runs it alone,
// after every other package, with OPENCLUSTER_CALIBRATE_DEMO=1.
var enabled = os.Getenv("OPENCLUSTER_CALIBRATE_DEMO") == "1"

func TestMain(m *testing.M) {
	if !enabled {
		os.Exit(m.Run())
	}
	testbin.Main(m, "../../cmd/opencluster", &bin)
}

const (
	workers = 4
	rounds  = 4
	steps   = 10 // the demo's default local steps
)

// predict runs `simulate --calibrate-demo`, which measures this machine's
// QLoRA step speed now and predicts the demo's mean round duration.
func predict(t *testing.T, ctx context.Context) (float64, map[string]any) {
	t.Helper()
	cmd := exec.CommandContext(ctx, bin, "simulate", "--calibrate-demo", "--json", "--log-level", "warn",
		"--demo-workers", fmt.Sprint(workers), "--demo-rounds", fmt.Sprint(rounds), "--demo-steps", fmt.Sprint(steps))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("simulate --calibrate-demo: %v", err)
	}
	lines := bytes.Split(bytes.TrimSpace(out), []byte("\n"))
	var last struct {
		Calibrate map[string]any `json:"calibrate_demo"`
	}
	if err := json.Unmarshal(lines[len(lines)-1], &last); err != nil || last.Calibrate == nil {
		t.Fatalf("simulate --calibrate-demo: last line %q: %v", lines[len(lines)-1], err)
	}
	p, _ := last.Calibrate["predicted_round_s"].(float64)
	if !(p > 0) {
		t.Fatalf("predicted round %v s", p)
	}
	return p, last.Calibrate
}

// The simulator's prediction of `make demo`'s round duration must fall
// within 30% of the real demo's mean round (rounds 2..4: round 1 also
// starts the workers). The machine's speed is measured just before and
// just after the demo and the prediction is the mean of the two. On a
// machine loaded by other work (more than 4 runnable threads per core, or
// the two measurements more than 25% apart) the timings say more about
// that work than about the model: the test skips, saying so. On this
// project's shared machine at a load of 8-12 per core the comparison swung
// from -51% to +38% (docs/simulation.md).
func TestCalibrateDemo(t *testing.T) {
	if testing.Short() || !enabled {
		t.Skip("times the real demo (about a minute); make test runs it alone with OPENCLUSTER_CALIBRATE_DEMO=1")
	}
	// make test runs this right after the race tests: let the load they
	// leave decay first (the 1-minute average falls by e each minute).
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(5 * time.Second) {
		if load, ok := loadPerCore(); !ok || load <= 1 || time.Now().After(deadline) {
			t.Logf("load average %.2f per core at the start", load)
			break
		}
	}
	if load, ok := loadPerCore(); ok && load > 4 {
		t.Skipf("this machine's load average is %.1f per core: other work would decide both timings", load)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	before, info := predict(t, ctx)

	dir := t.TempDir()
	demo := exec.CommandContext(ctx, bin, "demo", "--workers", fmt.Sprint(workers), "--rounds", fmt.Sprint(rounds), "--steps", fmt.Sprint(steps),
		"--dir", dir, "--device", "cpu", "--log-level", "warn", "--json")
	if out, err := demo.CombinedOutput(); err != nil {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	after, _ := predict(t, ctx)

	store, err := coordinator.OpenSQLite(ctx, filepath.Join(dir, "coordinator", "coordinator.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	var sum float64
	var each []float64
	for id := uint64(2); id <= rounds; id++ {
		r, err := store.Round(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if r.State != coordinator.StateClosed {
			t.Fatalf("demo round %d is %s, not closed", id, r.State)
		}
		d := r.Closed.Sub(r.Opened).Seconds()
		each = append(each, d)
		sum += d
	}
	measured := sum / float64(len(each))
	predicted := (before + after) / 2
	off := (predicted - measured) / measured
	if drift := math.Abs(after-before) / predicted; drift > 0.25 {
		// The machine's speed changed during the test (other work on a
		// shared machine): no prediction made before or after can be held
		// to the demo's time, so there is nothing to check.
		t.Skipf("this machine's measured speed moved by %.0f%% during the test (prediction %.3f s before the demo, %.3f s after; the demo's mean round %.3f s): too unsteady to check a 30%% bound",
			100*drift, before, after, measured)
	}
	t.Logf("make demo (%d workers, %d local steps): measured mean round %.3f s (rounds 2..%d: %.3f); simulate --calibrate-demo predicted %.3f s (%.3f before, %.3f after the demo; machine %v, utilisation %v); off by %+.1f%%",
		workers, steps, measured, rounds, each, predicted, before, after, info["cpu"], info["utilisation"], 100*off)
	if math.Abs(off) > 0.3 {
		t.Errorf("the prediction %.3f s is %+.0f%% off the measured %.3f s: more than 30%%", predicted, 100*off, measured)
	}
}

// loadPerCore is the 1-minute load average over the CPU count (Linux).
func loadPerCore() (float64, bool) {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0, false
	}
	var l float64
	if _, err := fmt.Sscanf(string(b), "%g", &l); err != nil {
		return 0, false
	}
	return l / float64(runtime.NumCPU()), true
}

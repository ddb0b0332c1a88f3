package train

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/opencluster/opencluster/train/backend"
)

// The memory model against a measured peak: a child process (built without
// the race detector, which multiplies memory) builds a QLoRA model straight
// into 4-bit, runs two optimizer steps and prints its peak resident set
// (VmHWM) and the estimate; they must agree within 15%. The shape is small
// enough for a test yet large enough (a few hundred MiB) that the runtime's
// fixed cost does not decide the comparison.

const memChildEnv = "OPENCLUSTER_TEST_MEMORY_CHILD"

// peakJob is the measured job: 32k vocabulary (an untied bf16 embedding and
// lm_head, chunked cross-entropy), 4 layers, LoRA r=16 on every linear.
func peakJob(ckpt bool) MemoryJob {
	return MemoryJob{
		Model: ModelConfig{VocabSize: 32000, Dim: 512, Layers: 4, Heads: 8, KVHeads: 2, HiddenDim: 1536,
			MaxSeqLen: 512, RopeTheta: 10000, NormEps: 1e-5},
		Mode: ModeQLoRA, LoRA: LoRAConfig{Rank: 16, Alpha: 32, Targets: LinearNames}, Quant: testQuant,
		MicroBatch: 2, SeqLen: 512, Checkpointing: ckpt,
	}
}

type memChildResult struct {
	Peak, Estimate int64
}

// runMemoryChild is the child's whole job.
func runMemoryChild(ckpt bool) (memChildResult, error) {
	j := peakJob(ckpt)
	e, err := EstimateMemory(j)
	if err != nil {
		return memChildResult{}, err
	}
	m, err := NewQuantizedModel(j.Model, backend.NewCPU(0), 1, j.Quant)
	if err != nil {
		return memChildResult{}, err
	}
	if err := m.EnableLoRA(j.LoRA, 1); err != nil {
		return memChildResult{}, err
	}
	m.SetCheckpointing(ckpt)
	rng := rand.New(rand.NewPCG(1, 2))
	N := j.MicroBatch * j.SeqLen
	tc := tinyTrainConfig()
	for s := 1; s <= 2; s++ {
		m.ZeroGrad()
		if _, err := m.ForwardBackward(randomTokens(rng, N, j.Model.VocabSize), randomTokens(rng, N, j.Model.VocabSize), j.MicroBatch, j.SeqLen, 1, s); err != nil {
			return memChildResult{}, err
		}
		m.ClipGradNorm(1)
		m.OptimizerStep(tc, 1e-3, s)
	}
	peak, err := vmHWM()
	return memChildResult{Peak: peak, Estimate: e.Host}, err
}

// vmHWM is this process's peak resident set.
func vmHWM() (int64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(rest)
			if len(f) == 2 && f[1] == "kB" {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				return kb << 10, err
			}
		}
	}
	return 0, fmt.Errorf("no VmHWM line in /proc/self/status")
}

func TestMemoryModelMatchesMeasuredPeak(t *testing.T) {
	if mode := os.Getenv(memChildEnv); mode != "" {
		res, err := runMemoryChild(mode == "ckpt")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(res)
		fmt.Printf("\nMEMCHILD %s\n", b)
		return
	}
	if runtime.GOOS != "linux" {
		t.Skip("VmHWM is read from /proc")
	}
	if testing.Short() {
		t.Skip("builds and trains a 100M-parameter model shape in a child")
	}
	exe := os.Args[0]
	if raceEnabled {
		exe = buildPlainTestBinary(t)
	}
	for _, mode := range []string{"ckpt", "full"} {
		cmd := exec.Command(exe, "-test.run=^TestMemoryModelMatchesMeasuredPeak$", "-test.count=1")
		cmd.Env = append(os.Environ(), memChildEnv+"="+mode, "GOMAXPROCS=2")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s child: %v\n%s", mode, err, out)
		}
		var res memChildResult
		for _, line := range strings.Split(string(out), "\n") {
			if rest, ok := strings.CutPrefix(line, "MEMCHILD "); ok {
				if err := json.Unmarshal([]byte(rest), &res); err != nil {
					t.Fatal(err)
				}
			}
		}
		if res.Peak <= 0 || res.Estimate <= 0 {
			t.Fatalf("%s child printed no result:\n%s", mode, out)
		}
		rel := float64(res.Peak-res.Estimate) / float64(res.Estimate)
		t.Logf("%s: measured peak %s, memory model %s (%+.1f%%)", mode, FormatBytes(res.Peak), FormatBytes(res.Estimate), 100*rel)
		if rel > 0.15 || rel < -0.15 {
			t.Errorf("%s: measured peak %s is %+.1f%% off the memory model's %s (more than 15%%)", mode, FormatBytes(res.Peak), 100*rel, FormatBytes(res.Estimate))
		}
	}
}

// buildPlainTestBinary compiles this package's tests without the race
// detector into a temporary directory.
func buildPlainTestBinary(t *testing.T) string {
	t.Helper()
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(gobin); err != nil {
		if gobin, err = exec.LookPath("go"); err != nil {
			t.Skip("no go command to build a child without the race detector")
		}
	}
	exe := filepath.Join(t.TempDir(), "train.test")
	cmd := exec.Command(gobin, "test", "-c", "-o", exe, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the child: %v\n%s", err, out)
	}
	return exe
}

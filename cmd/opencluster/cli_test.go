package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"testing"

	"github.com/opencluster/opencluster/configs"
	"github.com/opencluster/opencluster/train"
	"github.com/spf13/cobra"
)

// stdin is what the next execute call reads on standard input.
var stdin string

// execute runs one command line on a fresh command tree (flags do not leak
// between runs) and returns stdout, stderr and the error.
func execute(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	root := &cobra.Command{Use: "opencluster", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(newPretrainCmd(), newTrainCmd(), newGenerateCmd(), newTokenizeCmd(), newQuantizeCmd(), newEvalCmd(), newExportCmd())
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	root.SetIn(strings.NewReader(stdin))
	stdin = ""
	err := root.ExecuteContext(context.Background())
	return out.String(), errOut.String(), err
}

// writeCorpus writes size bytes of sentences from a small grammar to dir.
func writeCorpus(t *testing.T, dir string, seed uint64, upper bool) string {
	t.Helper()
	words := [][]string{{"the worker", "a volunteer", "the model"}, {"trains", "sends", "keeps"}, {"the adapter", "its data", "an update"}}
	r := rand.New(rand.NewPCG(seed, 1))
	for f := range 2 {
		var b bytes.Buffer
		for b.Len() < 6000 {
			fmt.Fprintf(&b, "%s %s %s.\n", words[0][r.IntN(3)], words[1][r.IntN(3)], words[2][r.IntN(3)])
		}
		body := b.Bytes()
		if upper {
			body = bytes.ToUpper(body)
		}
		p := filepath.Join(dir, "sub", fmt.Sprintf("doc%d.txt", f))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, body, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// smallConfig writes a YAML config: the tiny preset, made smaller and quicker.
func smallConfig(t *testing.T, dir string) string {
	t.Helper()
	b, err := configs.Preset("tiny")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for old, repl := range map[string]string{
		"dim: 64":          "dim: 32",
		"hidden_dim: 176":  "hidden_dim: 64",
		"batch_size: 16":   "batch_size: 4",
		"seq_len: 64":      "seq_len: 32",
		"eval_every: 50":   "eval_every: 5",
		"eval_batches: 8":  "eval_batches: 2",
		"warmup_steps: 20": "warmup_steps: 2",
	} {
		if !strings.Contains(s, old) {
			t.Fatalf("tiny preset has no %q", old)
		}
		s = strings.Replace(s, old, repl, 1)
	}
	p := filepath.Join(dir, "small.yaml")
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCommandsRegistered(t *testing.T) {
	for _, name := range []string{"pretrain", "train", "generate"} {
		if c, _, err := rootCmd.Find([]string{name}); err != nil || c.Name() != name {
			t.Errorf("rootCmd has no %s command (%v)", name, err)
		}
	}
}

func TestPretrainTrainGenerateEndToEnd(t *testing.T) {
	dir := t.TempDir()
	cfg := smallConfig(t, dir)
	dataA := writeCorpus(t, filepath.Join(dir, "a"), 1, false)
	dataB := writeCorpus(t, filepath.Join(dir, "b"), 2, true)
	base := filepath.Join(dir, "base")
	adapter := filepath.Join(dir, "adapter")

	stdout, _, err := execute(t, "pretrain", "--config", cfg, "--data", dataA, "--out", base, "--steps", "30", "--json")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(lines) != 32 { // initial eval, 30 steps, summary
		t.Fatalf("pretrain --json printed %d lines, want 32:\n%s", len(lines), stdout)
	}
	var sum struct {
		Event          string  `json:"event"`
		Step           int     `json:"step"`
		ValLoss        float64 `json:"val_loss"`
		InitialValLoss float64 `json:"initial_val_loss"`
	}
	if err := json.Unmarshal([]byte(lines[31]), &sum); err != nil {
		t.Fatal(err)
	}
	if sum.Event != "summary" || sum.Step != 30 || !(sum.ValLoss < sum.InitialValLoss) {
		t.Fatalf("summary %s: want 30 steps and a lower val loss", lines[31])
	}

	stdout, _, err = execute(t, "train", "--config", cfg, "--base", base, "--data", dataB, "--out", adapter, "--steps", "20", "--rank", "4")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout, "qlora: steps 0-20") || !strings.Contains(stdout, adapter) {
		t.Errorf("train summary %q", stdout)
	}
	var ac struct {
		R int `json:"r"`
	}
	b, err := os.ReadFile(filepath.Join(adapter, "adapter_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &ac); err != nil || ac.R != 4 {
		t.Errorf("adapter_config.json r=%d (err %v), want the --rank 4", ac.R, err)
	}

	// Generation is seeded: the same flags give the same text.
	gen := []string{"generate", "--base", base, "--adapter", adapter, "--config", cfg, "--prompt", "THE ", "--max-tokens", "30", "--seed", "3"}
	g1, _, err := execute(t, gen...)
	if err != nil {
		t.Fatal(err)
	}
	g2, _, _ := execute(t, gen...)
	if g1 != g2 || !strings.HasPrefix(g1, "THE ") || len(g1) < 30 {
		t.Errorf("generate printed %q then %q", g1, g2)
	}
	plain, _, err := execute(t, "generate", "--base", base, "--prompt", "the ", "--max-tokens", "10", "--temperature", "0")
	if err != nil || !strings.HasPrefix(plain, "the ") {
		t.Errorf("generate without adapter: %q, %v", plain, err)
	}
}

func TestCommandErrors(t *testing.T) {
	dir := t.TempDir()
	cfg := smallConfig(t, dir)
	dataA := writeCorpus(t, filepath.Join(dir, "a"), 1, false)
	typo := filepath.Join(dir, "typo.yaml")
	b, _ := os.ReadFile(cfg)
	if err := os.WriteFile(typo, bytes.Replace(b, []byte("  grad_clip:"), []byte("  grad_clipp:"), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "base")
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"pretrain without data", []string{"pretrain", "--out", out}, "--data"},
		{"pretrain without out", []string{"pretrain", "--data", dataA}, "--out"},
		{"train without base", []string{"train", "--data", dataA, "--out", dir}, "--base"},
		{"train without out", []string{"train", "--base", out, "--data", dataA}, "--out"},
		{"generate without base", []string{"generate", "--prompt", "x"}, "--base"},
		{"generate without prompt", []string{"generate", "--base", out}, "--prompt"},
		{"unknown config key", []string{"pretrain", "--config", typo, "--data", dataA, "--out", out}, "grad_clipp"},
		{"unknown preset", []string{"pretrain", "--config", "enormous", "--data", dataA, "--out", out}, "enormous"},
		{"bad flag value", []string{"pretrain", "--steps", "many", "--data", dataA, "--out", out}, "--steps"},
		{"unknown flag", []string{"pretrain", "--stepz", "3"}, "stepz"},
		{"stray argument", []string{"pretrain", "extra", "--data", dataA, "--out", out}, "extra"},
		{"negative lr", []string{"pretrain", "--config", cfg, "--lr", "-1", "--data", dataA, "--out", out}, "train.lr"},
		{"missing data dir", []string{"pretrain", "--config", cfg, "--data", filepath.Join(dir, "nowhere"), "--out", out}, "nowhere"},
		{"missing base file", []string{"generate", "--base", filepath.Join(dir, "nobase.safetensors"), "--prompt", "x"}, "nobase.safetensors"},
		{"resume with nothing saved", []string{"pretrain", "--config", cfg, "--data", dataA, "--out", out, "--resume"}, "no checkpoint"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := execute(t, c.args...)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one mentioning %q", err, c.want)
			}
		})
	}
}

func TestEnvOverridesConfig(t *testing.T) {
	dir := t.TempDir()
	cfg := smallConfig(t, dir)
	dataA := writeCorpus(t, filepath.Join(dir, "a"), 1, false)
	t.Setenv("OPENCLUSTER_TRAIN_STEPS", "3")
	stdout, _, err := execute(t, "pretrain", "--config", cfg, "--data", dataA, "--out", filepath.Join(dir, "b"), "--json")
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(stdout, `"event":"step"`); n != 3 {
		t.Errorf("OPENCLUSTER_TRAIN_STEPS=3 ran %d steps", n)
	}
	// A flag beats the environment.
	stdout, _, err = execute(t, "pretrain", "--config", cfg, "--data", dataA, "--out", filepath.Join(dir, "c"), "--json", "--steps", "2")
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(stdout, `"event":"step"`); n != 2 {
		t.Errorf("--steps 2 over OPENCLUSTER_TRAIN_STEPS=3 ran %d steps", n)
	}
}

func TestPretrainWritesProfiles(t *testing.T) {
	dir := t.TempDir()
	cfg := smallConfig(t, dir)
	data := writeCorpus(t, filepath.Join(dir, "a"), 1, false)
	cpu, mem := filepath.Join(dir, "cpu.prof"), filepath.Join(dir, "mem.prof")
	_, _, err := execute(t, "pretrain", "--config", cfg, "--data", data, "--out", filepath.Join(dir, "base"),
		"--steps", "3", "--json", "--cpuprofile", cpu, "--memprofile", mem)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{cpu, mem} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		// pprof files are gzip-compressed protocol buffers.
		if len(b) < 20 || b[0] != 0x1f || b[1] != 0x8b {
			t.Errorf("%s is not a pprof profile (%d bytes)", p, len(b))
		}
	}
	_, _, err = execute(t, "pretrain", "--config", cfg, "--data", data, "--out", filepath.Join(dir, "b2"),
		"--steps", "1", "--cpuprofile", filepath.Join(dir, "missing", "cpu.prof"))
	if err == nil || !strings.Contains(err.Error(), "--cpuprofile") {
		t.Errorf("unwritable --cpuprofile: error %v, want one naming the flag", err)
	}
}

func TestVersionText(t *testing.T) {
	info := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "github.com/opencluster/opencluster", Version: "(devel)"},
		Settings: []debug.BuildSetting{{Key: "-tags", Value: "cuda"}, {Key: "CGO_ENABLED", Value: "1"}, {Key: "GOAMD64", Value: "v3"},
			{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"},
			{Key: "vcs.time", Value: "2026-01-02T03:04:05Z"}, {Key: "vcs.modified", Value: "true"}}}
	got := versionText(info, true)
	for _, want := range []string{"opencluster " + version + "\n", "commit 0123456789abcdef0123456789abcdef01234567 (2026-01-02T03:04:05Z, modified)\n",
		"go go1.26.8, module github.com/opencluster/opencluster (devel)\n", "build -tags=cuda CGO_ENABLED=1 GOAMD64=v3\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("version text lacks %q:\n%s", want, got)
		}
	}
	if got := versionText(nil, false); !strings.Contains(got, "commit unknown") {
		t.Errorf("without build info: %q", got)
	}
}

// pretrain/train --config offer the model presets only; naming a command's
// preset says so (it used to fail on the worker file's keys).
func TestModelConfigPresetsOnly(t *testing.T) {
	want := []string{"gpt2-124m", "llama-1b", "llama-7b", "small", "tiny"}
	if got := configs.ModelNames(); !slices.Equal(got, want) {
		t.Fatalf("model presets %v, want %v", got, want)
	}
	help := newTrainCmd().Flags().Lookup("config").Usage
	if !strings.Contains(help, "tiny") || strings.Contains(help, "worker") || strings.Contains(help, "coordinator") {
		t.Errorf("train --config help %q", help)
	}
	var cfg train.Config
	err := loadModelConfig("worker", nil, nil, &cfg)
	if err == nil || !strings.Contains(err.Error(), "not a model") || !strings.Contains(err.Error(), "tiny") {
		t.Fatalf("--config worker for a model: %v", err)
	}
	if err := loadModelConfig("tiny", nil, nil, &cfg); err != nil || cfg.Model.Dim == 0 {
		t.Fatalf("--config tiny: %v", err)
	}
}

// gorgonia.org/gorgonia is the independent autodiff reference of
// train/backend's gradient tests (LispMachine), and nothing else: the
// binary must not link it (`go mod why gorgonia.org/gorgonia` shows the
// path through train/backend.test).
func TestGorgoniaIsTestOnly(t *testing.T) {
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool on PATH")
	}
	for _, tags := range []string{"", "cuda"} {
		out, err := exec.Command(goCmd, "list", "-deps", "-tags", tags, "-f", "{{.ImportPath}}", ".").CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps -tags %q: %v\n%s", tags, err, out)
		}
		for _, p := range strings.Fields(string(out)) {
			if strings.HasPrefix(p, "gorgonia.org/gorgonia") || strings.HasPrefix(p, "gorgonia.org/tensor") {
				t.Errorf("opencluster (tags %q) links %s; gorgonia belongs in tests only", tags, p)
			}
		}
	}
}

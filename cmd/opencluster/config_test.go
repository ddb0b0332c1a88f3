package main

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/opencluster/opencluster/configs"
	"github.com/opencluster/opencluster/train"
	"github.com/spf13/pflag"
)

func TestLoadConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	base, err := configs.Preset("tiny")
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "my.yaml")
	patched := strings.Replace(string(base), "lr: 3.0e-3", "lr: 0.005", 1)
	patched = strings.Replace(patched, "steps: 300", "steps: 77", 1)
	if err := os.WriteFile(file, []byte(patched), 0o644); err != nil {
		t.Fatal(err)
	}
	flags := pflag.NewFlagSet("t", pflag.ContinueOnError)
	flags.Int("steps", 0, "")
	flags.Int("seed", 0, "")
	keys := map[string]string{"train.steps": "steps", "train.seed": "seed"}

	// File beats the preset default.
	var cfg train.Config
	if err := loadConfig(file, flags, keys, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Train.LR != 0.005 || cfg.Train.Steps != 77 {
		t.Fatalf("file values not applied: lr=%g steps=%d", cfg.Train.LR, cfg.Train.Steps)
	}

	// Env beats the file; a set flag beats the env; an unset flag does not.
	t.Setenv("OPENCLUSTER_TRAIN_LR", "0.25")
	t.Setenv("OPENCLUSTER_TRAIN_STEPS", "11")
	t.Setenv("OPENCLUSTER_TRAIN_SEED", "5")
	if err := flags.Parse([]string{"--steps", "9"}); err != nil {
		t.Fatal(err)
	}
	cfg = train.Config{}
	if err := loadConfig(file, flags, keys, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Train.LR != 0.25 {
		t.Errorf("env did not override file: lr=%g", cfg.Train.LR)
	}
	if cfg.Train.Steps != 9 {
		t.Errorf("flag did not override env: steps=%d", cfg.Train.Steps)
	}
	if cfg.Train.Seed != 5 {
		t.Errorf("unset flag must leave env value: seed=%d", cfg.Train.Seed)
	}
}

func TestLoadConfigErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	base, _ := configs.Preset("tiny")
	cases := []struct {
		name, source, want string
	}{
		{"unknown key names the key", write("typo.yaml", strings.Replace(string(base), "  lr: 3.0e-3", "  lrr: 3.0e-3", 1)), "lrr"},
		{"unknown section", write("sect.yaml", string(base)+"bogus:\n  x: 1\n"), "bogus"},
		{"bad yaml", write("bad.yaml", "model: [unclosed\n"), "bad.yaml"},
		{"wrong type", write("type.yaml", strings.Replace(string(base), "steps: 300", "steps: many", 1)), "steps"},
		{"missing file", filepath.Join(dir, "nope.yaml"), "nope.yaml"},
		{"unknown preset", "hugemodel", "no preset"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var cfg train.Config
			err := loadConfig(tc.source, pflag.NewFlagSet("t", pflag.ContinueOnError), nil, &cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestPresetsAreValid(t *testing.T) {
	for _, name := range []string{"tiny", "small", "gpt2-124m", "llama-1b", "llama-7b"} {
		var cfg train.Config
		if err := loadConfig(name, pflag.NewFlagSet("t", pflag.ContinueOnError), nil, &cfg); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := cfg.Validate(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	var small train.Config
	_ = loadConfig("small", pflag.NewFlagSet("t", pflag.ContinueOnError), nil, &small)
	if n := small.Model.NumParams(); n < 15e6 || n > 25e6 {
		t.Errorf("small has %d params, want about 20M", n)
	}
}

// Config values are decoded strictly: a number for an int must be whole, a
// bool or a string is not a number, a negative number is not unsigned, a
// duration needs its unit; each error names the key. Environment values
// are parsed as strictly. (Weakly typed decoding used to take 4.7 as 4,
// true as 1 and -1 as 18446744073709551615.)
func TestLoadConfigIsStrictlyTyped(t *testing.T) {
	dir := t.TempDir()
	base, _ := configs.Preset("tiny")
	coord, _ := configs.Preset("coordinator")
	cases := []struct {
		name    string
		preset  []byte
		from    string
		to      string
		env     [2]string
		want    string
		coordIn bool
	}{
		{"fraction for an int", base, "steps: 300", "steps: 4.7", [2]string{}, "steps", false},
		{"bool for an int", base, "steps: 300", "steps: true", [2]string{}, "steps", false},
		{"negative unsigned", base, "seed: 1 ", "seed: -1 ", [2]string{}, "seed", false},
		{"string for a bool", base, "tied_embeddings: true", "tied_embeddings: yes please", [2]string{}, "tied_embeddings", false},
		{"env fraction for an int", base, "", "", [2]string{"OPENCLUSTER_TRAIN_STEPS", "4.7"}, "steps", false},
		{"env negative unsigned", base, "", "", [2]string{"OPENCLUSTER_TRAIN_SEED", "-1"}, "seed", false},
		{"duration without a unit", coord, "round_timeout: 5m", "round_timeout: 300", [2]string{}, "round_timeout", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			body := string(tc.preset)
			if tc.from != "" {
				if !strings.Contains(body, tc.from) {
					t.Fatalf("preset lacks %q", tc.from)
				}
				body = strings.Replace(body, tc.from, tc.to, 1)
			}
			if tc.env[0] != "" {
				t.Setenv(tc.env[0], tc.env[1])
			}
			p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_")+".yaml")
			if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
			var err error
			if tc.coordIn {
				var cfg coordinatorConfig
				err = loadConfig(p, nil, nil, &cfg)
			} else {
				var cfg train.Config
				err = loadConfig(p, nil, nil, &cfg)
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one naming %q", err, tc.want)
			}
			t.Log(err)
		})
	}
	// Whole numbers written as floats and env values of the right type are fine.
	t.Setenv("OPENCLUSTER_TRAIN_STEPS", "12")
	t.Setenv("OPENCLUSTER_TRAIN_LR", "1e-3")
	p := filepath.Join(dir, "ok.yaml")
	os.WriteFile(p, []byte(strings.Replace(string(base), "batch_size: 16", "batch_size: 16.0", 1)), 0o644)
	var cfg train.Config
	if err := loadConfig(p, nil, nil, &cfg); err != nil || cfg.Train.BatchSize != 16 || cfg.Train.Steps != 12 || cfg.Train.LR != 1e-3 {
		t.Fatalf("valid config: %+v %v", cfg.Train, err)
	}
}

// An OPENCLUSTER_* variable sets its key even when the file leaves the key
// out (viper only consulted the environment for keys it had seen).
func TestEnvSetsKeysTheFileLeavesOut(t *testing.T) {
	p := filepath.Join(t.TempDir(), "min.yaml")
	os.WriteFile(p, []byte("rounds:\n  model: tiny\n  shapes: [{name: a, dims: [4]}]\n"), 0o644)
	t.Setenv("OPENCLUSTER_ROUNDS_PROBATION", "90s")
	t.Setenv("OPENCLUSTER_TICK", "3s")
	var cfg coordinatorConfig
	if err := loadConfig(p, nil, nil, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Rounds.Probation != 90*time.Second || cfg.Tick != 3*time.Second {
		t.Fatalf("probation %v, tick %v: the environment was ignored", cfg.Rounds.Probation, cfg.Tick)
	}
}

// An OPENCLUSTER_ variable that no config key or known setting uses gets a
// warning naming it (a typo was ignored silently), with the closest name.
func TestUnknownEnvIsNamed(t *testing.T) {
	var log bytes.Buffer
	typo := "OPENCLUSTER_" + "TRIAN_STEPS" // spelled apart so TestEveryUsedEnvNameIsKnown does not see it
	warnUnknownEnv([]string{"OPENCLUSTER_TRAIN_LR=1", typo + "=5", "OPENCLUSTER_TEST_STALL_UPLOAD=3", "PATH=/bin", "OPENCLUSTER_REQUIRE_POSTGRES=1"},
		slog.New(slog.NewTextHandler(&log, nil)))
	out := log.String()
	if !strings.Contains(out, typo) || !strings.Contains(out, "OPENCLUSTER_TRAIN_STEPS") {
		t.Errorf("no warning naming the typo and the closest name:\n%s", out)
	}
	for _, ok := range []string{"OPENCLUSTER_TRAIN_LR", "OPENCLUSTER_TEST_STALL_UPLOAD", "OPENCLUSTER_REQUIRE_POSTGRES"} {
		if strings.Contains(out, ok+"=") || strings.Contains(out, "var="+ok) {
			t.Errorf("warned about %s, a known name:\n%s", ok, out)
		}
	}
}

// Every OPENCLUSTER_ name the repository's code and scripts use is a config
// key's or registered in otherEnv, so the warning never cries wolf.
func TestEveryUsedEnvNameIsKnown(t *testing.T) {
	known := knownEnvNames()
	re := regexp.MustCompile(`OPENCLUSTER_[A-Z0-9_]+`)
	root := filepath.Join("..", "..")
	filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil || (d.IsDir() && (strings.HasPrefix(d.Name(), ".") || d.Name() == "node_modules" || strings.HasPrefix(d.Name(), "_"))) {
			if d != nil && d.IsDir() && path != root {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() || !(strings.HasSuffix(path, ".go") || strings.HasSuffix(path, ".sh") || d.Name() == "Makefile" || d.Name() == "run") {
			return nil
		}
		b, _ := os.ReadFile(path)
		for _, name := range re.FindAllString(string(b), -1) {
			if !strings.HasSuffix(name, "_") && !known(name) {
				t.Errorf("%s uses %s, which is neither a config key's variable nor in otherEnv (cmd/opencluster/env.go)", path, name)
			}
		}
		return nil
	})
}

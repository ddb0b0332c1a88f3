package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

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

package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencluster/opencluster/configs"
)

func TestBudgetSimulateJSON(t *testing.T) {
	out, err := runCmd(t, "budget", "simulate", "--tdp", "320", "--power-cap", "160", "--temp-limit", "72", "--ambient", "28", "--duration", "20m", "--json")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var res map[string]float64
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &res); err != nil {
		t.Fatalf("last line is not JSON: %v\n%s", err, out)
	}
	for _, k := range []string{"max_window_avg_power_w", "max_temp_c", "throughput_fraction", "pauses"} {
		if _, ok := res[k]; !ok {
			t.Errorf("result lacks %s: %s", k, out)
		}
	}
	if res["max_window_avg_power_w"] > 1.05*160 || res["max_temp_c"] > 73 || res["throughput_fraction"] < 0.9 {
		t.Errorf("targets missed: %v", res)
	}
	if _, err := runCmd(t, "budget", "simulate", "--tdp", "-5"); err == nil || !strings.Contains(err.Error(), "--tdp") {
		t.Errorf("bad --tdp: %v", err)
	}
}

func TestWorkerPresetLoadsStrictly(t *testing.T) {
	if _, err := configs.Preset("worker"); err != nil {
		t.Fatal(err)
	}
	out, err := runCmd(t, "budget", "check")
	if err != nil {
		t.Fatal(err)
	}
	var cfg workerConfig
	if err := json.Unmarshal([]byte(out), &cfg); err != nil {
		t.Fatal(err)
	}
	if want := defaultWorkerConfig(); cfg.Budget.PowerCapW != want.Budget.PowerCapW || cfg.Device.Select != "auto" || cfg.Budget.GPUTempLimitC != 75 {
		t.Errorf("preset %+v", cfg)
	}
	dir := t.TempDir()
	for name, body := range map[string]string{
		"unknown key": "budget:\n  power_capw: 100\n",
		"bad window":  "budget:\n  schedule:\n    mon: [\"25:00-07:00\"]\n",
		"bad device":  "device:\n  select: tpu\n",
	} {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".yaml")
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := runCmd(t, "budget", "check", "--config", p); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

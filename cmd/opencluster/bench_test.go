package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// runBenchCmd runs the bench command (a package variable, so every flag the
// test relies on is given explicitly).
func runBenchCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := &cobra.Command{Use: "opencluster", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(benchCmd)
	t.Cleanup(func() {
		benchCmd.Flags().VisitAll(func(f *pflag.Flag) { _ = f.Value.Set(f.DefValue); f.Changed = false })
		rootCmd.RemoveCommand(benchCmd) // back under the real root, listed once
		rootCmd.AddCommand(benchCmd)
	})
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&bytes.Buffer{})
	root.SetArgs(append([]string{"bench"}, args...))
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func TestBenchOnlyQLoRA(t *testing.T) {
	out, err := runBenchCmd(t, "--only", "qlora", "--model", "tiny", "--seq-len", "16", "--steps", "1",
		"--max-memory", "2GiB", "--no-peer", "--json", "--threads", "1")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var r struct {
			Name  string         `json:"name"`
			Size  string         `json:"size"`
			Error string         `json:"error"`
			Extra map[string]any `json:"extra"`
		}
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("%v: %q", err, line)
		}
		names = append(names, r.Name)
		if r.Name == "qlora_step" {
			if r.Error != "" || !strings.HasPrefix(r.Size, "tiny seq 16") || r.Extra["budget_gib"] != 2.0 || r.Extra["peak_rss_bytes"] == nil {
				t.Errorf("qlora row %+v", r)
			}
		}
	}
	if strings.Join(names, ",") != "machine,qlora_step" {
		t.Errorf("rows %v, want machine then qlora_step only", names)
	}
	for _, c := range []struct{ args []string }{
		{[]string{"--only", "gemm"}},
		{[]string{"--only", "qlora", "--max-memory", "lots"}},
		{[]string{"--only", "qlora", "--model", "huge"}},
	} {
		args := append([]string{"--model", "tiny", "--max-memory", "auto", "--seq-len", "0"}, c.args...)
		if _, err := runBenchCmd(t, args...); err == nil {
			t.Errorf("bench %v: no error", c.args)
		} else if !strings.Contains(err.Error(), c.args[len(c.args)-1]) {
			t.Errorf("bench %v: error %v does not name %q", c.args, err, c.args[len(c.args)-1])
		}
	}
}

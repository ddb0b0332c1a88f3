package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencluster/opencluster/protocol"
	"github.com/spf13/cobra"
)

func runSim(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := &cobra.Command{Use: "opencluster", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(newSimulateCmd())
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(append([]string{"simulate"}, args...))
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func TestSimulateCommand(t *testing.T) {
	dir := t.TempDir()
	trace := filepath.Join(dir, "pop.csv")
	args := []string{"--nodes", "400", "--rounds", "2", "--cohort", "20", "--model", "small", "--json"}
	a, err := runSim(t, append(args, "--trace-out", trace)...)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(a), "\n")
	if len(lines) != 3 {
		t.Fatalf("want 2 round lines and the totals, got:\n%s", a)
	}
	var total struct {
		Summary struct {
			Rounds int `json:"rounds"`
		} `json:"summary"`
	}
	if err := json.Unmarshal([]byte(lines[2]), &total); err != nil || total.Summary.Rounds != 2 {
		t.Fatalf("totals %q: %v", lines[2], err)
	}
	b, err := runSim(t, append(args, "--trace", trace)...)
	if err != nil {
		t.Fatal(err)
	}
	if a != b {
		t.Errorf("the run from --trace-out's file differs from the run that wrote it:\n%s\n---\n%s", a, b)
	}
	if fi, err := os.Stat(trace); err != nil || fi.Size() == 0 {
		t.Errorf("trace %s: %v", trace, err)
	}
}

func TestSimulateErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.csv")
	os.WriteFile(bad, []byte("id,region,gpu,host,down_mbps,up_mbps,reachable,power_cap,idle_start_h,idle_hours,present,budget_start_h,budget_end_h,base_cached\n"+
		"a,DE,GeForce 256,desktop 8-core,100,20,1,1,20,8,1,0,0,0\n"), 0o644)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--nodes", "100", "--cohort", "200"}, "--cohort 200 is larger than the population (100 nodes)"},
		{[]string{"--down-mbps", "lognormal:-5,1"}, "--down-mbps"},
		{[]string{"--organiser", "mayor"}, `--organiser "mayor"`},
		{[]string{"--model", "gpt-17"}, "--model gpt-17"},
		{[]string{"--codec", "zip"}, "--codec"},
		{[]string{"--late", "never"}, `--late "never"`},
		{[]string{"--trace", bad}, `bad.csv line 2, field gpu: unknown GPU "GeForce 256"`},
	} {
		_, err := runSim(t, append([]string{"--model", "small", "--nodes", "100", "--cohort", "10", "--rounds", "1"}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
}

// --serve streams the run's events to the dashboard through the web hub:
// a viewer connecting gets a simulation snapshot and the rounds.
func TestSimulateServe(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	root := &cobra.Command{Use: "opencluster", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(newSimulateCmd())
	pr, pw := io.Pipe()
	root.SetOut(io.Discard)
	root.SetErr(pw)
	root.SetArgs([]string{"simulate", "--model", "small", "--nodes", "300", "--cohort", "10", "--rounds", "2",
		"--serve", "127.0.0.1:0", "--pace", "0"})
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx); pw.Close() }()
	sc := bufio.NewScanner(pr)
	url := ""
	for sc.Scan() {
		if _, u, ok := strings.Cut(sc.Text(), "dashboard on "); ok {
			url = u
			break
		}
	}
	go io.Copy(io.Discard, pr)
	if url == "" {
		t.Fatal("simulate --serve printed no dashboard address")
	}
	// The run is over once it says so; then a viewer gets the whole picture.
	deadline := time.Now().Add(30 * time.Second)
	var snap protocol.Event
	for time.Now().Before(deadline) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"v1/events", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(resp.Body)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				break
			}
			if data, ok := strings.CutPrefix(line, "data: "); ok {
				json.Unmarshal([]byte(data), &snap)
				break
			}
		}
		resp.Body.Close()
		if snap.Snapshot != nil && len(snap.Snapshot.History) == 2 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if snap.Type != protocol.EventSnapshot || snap.Snapshot.Source != protocol.SourceSim || len(snap.Snapshot.History) != 2 {
		t.Fatalf("first event %+v, want a sim snapshot with both rounds in its history", snap)
	}
	if h := snap.Snapshot.History[1]; h.Round != 2 || h.Completed != 10 || h.EnergySource != "simulated" {
		t.Errorf("round 2 as the dashboard got it: %+v", h)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("simulate --serve after Ctrl-C: %v", err)
	}
}

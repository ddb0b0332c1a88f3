package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencluster/opencluster/coordinator"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func TestCoordinatorPresetIsValid(t *testing.T) {
	cmd := newCoordinatorCmd()
	cfg, err := loadCoordinatorConfig(cmd)
	if err != nil {
		t.Fatalf("embedded coordinator.yaml: %v", err)
	}
	if cfg.Rounds.N() == 0 || cfg.Rounds.Config.Recipe.Codec != "topk:0.01+int8:256" || cfg.Listen != "127.0.0.1:8443" {
		t.Errorf("preset: %+v", cfg)
	}
}

func TestCoordinatorConfigErrors(t *testing.T) {
	tests := []struct{ name, yaml, want string }{
		{"unknown key", "rounds:\n  cohort_sise: 3\n", "cohort_sise"},
		{"bad db", "db: mysql\n", "mysql"},
		{"postgres without dsn", "db: postgres\n", "dsn"},
		{"bad optimizer", "rounds:\n  optimizer: {kind: sgd}\n", "sgd"},
		{"bad codec", "rounds:\n  recipe: {codec: zip}\n", "codec"},
	}
	preset, err := os.ReadFile("../../configs/coordinator.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Keep the preset's shapes; override with the case's keys.
			path := filepath.Join(t.TempDir(), "c.yaml")
			shapes := regexp.MustCompile(`(?s)  shapes:.*?\n  seed`).FindString(string(preset))
			body := tc.yaml
			if strings.HasPrefix(body, "rounds:") {
				body = "rounds:\n" + strings.TrimSuffix(shapes, "  seed") + strings.TrimPrefix(body, "rounds:\n")
			} else {
				body += "rounds:\n" + strings.TrimSuffix(shapes, "  seed")
			}
			os.WriteFile(path, []byte(body), 0o644)
			cmd := newCoordinatorCmd()
			cmd.Flags().Set("config", path)
			_, err := loadCoordinatorConfig(cmd)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one naming %q", err, tc.want)
			}
		})
	}
	// A flag beats the file.
	cmd := newCoordinatorCmd()
	cmd.Flags().Set("listen", "127.0.0.1:9")
	if cfg, err := loadCoordinatorConfig(cmd); err != nil || cfg.Listen != "127.0.0.1:9" {
		t.Errorf("--listen: %q %v", cfg.Listen, err)
	}
	_ = pflag.CommandLine
}

// syncBuffer is a bytes.Buffer safe to read while a command writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestCoordinatorCommandServesAndShutsDown(t *testing.T) {
	dir := t.TempDir()
	for run := 0; run < 2; run++ { // the second run resumes the same directory
		ctx, cancel := context.WithCancel(context.Background())
		root := &cobra.Command{Use: "opencluster", SilenceUsage: true, SilenceErrors: true}
		root.AddCommand(newCoordinatorCmd())
		var out syncBuffer
		root.SetOut(&out)
		root.SetArgs([]string{"coordinator", "--dir", dir, "--listen", "127.0.0.1:0"})
		done := make(chan error, 1)
		go func() { done <- root.ExecuteContext(ctx) }()
		re := regexp.MustCompile(`listening on (https://\S+)`)
		var url string
		for deadline := time.Now().Add(20 * time.Second); url == "" && time.Now().Before(deadline); {
			select {
			case err := <-done:
				t.Fatalf("coordinator exited: %v\n%s", err, out.String())
			case <-time.After(20 * time.Millisecond):
			}
			if m := re.FindStringSubmatch(out.String()); m != nil {
				url = m[1]
			}
		}
		if url == "" {
			t.Fatal("coordinator did not start listening")
		}
		// Trust exactly the certificate it made in DIR.
		pem, err := os.ReadFile(filepath.Join(dir, "tls.crt"))
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}
		resp, err := client.Get(url + "/v1/status")
		if err != nil {
			t.Fatal(err)
		}
		var st coordinator.Status
		json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if resp.ProtoMajor != 2 || st.Round != 1 || st.CoordinatorKey == "" {
			t.Fatalf("run %d: %s status %+v", run, resp.Proto, st)
		}
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("shutdown: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("coordinator did not shut down")
		}
	}
	for _, f := range []string{"coordinator.db", "coordinator.key", "tls.key", "ledger.jsonl"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

// The coordinator keeps its effective config in --dir: a restart without
// --config runs with it, flags and the environment still override it, and
// each changed setting is logged once. (A restart used to need --config
// again, and fell back to the preset without it.)
func TestEffectiveConfigKeptAcrossRestarts(t *testing.T) {
	dir := t.TempDir()
	preset, err := os.ReadFile("../../configs/coordinator.yaml")
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "mine.yaml")
	os.WriteFile(file, bytes.Replace(preset, []byte("max_rounds: 0"), []byte("max_rounds: 1"), 1), 0o644)
	start := func(args map[string]string) (coordinatorConfig, string) {
		t.Helper()
		cmd := newCoordinatorCmd()
		for k, v := range args {
			if err := cmd.Flags().Set(k, v); err != nil {
				t.Fatal(err)
			}
		}
		var log bytes.Buffer
		cfg, err := loadCoordinatorConfigIn(cmd, dir, slog.New(slog.NewTextHandler(&log, nil)))
		if err != nil {
			t.Fatal(err)
		}
		return cfg, log.String()
	}
	cfg, log := start(map[string]string{"config": file})
	if cfg.Rounds.MaxRounds != 1 || log != "" {
		t.Fatalf("first start: max_rounds %d, log %q", cfg.Rounds.MaxRounds, log)
	}
	fi, err := os.Stat(filepath.Join(dir, effectiveConfigFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("effective config: %v %v, want a 0600 file", fi, err)
	}
	cfg, log = start(map[string]string{"listen": "127.0.0.1:9"})
	if cfg.Rounds.MaxRounds != 1 || cfg.Listen != "127.0.0.1:9" || strings.Count(log, "setting changed") != 1 || !strings.Contains(log, "key=listen") {
		t.Fatalf("restart without --config: max_rounds %d listen %s, log %q", cfg.Rounds.MaxRounds, cfg.Listen, log)
	}
	t.Setenv("OPENCLUSTER_ROUNDS_MAX_ROUNDS", "2")
	cfg, log = start(nil)
	if cfg.Rounds.MaxRounds != 2 || strings.Count(log, "setting changed") != 1 || !strings.Contains(log, "key=rounds.max_rounds was=1 now=2") {
		t.Fatalf("restart with OPENCLUSTER_ROUNDS_MAX_ROUNDS=2: max_rounds %d, log %q", cfg.Rounds.MaxRounds, log)
	}
	if _, log = start(nil); log != "" {
		t.Fatalf("restart with nothing changed logged %q", log)
	}
}

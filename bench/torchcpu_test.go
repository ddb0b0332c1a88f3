package bench

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// A stand-in interpreter records its arguments and prints a peer row.
func TestTorchPeerRunsOncePerPreset(t *testing.T) {
	dir := t.TempDir()
	argsFile := filepath.Join(dir, "args")
	py := filepath.Join(dir, "python")
	script := "#!/bin/sh\necho \"$@\" >> " + argsFile + "\n" +
		`echo '{"name":"torch_cpu_lora_step","size":"tiny","extra":{"tokens_per_s":1234.5,"threads":1,"openblas_coretype":"SkylakeX","peer":"plain-torch fp32"}}'` + "\n"
	if err := os.WriteFile(py, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	tp := &TorchPeer{Python: py, Threads: 1}
	cfg := tinyConfig()
	for range 2 {
		tok, extra, err := tp.LoRAStep(context.Background(), "tiny", cfg)
		if err != nil || tok != 1234.5 || extra["openblas_coretype"] != "SkylakeX" {
			t.Fatalf("LoRAStep = %v, %v, %v", tok, extra, err)
		}
	}
	b, _ := os.ReadFile(argsFile)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 1 {
		t.Fatalf("the peer ran %d times for one preset, want once", len(lines))
	}
	for _, want := range []string{"torch_peers.py", "--device cpu", "--threads 1", `"dim":64`, `"rank":8`, `"n_kv_heads":2`} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("peer arguments %q lack %q", lines[0], want)
		}
	}

	row := Row{Extra: map[string]any{"tokens_per_s": 2469.0}}
	attachTorchPeer(context.Background(), &row, "tiny", cfg, tp, 1e6)
	if row.Ratio != 2 || row.PeerKernel != "fp32 OpenBLAS SkylakeX" || row.PeerGFLOPS != 1234.5e6/1e9 {
		t.Errorf("row %+v", row)
	}

	missing := &TorchPeer{Python: filepath.Join(dir, "no-such-python")}
	row = Row{Extra: map[string]any{"tokens_per_s": 1.0}}
	attachTorchPeer(context.Background(), &row, "tiny", cfg, missing, 1)
	if why, _ := row.Extra["peer_missing"].(string); !strings.Contains(why, "install-bench-deps") || row.Ratio != 0 {
		t.Errorf("a missing interpreter: %+v", row)
	}
}

// TestTorchPeerForReal runs the embedded script on a tiny shape where the
// machine's Python has torch (Debian's python3-torch).
func TestTorchPeerForReal(t *testing.T) {
	if err := exec.Command(DefaultTorchPython, "-c", "import torch").Run(); err != nil {
		t.Skipf("%s cannot import torch: %v", DefaultTorchPython, err)
	}
	cfg := tinyConfig()
	cfg.Train.BatchSize, cfg.Train.SeqLen = 2, 16
	tp := &TorchPeer{Python: DefaultTorchPython, Threads: 1, Quick: true}
	tok, extra, err := tp.LoRAStep(context.Background(), "tiny", cfg)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(extra)
	t.Logf("%.0f tokens/s: %s", tok, b)
	if !(tok > 0) || extra["precision"] != "fp32" || extra["seq_len"] != 16.0 {
		t.Errorf("peer row %s", b)
	}
}

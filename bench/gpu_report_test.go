package bench

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Canned rows as opencluster-cuda bench --json and torch_peers.py print
// them, chosen so each target's result is known.
const (
	oursRows = `{"name":"gpu","peak_gflops":989000,"extra":{"name":"NVIDIA H100 80GB HBM3","compute_capability":"9.0","sms":132,"max_sm_clock_mhz":1980,"peak_tflops_bf16":1070,"peak_gbps":3352}}
{"name":"gpu_gemm_fp32","size":"4096x4096x4096","gflops":45000,"extra":{"dtype":"fp32"}}
{"name":"gpu_gemm_bf16","size":"4096x4096x4096","gflops":500000,"extra":{"dtype":"bf16"}}
{"name":"gpu_gemm_int8","size":"4096x4096x4096","error":"int8 GEMM not implemented","extra":{}}
{"name":"gpu_copy","size":"1024 MiB","gbps":3000}
{"name":"gpu_nf4_dequantize","size":"67108864 elements","gbps":2400,"extra":{"fraction_of_copy":0.8}}
{"name":"gpu_nf4_matmul","size":"512x8192x2048","gflops":300000}
{"name":"gpu_qlora_step","size":"llama-1b","extra":{"tokens_per_s":9000,"peak_bytes":1610612736}}
{"name": "truncated row
`
	ours7bRows = `{"name":"gpu_gemm_bf16","size":"4096x4096x4096","gflops":1,"extra":{}}
{"name":"gpu_qlora_step","size":"llama-7b","extra":{"tokens_per_s":1500,"peak_bytes":7516192768}}
`
	peerRows = `{"name":"torch","extra":{"device":"NVIDIA H100 80GB HBM3","torch":"2.4.0","cuda":"12.4"}}
{"name":"torch_gemm_fp32","size":"4096x4096x4096","gflops":50000}
{"name":"torch_gemm_bf16","size":"4096x4096x4096","gflops":700000}
{"name":"torch_nf4_dequant_matmul","size":"512x8192x2048","gflops":250000}
{"name":"torch_lora_step","size":"llama-1b","extra":{"tokens_per_s":10000,"peak_bytes":6442450944}}
`
)

func needPython(t *testing.T) string {
	t.Helper()
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed; the GPU report is written by bench/peers/report.py")
	}
	return py
}

// resultOf returns the result column of the target row whose first cell
// starts with what.
func resultOf(t *testing.T, md, what string) string {
	t.Helper()
	for _, line := range strings.Split(md, "\n") {
		if strings.HasPrefix(line, "| "+what) {
			cells := strings.Split(strings.Trim(line, "| "), " | ")
			return cells[len(cells)-1]
		}
	}
	t.Fatalf("no target row %q in the report:\n%s", what, md)
	return ""
}

func TestGPUReportFromCannedRows(t *testing.T) {
	py := needPython(t)
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ours, ours7b, peers := write("ours.jsonl", oursRows), write("ours7b.jsonl", ours7bRows), write("peers.jsonl", peerRows)
	steps := write("steps.tsv", "gpu-tests\t0\t12\nmemcheck\t1\t30\nracecheck\tskip\t0\n")
	log := write("raw.log", "=== gpu-tests: bin/kernels.test -test.v\n--- PASS: TestNF4 (0.1s)\n```nested fence```\n")
	out := filepath.Join(dir, "results", "h100-2026-01-02.md")
	cmd := exec.Command(py, "peers/report.py", "--gpu", "NVIDIA H100 80GB HBM3", "--date", "2026-01-02",
		"--ours", ours, "--qlora-only", ours7b, "--peers", peers, "--steps", steps, "--log", log, "--out", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("report.py: %v\n%s", err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	md := string(b)
	tests := []struct{ what, want string }{
		{"bf16 GEMM 4096x4096x4096 vs cuBLAS", "PASS"}, // 500/700 = 0.71 >= 0.6, not the 7b run's later row
		{"fp32 GEMM 4096x4096x4096 vs cuBLAS", "PASS"}, // 45/50 = 0.9
		{"NF4 dequantize vs our copy bandwidth", "PASS"},
		{"fused NF4 matmul 512x8192x2048", "PASS"},         // 300/250
		{"QLoRA step llama-1b tokens/s", "PASS"},           // 0.9
		{"QLoRA step llama-1b peak memory", "PASS"},        // 1.5/6 = 0.25
		{"llama-7b QLoRA r=16 seq 512 peak", "FAIL"},       // 7 GiB > 6
		{"llama-1b QLoRA r=16 seq 512 peak", "PASS"},       // 1.5 GiB
		{"QLoRA step gpt2-124m tokens/s", "<no such row>"}, // not measured by either side: no row
	}
	for _, tc := range tests {
		if tc.want == "<no such row>" {
			if strings.Contains(md, "| "+tc.what) {
				t.Errorf("report has a row for %q, measured by neither side", tc.what)
			}
			continue
		}
		if got := resultOf(t, md, tc.what); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.what, got, tc.want)
		}
	}
	for _, want := range []string{
		"0.71x", "| memcheck | 1 | 30 | FAIL |", "| racecheck | skip | 0 | SKIPPED |", "| gpu-tests | 0 | 12 | PASS |",
		"int8 GEMM not implemented", "not JSON", "torch 2.4.0", "--- PASS: TestNF4", "7 of 8 targets pass",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	// The raw log's own fence must not end the report's code block early.
	if n := strings.Count(md, "```"); n != 2 {
		t.Errorf("report has %d code fences, want 2", n)
	}
}

func TestGPUReportMissingRowsAreNotPasses(t *testing.T) {
	py := needPython(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "r.md")
	cmd := exec.Command(py, "peers/report.py", "--gpu", "x", "--date", "d", "--ours", filepath.Join(dir, "absent.jsonl"), "--out", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("report.py: %v\n%s", err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	md := string(b)
	if strings.Contains(md, "| PASS |") || !strings.Contains(md, "MISSING") || !strings.Contains(md, "absent.jsonl: missing") {
		t.Errorf("report from no rows:\n%s", md)
	}
}

// TestGPUCheckScriptOnFakeBundle runs bench/gpu-check.sh end to end on a
// bundle whose binaries are shell stand-ins: the steps run in order, a
// failing step is recorded without stopping the rest, and the report lands
// under results/ named after the GPU and the date.
func TestGPUCheckScriptOnFakeBundle(t *testing.T) {
	py := needPython(t)
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("bash not installed")
	}
	root := t.TempDir()
	mk := func(rel, body string, mode os.FileMode) {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
	}
	copyFile := func(src, rel string) {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		mk(rel, string(b), 0o755)
	}
	copyFile("gpu-check.sh", "bench/gpu-check.sh")
	copyFile("peers/report.py", "bench/peers/report.py")
	mk("bin/opencluster", "#!/bin/sh\necho 'selected cuda:0 (exec opencluster-cuda)'\n", 0o755)
	mk("bin/kernels.test", "#!/bin/sh\necho '--- FAIL: TestAttention (0.2s)'\nexit 1\n", 0o755)
	// The 7b run (OPENCLUSTER_BENCH_QLORA set) prints only its QLoRA row.
	mk("bin/opencluster-cuda", "#!/bin/sh\nif [ -n \"$OPENCLUSTER_BENCH_QLORA\" ]; then cat \"$(dirname \"$0\")/rows7b\"; else cat \"$(dirname \"$0\")/rows\"; fi\n", 0o755)
	mk("bin/rows", oursRows, 0o644)
	mk("bin/rows7b", ours7bRows, 0o644)
	mk("bench/peers/torch_peers.py", "import sys\nsys.stdout.write(open(sys.argv[0].replace('torch_peers.py', 'peers.jsonl')).read())\n", 0o755)
	mk("bench/peers/peers.jsonl", peerRows, 0o644)
	mk("fakebin/compute-sanitizer", "#!/bin/sh\necho \"========= $2 ERROR SUMMARY: 0 errors\"\n", 0o755)
	mk("fakebin/nvidia-smi", "#!/bin/sh\necho 'NVIDIA H100 80GB HBM3'\n", 0o755)
	mk("fakebin/python3", "#!/bin/sh\ncase \"$2\" in *torch*) echo torch 2.4.0;; esac\nexec "+py+" \"$@\"\n", 0o755)

	cmd := exec.Command("bash", "bench/gpu-check.sh")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "PATH="+filepath.Join(root, "fakebin")+":/usr/bin:/bin", "PYTHON="+filepath.Join(root, "fakebin", "python3"))
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("gpu-check.sh with a failing test step: %v, want exit status 1\n%s", err, out)
	}
	matches, _ := filepath.Glob(filepath.Join(root, "bench", "results", "*.md"))
	if len(matches) != 1 || !regexp.MustCompile(`h100-80gb-hbm3-\d{4}-\d\d-\d\d\.md$`).MatchString(matches[0]) {
		t.Fatalf("results %v, want one h100-80gb-hbm3-<date>.md\n%s", matches, out)
	}
	b, err := os.ReadFile(matches[0])
	if err != nil {
		t.Fatal(err)
	}
	md := string(b)
	for _, want := range []string{
		"| gpu-tests | 1 |", "| devices | 0 |", "| bench | 0 |", "| bench-7b | 0 |", "| peers | 0 |",
		"| memcheck | 0 |", "| racecheck | 0 |", "memcheck ERROR SUMMARY: 0 errors", "--- FAIL: TestAttention", "selected cuda:0",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	if got := resultOf(t, md, "llama-7b QLoRA r=16 seq 512 peak"); got != "FAIL" {
		t.Errorf("7b peak: %s, want FAIL from the 7b run's row", got)
	}
	if got := resultOf(t, md, "bf16 GEMM 4096x4096x4096 vs cuBLAS"); got != "PASS" {
		t.Errorf("bf16 GEMM: %s, want PASS from the main run (the 7b run's quick rows are not used)", got)
	}
}

package tokenizer

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
)

func BenchmarkLoadLlama3(b *testing.B) {
	dir := referenceDir(b)
	for b.Loop() {
		if _, err := Load(filepath.Join(dir, "models", "llama3")); err != nil {
			b.Fatal(err)
		}
	}
}

// cpuSeconds is the user and system CPU time this process has used.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// benchText is the benchmark corpus: Go's net/http sources (code and
// English comments) and the multilingual test texts, cut into chunks of
// about 4 KiB at line ends as the data loader encodes them.
// OPENCLUSTER_BENCH_TEXT names another file.
func benchText(b *testing.B) []string {
	path := os.Getenv("OPENCLUSTER_BENCH_TEXT")
	var text []byte
	if path != "" {
		var err error
		if text, err = os.ReadFile(path); err != nil {
			b.Fatal(err)
		}
	} else {
		for _, f := range []string{"server.go", "transport.go", "request.go"} {
			src, err := os.ReadFile(filepath.Join(runtime.GOROOT(), "src", "net", "http", f))
			if err != nil {
				b.Skip("no Go sources to benchmark on:", err)
			}
			text = append(text, src...)
		}
		for _, s := range corpus() {
			text = append(text, s+"\n"...)
		}
	}
	var chunks []string
	cur := ""
	for _, line := range strings.SplitAfter(string(text), "\n") {
		cur += line
		if len(cur) >= 4096 {
			chunks = append(chunks, cur)
			cur = ""
		}
	}
	if cur != "" {
		chunks = append(chunks, cur)
	}
	return chunks
}

// BenchmarkEncode measures encoding MB/s of real tokenizers; run it with
// -cpu 1 for one core, beside scripts/bench-tokenizers.sh's JS reference.
func BenchmarkEncode(b *testing.B) {
	dir := referenceDir(b)
	chunks := benchText(b)
	var n int64
	for _, c := range chunks {
		n += int64(len(c))
	}
	for _, name := range []string{"llama3", "qwen", "sentencepiece-bpe"} {
		tok := loadOnce(b, filepath.Join(dir, "models", name))
		b.Run(name, func(b *testing.B) {
			b.SetBytes(n)
			cpu0 := cpuSeconds()
			for b.Loop() {
				for _, c := range chunks {
					tok.Encode(c, false)
				}
			}
			// On a shared machine wall time includes waiting for a core;
			// MB per CPU-second (this process, all threads) does not.
			b.ReportMetric(float64(n)*float64(b.N)/1e6/(cpuSeconds()-cpu0), "MB/cpu-s")
		})
	}
}

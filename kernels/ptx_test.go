package kernels

import (
	"embed"
	"fmt"
	"regexp"
	"strings"
	"testing"
)

// These tests run in plain CI, without nvcc or a GPU, and in the GPU test
// binary (bin/kernels.test, built with -tags cuda and run from the GPU
// bundle, far from the sources): they check the PTX as embedded in the
// binary, so they need no file. The checks that read the sources are in
// ptx_sources_test.go, left out of the cuda build.

//go:embed *.ptx
var embeddedPTX embed.FS

var entryRE = regexp.MustCompile(`(?m)^\.visible \.entry ([A-Za-z_][A-Za-z0-9_]*)\(`)

// ptxEntries parses the PTX header and the names of its visible entries.
func ptxEntries(t *testing.T, path string, arch int) map[string]bool {
	t.Helper()
	b, err := embeddedPTX.ReadFile(path)
	if err != nil {
		t.Fatalf("reading the embedded %s: %v (run 'make kernels')", path, err)
	}
	text := string(b)
	for _, want := range []string{".version ", fmt.Sprintf(".target sm_%d", arch), ".address_size 64"} {
		if !strings.Contains(text, want) {
			t.Errorf("%s: no %q line: not PTX for compute_%d", path, want, arch)
		}
	}
	got := map[string]bool{}
	for _, m := range entryRE.FindAllStringSubmatch(text, -1) {
		got[m[1]] = true
	}
	return got
}

func TestPTXEntries(t *testing.T) {
	for _, mod := range Modules {
		for _, arch := range Arches {
			path := fmt.Sprintf("%s.sm%d.ptx", mod.Name, arch)
			got := ptxEntries(t, path, arch)
			for _, e := range mod.Entries {
				if !got[e] {
					t.Errorf("%s: kernel %s is launched from Go but is not an .entry (renamed in %s.cu?)", path, e, mod.Name)
				}
			}
		}
	}
}

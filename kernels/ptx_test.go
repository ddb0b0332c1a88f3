package kernels

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// These tests run in plain CI, without nvcc or a GPU: they check that the
// committed PTX is what the Go side expects (every launched kernel is an
// .entry of its module for every arch) and that ptx.sum, written by
// scripts/kernels.sh, still matches every source and PTX file, so a .cu edited
// without regenerating its PTX fails here. CI with nvcc additionally runs
// `scripts/kernels.sh --check`, which recompiles and compares byte for byte.

var entryRE = regexp.MustCompile(`(?m)^\.visible \.entry ([A-Za-z_][A-Za-z0-9_]*)\(`)

// ptxEntries parses the PTX header and the names of its visible entries.
func ptxEntries(t *testing.T, path string, arch int) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading %s: %v (run 'make kernels')", path, err)
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

// TestEveryModuleListed makes sure a new .cu file is also registered in Modules.
func TestEveryModuleListed(t *testing.T) {
	listed := map[string]bool{}
	for _, m := range Modules {
		listed[m.Name] = true
	}
	cus, err := filepath.Glob("*.cu")
	if err != nil {
		t.Fatal(err)
	}
	if len(cus) == 0 {
		t.Fatal("no *.cu files next to the test")
	}
	for _, cu := range cus {
		if name := strings.TrimSuffix(cu, ".cu"); !listed[name] {
			t.Errorf("%s is not listed in kernels.Modules", cu)
		}
	}
}

// readSum parses ptx.sum: "<sha256 hex>  <file>" per line.
func readSum(t *testing.T) map[string]string {
	t.Helper()
	f, err := os.Open("ptx.sum")
	if err != nil {
		t.Fatalf("ptx.sum: %v (run 'make kernels')", err)
	}
	defer f.Close()
	sums := map[string]string{}
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		fields := strings.Fields(sc.Text())
		if len(fields) != 2 || len(fields[0]) != 64 {
			t.Fatalf("ptx.sum line %d: %q is not '<sha256>  <file>'", line, sc.Text())
		}
		sums[fields[1]] = fields[0]
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("ptx.sum: %v", err)
	}
	return sums
}

func TestPTXSumMatchesFiles(t *testing.T) {
	sums := readSum(t)
	var files []string
	for _, pat := range []string{"*.cu", "*.cuh", "*.ptx"} {
		m, _ := filepath.Glob(pat)
		files = append(files, m...)
	}
	sort.Strings(files)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.Sum256(b)
		want, ok := sums[f]
		switch {
		case !ok:
			t.Errorf("%s is not in ptx.sum: run 'make kernels'", f)
		case hex.EncodeToString(h[:]) != want:
			if strings.HasSuffix(f, ".ptx") {
				t.Errorf("%s differs from the PTX recorded in ptx.sum: edited by hand? run 'make kernels'", f)
			} else {
				t.Errorf("%s changed since its PTX was generated: run 'make kernels' and commit the PTX", f)
			}
		}
		delete(sums, f)
	}
	for f := range sums {
		t.Errorf("ptx.sum lists %s, which does not exist", f)
	}
}

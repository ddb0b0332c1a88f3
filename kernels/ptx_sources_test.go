//go:build !cuda

package kernels

// The checks that read the kernel sources beside the test: plain CI runs
// them from the package directory. The GPU test binary (-tags cuda) leaves
// them out, since it runs from the bundle, where there are no sources.

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

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

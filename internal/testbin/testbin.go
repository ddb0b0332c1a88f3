// Package testbin builds the opencluster binary for tests that run it as
// real processes (the fault tests, the simulator's calibration against
// the demo). It is built without -race: those processes are the system
// under test, the race detector is for the test's own code.
package testbin

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// Main is a TestMain body: it builds the command at pkg (a path relative
// to the test's package, like "../cmd/opencluster") into a temporary
// folder, sets *bin to it, runs the tests and removes the folder. Under
// -short nothing is built and *bin stays empty (the tests skip).
func Main(m *testing.M, pkg string, bin *string) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "opencluster-testbin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "testbin:", err)
		os.Exit(1)
	}
	*bin = filepath.Join(dir, "opencluster")
	goCmd, err := exec.LookPath("go")
	if err != nil {
		goCmd = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	build := exec.Command(goCmd, "build", "-o", *bin, pkg)
	build.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "testbin: go build %s: %v\n%s", pkg, err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

package main

import (
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"

	"github.com/spf13/pflag"
)

// addProfileFlags adds --cpuprofile and --memprofile (the training commands).
func addProfileFlags(f *pflag.FlagSet) {
	f.String("cpuprofile", "", "write a CPU profile of the run to this file (read it with go tool pprof)")
	f.String("memprofile", "", "write a heap profile to this file at the end of the run (live and allocated bytes; go tool pprof)")
}

// startProfiles starts what the profile flags ask for and returns the
// function that finishes them; it reports the first error.
func startProfiles(f *pflag.FlagSet) (stop func() error, err error) {
	cpuPath, _ := f.GetString("cpuprofile")
	memPath, _ := f.GetString("memprofile")
	var cpuFile *os.File
	if cpuPath != "" {
		if cpuFile, err = os.Create(cpuPath); err != nil {
			return nil, fmt.Errorf("--cpuprofile: %w", err)
		}
		if err := pprof.StartCPUProfile(cpuFile); err != nil {
			cpuFile.Close()
			return nil, fmt.Errorf("--cpuprofile %s: %w", cpuPath, err)
		}
	}
	return func() error {
		var first error
		if cpuFile != nil {
			pprof.StopCPUProfile()
			if err := cpuFile.Close(); err != nil {
				first = fmt.Errorf("--cpuprofile %s: %w", cpuPath, err)
			}
		}
		if memPath != "" {
			runtime.GC() // settle the live-heap figures
			if err := writeHeapProfile(memPath); err != nil && first == nil {
				first = fmt.Errorf("--memprofile: %w", err)
			}
		}
		return first
	}, nil
}

func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	return f.Close()
}

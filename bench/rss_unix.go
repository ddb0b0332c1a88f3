//go:build unix

package bench

import (
	"runtime"
	"syscall"
	"time"
)

// PeakRSS is the process's peak resident set in bytes (getrusage maxrss),
// or 0 when the system does not say.
func PeakRSS() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	if runtime.GOOS == "darwin" || runtime.GOOS == "ios" {
		return int64(ru.Maxrss) // bytes there
	}
	return int64(ru.Maxrss) * 1024 // KiB on Linux and the BSDs
}

// CPUTime is the process's user plus system CPU time so far (getrusage),
// or 0 when the system does not say. On a loaded machine it shows what a
// run cost better than its wall time does.
func CPUTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

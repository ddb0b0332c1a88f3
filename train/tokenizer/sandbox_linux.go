package tokenizer

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// selfExe is this process's binary, even if its file was replaced since.
func selfExe() string { return "/proc/self/exe" }

// rendererAttr kills a renderer when the thread that started it dies.
func rendererAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// limitMemory caps this process's address space at what it has now plus
// extra bytes (a cap below what is mapped at start would fail at once; a
// race-detector build maps far more than an ordinary one).
func limitMemory(extra int64) error {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return fmt.Errorf("reading its memory size: %w", err)
	}
	var kb int64 = -1
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmSize:" {
			kb, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	if kb < 0 {
		return fmt.Errorf("no VmSize in /proc/self/status")
	}
	limit := uint64(kb*1024 + extra)
	return syscall.Setrlimit(syscall.RLIMIT_AS, &syscall.Rlimit{Cur: limit, Max: limit})
}

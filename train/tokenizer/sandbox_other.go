//go:build !linux

package tokenizer

import (
	"os"
	"syscall"
)

func selfExe() string {
	exe, err := os.Executable()
	if err != nil {
		return os.Args[0]
	}
	return exe
}

func rendererAttr() *syscall.SysProcAttr { return nil }

// limitMemory is Linux only: elsewhere the renderer runs with the time and
// output limits alone.
func limitMemory(int64) error { return nil }

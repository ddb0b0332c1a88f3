package device

import (
	"strings"
	"testing"
)

func TestParseBytes(t *testing.T) {
	for in, want := range map[string]int64{
		"6GiB": 6 << 30, "6G": 6 << 30, "6gib": 6 << 30, "2.5 GiB": 5 << 29, "6GB": 6e9,
		"512MiB": 512 << 20, "512M": 512 << 20, "1048576": 1 << 20, "1k": 1024, "6e9": 6e9, "7b": 7,
	} {
		got, err := ParseBytes(in)
		if err != nil || got != want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "GiB", "-1G", "6 parsecs", "1e30T", "NaN", "6 G B"} {
		if _, err := ParseBytes(bad); err == nil || !strings.Contains(err.Error(), "memory size") {
			t.Errorf("ParseBytes(%q) = %v, want an error naming the memory size", bad, err)
		}
	}
}

func TestBudgets(t *testing.T) {
	if got := HostBudget(24 << 30); got != 24<<30-(24<<30)/10 {
		t.Errorf("HostBudget(24 GiB) = %d: want 10%% kept free", got)
	}
	if got := HostBudget(2 << 30); got != 2<<30-HostMarginBytes {
		t.Errorf("HostBudget(2 GiB) = %d: want the 512 MiB floor kept free", got)
	}
	if got := HostBudget(100 << 20); got != 0 {
		t.Errorf("HostBudget(100 MiB) = %d, want 0", got)
	}
	if got := GPUBudget(20 << 30); got != 20<<30-(20<<30)/20 {
		t.Errorf("GPUBudget(20 GiB) = %d", got)
	}
}

func TestGPUFreeMemory(t *testing.T) {
	free, total, err := GPUFreeMemory(fakeServer(10<<30, 30<<30), 1)
	if err != nil || free != 30<<30 || total != 40<<30 {
		t.Fatalf("GPUFreeMemory = %d of %d, %v", free, total, err)
	}
	if _, _, err := GPUFreeMemory(fakeServer(10<<30), 3); err == nil || !strings.Contains(err.Error(), "gpu 3") {
		t.Errorf("a missing GPU: %v", err)
	}
}

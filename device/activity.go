package device

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"sync"

	"github.com/shirou/gopsutil/v3/cpu"
	"github.com/shirou/gopsutil/v3/process"
)

// CPUTimes is a cumulative reading of machine-wide CPU time and of this
// process's own CPU time, both in CPU-seconds.
type CPUTimes struct {
	Total float64 // all CPUs, all states (busy + idle)
	Busy  float64 // all CPUs, not idle or waiting on I/O
	Self  float64 // this process, user + system
}

// CPUTimesSource returns a cumulative CPUTimes reading.
type CPUTimesSource interface {
	CPUTimes(ctx context.Context) (CPUTimes, error)
}

// HostTimes reads CPU times through gopsutil.
type HostTimes struct {
	once sync.Once
	proc *process.Process
	err  error
}

// CPUTimes implements CPUTimesSource.
func (h *HostTimes) CPUTimes(ctx context.Context) (CPUTimes, error) {
	h.once.Do(func() { h.proc, h.err = process.NewProcessWithContext(ctx, int32(os.Getpid())) })
	if h.err != nil {
		return CPUTimes{}, fmt.Errorf("own process: %w", h.err)
	}
	ts, err := cpu.TimesWithContext(ctx, false)
	if err != nil || len(ts) == 0 {
		return CPUTimes{}, fmt.Errorf("cpu times: %v", orEmpty(err))
	}
	t := ts[0]
	total := t.Total()
	if runtime.GOOS == "linux" { // guest time is already inside user time
		total -= t.Guest + t.GuestNice
	}
	self, err := h.proc.TimesWithContext(ctx)
	if err != nil {
		return CPUTimes{}, fmt.Errorf("own cpu times: %w", err)
	}
	return CPUTimes{Total: total, Busy: total - t.Idle - t.Iowait, Self: self.User + self.System}, nil
}

// OtherLoad measures how busy the machine is with work other than this
// process: the owner gaming, compiling, browsing. It is BOINC's "suspend when
// non-BOINC CPU usage is above N%".
type OtherLoad struct {
	Source CPUTimesSource

	mu   sync.Mutex
	last CPUTimes
	have bool
}

// NewOtherLoad measures through gopsutil.
func NewOtherLoad() *OtherLoad { return &OtherLoad{Source: &HostTimes{}} }

// OtherLoadPercent returns the percentage (0-100 of the whole machine) of CPU
// time used by other processes since the previous call. The first call
// primes the meter and returns 0.
func (o *OtherLoad) OtherLoadPercent() (float64, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	cur, err := o.Source.CPUTimes(context.Background())
	if err != nil {
		return 0, err
	}
	prev, had := o.last, o.have
	o.last, o.have = cur, true
	if !had {
		return 0, nil
	}
	return OtherPercent(prev, cur), nil
}

// OtherPercent is the share of machine CPU time between two readings that
// was busy outside this process, clamped to 0-100.
func OtherPercent(prev, cur CPUTimes) float64 {
	dt := cur.Total - prev.Total
	if dt <= 0 {
		return 0
	}
	other := (cur.Busy - prev.Busy) - (cur.Self - prev.Self)
	return max(0, min(100, 100*other/dt))
}

package netclient

import (
	"github.com/opencluster/opencluster/device/budget"
	"math/rand/v2"
	"time"
)

// Clock is the time source the worker sleeps on (the budget controller's
// clock, so one fake drives both in tests); RealClock is the wall clock.
type (
	Clock     = budget.Clock
	RealClock = budget.RealClock
)

// Backoff spaces out retries: attempt a (from 0) waits a random time in
// [d/2, d] where d = min(Max, Base·2^a) ("equal jitter"), so a crowd of
// workers that lost the coordinator at the same moment does not come back
// at the same moment, and no single worker waits less than half the
// schedule.
type Backoff struct {
	Base, Max time.Duration
	// Rand returns a uniform number in [0, 1); nil uses math/rand/v2.
	Rand func() float64
}

// DefaultBackoff starts at half a second and caps at thirty.
func DefaultBackoff() Backoff { return Backoff{Base: 500 * time.Millisecond, Max: 30 * time.Second} }

// Delay is the wait before retry number attempt (0 for the first retry).
func (b Backoff) Delay(attempt int) time.Duration {
	base, max := b.Base, b.Max
	if base <= 0 {
		base = 500 * time.Millisecond
	}
	if max < base {
		max = base
	}
	d := base
	for i := 0; i < attempt && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	r := rand.Float64
	if b.Rand != nil {
		r = b.Rand
	}
	return d/2 + time.Duration(r()*float64(d/2))
}

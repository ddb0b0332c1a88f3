//go:build !unix

package bench

import "time"

// PeakRSS is 0 where getrusage does not exist.
func PeakRSS() int64 { return 0 }

// CPUTime is 0 where getrusage does not exist.
func CPUTime() time.Duration { return 0 }

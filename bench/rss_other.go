//go:build !unix

package bench

// PeakRSS is 0 where getrusage does not exist.
func PeakRSS() int64 { return 0 }

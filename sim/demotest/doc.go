// Package demotest checks the simulator against reality: its test runs the
// real `make demo` flow (the opencluster binary's demo command: one
// coordinator and four worker processes on loopback) and `opencluster
// simulate --calibrate-demo` on the same machine, and requires the
// predicted round duration to be within 30% of the measured mean. It
// times both, so `make test` runs it alone after the other packages
// (OPENCLUSTER_CALIBRATE_DEMO=1); under plain `go test ./...` it skips.
package demotest

// Package device finds what a worker can compute on and reads the meters the
// budget controller needs: NVIDIA GPUs through NVML (go-nvml dlopens the
// library at Init, so the binary runs where there is none), the CPU through
// gopsutil, package energy from Linux powercap RAPL, battery and AC from
// /sys/class/power_supply, and the load other processes put on the machine.
//
// Everything that touches hardware sits behind an interface (nvml.Interface,
// file-system roots, small reader interfaces) so tests run without a GPU,
// a battery or RAPL. Select turns `--device auto|cpu|cuda[:N]` plus what was
// found into a Decision: run here on the CPU, or exec the opencluster-cuda
// build on a GPU, always with a one-line reason.
package device

//go:build cuda

package kernels

// The CUDA toolkit from Debian installs the driver API's link stub
// (libcuda.so, soname libcuda.so.1) under stubs/; gorgonia.org/cu asks for
// -lcuda without that folder. The stub only satisfies the linker: at run
// time the binary loads the real libcuda.so.1 of the installed driver.

// #cgo CFLAGS: -Wdeprecated-declarations
// #cgo linux LDFLAGS: -L/usr/lib/x86_64-linux-gnu/stubs -L/usr/local/cuda/lib64/stubs
import "C"

// Package kernels holds OpenCluster's own CUDA kernels and the CUDA Backend
// that runs the model on them.
//
// The kernels are CUDA C (*.cu, one file per op family, forward beside
// backward) compiled by scripts/kernels.sh (`make kernels`) to PTX for
// compute_75 and compute_80; the PTX is committed, and kernels/ptx.sum
// records the SHA-256 of every source and every PTX file so plain CI can
// tell when one was edited without the other. The driver JIT-compiles the
// PTX for the GPU it runs on (Ada, Hopper and newer included).
//
// The Backend itself (type CUDA, NewCUDA) is built only with -tags cuda:
// it uses gorgonia.org/cu, whose package init exits the process when no GPU
// is present, so the plain build never imports it. This file is in both
// builds: it names every kernel the Go side launches, so a renamed kernel
// breaks the untagged test (ptx_test.go), not a run on a GPU.
package kernels

// Module is one kernel family: a .cu file and the entry points launched
// from it.
type Module struct {
	Name    string   // file name without .cu; PTX in Name.sm75.ptx and Name.sm80.ptx
	Entries []string // extern "C" kernel names
}

// Modules lists every module and every kernel the CUDA Backend launches.
var Modules = []Module{
	{"adamw", []string{"adamw_update"}},
	{"attention", []string{"attention_forward", "attention_backward_dpre", "attention_backward_dq", "attention_backward_dkv"}},
	{"crossentropy", []string{"crossentropy_forward_backward"}},
	{"decode", []string{"attention_decode"}},
	{"encoder", []string{"encoder_forward", "encoder_forward_bf16", "encoder_backward"}},
	{"gemm", []string{"gemm_f32", "gemm_tf32", "gemm_bf16", "gemm_fp16", "gemm_bf16_native", "gemm_fp16_native", "convert_f32_bf16", "convert_f32_fp16", "widen_bf16_f32"}},
	{"nf4", []string{"nf4_dequantize", "nf4_dequantize_bf16", "nf4_matmul_fwd_f32", "nf4_matmul_bwd_f32", "nf4_matmul_fwd_bf16", "nf4_matmul_bwd_bf16", "nf4_matmul_fwd_fp16", "nf4_matmul_bwd_fp16"}},
	{"reduce", []string{"add_forward", "accumulate", "scale_inplace", "fill", "sumsq_chunks", "dropout_forward", "dropout_backward"}},
	{"rmsnorm", []string{"rmsnorm_forward", "rmsnorm_backward", "rmsnorm_backward_dw"}},
	{"rope", []string{"rope_forward", "rope_backward"}},
	{"swiglu", []string{"swiglu_forward", "swiglu_backward"}},
}

// Arches are the virtual architectures PTX is generated for. A device of
// compute capability >= 8.0 loads the sm80 PTX (bf16 and tf32 tensor
// cores); older ones (Turing, 7.5) load sm75.
var Arches = []int{75, 80}

// Precision selects the arithmetic of the matrix products.
type Precision string

const (
	// FP32 is exact fp32 (SIMT): the default, and what the tests compare at 1e-5.
	FP32 Precision = "fp32"
	// TF32 rounds inputs to tf32 on tensor cores (sm_80+), fp32 accumulate.
	TF32 Precision = "tf32"
	// BF16 rounds inputs to bf16 on tensor cores (sm_80+), fp32 accumulate.
	BF16 Precision = "bf16"
	// FP16 rounds inputs to fp16 on tensor cores (Turing+), fp32 accumulate.
	FP16 Precision = "fp16"
)

// ParsePrecision accepts "fp32", "tf32", "bf16" or "fp16".
func ParsePrecision(s string) (Precision, error) {
	switch p := Precision(s); p {
	case FP32, TF32, BF16, FP16:
		return p, nil
	}
	return "", &PrecisionError{s}
}

// PrecisionError names a precision that is not one of the four.
type PrecisionError struct{ Name string }

func (e *PrecisionError) Error() string {
	return "kernels: unknown precision " + quote(e.Name) + ": want fp32, tf32, bf16 or fp16"
}

func quote(s string) string { return "\"" + s + "\"" }

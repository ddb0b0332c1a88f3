package backend

import (
	"fmt"

	"github.com/opencluster/opencluster/train/backend/sgemm"
)

// Compute dtypes of the products with frozen weights (train.compute_dtype).
// Trainable weights, their gradients and the optimizer stay fp32 whatever
// is chosen here.
const (
	ComputeAuto = "auto" // bf16 where the device runs it fast, else fp32
	ComputeFP32 = "fp32"
	ComputeBF16 = "bf16" // bf16 operands, fp32 accumulation
	// ComputeFP16 is fp16 operands, fp32 accumulation, for the forward
	// products only: GPUs without bf16 (Turing) keep the backward in fp32,
	// where fp16's range would underflow small gradients.
	ComputeFP16 = "fp16"
)

// FP16er is implemented by backends that also run ComputeFP16 (the CUDA
// backend); ApplyComputeDType's auto picks it where bf16 is missing.
type FP16er interface {
	FP16Available() bool
}

// FrozenDTyper is implemented by backends that can run the products with
// frozen weights (the 4-bit base of QLoRA) in bfloat16 with fp32
// accumulation: the CPU backend where the CPU has AVX512_BF16.
type FrozenDTyper interface {
	// SetFrozenDType selects ComputeFP32 or ComputeBF16, or fails saying
	// why this device cannot run it.
	SetFrozenDType(dtype string) error
	// FrozenDType is the dtype in effect.
	FrozenDType() string
	// BF16Available reports whether ComputeBF16 would run here.
	BF16Available() bool
}

// ApplyComputeDType sets dtype (auto, fp32 or bf16) on be and returns the
// dtype in effect. auto picks bf16 where be runs it (the CPU backend on a
// CPU with vdpbf16ps) and otherwise leaves be as it is; an explicit dtype be
// cannot run is an error naming the setting.
func ApplyComputeDType(be Backend, dtype string) (string, error) {
	if dtype == "" {
		dtype = ComputeAuto
	}
	fd, ok := be.(FrozenDTyper)
	switch dtype {
	case ComputeAuto:
		if !ok {
			return ComputeFP32, nil
		}
		if fd.BF16Available() {
			return ComputeBF16, fd.SetFrozenDType(ComputeBF16)
		}
		if f16, ok := be.(FP16er); ok && f16.FP16Available() {
			return ComputeFP16, fd.SetFrozenDType(ComputeFP16)
		}
		return fd.FrozenDType(), nil
	case ComputeFP32, ComputeBF16, ComputeFP16:
		if !ok {
			if dtype == ComputeFP32 {
				return dtype, nil
			}
			return "", fmt.Errorf("train.compute_dtype %s: the %s backend has no bf16 setting for frozen weights", dtype, be.Name())
		}
		return dtype, fd.SetFrozenDType(dtype)
	}
	return "", fmt.Errorf("train.compute_dtype %q: want auto, fp32, bf16 or fp16", dtype)
}

func (c *cpu) SetFrozenDType(dtype string) error {
	switch dtype {
	case ComputeFP32:
		c.frozenBF16 = false
	case ComputeBF16:
		if !sgemm.BF16Supported() {
			return fmt.Errorf("train.compute_dtype bf16: this CPU has no AVX512_BF16 (vdpbf16ps), this build has no cgo kernels, or sgemm is held to a narrower kernel family (--sgemm-kernel); use auto or fp32")
		}
		c.frozenBF16 = true
	case ComputeFP16:
		return fmt.Errorf("train.compute_dtype fp16 is for GPUs without bf16 (Turing); on the CPU use auto, fp32 or bf16")
	default:
		return fmt.Errorf("train.compute_dtype %q: want fp32 or bf16", dtype)
	}
	return nil
}

func (c *cpu) FrozenDType() string {
	if c.frozenBF16 {
		return ComputeBF16
	}
	return ComputeFP32
}

func (c *cpu) BF16Available() bool { return sgemm.BF16Supported() }

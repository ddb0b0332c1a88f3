//go:build !cgo || !linux

package bench

import "errors"

type openBLAS struct{ desc, core string }

func (o *openBLAS) Name() string { return o.desc }

func (o *openBLAS) Core() string { return o.core }

func (o *openBLAS) Sgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) error {
	return errors.New("openblas: not available in this build")
}

func loadOpenBLAS(threads int) (*openBLAS, error) {
	return nil, errors.New("OpenBLAS peer needs a cgo build on Linux")
}

func openBLASCore() (core, config string, err error) {
	_, err = loadOpenBLAS(1)
	return "", "", err
}

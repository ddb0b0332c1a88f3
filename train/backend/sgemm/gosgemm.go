package sgemm

// The portable engine: the same packing and blocking as the C kernels, with
// a 4 x 4 register tile in plain Go. It runs on CPUs without AVX2, on other
// architectures and in CGO_ENABLED=0 builds.

const goMR, goNR = 4, 4

var goEngine = &engine{mr: goMR, nr: goNR, packB: goPackB, macro: goMacro}

func sgemmGo(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int, t int) {
	goEngine.drive(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, t)
}

// goPackB packs op(B)[pc:pc+kc, j0:j0+nc] into goNR-wide zero-padded panels.
func goPackB(transB bool, b []float32, ldb, pc, kc, j0, nc int, dst []float32) {
	for jr := 0; jr < nc; jr += goNR {
		nr := min(goNR, nc-jr)
		d := dst[jr*kc : jr*kc+kc*goNR]
		for p := 0; p < kc; p++ {
			row := d[p*goNR : p*goNR+goNR]
			for q := 0; q < goNR; q++ {
				switch {
				case q >= nr:
					row[q] = 0
				case transB:
					row[q] = b[(j0+jr+q)*ldb+pc+p]
				default:
					row[q] = b[(pc+p)*ldb+j0+jr+q]
				}
			}
		}
	}
}

// goPackA packs op(A)[i0:i0+mc, pc:pc+kc] into goMR-tall zero-padded panels.
func goPackA(transA bool, a []float32, lda, i0, mc, pc, kc int, dst []float32) {
	for ir := 0; ir < mc; ir += goMR {
		mr := min(goMR, mc-ir)
		d := dst[ir*kc : ir*kc+kc*goMR]
		for p := 0; p < kc; p++ {
			col := d[p*goMR : p*goMR+goMR]
			for r := 0; r < goMR; r++ {
				switch {
				case r >= mr:
					col[r] = 0
				case transA:
					col[r] = a[(pc+p)*lda+i0+ir+r]
				default:
					col[r] = a[(i0+ir+r)*lda+pc+p]
				}
			}
		}
	}
}

func goMacro(transA bool, a []float32, lda, i0, i1, pc, kc int, packedB []float32, j0, j1 int, alpha, beta float32, c []float32, ldc int, abuf []float32) {
	for ic := i0; ic < i1; ic += blockMC {
		mc := min(blockMC, i1-ic)
		goPackA(transA, a, lda, ic, mc, pc, kc, abuf)
		for jr := j0; jr < j1; jr += goNR {
			nr := min(goNR, j1-jr)
			bp := packedB[(jr-j0)*kc : (jr-j0)*kc+kc*goNR]
			for ir := 0; ir < mc; ir += goMR {
				mr := min(goMR, mc-ir)
				ap := abuf[ir*kc : ir*kc+kc*goMR]
				goKernel(kc, ap, bp, c[(ic+ir)*ldc+jr:], ldc, mr, nr, alpha, beta)
			}
		}
	}
}

// goKernel is the 4 x 4 micro-kernel: C[0:mr, 0:nr] = alpha*(ap.bp) + beta*C.
func goKernel(kc int, ap, bp []float32, c []float32, ldc, mr, nr int, alpha, beta float32) {
	var c00, c01, c02, c03, c10, c11, c12, c13 float32
	var c20, c21, c22, c23, c30, c31, c32, c33 float32
	ap = ap[:kc*goMR]
	bp = bp[:kc*goNR]
	for p := 0; p < kc; p++ {
		av := ap[p*goMR : p*goMR+4 : p*goMR+4]
		bv := bp[p*goNR : p*goNR+4 : p*goNR+4]
		a0, a1, a2, a3 := av[0], av[1], av[2], av[3]
		b0, b1, b2, b3 := bv[0], bv[1], bv[2], bv[3]
		c00 += a0 * b0
		c01 += a0 * b1
		c02 += a0 * b2
		c03 += a0 * b3
		c10 += a1 * b0
		c11 += a1 * b1
		c12 += a1 * b2
		c13 += a1 * b3
		c20 += a2 * b0
		c21 += a2 * b1
		c22 += a2 * b2
		c23 += a2 * b3
		c30 += a3 * b0
		c31 += a3 * b1
		c32 += a3 * b2
		c33 += a3 * b3
	}
	acc := [goMR][goNR]float32{
		{c00, c01, c02, c03},
		{c10, c11, c12, c13},
		{c20, c21, c22, c23},
		{c30, c31, c32, c33},
	}
	for r := 0; r < mr; r++ {
		row := c[r*ldc : r*ldc+nr]
		for j := range row {
			if beta == 0 {
				row[j] = alpha * acc[r][j]
			} else {
				row[j] = alpha*acc[r][j] + beta*row[j]
			}
		}
	}
}

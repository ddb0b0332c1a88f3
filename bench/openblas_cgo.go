//go:build cgo && linux

package bench

/*
#cgo CFLAGS: -Wdeprecated-declarations
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>

typedef void (*ob_sgemm_fn)(int order, int transA, int transB, int m, int n, int k,
                            float alpha, const float *a, int lda, const float *b, int ldb,
                            float beta, float *c, int ldc);
typedef void (*ob_set_threads_fn)(int);
typedef char *(*ob_str_fn)(void);

static ob_sgemm_fn ob_sgemm;
static ob_set_threads_fn ob_set_threads;
static ob_str_fn ob_config, ob_corename;

// ob_open loads OpenBLAS by soname; it returns NULL on success or the
// loader's message.
static const char *ob_open(const char *name) {
	void *h = dlopen(name, RTLD_NOW | RTLD_LOCAL);
	if (!h)
		return dlerror();
	ob_sgemm = (ob_sgemm_fn)dlsym(h, "cblas_sgemm");
	if (!ob_sgemm)
		return "cblas_sgemm not found in the library";
	ob_set_threads = (ob_set_threads_fn)dlsym(h, "openblas_set_num_threads");
	ob_config = (ob_str_fn)dlsym(h, "openblas_get_config");
	ob_corename = (ob_str_fn)dlsym(h, "openblas_get_corename");
	return NULL;
}

static void ob_threads(int n) { if (ob_set_threads) ob_set_threads(n); }
static const char *ob_cfg(void) { return ob_config ? ob_config() : ""; }
static const char *ob_core(void) { return ob_corename ? ob_corename() : ""; }

// CblasRowMajor = 101, CblasNoTrans = 111, CblasTrans = 112.
static void ob_call(int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,
                    const float *b, int ldb, float beta, float *c, int ldc) {
	ob_sgemm(101, ta ? 112 : 111, tb ? 112 : 111, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
*/
import "C"

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"unsafe"

	"github.com/opencluster/opencluster/train/backend/sgemm"
)

// openBLASNames are the sonames tried in order: Debian's runtime package
// provides the first, a development install the second.
var openBLASNames = []string{"libopenblas.so.0", "libopenblas.so", "libopenblasp-r0.so"}

var (
	obOnce sync.Once
	obErr  error
	obDesc string
	obCore string
)

// loadOpenBLAS opens the library once and sets its thread count. The core
// type it runs is fixed at that moment (see choosePeerCore).
func loadOpenBLAS(threads int) (*openBLAS, error) {
	obOnce.Do(func() {
		var msgs []string
		for _, name := range openBLASNames {
			cs := C.CString(name)
			msg := C.ob_open(cs)
			C.free(unsafe.Pointer(cs))
			if msg == nil {
				cfg := strings.TrimSpace(C.GoString(C.ob_cfg()))
				obCore = strings.TrimSpace(C.GoString(C.ob_core()))
				obDesc = "OpenBLAS"
				if cfg != "" {
					obDesc = cfg
				}
				if obCore != "" && !strings.Contains(cfg, obCore) {
					obDesc += " (" + obCore + ")"
				}
				return
			}
			msgs = append(msgs, name+": "+C.GoString(msg))
		}
		obErr = fmt.Errorf("OpenBLAS not loadable (run scripts/install-bench-deps.sh): %s", strings.Join(msgs, "; "))
	})
	if obErr != nil {
		return nil, obErr
	}
	C.ob_threads(C.int(threads))
	return &openBLAS{desc: obDesc, core: obCore}, nil
}

// openBLASCore loads the library and reports its core type and build config.
func openBLASCore() (core, config string, err error) {
	ob, err := loadOpenBLAS(1)
	if err != nil {
		return "", "", err
	}
	return ob.core, ob.desc, nil
}

type openBLAS struct{ desc, core string }

// Core is the core type (kernel family) the library runs, e.g. "SkylakeX".
func (o *openBLAS) Core() string { return o.core }

func (o *openBLAS) Name() string { return o.desc }

// Sgemm calls cblas_sgemm in row-major order with the same arguments as
// sgemm.Sgemm.
func (o *openBLAS) Sgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) error {
	if err := sgemm.Check(transA, transB, m, n, k, len(a), lda, len(b), ldb, len(c), ldc); err != nil {
		return fmt.Errorf("openblas: %w", err)
	}
	if m == 0 || n == 0 || k == 0 {
		return errors.New("openblas: empty product")
	}
	C.ob_call(cb(transA), cb(transB), C.int(m), C.int(n), C.int(k), C.float(alpha),
		(*C.float)(unsafe.Pointer(&a[0])), C.int(lda), (*C.float)(unsafe.Pointer(&b[0])), C.int(ldb),
		C.float(beta), (*C.float)(unsafe.Pointer(&c[0])), C.int(ldc))
	return nil
}

func cb(v bool) C.int {
	if v {
		return 1
	}
	return 0
}

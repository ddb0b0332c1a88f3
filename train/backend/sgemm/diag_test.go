package sgemm

import (
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"sync"
	"testing"
	"time"
)

func TestDiagSweep(t *testing.T) {
	if os.Getenv("SGEMM_DIAG") == "" {
		t.Skip()
	}
	type cfg struct{ mc, kc, nc int }
	cfgs := []cfg{{192, 256, 4096}, {96, 256, 4096}, {384, 256, 4096}, {192, 384, 4096}, {144, 320, 4096}, {192, 512, 4096}, {240, 256, 4096}}
	for _, th := range []int{1, 2} {
		for _, n := range []int{512, 1024, 2048} {
			a := make([]float32, n*n)
			b := make([]float32, n*n)
			c := make([]float32, n*n)
			for i := range a {
				a[i] = rand.Float32()
				b[i] = rand.Float32()
			}
			for _, cf := range cfgs {
				blockMC, blockKC, blockNC = cf.mc, cf.kc, cf.nc
				workspaces = sync.Pool{}
				var s []float64
				reps := 8
				if n == 2048 {
					reps = 3
				}
				for i := 0; i < reps; i++ {
					st := time.Now()
					run(implAVX512, th, false, false, n, n, n, 1, a, n, b, n, 0, c, n)
					s = append(s, 2*float64(n*n*n)/time.Since(st).Seconds()/1e9)
				}
				sort.Float64s(s)
				fmt.Printf("t%d n%d mc%d kc%d nc%d: best %.0f median %.0f\n", th, n, cf.mc, cf.kc, cf.nc, s[len(s)-1], s[len(s)/2])
			}
		}
	}
}

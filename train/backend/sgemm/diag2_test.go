package sgemm

import (
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"testing"
	"time"
)

func TestDiagTrans(t *testing.T) {
	if os.Getenv("SGEMM_DIAG") == "" {
		t.Skip()
	}
	for _, n := range []int{256, 1024} {
		a := make([]float32, n*n)
		b := make([]float32, n*n)
		c := make([]float32, n*n)
		for i := range a {
			a[i] = rand.Float32()
			b[i] = rand.Float32()
		}
		for tr := 0; tr < 4; tr++ {
			var s []float64
			for i := 0; i < 9; i++ {
				st := time.Now()
				Sgemm(tr&1 != 0, tr&2 != 0, n, n, n, 1, a, n, b, n, 0, c, n)
				s = append(s, 2*float64(n*n*n)/time.Since(st).Seconds()/1e9)
			}
			sort.Float64s(s)
			fmt.Printf("n%d tA=%v tB=%v: best %.0f median %.0f\n", n, tr&1 != 0, tr&2 != 0, s[len(s)-1], s[len(s)/2])
		}
	}
}

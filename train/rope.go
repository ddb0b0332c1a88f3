package train

import (
	"math"

	"github.com/opencluster/opencluster/train/backend"
)

// ropeInvFreq returns the rotary inverse frequencies of c: theta^(-2i/hd),
// then scaled as rope_scaling says. linear divides every frequency by the
// factor (positions stretched evenly). llama3 (Llama 3.1/3.2) keeps the
// high frequencies, whose wavelength is under original_max/high_freq_factor
// tokens, divides the low ones, whose wavelength is over
// original_max/low_freq_factor, by the factor, and blends the band between
// linearly in original_max/wavelength.
func (c ModelConfig) ropeInvFreq() []float64 {
	f := backend.RoPEInvFreq(c.HeadDim(), c.RopeTheta)
	r := c.Rope
	switch r.Type {
	case "linear":
		for i := range f {
			f[i] /= r.Factor
		}
	case "llama3":
		old := float64(r.OriginalMaxPos)
		lowWave, highWave := old/r.LowFreqFactor, old/r.HighFreqFactor
		for i, x := range f {
			wave := 2 * math.Pi / x
			switch {
			case wave < highWave:
			case wave > lowWave:
				f[i] = x / r.Factor
			default:
				smooth := (old/wave - r.LowFreqFactor) / (r.HighFreqFactor - r.LowFreqFactor)
				f[i] = (1-smooth)*x/r.Factor + smooth*x
			}
		}
	}
	return f
}

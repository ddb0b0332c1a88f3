package train

import (
	"math"
	"testing"
)

func TestLearningRate(t *testing.T) {
	cfg := TrainConfig{LR: 1e-3, MinLR: 1e-4, WarmupSteps: 10, Steps: 110}
	mid := 1e-4 + 0.5*(1e-3-1e-4) // halfway through the cosine
	cases := []struct {
		step int
		want float64
	}{
		{1, 1e-4},   // first warm-up step
		{5, 5e-4},   // linear
		{10, 1e-3},  // peak at the end of warm-up
		{60, mid},   // cosine midpoint
		{110, 1e-4}, // min_lr at train.steps
		{500, 1e-4}, // and after
	}
	for _, c := range cases {
		if got := LearningRate(cfg, c.step); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("step %d: lr %g, want %g", c.step, got, c.want)
		}
	}
	// Monotone: up during warm-up, down after.
	prev := 0.0
	for s := 1; s <= 110; s++ {
		lr := LearningRate(cfg, s)
		if (s <= 10 && lr < prev) || (s > 10 && lr > prev) {
			t.Fatalf("step %d: lr %g after %g breaks warm-up/decay monotonicity", s, lr, prev)
		}
		prev = lr
	}
	// No warm-up starts near the peak.
	if got := LearningRate(TrainConfig{LR: 2, MinLR: 1, Steps: 1000}, 1); got < 1.99 {
		t.Errorf("no warm-up: first lr %g, want about 2", got)
	}
}

package train

import "math"

// LearningRate is the schedule of cfg at optimizer step step (counted from 1):
// a linear warm-up from lr/warmup_steps to lr over the first warmup_steps
// steps, then a cosine decay from lr to min_lr that reaches min_lr at
// train.steps. Steps past the end stay at min_lr.
func LearningRate(cfg TrainConfig, step int) float64 {
	if step < 1 {
		step = 1
	}
	if step <= cfg.WarmupSteps {
		return cfg.LR * float64(step) / float64(cfg.WarmupSteps)
	}
	decay := cfg.Steps - cfg.WarmupSteps
	if decay <= 0 || step >= cfg.Steps {
		return cfg.MinLR
	}
	progress := float64(step-cfg.WarmupSteps) / float64(decay)
	return cfg.MinLR + 0.5*(cfg.LR-cfg.MinLR)*(1+math.Cos(math.Pi*progress))
}

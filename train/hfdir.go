package train

import (
	"fmt"
	"os"
	"path/filepath"
)

// ReadConfigDir reads the model shape from a Hugging Face model folder's
// config.json, refusing what LoadModel would refuse, without touching the
// weights (the simulator sizes a job from it).
func ReadConfigDir(dir string) (ModelConfig, error) {
	path := filepath.Join(dir, "config.json")
	b, err := os.ReadFile(path)
	if err != nil {
		return ModelConfig{}, fmt.Errorf("train: model folder: %w", err)
	}
	cfg, _, err := parseHFConfig(b, path, true)
	if err != nil {
		return ModelConfig{}, fmt.Errorf("train: %w", err)
	}
	return cfg, nil
}

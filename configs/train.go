package configs

import (
	"bytes"
	"fmt"

	"github.com/opencluster/opencluster/train"
	"github.com/spf13/viper"
)

// TrainConfig decodes the named model preset into a train.Config, as it is
// embedded (no environment or flags: what tests and the simulator's jobs
// start from; the commands read presets through their own loader).
func TrainConfig(name string) (train.Config, error) {
	var c train.Config
	b, err := Preset(name)
	if err != nil {
		return c, err
	}
	v := viper.New()
	v.SetConfigType("yaml")
	if err := v.ReadConfig(bytes.NewReader(b)); err != nil {
		return c, fmt.Errorf("preset %s: %w", name, err)
	}
	if err := v.Unmarshal(&c); err != nil {
		return c, fmt.Errorf("preset %s: %w", name, err)
	}
	return c, nil
}

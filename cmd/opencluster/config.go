package main

import (
	"bytes"
	"fmt"
	"os"
	"strings"

	"github.com/go-viper/mapstructure/v2"
	"github.com/opencluster/opencluster/configs"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

// loadConfig fills out from, in rising precedence: the defaults already in
// out's preset, the YAML file or embedded preset named by source, OPENCLUSTER_*
// environment variables (OPENCLUSTER_TRAIN_LR for train.lr), and the flags
// bound in flagKeys (config key -> flag name) that the user set. Unknown keys
// in the file are errors that name the key.
func loadConfig(source string, flags *pflag.FlagSet, flagKeys map[string]string, out any) error {
	v := viper.New()
	v.SetConfigType("yaml")
	data, origin, err := readConfigSource(source)
	if err != nil {
		return err
	}
	if err := v.ReadConfig(bytes.NewReader(data)); err != nil {
		return fmt.Errorf("config %s: %w", origin, err)
	}
	v.SetEnvPrefix("OPENCLUSTER")
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_", "-", "_"))
	v.AutomaticEnv()
	for key, name := range flagKeys {
		if f := flags.Lookup(name); f != nil && f.Changed {
			if err := v.BindPFlag(key, f); err != nil {
				return err
			}
		}
	}
	err = v.Unmarshal(out, func(dc *mapstructure.DecoderConfig) {
		dc.ErrorUnused = true
		dc.WeaklyTypedInput = true
	})
	if err != nil {
		return fmt.Errorf("config %s: %w", origin, err)
	}
	return nil
}

// readConfigSource returns the bytes of a file path or an embedded preset name.
func readConfigSource(source string) ([]byte, string, error) {
	if strings.ContainsAny(source, "/\\") || strings.HasSuffix(source, ".yaml") || strings.HasSuffix(source, ".yml") {
		if b, err := os.ReadFile(source); err == nil {
			return b, source, nil
		} else if !os.IsNotExist(err) || strings.ContainsAny(source, "/\\") {
			return nil, source, fmt.Errorf("config %s: %w", source, err)
		}
	}
	b, err := configs.Preset(source)
	if err != nil {
		return nil, source, fmt.Errorf("config %s: not a file, and %w", source, err)
	}
	return b, "preset " + source, nil
}

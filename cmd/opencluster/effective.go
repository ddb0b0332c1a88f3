package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/opencluster/opencluster/internal/atomicfile"
	"github.com/spf13/cobra"
	"github.com/spf13/viper"
)

// effectiveConfigFile is where the coordinator keeps, in its --dir, the
// config it runs with (file, environment and flags applied), so a restart
// needs no --config and `ledger verify --coordinator-dir` recomputes with
// exactly the settings the rounds used. It may hold join tokens: 0600.
const effectiveConfigFile = "coordinator.effective.yaml"

// loadCoordinatorConfigIn loads the coordinator's config for --dir dir:
// from --config when given, else from the effective config saved by the
// last start, else the preset; environment and flags override as always.
// It logs one line for each setting that differs from the last start and
// saves the effective config when it changed.
func loadCoordinatorConfigIn(cmd *cobra.Command, dir string, log *slog.Logger) (coordinatorConfig, error) {
	saved := filepath.Join(dir, effectiveConfigFile)
	_, err := os.Stat(saved)
	haveSaved := err == nil
	if haveSaved && !cmd.Flags().Changed("config") {
		cmd.Flags().Set("config", saved)
	}
	cfg, err := loadCoordinatorConfig(cmd)
	if err != nil {
		return cfg, err
	}
	b, err := json.MarshalIndent(configMap(reflect.ValueOf(cfg)), "", "  ")
	if err != nil {
		return cfg, err
	}
	now, err := flatConfig(b)
	if err != nil {
		return cfg, err
	}
	if haveSaved {
		old, err := os.ReadFile(saved)
		if err != nil {
			return cfg, err
		}
		was, err := flatConfig(old)
		if err != nil {
			return cfg, fmt.Errorf("%s: %w", saved, err)
		}
		if reflect.DeepEqual(was, now) {
			return cfg, nil
		}
		var keys []string
		for k := range was {
			keys = append(keys, k)
		}
		for k := range now {
			if _, ok := was[k]; !ok {
				keys = append(keys, k)
			}
		}
		slices.Sort(keys)
		for _, k := range keys {
			if was[k] != now[k] {
				log.Info("coordinator: setting changed since the last start", "key", k, "was", was[k], "now", now[k], "from", cmd.Flags().Lookup("config").Value.String())
			}
		}
	}
	head := []byte("# The coordinator's effective config, written at start-up (JSON is YAML).\n# A restart on this --dir reads it; --config, OPENCLUSTER_* and flags override it.\n")
	return cfg, atomicfile.WriteFile(saved, append(append(head, b...), '\n'), 0o600)
}

// configMap turns a config struct into nested maps keyed by its
// mapstructure tags (what the config files use), durations as text.
func configMap(v reflect.Value) any {
	if v.Type() == reflect.TypeOf(time.Duration(0)) {
		return time.Duration(v.Int()).String()
	}
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			return nil
		}
		return configMap(v.Elem())
	case reflect.Struct:
		m := map[string]any{}
		for i := 0; i < v.NumField(); i++ {
			f := v.Type().Field(i)
			if !f.IsExported() {
				continue
			}
			name, opts, _ := strings.Cut(f.Tag.Get("mapstructure"), ",")
			if name == "-" {
				continue
			}
			if strings.Contains(opts, "squash") {
				for k, x := range configMap(v.Field(i)).(map[string]any) {
					m[k] = x
				}
				continue
			}
			if name == "" {
				name = strings.ToLower(f.Name)
			}
			m[name] = configMap(v.Field(i))
		}
		return m
	case reflect.Slice, reflect.Array:
		out := make([]any, v.Len())
		for i := range out {
			out[i] = configMap(v.Index(i))
		}
		return out
	case reflect.Map:
		m := map[string]any{}
		for _, k := range v.MapKeys() {
			m[fmt.Sprint(k.Interface())] = configMap(v.MapIndex(k))
		}
		return m
	}
	return v.Interface()
}

// flatConfig reads a YAML (or JSON) config into dotted keys and printed
// values, so two configs compare the same however they were written.
func flatConfig(b []byte) (map[string]string, error) {
	v := viper.New()
	v.SetConfigType("yaml")
	if err := v.ReadConfig(bytes.NewReader(b)); err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, k := range v.AllKeys() {
		out[k] = fmt.Sprint(v.Get(k))
	}
	return out, nil
}

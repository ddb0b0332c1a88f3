package main

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/opencluster/opencluster/configs"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

// loadConfig fills out from, in rising precedence: the defaults already in
// out's preset, the YAML file or embedded preset named by source, OPENCLUSTER_*
// environment variables (OPENCLUSTER_TRAIN_LR for train.lr), and the flags
// bound in flagKeys (config key -> flag name) that the user set. Unknown keys
// in the file are errors that name the key, and values are typed strictly
// (see strictScalars).
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
	// AutomaticEnv alone only reads the keys viper has seen (in the file):
	// bind every key of out, so OPENCLUSTER_ROUNDS_PROBATION works when the
	// file leaves probation out.
	for _, key := range configKeys(out) {
		if err := v.BindEnv(key); err != nil {
			return err
		}
	}
	for key, name := range flagKeys {
		if f := flags.Lookup(name); f != nil && f.Changed {
			if err := v.BindPFlag(key, f); err != nil {
				return err
			}
		}
	}
	err = v.Unmarshal(out, func(dc *mapstructure.DecoderConfig) {
		dc.ErrorUnused = true
		dc.WeaklyTypedInput = false
		dc.DecodeHook = mapstructure.ComposeDecodeHookFunc(strictScalars,
			mapstructure.StringToTimeDurationHookFunc(), mapstructure.StringToSliceHookFunc(","))
	})
	if err != nil {
		// mapstructure's "decoding failed due to the following error(s):"
		// and blank lines, on one line.
		msg := strings.TrimSpace(strings.TrimPrefix(err.Error(), "decoding failed due to the following error(s):"))
		var lines []string
		for _, l := range strings.Split(msg, "\n") {
			if l = strings.TrimSpace(l); l != "" {
				lines = append(lines, l)
			}
		}
		return fmt.Errorf("config %s: %s", origin, strings.Join(lines, "; "))
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

// strictScalars is the decode hook that makes config values strictly
// typed: a whole number for an integer (4.0 is fine, 4.7 and true are
// not), nothing negative for an unsigned integer, a unit for a duration
// (300 is not five minutes), and environment strings parsed as the
// field's type. mapstructure names the key in the error.
func strictScalars(from, to reflect.Value) (any, error) {
	if to.Type() == reflect.TypeOf(time.Duration(0)) {
		switch from.Kind() {
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64, reflect.Uint, reflect.Uint8, reflect.Uint16,
			reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64:
			return nil, fmt.Errorf("%v is not a duration: give a unit, such as 90s or 5m", from.Interface())
		}
		return from.Interface(), nil
	}
	s, isString := from.Interface().(string)
	switch to.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		bits := to.Type().Bits()
		switch {
		case isString:
			n, err := strconv.ParseInt(strings.TrimSpace(s), 10, bits)
			if err != nil {
				return nil, fmt.Errorf("%q is not a whole number that fits %s", s, to.Type())
			}
			return n, nil
		case from.CanFloat():
			f := from.Float()
			if f != math.Trunc(f) || f < -math.Ldexp(1, bits-1) || f >= math.Ldexp(1, bits-1) {
				return nil, fmt.Errorf("%v is not a whole number that fits %s", f, to.Type())
			}
			return int64(f), nil
		case from.Kind() == reflect.Bool:
			return nil, fmt.Errorf("%v is a bool, not a number", from.Bool())
		}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		bits := to.Type().Bits()
		switch {
		case isString:
			n, err := strconv.ParseUint(strings.TrimSpace(s), 10, bits)
			if err != nil {
				return nil, fmt.Errorf("%q is not a whole number >= 0 that fits %s", s, to.Type())
			}
			return n, nil
		case from.CanFloat():
			f := from.Float()
			if f != math.Trunc(f) || f < 0 || f >= math.Ldexp(1, bits) {
				return nil, fmt.Errorf("%v is not a whole number >= 0 that fits %s", f, to.Type())
			}
			return uint64(f), nil
		case from.CanInt() && from.Int() < 0:
			return nil, fmt.Errorf("%d is negative; this key takes a number >= 0", from.Int())
		case from.Kind() == reflect.Bool:
			return nil, fmt.Errorf("%v is a bool, not a number", from.Bool())
		}
	case reflect.Float32, reflect.Float64:
		switch {
		case isString:
			f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
			if err != nil {
				return nil, fmt.Errorf("%q is not a number", s)
			}
			return f, nil
		case from.Kind() == reflect.Bool:
			return nil, fmt.Errorf("%v is a bool, not a number", from.Bool())
		}
	case reflect.Bool:
		if isString {
			b, err := strconv.ParseBool(strings.TrimSpace(s))
			if err != nil {
				return nil, fmt.Errorf("%q is not true or false", s)
			}
			return b, nil
		}
	}
	return from.Interface(), nil
}

// configKeys lists the dotted config keys of the struct out points to, by
// their mapstructure tags (squashed structs flattened, nested structs
// recursed, "-" skipped).
func configKeys(out any) []string {
	var keys []string
	var walk func(t reflect.Type, prefix string)
	walk = func(t reflect.Type, prefix string) {
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			tag := f.Tag.Get("mapstructure")
			name, opts, _ := strings.Cut(tag, ",")
			if name == "-" {
				continue
			}
			ft := f.Type
			if strings.Contains(opts, "squash") {
				walk(ft, prefix)
				continue
			}
			if name == "" {
				name = strings.ToLower(f.Name)
			}
			if ft.Kind() == reflect.Struct && ft != reflect.TypeOf(time.Time{}) {
				walk(ft, prefix+name+".")
				continue
			}
			keys = append(keys, prefix+name)
		}
	}
	walk(reflect.TypeOf(out), "")
	return keys
}

// Package configs embeds the YAML presets so every binary carries them:
// `--config tiny` names a preset, `--config path/to/file.yaml` reads a file.
package configs

import (
	"bytes"
	"embed"
	"fmt"
	"sort"
	"strings"
)

//go:embed *.yaml
var files embed.FS

// Preset returns the bytes of the named embedded preset (e.g. "tiny" or "worker").
func Preset(name string) ([]byte, error) {
	b, err := files.ReadFile(strings.TrimSuffix(name, ".yaml") + ".yaml")
	if err != nil {
		return nil, fmt.Errorf("no preset %q; presets are %s", name, strings.Join(Names(), ", "))
	}
	return b, nil
}

// Names lists the embedded presets.
func Names() []string {
	entries, _ := files.ReadDir(".")
	var names []string
	for _, e := range entries {
		names = append(names, strings.TrimSuffix(e.Name(), ".yaml"))
	}
	sort.Strings(names)
	return names
}

// ModelNames lists the presets that describe a model (those with a model
// section): what --config of pretrain, train, eval and generate take. The
// others (coordinator, worker) configure commands, not models.
func ModelNames() []string {
	var names []string
	for _, n := range Names() {
		b, _ := files.ReadFile(n + ".yaml")
		if bytes.HasPrefix(b, []byte("model:")) || bytes.Contains(b, []byte("\nmodel:")) {
			names = append(names, n)
		}
	}
	return names
}

// Package jsondoc checks that the field names a command prints with --json
// are the ones docs/json.md documents, so one name means one thing across
// commands (tests call it; nothing else does).
package jsondoc

import (
	"encoding/json"
	"os"
	"reflect"
	"regexp"
	"strings"
)

var marshaler = reflect.TypeOf((*json.Marshaler)(nil)).Elem()

// Names lists the JSON field names of t and of the structs it holds,
// recursively (slices, pointers, maps and embedded structs included).
func Names(t reflect.Type) []string {
	seen := map[reflect.Type]bool{}
	var out []string
	var walk func(reflect.Type)
	walk = func(t reflect.Type) {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Array || t.Kind() == reflect.Map {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct || seen[t] || t.PkgPath() == "time" {
			return
		}
		seen[t] = true
		if t.Implements(marshaler) || reflect.PointerTo(t).Implements(marshaler) {
			// Its own MarshalJSON writes it (e.g. flattening its fields):
			// the names of what it holds count, its field names do not.
			for i := 0; i < t.NumField(); i++ {
				walk(t.Field(i).Type)
			}
			return
		}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			switch {
			case name == "-" || (!f.IsExported() && !f.Anonymous):
				continue
			case f.Anonymous && name == "":
				walk(f.Type)
				continue
			case name == "":
				name = f.Name
			}
			out = append(out, name)
			walk(f.Type)
		}
	}
	walk(t)
	return out
}

// Undocumented returns the JSON field names of types that the markdown
// file at doc does not mention in backquotes.
func Undocumented(doc string, types ...reflect.Type) ([]string, error) {
	b, err := os.ReadFile(doc)
	if err != nil {
		return nil, err
	}
	documented := map[string]bool{}
	for _, m := range regexp.MustCompile("`([a-z0-9_]+)`").FindAllStringSubmatch(string(b), -1) {
		documented[m[1]] = true
	}
	var missing []string
	for _, t := range types {
		for _, n := range Names(t) {
			if !documented[n] {
				missing = append(missing, t.String()+"."+n)
			}
		}
	}
	return missing, nil
}

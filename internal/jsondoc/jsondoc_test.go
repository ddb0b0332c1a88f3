package jsondoc

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
)

type inner struct {
	Deep int `json:"deep_s"`
}

type flat struct{ X inner }

func (flat) MarshalJSON() ([]byte, error) { return []byte("{}"), nil }

type outer struct {
	inner
	A     int     `json:"a_bytes,omitempty"`
	B     []inner `json:"b"`
	Skip  int     `json:"-"`
	F     flat    `json:"f"`
	quiet int
}

func TestNamesAndUndocumented(t *testing.T) {
	got := Names(reflect.TypeOf(outer{}))
	want := []string{"deep_s", "a_bytes", "b", "f"}
	if !slices.Equal(got, want) {
		t.Fatalf("Names = %v, want %v", got, want)
	}
	doc := filepath.Join(t.TempDir(), "d.md")
	os.WriteFile(doc, []byte("`a_bytes` and `b`, `f`"), 0o644)
	missing, err := Undocumented(doc, reflect.TypeOf(outer{}))
	if err != nil || !slices.Equal(missing, []string{"jsondoc.outer.deep_s"}) {
		t.Fatalf("Undocumented = %v %v", missing, err)
	}
}

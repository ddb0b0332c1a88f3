package tokenizer

import (
	"path/filepath"
	"testing"
)

func BenchmarkLoadLlama3(b *testing.B) {
	dir := referenceDir(b)
	for b.Loop() {
		if _, err := Load(filepath.Join(dir, "models", "llama3")); err != nil {
			b.Fatal(err)
		}
	}
}

package tokenizer

import (
	"reflect"
	"testing"
)

// FuzzSplitters checks the hand-written GPT-2, Llama 3 and Qwen2 matchers
// against the regular expressions themselves (regexp2) on arbitrary text.
func FuzzSplitters(f *testing.F) {
	for _, s := range corpus() {
		f.Add(s)
	}
	for _, s := range []string{"'S'T'RE'Ve 'll'D's", "\r\n\r\n  \n\t x", "a  \u3000\u00a0b\u2028", "12345 ６７８ ½⅓", "'ſ 'K", " ?!\n\n!?  ", "\x80\xff bad\xe2\x9c", "x\u0301\u0308y", "  ", " "} {
		f.Add(s)
	}
	pats := []string{gpt2Pattern, Llama3Pattern, qwenPattern}
	var compiled []*pattern
	for _, p := range pats {
		c, err := compileRegex(p)
		if err != nil {
			f.Fatal(err)
		}
		if c.fast == nil {
			f.Fatalf("no fast matcher for %s", p)
		}
		compiled = append(compiled, c)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if s == "" {
			return
		}
		for i, c := range compiled {
			if got, want := c.fast(s), c.slow(s); !reflect.DeepEqual(got, want) {
				t.Fatalf("pattern %d on %q:\n fast  %v\n regex %v", i, s, got, want)
			}
		}
	})
}

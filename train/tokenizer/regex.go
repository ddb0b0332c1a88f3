package tokenizer

import (
	"fmt"

	"github.com/dlclark/regexp2/v2"
)

// pattern is a regular expression with the features tokenizer.json
// patterns use (Oniguruma syntax: lookahead, \p{L}, (?i:...)), which Go's
// regexp lacks. regexp2's .NET semantics agree with Oniguruma's on them:
// \s is Unicode White_Space in both.
type pattern struct {
	re   *regexp2.Regexp
	fast func(string) [][]int // a hand-written matcher for a known pattern, or nil
}

func compileRegex(expr string) (*pattern, error) {
	// The backtracking stack grows with the longest run a pattern such as
	// \s+(?!\S) scans; the input is already bounded by the caller.
	re, err := regexp2.Compile(expr, regexp2.Unicode, regexp2.OptionMaxBacktrackingStackSize(-1))
	if err != nil {
		return nil, fmt.Errorf("pattern %q: %w", expr, err)
	}
	return &pattern{re: re, fast: fastSplitter(expr)}, nil
}

// findAll returns the byte ranges of every non-overlapping match.
func (p *pattern) findAll(s string) [][]int {
	if s == "" {
		return nil
	}
	if p.fast != nil {
		return p.fast(s)
	}
	return p.slow(s)
}

// slow runs the regular expression itself.
func (p *pattern) slow(s string) [][]int {
	m, err := p.re.FindAllStringIndex(s, -1)
	if err != nil {
		// Only a timeout or a stack limit can fail, and neither is set.
		panic(fmt.Sprintf("tokenizer: pattern %s: %v", p.re.String(), err))
	}
	return m
}

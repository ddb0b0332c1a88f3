package main

import (
	"log/slog"
	"strings"

	"github.com/opencluster/opencluster/train"
)

// otherEnv lists the OPENCLUSTER_ variables that are not config keys, each
// with what reads it. Add yours here: TestEveryUsedEnvNameIsKnown fails
// on a name the code uses that is in neither place, and the warning below
// would cry wolf about it.
var otherEnv = map[string]string{
	"OPENCLUSTER_DEVICE":              "set by device dispatch for the CUDA build it execs",
	"OPENCLUSTER_JOIN_TOKEN":          "worker: the join token (a worker config key, listed for clarity)",
	"OPENCLUSTER_TOKENIZERS":          "tests: the tokenizer files scripts/fetch-tokenizers.sh fetched",
	"OPENCLUSTER_BIN":                 "browser tests: the built binary",
	"OPENCLUSTER_DEMO_BASE":           "browser tests: make demo's pretrained base",
	"OPENCLUSTER_UPDATE_SCREENSHOT":   "browser tests: rewrite the reference screenshot",
	"OPENCLUSTER_CALIBRATE_DEMO":      "make test: run sim/demotest's timing of the real demo (alone, after the other packages)",
	"OPENCLUSTER_CHAT_TEMPLATE_CHILD": "set by train/tokenizer for the sandboxed chat-template renderer it starts (this binary, rendering for its parent)",
}

// otherEnvPrefixes are families of non-config variables: test hooks
// (OPENCLUSTER_TEST_*, never for real use), test requirements, bench and UI
// test settings.
var otherEnvPrefixes = []string{"OPENCLUSTER_TEST_", "OPENCLUSTER_REQUIRE_", "OPENCLUSTER_BENCH_", "OPENCLUSTER_UI_"}

// configEnvNames are the variables of every config key any command reads.
func configEnvNames() []string {
	var names []string
	for _, cfg := range []any{&coordinatorConfig{}, &workerConfig{}, &train.Config{}} {
		for _, k := range configKeys(cfg) {
			names = append(names, envName(k))
		}
	}
	return names
}

func envName(key string) string {
	return "OPENCLUSTER_" + strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(key))
}

// knownEnvNames reports whether an OPENCLUSTER_ name means something.
func knownEnvNames() func(string) bool {
	known := map[string]bool{}
	for _, n := range configEnvNames() {
		known[n] = true
	}
	for n := range otherEnv {
		known[n] = true
	}
	return func(name string) bool {
		for _, p := range otherEnvPrefixes {
			if strings.HasPrefix(name, p) {
				return true
			}
		}
		return known[name]
	}
}

// warnUnknownEnv logs one warning for each OPENCLUSTER_ variable in environ
// that no config key or known setting uses: a typo there was silently
// ignored. It suggests the closest known name.
func warnUnknownEnv(environ []string, log *slog.Logger) {
	known := knownEnvNames()
	var candidates []string
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, "OPENCLUSTER_") || known(name) {
			continue
		}
		if candidates == nil {
			candidates = append(configEnvNames(), keysOf(otherEnv)...)
		}
		log.Warn("unknown environment variable: no config key or setting uses it; it is ignored", "var", name, "closest", closest(name, candidates))
	}
}

func keysOf(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// closest is the candidate at the smallest edit distance from s.
func closest(s string, candidates []string) string {
	best, bestD := "", -1
	for _, c := range candidates {
		if d := editDistance(s, c); bestD < 0 || d < bestD || (d == bestD && c < best) {
			best, bestD = c, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

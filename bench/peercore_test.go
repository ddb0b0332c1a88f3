package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
)

func flagSet(s string) map[string]bool {
	m := map[string]bool{}
	for _, f := range strings.Fields(s) {
		m[f] = true
	}
	return m
}

const (
	flagsAVX2   = "sse2 avx avx2 fma"
	flagsAVX512 = flagsAVX2 + " avx512f avx512cd avx512bw avx512dq avx512vl"
	flagsBF16   = flagsAVX512 + " avx512_bf16"
)

func TestCPUAndCoreLevels(t *testing.T) {
	for _, tt := range []struct {
		flags string
		want  isaLevel
	}{
		{"sse2", isaSSE}, {"sse2 avx", isaAVX}, {flagsAVX2, isaAVX2},
		{"sse2 avx avx2", isaAVX}, // AVX2 without FMA is not Haswell
		{flagsAVX512, isaAVX512}, {flagsBF16, isaAVX512BF16},
		{flagsAVX2 + " avx512f", isaAVX2}, // avx512f alone is not SkylakeX
		{flagsBF16 + " amx_bf16 amx_tile", isaAMX},
	} {
		if got := cpuLevel(flagSet(tt.flags)); got != tt.want {
			t.Errorf("cpuLevel(%q) = %v, want %v", tt.flags, got, tt.want)
		}
	}
	for core, want := range map[string]isaLevel{"Prescott": isaSSE, "Haswell": isaAVX2, "Zen": isaAVX2,
		"SkylakeX": isaAVX512, "Cooperlake": isaAVX512BF16, "sandybridge": isaAVX, "Mystery": isaUnknown} {
		if got := coreLevel(core); got != want {
			t.Errorf("coreLevel(%q) = %v, want %v", core, got, want)
		}
	}
}

// fakeProbe answers as an OpenBLAS that picks def on its own and accepts
// the core names in accepts when forced.
func fakeProbe(def string, accepts ...string) (ProbeFunc, *[]string) {
	var calls []string
	return func(_ context.Context, coretype string, inherit bool) (ProbeResult, error) {
		calls = append(calls, coretype)
		if coretype == "" {
			if !inherit {
				return ProbeResult{}, errors.New("the default probe must inherit the environment")
			}
			return ProbeResult{Core: def}, nil
		}
		for _, a := range accepts {
			if a == coretype {
				return ProbeResult{Core: a}, nil
			}
		}
		return ProbeResult{Core: def}, nil // an unknown name: the library falls back
	}, &calls
}

func TestChoosePeerCore(t *testing.T) {
	tests := []struct {
		name, policy, flags, def string
		accepts                  []string
		wantForced, wantNote     string
	}{
		{"prescott on an avx512 xeon is replaced", "auto", flagsAVX512, "Prescott", []string{"SkylakeX"}, "SkylakeX", "needs only SSE"},
		{"haswell on a bf16 cpu: the newest accepted core", "auto", flagsBF16, "Haswell", []string{"SkylakeX", "Cooperlake"}, "Cooperlake", "AVX-512+BF16"},
		{"a library without cooperlake falls to skylakex", "auto", flagsBF16, "Haswell", []string{"SkylakeX"}, "SkylakeX", "needs only AVX2+FMA"},
		{"a matching default is kept", "auto", flagsAVX512, "SkylakeX", []string{"SkylakeX"}, "", "match this CPU"},
		{"a default newer than our table is kept", "auto", flagsAVX512, "SapphireRapids", nil, "", "match this CPU"},
		{"keep leaves an old core", "keep", flagsAVX512, "Prescott", []string{"SkylakeX"}, "", "kept by --peer-coretype keep"},
		{"nothing newer accepted", "auto", flagsAVX512, "Prescott", nil, "", "accepts no newer core"},
		{"an explicit core is forced", "Haswell", flagsAVX512, "SkylakeX", nil, "Haswell", "--peer-coretype"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("OPENBLAS_CORETYPE", "")
			os.Unsetenv("OPENBLAS_CORETYPE")
			probe, _ := fakeProbe(tt.def, tt.accepts...)
			pc := choosePeerCore(context.Background(), tt.policy, flagSet(tt.flags), probe)
			if pc.Forced != tt.wantForced || !strings.Contains(pc.Note, tt.wantNote) {
				t.Fatalf("forced %q note %q; want forced %q and a note containing %q", pc.Forced, pc.Note, tt.wantForced, tt.wantNote)
			}
			if got := os.Getenv("OPENBLAS_CORETYPE"); got != tt.wantForced {
				t.Fatalf("OPENBLAS_CORETYPE=%q after choosing, want %q", got, tt.wantForced)
			}
		})
	}
}

func TestChoosePeerCoreNamesAnInheritedSetting(t *testing.T) {
	t.Setenv("OPENBLAS_CORETYPE", "Haswell")
	probe, calls := fakeProbe("Haswell", "SkylakeX")
	pc := choosePeerCore(context.Background(), "", flagSet(flagsAVX512), probe)
	if pc.Forced != "SkylakeX" || pc.EnvCoreType != "Haswell" || !strings.Contains(pc.Note, "inherited from the environment") {
		t.Fatalf("%+v", pc)
	}
	if strings.Join(*calls, ",") != ",SkylakeX" {
		t.Fatalf("probe calls %q, want the default then SkylakeX", *calls)
	}
	pc.settle("SkylakeX", flagSet(flagsAVX512))
	if pc.Stale || pc.Used != "SkylakeX" {
		t.Fatalf("after settling on SkylakeX: %+v", pc)
	}
	pc.settle("Haswell", flagSet(flagsAVX512))
	if !pc.Stale {
		t.Fatalf("a Haswell core on an AVX-512 CPU is not flagged: %+v", pc)
	}
}

func TestImplausibleRatioIsFlagged(t *testing.T) {
	r := Row{Name: "fp32_gemm", Size: "1024x1024x1024", GFLOPS: 420, PeerGFLOPS: 100, Ratio: 4.2, Kernel: "avx512", PeerKernel: "Prescott"}
	checkPlausible(&r, 1)
	if !strings.Contains(r.Warning, "4.20x") || !strings.Contains(r.Warning, "Prescott") {
		t.Fatalf("warning %q", r.Warning)
	}
	ok := Row{Ratio: 1.4}
	checkPlausible(&ok, 1)
	if ok.Warning != "" {
		t.Fatalf("1.4x flagged: %q", ok.Warning)
	}
	bf := Row{Ratio: 2.5}
	checkPlausible(&bf, 2)
	if bf.Warning != "" {
		t.Fatalf("2.5x of bf16 against fp32 flagged: %q", bf.Warning)
	}

	var buf bytes.Buffer
	tab := NewTable(&buf)
	tab.Row(Row{Name: "peer", Peer: "OpenBLAS 0.3.21", PeerKernel: "SkylakeX", Extra: map[string]any{"note": "forced"}})
	tab.Row(r)
	if err := tab.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"avx512 / Prescott", "WARNING fp32_gemm 1024x1024x1024", "running its SkylakeX kernels; forced"} {
		if !strings.Contains(buf.String(), s) {
			t.Errorf("table lacks %q:\n%s", s, buf.String())
		}
	}
}

// probeChildEnv makes the test binary act as the OpenBLAS probe child.
const probeChildEnv = "OPENCLUSTER_BENCH_TEST_PROBE_CHILD"

// testProbe runs this test binary as the probe child, as the command runs
// itself.
func testProbe(t *testing.T) ProbeFunc {
	return func(ctx context.Context, coretype string, inherit bool) (ProbeResult, error) {
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
		env := ProbeEnv(append(os.Environ(), probeChildEnv+"=1"), coretype, inherit)
		cmd.Env = env
		out, err := cmd.Output()
		if err != nil {
			return ProbeResult{}, err
		}
		var res ProbeResult
		err = json.Unmarshal(out, &res)
		return res, err
	}
}

// TestProbeSeesTheForcedCore checks against the installed library that a
// core forced through OPENBLAS_CORETYPE in a fresh process is the core it
// then reports: the mechanism the bench relies on.
func TestProbeSeesTheForcedCore(t *testing.T) {
	if _, _, err := openBLASCore(); err != nil {
		t.Skipf("no OpenBLAS here: %v", err)
	}
	probe := testProbe(t)
	for _, core := range []string{"Prescott", "Haswell"} {
		got, err := probe(context.Background(), core, false)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.EqualFold(got.Core, core) {
			t.Fatalf("forced %s, the library reports %q", core, got.Core)
		}
	}
	t.Setenv("OPENBLAS_CORETYPE", "Prescott")
	pc := choosePeerCore(context.Background(), PeerCoreAuto, DescribeMachine().Flags, probe)
	if cpuLevel(DescribeMachine().Flags) > isaSSE && (pc.Default != "Prescott" || pc.Forced == "") {
		t.Fatalf("an inherited Prescott core on a %s CPU was not replaced: %+v", pc.CPU, pc)
	}
	t.Logf("%+v", pc)
}

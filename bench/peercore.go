package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
)

// OpenBLAS picks its kernels ("core type") once, when the library loads,
// from the CPU it recognises or from OPENBLAS_CORETYPE. A release older than
// the CPU does not recognise it and falls back to a generic core (Debian's
// 0.3.21 runs SSE3 "Prescott" kernels on some AVX-512 Xeons), and an
// inherited OPENBLAS_CORETYPE can pin an old core too. Against such a peer
// our kernels look several times faster than a tuned BLAS, which says
// nothing. So the bench asks a child process which core the library picks
// as things stand; when that core is older than what the CPU can run, it
// sets OPENBLAS_CORETYPE to the newest core the CPU supports (checked in a
// second child) before the library loads here, and every peer row names the
// core it ran.

// isaLevel orders the instruction sets that OpenBLAS's x86-64 cores need.
type isaLevel int

const (
	isaUnknown    isaLevel = iota
	isaSSE                 // SSE2/SSE3 cores: Prescott, Core2, Nehalem, Barcelona, ...
	isaAVX                 // Sandybridge, Bulldozer, Piledriver, Steamroller
	isaAVX2                // Haswell, Excavator, Zen: AVX2 + FMA
	isaAVX512              // SkylakeX: AVX-512 F/CD/BW/DQ/VL
	isaAVX512BF16          // Cooperlake: plus AVX512_BF16
	isaAMX                 // SapphireRapids: plus AMX
)

func (l isaLevel) String() string {
	switch l {
	case isaSSE:
		return "SSE"
	case isaAVX:
		return "AVX"
	case isaAVX2:
		return "AVX2+FMA"
	case isaAVX512:
		return "AVX-512"
	case isaAVX512BF16:
		return "AVX-512+BF16"
	case isaAMX:
		return "AVX-512+AMX"
	}
	return "unknown"
}

// coreLevels is what each OpenBLAS x86-64 core type (openblas_get_corename,
// lower-cased) needs; names not listed are unknown and never overridden.
var coreLevels = map[string]isaLevel{
	"katmai": isaSSE, "coppermine": isaSSE, "northwood": isaSSE, "prescott": isaSSE,
	"banias": isaSSE, "atom": isaSSE, "core2": isaSSE, "penryn": isaSSE, "dunnington": isaSSE,
	"nehalem": isaSSE, "athlon": isaSSE, "opteron": isaSSE, "opteron_sse3": isaSSE,
	"barcelona": isaSSE, "nano": isaSSE, "bobcat": isaSSE,
	"sandybridge": isaAVX, "bulldozer": isaAVX, "piledriver": isaAVX, "steamroller": isaAVX,
	"haswell": isaAVX2, "excavator": isaAVX2, "zen": isaAVX2,
	"skylakex": isaAVX512, "cooperlake": isaAVX512BF16, "sapphirerapids": isaAMX,
}

// coreCandidates are the cores to force for a CPU of a given level, best
// first; the first one the library accepts is used. SapphireRapids comes
// only in OpenBLAS 0.3.22 and later, so Cooperlake follows it.
var coreCandidates = map[isaLevel][]string{
	isaAMX:        {"SapphireRapids", "Cooperlake", "SkylakeX"},
	isaAVX512BF16: {"Cooperlake", "SkylakeX"},
	isaAVX512:     {"SkylakeX"},
	isaAVX2:       {"Haswell"},
	isaAVX:        {"Sandybridge"},
}

// coreLevel is the instruction set an OpenBLAS core type needs.
func coreLevel(core string) isaLevel { return coreLevels[strings.ToLower(strings.TrimSpace(core))] }

// cpuLevel is the newest OpenBLAS instruction-set level the CPU flags (as in
// /proc/cpuinfo) allow.
func cpuLevel(flags map[string]bool) isaLevel {
	avx512 := flags["avx512f"] && flags["avx512cd"] && flags["avx512bw"] && flags["avx512dq"] && flags["avx512vl"]
	switch {
	case avx512 && flags["avx512_bf16"] && flags["amx_bf16"] && flags["amx_tile"]:
		return isaAMX
	case avx512 && flags["avx512_bf16"]:
		return isaAVX512BF16
	case avx512:
		return isaAVX512
	case flags["avx2"] && flags["fma"]:
		return isaAVX2
	case flags["avx"]:
		return isaAVX
	case flags["sse2"]:
		return isaSSE
	}
	return isaUnknown
}

// PeerCore says which OpenBLAS core type the peer runs and why.
type PeerCore struct {
	// Default is the core the library picks on its own in this environment
	// (its CPU detection, or an inherited OPENBLAS_CORETYPE); "" when the
	// library could not be probed.
	Default string `json:"default,omitempty"`
	// EnvCoreType is OPENBLAS_CORETYPE as the bench found it ("" unset).
	EnvCoreType string `json:"env_coretype,omitempty"`
	// Forced is the OPENBLAS_CORETYPE the bench set ("" when it set none).
	Forced string `json:"forced,omitempty"`
	// Used is the core the loaded library reports.
	Used string `json:"used,omitempty"`
	// CPU is the newest level this CPU supports.
	CPU string `json:"cpu,omitempty"`
	// Note explains the choice in a sentence (printed under the table).
	Note string `json:"note,omitempty"`
	// Stale is true when the core in use is older than the CPU's level:
	// every ratio against this peer overstates our speed.
	Stale bool `json:"stale,omitempty"`
}

// Peer core policies (Options.PeerCoreType).
const (
	PeerCoreAuto = "auto" // force the CPU's newest core when the default is older
	PeerCoreKeep = "keep" // leave the library's choice, but still flag a stale core
)

// ProbeFunc runs a fresh process that loads OpenBLAS with OPENBLAS_CORETYPE
// set to coretype (unset when "", left as inherited when inherit) and
// returns the core it reports.
type ProbeFunc func(ctx context.Context, coretype string, inherit bool) (ProbeResult, error)

// ProbeResult is what the probe child prints.
type ProbeResult struct {
	Core   string `json:"core"`
	Config string `json:"config"`
}

// choosePeerCore decides which core the peer should run before the library
// loads, and sets OPENBLAS_CORETYPE accordingly. policy is auto, keep or a
// core name to force. probe may be nil (then auto cannot look ahead and the
// loaded core is only checked afterwards).
func choosePeerCore(ctx context.Context, policy string, flags map[string]bool, probe ProbeFunc) PeerCore {
	pc := PeerCore{EnvCoreType: os.Getenv("OPENBLAS_CORETYPE"), CPU: cpuLevel(flags).String()}
	if policy == "" {
		policy = PeerCoreAuto
	}
	if policy != PeerCoreAuto && policy != PeerCoreKeep {
		pc.Forced = policy
		pc.Note = fmt.Sprintf("OPENBLAS_CORETYPE=%s set by --peer-coretype", policy)
		os.Setenv("OPENBLAS_CORETYPE", policy)
		return pc
	}
	if probe == nil {
		pc.Note = "no probe process: the library's own choice of core is used"
		return pc
	}
	def, err := probe(ctx, "", true)
	if err != nil {
		pc.Note = "probing OpenBLAS's core failed (" + err.Error() + "); the library's own choice is used"
		return pc
	}
	pc.Default = def.Core
	want := cpuLevel(flags)
	have := coreLevel(def.Core)
	origin := "its own CPU detection"
	if pc.EnvCoreType != "" {
		origin = "OPENBLAS_CORETYPE=" + pc.EnvCoreType + " inherited from the environment"
	}
	if have == isaUnknown || have >= want {
		pc.Note = fmt.Sprintf("OpenBLAS runs its %s kernels (%s), which match this CPU (%s)", def.Core, origin, want)
		return pc
	}
	if policy == PeerCoreKeep {
		pc.Note = fmt.Sprintf("OpenBLAS runs its %s kernels (%s), older than this CPU (%s); kept by --peer-coretype keep", def.Core, origin, want)
		return pc
	}
	for _, cand := range coreCandidates[want] {
		got, err := probe(ctx, cand, false)
		if err != nil || !strings.EqualFold(got.Core, cand) {
			continue
		}
		pc.Forced = cand
		pc.Note = fmt.Sprintf("OPENBLAS_CORETYPE=%s set by the bench: the library's default, %s (%s), needs only %s and this CPU has %s",
			cand, def.Core, origin, have, want)
		os.Setenv("OPENBLAS_CORETYPE", cand)
		return pc
	}
	pc.Note = fmt.Sprintf("OpenBLAS runs its %s kernels (%s), older than this CPU (%s), and accepts no newer core", def.Core, origin, want)
	return pc
}

// settle records the core the loaded library reports and flags it when it
// is older than the CPU.
func (pc *PeerCore) settle(used string, flags map[string]bool) {
	pc.Used = used
	want, have := cpuLevel(flags), coreLevel(used)
	pc.Stale = have != isaUnknown && have < want
	if pc.Stale && !strings.Contains(pc.Note, "older than this CPU") {
		pc.Note = strings.TrimSpace(pc.Note + fmt.Sprintf("; the loaded library runs %s kernels, older than this CPU (%s)", used, want))
	}
}

// implausibleRatio is the ours/peer ratio above which a row is flagged:
// against a tuned BLAS on the same cores, more than 1.5x means the peer is
// not running its best kernels (or ours is wrong).
const implausibleRatio = 1.5

// checkPlausible adds a warning to a row whose ratio against a BLAS peer is
// implausible: above implausibleRatio times what the two sides' arithmetic
// allows (peakRatio: 1 for fp32 against fp32, 2 for bf16 dot products,
// which do twice the work per instruction, against an fp32 peer).
func checkPlausible(r *Row, peakRatio float64) {
	limit := implausibleRatio * peakRatio
	if r.Ratio <= limit {
		return
	}
	w := fmt.Sprintf("ours/peer %.2fx is above %.1fx, implausible against a tuned BLAS on the same cores", r.Ratio, limit)
	if r.PeerKernel != "" {
		w += "; the peer ran its " + r.PeerKernel + " kernels: check that they suit this CPU and that the machine was quiet (a loaded machine hurts OpenBLAS's fixed thread split more than ours)"
	}
	r.Warning = appendSentence(r.Warning, w)
}

func appendSentence(s, t string) string {
	if s == "" {
		return t
	}
	return s + "; " + t
}

// ProbeOpenBLAS loads OpenBLAS in this process and writes the core it picked
// as one JSON line: the body of the probe child.
func ProbeOpenBLAS(w io.Writer) error {
	core, cfg, err := openBLASCore()
	if err != nil {
		return err
	}
	return json.NewEncoder(w).Encode(ProbeResult{Core: core, Config: cfg})
}

// peer is the OpenBLAS core decision of this process: made once, before
// the library loads, since the core cannot change afterwards.
var peer struct {
	sync.Mutex
	prepared bool
	core     PeerCore
}

// preparePeer chooses the peer's core (choosePeerCore), loads the library
// and returns a "peer" row that says which core it runs and why.
func preparePeer(ctx context.Context, opt Options, m Machine) Row {
	peer.Lock()
	if !peer.prepared {
		peer.core = choosePeerCore(ctx, opt.PeerCoreType, m.Flags, opt.Probe)
		peer.prepared = true
	}
	peer.Unlock()
	row := Row{Name: "peer", Extra: map[string]any{}}
	ob := attachPeer(&row, opt, opt.threads(), "")
	if ob == nil {
		return row
	}
	pc := peerCore()
	row.Extra["default_kernel"] = pc.Default
	row.Extra["env_coretype"] = pc.EnvCoreType
	row.Extra["forced_coretype"] = pc.Forced
	row.Extra["cpu_level"] = pc.CPU
	row.Extra["note"] = pc.Note
	return row
}

// peerCore is the settled core decision (after the library loaded).
func peerCore() PeerCore {
	peer.Lock()
	defer peer.Unlock()
	return peer.core
}

// settlePeer records the core of the loaded library, once.
func settlePeer(used string) PeerCore {
	peer.Lock()
	defer peer.Unlock()
	if peer.core.Used == "" && used != "" {
		if !peer.prepared {
			peer.core = PeerCore{EnvCoreType: os.Getenv("OPENBLAS_CORETYPE"), CPU: cpuLevel(DescribeMachine().Flags).String(),
				Note: "the library's own choice of core (no probe ran)"}
			peer.prepared = true
		}
		peer.core.settle(used, DescribeMachine().Flags)
	}
	return peer.core
}

// ProbeEnv is the environment for a probe child: environ, less any
// OPENBLAS_CORETYPE unless inherit, plus OPENBLAS_CORETYPE=coretype when set.
func ProbeEnv(environ []string, coretype string, inherit bool) []string {
	var env []string
	for _, kv := range environ {
		if !inherit && strings.HasPrefix(kv, "OPENBLAS_CORETYPE=") {
			continue
		}
		env = append(env, kv)
	}
	if coretype != "" {
		env = append(env, "OPENBLAS_CORETYPE="+coretype)
	}
	return env
}

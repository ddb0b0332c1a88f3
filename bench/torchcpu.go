package bench

// The PyTorch CPU peer of the QLoRA step rows: the same Llama block stack
// with LoRA on the same linears, in fp32 (torch has no NF4 on the CPU, so
// its frozen base is fp32), timed by bench/peers/torch_peers.py --device cpu
// in a child Python process, with OPENBLAS_CORETYPE set to the kernels the
// sgemm peer runs (Debian's torch does its products through OpenBLAS).

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/opencluster/opencluster/train"
)

//go:embed peers/torch_peers.py
var torchPeersScript []byte

// DefaultTorchPython is Debian's interpreter, where python3-torch installs
// (scripts/install-bench-deps.sh).
const DefaultTorchPython = "/usr/bin/python3"

// TorchPeer runs the PyTorch CPU peer. The zero value is not usable; a nil
// *TorchPeer means no peer.
type TorchPeer struct {
	// Python is the interpreter that imports torch.
	Python  string
	Threads int
	Quick   bool

	mu   sync.Mutex
	done map[string]torchResult // by preset: one run serves its rows
}

type torchResult struct {
	tokensPerS float64
	extra      map[string]any
	err        error
}

// LoRAStep returns the peer's tokens/s for preset's LoRA step, running it
// once per preset, and what the peer row said.
func (tp *TorchPeer) LoRAStep(ctx context.Context, preset string, cfg train.Config) (float64, map[string]any, error) {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	if r, ok := tp.done[preset]; ok {
		return r.tokensPerS, r.extra, r.err
	}
	tok, extra, err := tp.run(ctx, preset, cfg)
	if tp.done == nil {
		tp.done = map[string]torchResult{}
	}
	tp.done[preset] = torchResult{tok, extra, err}
	return tok, extra, err
}

func (tp *TorchPeer) run(ctx context.Context, preset string, cfg train.Config) (float64, map[string]any, error) {
	dir, err := os.MkdirTemp("", "opencluster-torch-peer-")
	if err != nil {
		return 0, nil, err
	}
	defer os.RemoveAll(dir)
	script := filepath.Join(dir, "torch_peers.py")
	if err := os.WriteFile(script, torchPeersScript, 0o644); err != nil {
		return 0, nil, err
	}
	m := cfg.Model
	shape, _ := json.Marshal(map[string]any{
		"name": preset, "vocab_size": m.VocabSize, "dim": m.Dim, "n_layers": m.Layers, "n_heads": m.Heads,
		"n_kv_heads": m.KVHeads, "hidden_dim": m.HiddenDim, "rope_theta": m.RopeTheta, "norm_eps": m.NormEps,
		"seq_len": cfg.Train.SeqLen, "batch_size": cfg.Train.BatchSize, "rank": cfg.LoRA.Rank,
		"alpha": cfg.LoRA.Alpha, "targets": cfg.LoRA.Targets,
	})
	args := []string{script, "--device", "cpu", "--only", "lora", "--threads", strconv.Itoa(threadsOf(tp.Threads)), "--shape", string(shape)}
	if tp.Quick {
		args = append(args, "--quick")
	}
	cmd := exec.CommandContext(ctx, tp.Python, args...)
	cmd.Env = os.Environ()
	if core := peerCore(); core.Forced != "" {
		cmd.Env = ProbeEnv(cmd.Env, core.Forced, false)
	}
	if os.Getenv("OMP_WAIT_POLICY") == "" {
		// torch's OpenMP threads busy-wait after each parallel region and
		// then compete with OpenBLAS's own threads for the cores: on this
		// 2-core machine an elementwise op ran 60x slower (12 ms against
		// 0.2 ms for a 2M-element multiply). Passive waiting is the peer's
		// better setting.
		cmd.Env = append(cmd.Env, "OMP_WAIT_POLICY=PASSIVE")
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := lastLine(stderr.String())
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			msg = "no " + tp.Python
		}
		return 0, nil, fmt.Errorf("PyTorch peer (%s): %v: %s (scripts/install-bench-deps.sh installs Debian's python3-torch)", tp.Python, err, msg)
	}
	var r Row
	if err := json.Unmarshal([]byte(lastLine(stdout.String())), &r); err != nil {
		return 0, nil, fmt.Errorf("PyTorch peer printed %q: %w", lastLine(stdout.String()), err)
	}
	if r.Error != "" {
		return 0, nil, fmt.Errorf("PyTorch peer: %s", r.Error)
	}
	tok, _ := r.Extra["tokens_per_s"].(float64)
	if !(tok > 0) {
		return 0, nil, fmt.Errorf("PyTorch peer printed no tokens_per_s: %s", lastLine(stdout.String()))
	}
	return tok, r.Extra, nil
}

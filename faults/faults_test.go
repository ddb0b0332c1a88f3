package faults

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opencluster/opencluster/compress"
	"github.com/opencluster/opencluster/configs"
	"github.com/opencluster/opencluster/coordinator"
	"github.com/opencluster/opencluster/coordinator/ledger"
	"github.com/opencluster/opencluster/internal/testbin"
	"github.com/opencluster/opencluster/netclient"
	"github.com/opencluster/opencluster/protocol"
)

// bin is the opencluster binary TestMain builds (without -race: the
// children are the system under test, the race detector is for this
// process's own code).
var bin string

func TestMain(m *testing.M) { testbin.Main(m, "../cmd/opencluster", &bin) }

// Each test's scale: small enough that a round takes about a second on 2
// cores, big enough that updates are real (every LoRA tensor of the tiny
// preset, compressed with the demo's codec).
const (
	nWorkers   = 3
	nRounds    = 2
	localSteps = 3
	codec      = "topk:0.05+q4:64"
	testLimit  = 90 * time.Second
)

// cluster is one coordinator and its workers, all child processes.
type cluster struct {
	t       *testing.T
	ctx     context.Context
	dir     string
	coord   string // coordinator state dir
	addr    string // 127.0.0.1:PORT, kept across coordinator restarts
	url     string
	hc      *http.Client
	base    string
	coordP  *proc
	workers []*proc
}

// proc is a child process with its output kept for failure reports.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// kill9 sends SIGKILL and waits for the process to be gone.
func (p *proc) kill9(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 %s: %v", p.name, err)
	}
	<-p.done
}

// stop sends SIGTERM, then SIGKILL after a grace period.
func (p *proc) stop() {
	if !p.running() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

func (c *cluster) start(name string, env []string, args ...string) *proc {
	c.t.Helper()
	cmd := exec.Command(bin, append(args, "--log-level", "warn", "--device", "cpu")...)
	cmd.Env = append(os.Environ(), env...)
	p := &proc{name: name, cmd: cmd, out: &lockedBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("start %s: %v", name, err)
	}
	go func() { cmd.Wait(); close(p.done) }()
	c.t.Cleanup(p.stop)
	return p
}

// newCluster writes the data, a base model and the coordinator's config
// (rounds holds keys that override its round policy), and starts the
// coordinator with coordEnv added to its environment.
func newCluster(t *testing.T, rounds map[string]any, coordEnv ...string) *cluster {
	if testing.Short() {
		t.Skip("fault tests start real processes; skipped with -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), testLimit)
	t.Cleanup(cancel)
	dir := t.TempDir()
	c := &cluster{t: t, ctx: ctx, dir: dir, coord: filepath.Join(dir, "coordinator")}
	for i := range nWorkers {
		writeText(t, filepath.Join(dir, "data", fmt.Sprint(i)), uint64(i))
	}
	// A base to share: the tiny preset after a few pretraining steps.
	c.base = filepath.Join(dir, "base.safetensors")
	pre := exec.CommandContext(ctx, bin, "pretrain", "--config", "tiny", "--data", filepath.Join(dir, "data", "0"),
		"--steps", "2", "--batch-size", "4", "--out", c.base, "--log-level", "warn", "--device", "cpu")
	if out, err := pre.CombinedOutput(); err != nil {
		t.Fatalf("pretrain the base: %v\n%s", err, out)
	}
	// The port is picked once so a restarted coordinator keeps its URL.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c.addr = ln.Addr().String()
	ln.Close()
	c.url = "https://" + c.addr
	if err := os.MkdirAll(c.coord, 0o755); err != nil {
		t.Fatal(err)
	}
	writeCoordinatorConfig(t, filepath.Join(c.coord, "coordinator.yaml"), c.base, rounds)
	// The workers share this machine with each other (and with other
	// tests): the budget must not pause them as "the owner is active".
	if err := os.WriteFile(filepath.Join(dir, "worker.yaml"), []byte("budget:\n  pause_when_user_active: false\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c.startCoordinator(coordEnv...)
	hc, err := netclient.NewHTTPClient(c.url, netclient.TLSOptions{CAFile: filepath.Join(c.coord, "tls.crt")})
	if err != nil {
		t.Fatal(err)
	}
	c.hc = hc
	t.Cleanup(hc.CloseIdleConnections)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("coordinator output:\n%s", c.coordP.out)
			for _, w := range c.workers {
				t.Logf("%s output (last 4 KB):\n%s", w.name, tail(w.out.String(), 4096))
			}
		}
	})
	return c
}

// startCoordinator runs `opencluster coordinator` on c.coord, with env
// added to its environment, and waits for its listening line.
func (c *cluster) startCoordinator(env ...string) {
	c.t.Helper()
	c.coordP = c.start("coordinator", env, "coordinator", "--dir", c.coord,
		"--config", filepath.Join(c.coord, "coordinator.yaml"), "--listen", c.addr)
	c.waitFor("the coordinator to listen", func() bool {
		return strings.Contains(c.coordP.out.String(), "listening on "+c.url)
	})
}

// startWorker runs worker i on its own data and state directory,
// trusting the coordinator's self-signed certificate with --ca.
func (c *cluster) startWorker(i int, env ...string) *proc {
	c.t.Helper()
	w := c.start(fmt.Sprintf("worker %d", i), env, "worker", "--coordinator", c.url,
		"--ca", filepath.Join(c.coord, "tls.crt"), "--data", filepath.Join(c.dir, "data", fmt.Sprint(i)),
		"--state", filepath.Join(c.dir, "workers", fmt.Sprint(i)), "--config", filepath.Join(c.dir, "worker.yaml"), "--json", "--threads", "1",
		"--poll", "2s", "--name", fmt.Sprintf("fault-%d", i))
	if i < len(c.workers) {
		c.workers[i] = w
	} else {
		c.workers = append(c.workers, w)
	}
	return w
}

// waitFor polls cond until it holds or the test's time is up.
func (c *cluster) waitFor(what string, cond func() bool) {
	c.t.Helper()
	for !cond() {
		if c.ctx.Err() != nil {
			c.t.Fatalf("timed out waiting for %s", what)
		}
		if c.coordP != nil && !c.coordP.running() {
			c.t.Fatalf("waiting for %s: the coordinator exited:\n%s", what, c.coordP.out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// status is the coordinator's GET /v1/status, or ok false while it is down.
func (c *cluster) status() (coordinator.Status, bool) {
	ctx, cancel := context.WithTimeout(c.ctx, 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.url+"/v1/status", nil)
	resp, err := c.hc.Do(req)
	if err != nil {
		return coordinator.Status{}, false
	}
	defer resp.Body.Close()
	var s coordinator.Status
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&s) != nil {
		return coordinator.Status{}, false
	}
	return s, true
}

// stalled reports whether worker w's test hook held back its upload.
func stalled(w *proc) bool { return strings.Contains(w.out.String(), "upload stalled after") }

// storedUpdates lists the update files the coordinator keeps (named by
// their SHA-256).
func (c *cluster) storedUpdates() map[string]bool {
	ents, _ := os.ReadDir(filepath.Join(c.coord, "updates"))
	m := map[string]bool{}
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), ".") {
			m[e.Name()] = true
		}
	}
	return m
}

// finish waits for the last round, stops everything and checks the
// ledger: nRounds records, a full cohort accepted in every round, every
// update in keep accepted in round 1, and `ledger verify
// --coordinator-dir` passing with every aggregate recomputed.
func (c *cluster) finish(keep map[string]bool) []ledger.Record {
	c.t.Helper()
	c.waitFor("the last round to close", func() bool {
		s, ok := c.status()
		return ok && s.Done && s.LedgerRecords == nRounds
	})
	for _, w := range c.workers {
		w.stop()
	}
	c.coordP.stop()
	path := filepath.Join(c.coord, "ledger.jsonl")
	recs, err := ledger.VerifyFile(path, ledger.VerifyOptions{})
	if err != nil {
		c.t.Fatalf("ledger: %v", err)
	}
	if len(recs) != nRounds {
		c.t.Fatalf("ledger has %d records, want %d", len(recs), nRounds)
	}
	for _, r := range recs {
		accepted := map[string]bool{}
		for _, u := range r.Updates {
			if u.Accepted {
				if accepted[u.WorkerID] {
					c.t.Errorf("round %d: worker %s has two accepted updates", r.Round, u.WorkerID)
				}
				accepted[u.WorkerID] = true
			}
		}
		if len(accepted) != nWorkers {
			c.t.Errorf("round %d: %d workers' updates accepted, want all %d: %+v", r.Round, len(accepted), nWorkers, r.Updates)
		}
	}
	for h := range keep {
		found := false
		for _, u := range recs[0].Updates {
			found = found || (u.UpdateHash == h && u.Accepted)
		}
		if !found {
			c.t.Errorf("update %s, accepted before the fault, is not accepted in round 1's record", h)
		}
	}
	out, err := exec.CommandContext(c.ctx, bin, "ledger", "verify", "--coordinator-dir", c.coord, "--log-level", "warn").CombinedOutput()
	if err != nil || !strings.Contains(string(out), fmt.Sprintf("%d of %d aggregates recomputed", nRounds, nRounds)) {
		c.t.Fatalf("ledger verify --coordinator-dir: %v\n%s", err, out)
	}
	c.t.Logf("%s", bytes.TrimSpace(out))
	return recs
}

// TestFaultWorkerKilledMidUpload: a worker is killed (SIGKILL) with part
// of its update on the wire and restarted on the same state directory; it
// resends the update it stored before uploading, the round closes with
// the whole cohort, and the updates accepted before the kill are kept.
func TestFaultWorkerKilledMidUpload(t *testing.T) {
	c := newCluster(t, nil)
	c.startWorker(0)
	c.startWorker(1)
	victim := c.startWorker(2, "OPENCLUSTER_TEST_STALL_UPLOAD=100")
	var before coordinator.Status
	c.waitFor("two updates accepted and worker 2's upload stalled", func() bool {
		s, ok := c.status()
		before = s
		return ok && s.Round == 1 && s.Accepted == 2 && stalled(victim)
	})
	keep := c.storedUpdates()
	if len(keep) != 2 {
		t.Fatalf("the coordinator stores %d updates before the kill, want 2", len(keep))
	}
	victim.kill9(t)
	if s, ok := c.status(); !ok || s.Round != 1 || s.Accepted != 2 || s.State != coordinator.StateCollecting {
		t.Fatalf("after the worker's kill: status %+v (ok %v); want round 1 still collecting with 2 accepted (was %+v)", s, ok, before)
	}
	c.startWorker(2) // same state: the stored update for round 1 is resent
	recs := c.finish(keep)
	if recs[0].Round != 1 {
		t.Errorf("first record is round %d", recs[0].Round)
	}
	if !doneRound(c.workers[2].out.String(), 1) {
		t.Errorf("the restarted worker did not finish round 1:\n%s", tail(c.workers[2].out.String(), 2048))
	}

	// ledger verify --coordinator-dir pins the directory's key: with
	// another coordinator's key in the directory, the ledger fails.
	pubPath := filepath.Join(c.coord, "coordinator.pub")
	pubPEM, err := os.ReadFile(pubPath)
	if err != nil {
		t.Fatalf("the coordinator did not write its public key: %v", err)
	}
	keyDir := t.TempDir()
	foreign, _, err := protocol.LoadOrCreateKey(filepath.Join(keyDir, "k"))
	if err != nil {
		t.Fatal(err)
	}
	protocol.SavePublicKey(pubPath, foreign.Public().(ed25519.PublicKey))
	os.Rename(filepath.Join(c.coord, "coordinator.key"), filepath.Join(keyDir, "coordinator.key"))
	out, err := exec.CommandContext(c.ctx, bin, "ledger", "verify", "--coordinator-dir", c.coord).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "signed by coordinator key") {
		t.Errorf("ledger verify --coordinator-dir with another key in the directory: %v\n%s", err, out)
	}
	os.WriteFile(pubPath, pubPEM, 0o644)

	// Every record states the policy it was aggregated under, so a
	// verifier holding another config (another server learning rate)
	// still recomputes every round...
	cfgPath := filepath.Join(c.coord, "coordinator.yaml")
	b, _ := os.ReadFile(cfgPath)
	other := filepath.Join(c.dir, "other-lr.yaml")
	os.WriteFile(other, bytes.Replace(b, []byte(`"max_rounds"`), []byte(`"optimizer": {"kind": "fedavg", "lr": 0.5}, "max_rounds"`), 1), 0o644)
	out, err = exec.CommandContext(c.ctx, bin, "ledger", "verify", "--coordinator-dir", c.coord, "--config", other).CombinedOutput()
	if err != nil || !strings.Contains(string(out), fmt.Sprintf("%d of %d aggregates recomputed", nRounds, nRounds)) {
		t.Errorf("ledger verify with another server lr in the verifier's config: %v\n%s", err, out)
	}
	// ...and the recomputation really compares: round 1's record with its
	// stated server lr changed and re-signed with the coordinator's key no
	// longer gives the recorded adapter.
	key, _, err := protocol.LoadOrCreateKey(filepath.Join(keyDir, "coordinator.key"))
	if err != nil {
		t.Fatal(err)
	}
	recs[0].Aggregation.Params["lr"] = 0.5
	var lines bytes.Buffer
	for i := range recs {
		var prev *ledger.Record
		if i > 0 {
			prev = &recs[i-1]
		}
		if err := ledger.Seal(&recs[i], prev, key); err != nil {
			t.Fatal(err)
		}
		line, _ := recs[i].MarshalLine()
		lines.Write(append(line, '\n'))
	}
	resigned := filepath.Join(c.dir, "resigned-ledger.jsonl")
	os.WriteFile(resigned, lines.Bytes(), 0o644)
	out, err = exec.CommandContext(c.ctx, bin, "ledger", "verify", "--coordinator-dir", c.coord, resigned).CombinedOutput()
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "adapter_after mismatch") {
		t.Errorf("ledger verify of a record re-signed with another server lr: %v\n%s", err, out)
	}
}

// TestFaultCoordinatorKilledMidRound: the coordinator is killed (SIGKILL)
// after two of three updates were accepted and restarted on the same
// directory and port; it resumes the round with both updates counted,
// takes the third (the worker's retry) and closes the round.
func TestFaultCoordinatorKilledMidRound(t *testing.T) {
	c := newCluster(t, nil)
	c.startWorker(0)
	c.startWorker(1)
	// Worker 2's first upload hangs half sent, holding the round open
	// with two updates accepted; its retry goes to the new coordinator.
	held := c.startWorker(2, "OPENCLUSTER_TEST_STALL_UPLOAD=100")
	c.waitFor("two updates accepted and worker 2's upload stalled", func() bool {
		s, ok := c.status()
		return ok && s.Round == 1 && s.Accepted == 2 && stalled(held)
	})
	keep := c.storedUpdates()
	if len(keep) != 2 {
		t.Fatalf("the coordinator stores %d updates before the kill, want 2", len(keep))
	}
	c.coordP.kill9(t)
	c.startCoordinator()
	s, ok := c.status()
	if !ok || s.Round != 1 || s.Accepted < 2 {
		t.Fatalf("after the restart: status %+v (ok %v); want round 1 with at least the 2 updates accepted before the kill", s, ok)
	}
	recs := c.finish(keep)
	if recs[0].Round != 1 || len(recs[0].Cohort) != nWorkers {
		t.Errorf("round 1 record: round %d, cohort %v", recs[0].Round, recs[0].Cohort)
	}
}

// TestFaultCoordinatorKilledBetweenCloseAndOpen: the coordinator is
// killed (SIGKILL) right after it stored round 1 as closed and before it
// created round 2 (a test hook stops it there). Restarted, it must open
// round 2 on round 1's result and its server-momentum state, so the
// record it signs for round 2 recomputes from the stored updates.
func TestFaultCoordinatorKilledBetweenCloseAndOpen(t *testing.T) {
	c := newCluster(t, map[string]any{"optimizer": map[string]any{"kind": "nesterov", "lr": 0.7, "momentum": 0.9}},
		"OPENCLUSTER_TEST_PAUSE_AFTER_CLOSE=1")
	for i := range nWorkers {
		c.startWorker(i)
	}
	c.waitFor("the coordinator to stop between closing round 1 and opening round 2", func() bool {
		return strings.Contains(c.coordP.out.String(), "paused after closing round 1")
	})
	c.coordP.kill9(t)
	c.startCoordinator()
	recs := c.finish(nil)
	if recs[1].AdapterBefore != recs[0].AdapterAfter || recs[1].Aggregation.Options["opt_state_before"] != recs[0].Aggregation.Options["opt_state_after"] {
		t.Errorf("round 2 does not start where round 1 ended: %+v", recs)
	}
}

// TestFaultPoisoningWorker: one worker of the federation is hostile: every
// update it sends has each travelling value set to +-1e30 (correctly
// encoded and signed). With the shipped norm policy (the adaptive bound,
// clip) its updates are clipped to the bound in every round, the adapter
// stays finite and moves no more than the bound, and the run finishes
// with every aggregate recomputed.
func TestFaultPoisoningWorker(t *testing.T) {
	c := newCluster(t, nil)
	c.startWorker(0)
	c.startWorker(1)
	hostile := c.startWorker(2, "OPENCLUSTER_TEST_POISON_UPDATES=1e30")
	recs := c.finish(nil)
	if !strings.Contains(hostile.out.String(), "poisoned an update") {
		t.Fatalf("the hostile worker's hook never ran:\n%s", tail(hostile.out.String(), 2048))
	}
	hostileID := ""
	for _, r := range recs {
		bound := r.Aggregation.Params["norm_bound_applied"]
		if r.Aggregation.Options["result"] != "ok" || bound <= 0 {
			t.Fatalf("round %d: result %q, bound %v", r.Round, r.Aggregation.Options["result"], bound)
		}
		clipped := 0
		for _, e := range r.Updates {
			b, err := os.ReadFile(filepath.Join(c.coord, "updates", e.UpdateHash))
			if err != nil {
				t.Fatal(err)
			}
			u, err := protocol.UnmarshalUpdate(b, compress.MaxN)
			if err != nil {
				t.Fatal(err)
			}
			if norm := coordinator.L2Norm(u.Delta); norm > bound {
				clipped++
				hostileID = e.WorkerID
				if norm < 1e30 {
					t.Errorf("round %d: an update of norm %.3g (not the hostile one) is over the bound %.3g", r.Round, norm, bound)
				}
			}
		}
		if clipped != 1 {
			t.Errorf("round %d: %d updates over the bound %.3g, want the hostile worker's alone", r.Round, clipped, bound)
		}
		before, after := c.adapterBlob(r.AdapterBefore), c.adapterBlob(r.AdapterAfter)
		var move float64
		for i := range after {
			if math.IsNaN(float64(after[i])) || math.IsInf(float64(after[i]), 0) {
				t.Fatalf("round %d: adapter element %d is %v", r.Round, i, after[i])
			}
			d := float64(after[i] - before[i])
			move += d * d
		}
		if move = math.Sqrt(move); move > bound*1.0001 {
			t.Errorf("round %d: the adapter moved by %.4g, more than the bound %.4g", r.Round, move, bound)
		}
		t.Logf("round %d: bound %.4g, adapter moved by %.4g, hostile worker %s clipped", r.Round, bound, move, hostileID)
	}
}

// adapterBlob reads an adapter vector from the coordinator's blobs.
func (c *cluster) adapterBlob(hash string) []float32 {
	c.t.Helper()
	b, err := os.ReadFile(filepath.Join(c.coord, "blobs", hash))
	if err != nil {
		c.t.Fatal(err)
	}
	v, err := coordinator.DecodeAdapter(b, len(b)/4)
	if err != nil {
		c.t.Fatal(err)
	}
	return v
}

// writeCoordinatorConfig writes the coordinator's config: the tiny
// preset's adapter shapes, a cohort of every worker that closes when all
// of them delivered, short local training, no rate limit (every worker
// shares 127.0.0.1), and the round keys in extra.
func writeCoordinatorConfig(t *testing.T, path, base string, extra map[string]any) {
	t.Helper()
	tc, err := configs.TrainConfig("tiny")
	if err != nil {
		t.Fatal(err)
	}
	cfg := map[string]any{
		"base_model": base, "rate_per_second": 0, "tick": "100ms",
		"rounds": map[string]any{
			"model": "tiny", "shapes": netclient.AdapterShapes(tc.Model, tc.LoRA),
			"cohort_size": nWorkers, "quorum": nWorkers, "min_workers": nWorkers, "min_updates": nWorkers,
			"round_timeout": "60s", "max_rounds": nRounds,
			"recipe": map[string]any{"steps": localSteps, "lr": 1e-2, "batch_tokens": 4 * tc.Train.SeqLen, "codec": codec, "momentum": 0},
		},
	}
	for k, v := range extra {
		cfg["rounds"].(map[string]any)[k] = v
	}
	j, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, j, 0o644); err != nil {
		t.Fatal(err)
	}
}

// writeText writes about 48 KB of text in a worker's own style to dir.
func writeText(t *testing.T, dir string, seed uint64) {
	t.Helper()
	words := []string{"the worker", "a volunteer", "the model", "trains", "sends", "keeps", "the adapter", "its data", "an update",
		"round", "coordinator", "ledger", "signs", "compresses", "verifies"}
	r := rand.New(rand.NewPCG(seed, 7))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for f := range 3 {
		var b bytes.Buffer
		w := bufio.NewWriter(&b)
		for b.Len()+w.Buffered() < 16<<10 {
			fmt.Fprintf(w, "%s %s %s %d.\n", words[r.IntN(len(words))], words[r.IntN(len(words))], words[(int(seed)+r.IntN(3))%len(words)], r.IntN(100))
		}
		w.Flush()
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("doc%d.txt", f)), b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// doneRound reports whether a worker's --json output has a done event for round.
func doneRound(out string, round uint64) bool {
	for _, line := range strings.Split(out, "\n") {
		var e netclient.Event
		if json.Unmarshal([]byte(line), &e) == nil && e.Phase == netclient.PhaseDone && e.Round == round {
			return true
		}
	}
	return false
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

var _ io.Writer = (*lockedBuffer)(nil)

//go:build uitest

package uitest

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// startProc starts the opencluster binary and returns the first stdout
// line that contains marker; the rest of stdout is discarded.
func startProc(t *testing.T, marker string, args ...string) (*exec.Cmd, string) {
	t.Helper()
	bin := os.Getenv("OPENCLUSTER_BIN")
	if bin == "" {
		t.Fatal("OPENCLUSTER_BIN is not set: `make ui-test` builds bin/opencluster and sets it")
	}
	cmd := exec.Command(bin, args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		found := false
		for sc.Scan() {
			if !found && strings.Contains(sc.Text(), marker) {
				found = true
				lines <- sc.Text()
			}
		}
		close(lines)
	}()
	select {
	case l, ok := <-lines:
		if !ok {
			t.Fatalf("opencluster %s exited before printing %q", args[0], marker)
		}
		return cmd, l
	case <-time.After(5 * time.Minute):
		t.Fatalf("opencluster %s: no %q line in 5 minutes", args[0], marker)
	}
	return nil, ""
}

// certSPKI returns the base64 SHA-256 of a PEM certificate's public key,
// what Chromium's --ignore-certificate-errors-spki-list pins, and a pool
// holding it.
func certSPKI(t *testing.T, path string) (string, *x509.CertPool) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return base64.StdEncoding.EncodeToString(sum[:]), pool
}

type ledgerLine struct {
	Index   uint64 `json:"index"`
	Updates []struct {
		Bytes    int64   `json:"bytes"`
		FLOPs    float64 `json:"flops"`
		EnergyWh float64 `json:"energy_wh"`
		Accepted bool    `json:"accepted"`
	} `json:"updates"`
}

func TestDashboardLiveCoordinator(t *testing.T) {
	dir := t.TempDir()
	if base := os.Getenv("OPENCLUSTER_DEMO_BASE"); base != "" { // reuse make demo's pretrained base folder
		if files, err := os.ReadDir(base); err == nil {
			os.MkdirAll(filepath.Join(dir, "base"), 0o755)
			for _, f := range files {
				if b, err := os.ReadFile(filepath.Join(base, f.Name())); err == nil {
					os.WriteFile(filepath.Join(dir, "base", f.Name()), b, 0o644)
				}
			}
		}
	}
	const workers, rounds = 3, 3
	// The demo's set-up, shortened: a real coordinator process and worker
	// processes on loopback; two workers chose a country, one did not.
	demo, line := startProc(t, "dashboard: open", "demo", "--workers", strconv.Itoa(workers), "--rounds", strconv.Itoa(rounds),
		"--steps", "30", "--dir", dir, "--device", "cpu", "--log-level", "warn", "--regions", "DE,BR")
	page := strings.Fields(line[strings.Index(line, "https://"):])[0]
	spki, pool := certSPKI(t, filepath.Join(dir, "coordinator", "tls.crt"))
	api := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}

	b := newBrowser(t, spki)
	b.navigate(page)
	b.waitFor("the snapshot", `document.getElementById("source").dataset.value === "live"`, 30*time.Second)
	b.waitFor("the workers", `window.opencluster.state.nodes.size === 3`, 3*time.Minute)
	if n := b.pointsDrawn(); n != workers {
		t.Errorf("%d nodes on the page, want %d", n, workers)
	}
	var placed struct{ Placed, Unplaced int }
	b.eval(`(() => { let p = 0; for (const n of opencluster.state.nodes.values()) if (n.placed) p++; return {placed: p, unplaced: opencluster.state.nodes.size - p}; })()`, &placed)
	if placed.Placed != 2 || placed.Unplaced != 1 {
		t.Errorf("placed %d, unplaced %d; want the 2 workers with --region placed and 1 on the ring", placed.Placed, placed.Unplaced)
	}

	// Watch the rounds run: the phase must change; take the README's
	// screenshot mid-round, once a round has closed (so the panel has figures).
	phases := map[string]bool{}
	shot := ""
	demoDone := make(chan error, 1)
	go func() { demoDone <- demo.Wait() }()
	for done := false; !done; {
		select {
		case err := <-demoDone:
			if err != nil {
				t.Fatalf("demo: %v", err)
			}
			done = true
		case <-time.After(100 * time.Millisecond):
		}
		if done {
			break
		}
		p := b.value("phase")
		phases[p] = true
		// A phase can last less than a poll (secure rounds aggregate in
		// milliseconds): the page's phase log lists each one it saw.
		var logged []string
		b.eval(`[...document.getElementById("phaselog").children].map(li => (li.textContent.match(/^round \d+: (\w+) at/) || [])[1] || "")`, &logged)
		for _, l := range logged {
			if l != "" {
				phases[l] = true
			}
		}
		if shot == "" && (p == "compute" || p == "propagate") && b.value("rounds") == "1" {
			shot = b.screenshot("dashboard-live.png")
		}
	}
	t.Logf("phases the page showed: %v", phases)
	if len(phases) < 3 {
		t.Errorf("the page showed phases %v while %d rounds ran; want the phase to change", phases, rounds)
	}
	if shot == "" {
		t.Error("no mid-round screenshot: the page never showed round 2 in propagate or compute")
	} else if os.Getenv("OPENCLUSTER_UPDATE_SCREENSHOT") != "" {
		png, _ := os.ReadFile(shot)
		if err := os.WriteFile(filepath.Join("..", "..", "docs", "dashboard.png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// The demo stopped its coordinator. Start it again on the same folder
	// (it resumes, with every round closed) behind a loopback proxy that can
	// serve an edited ledger, as a compromised server would.
	coordDir := filepath.Join(dir, "coordinator")
	_, line = startProc(t, "listening on", "coordinator", "--dir", coordDir, "--config", filepath.Join(coordDir, "coordinator.yaml"),
		"--listen", "127.0.0.1:0", "--log-level", "warn", "--device", "cpu")
	target, _ := url.Parse(strings.Fields(line[strings.Index(line, "https://"):])[0])
	var tamper atomic.Bool
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.Transport = api.Transport
	proxy.ModifyResponse = func(r *http.Response) error {
		if !tamper.Load() || r.Request.URL.Path != "/v1/ledger" {
			return nil
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return err
		}
		ls := bytes.Split(body, []byte("\n"))
		ls[1] = bytes.Replace(ls[1], []byte(`"tokens":`), []byte(`"tokens":1`), 1) // record 1 claims more tokens
		body = bytes.Join(ls, []byte("\n"))
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		r.Header.Set("Content-Length", strconv.Itoa(len(body)))
		return nil
	}
	front := httptest.NewServer(proxy)
	defer func() {
		b.navigate("about:blank") // end the page's event stream first
		front.CloseClientConnections()
		front.Close()
	}()

	b.navigate(front.URL + "/")
	b.waitFor("the history", `document.getElementById("rounds").dataset.value === "3"`, 30*time.Second)

	get := func(path string) []byte {
		resp, err := api.Get(target.String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return body
	}
	var st struct {
		Round          uint64 `json:"round"`
		Workers        int    `json:"workers_registered"`
		LedgerRecords  int    `json:"ledger_records"`
		CoordinatorKey string `json:"coordinator_key"`
	}
	json.Unmarshal(get("/v1/status"), &st)
	var up int64
	var flops, wh float64
	for _, l := range bytes.Split(bytes.TrimSpace(get("/v1/ledger")), []byte("\n")) {
		var rec ledgerLine
		if err := json.Unmarshal(l, &rec); err != nil {
			t.Fatal(err)
		}
		for _, u := range rec.Updates {
			up += u.Bytes
			if u.Accepted {
				flops += u.FLOPs
				wh += u.EnergyWh
			}
		}
	}
	eq := func(id string, want float64) {
		got, err := strconv.ParseFloat(b.value(id), 64)
		if err != nil || math.Abs(got-want) > 1e-9*math.Max(1, math.Abs(want)) {
			t.Errorf("panel %s = %q, the API says %v", id, b.value(id), want)
		}
	}
	eq("round", float64(st.Round))
	eq("rounds", float64(st.LedgerRecords))
	eq("online", float64(st.Workers))
	eq("bytesup", float64(up))
	eq("totalflops", flops)
	eq("energy", wh/1000)
	if k := b.value("coordkey"); k != st.CoordinatorKey {
		t.Errorf("page pins key %q, the API's is %q", k, st.CoordinatorKey)
	}
	if n := b.pointsDrawn(); n != workers {
		t.Errorf("after the restart: %d nodes, want %d", n, workers)
	}

	// The in-page ledger check: passes, then flags the edited record 1.
	verify := func() (state, count, bad string) {
		b.eval(`(document.getElementById("verify").click(), true)`, new(bool))
		b.waitFor("the ledger check", `["ok","bad","error"].includes(document.getElementById("verify-result").dataset.state)`, 30*time.Second)
		var r struct{ State, Count, Bad string }
		b.eval(`(() => { const d = document.getElementById("verify-result").dataset; return {state: d.state, count: d.count, bad: d.bad}; })()`, &r)
		return r.State, r.Count, r.Bad
	}
	if s, c, _ := verify(); s != "ok" || c != strconv.Itoa(st.LedgerRecords) {
		t.Errorf("in-page check of the served ledger: %s over %s records, want ok over %d", s, c, st.LedgerRecords)
	}
	tamper.Store(true)
	if s, _, bad := verify(); s != "bad" || bad != "1" {
		t.Errorf("in-page check of a ledger with record 1 edited: %s, flagged %q; want bad at 1", s, bad)
	}
	var flagged []string
	b.eval(`[...document.querySelectorAll("#ledger li.bad")].map((li) => li.dataset.index)`, &flagged)
	if len(flagged) != 1 || flagged[0] != "1" {
		t.Errorf("ledger list marks %v, want record 1", flagged)
	}
	b.screenshot("dashboard-live-tampered.png")
	b.checkClean()
}

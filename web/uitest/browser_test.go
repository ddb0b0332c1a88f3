//go:build uitest

// Package uitest drives the dashboard in Debian's Chromium (headless, a
// fresh profile, no network beyond loopback) with chromedp. Run by
// `make ui-test`; needs scripts/install-chromium.sh and, for the live test,
// OPENCLUSTER_BIN (the built opencluster binary).
package uitest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// outDir is where screenshots go (git-ignored).
func outDir(t testing.TB) string {
	d := os.Getenv("OPENCLUSTER_UI_OUT")
	if d == "" {
		d = "out"
	}
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

// browser is one headless Chromium with a fresh profile, recording every
// request the page makes and every console error.
type browser struct {
	t   testing.TB
	ctx context.Context

	mu       sync.Mutex
	requests []string
	errors   []string
}

func newBrowser(t testing.TB, spki string) *browser {
	t.Helper()
	exe := os.Getenv("CHROMIUM")
	if exe == "" {
		exe = "/usr/bin/chromium"
	}
	if _, err := os.Stat(exe); err != nil {
		t.Fatalf("no Chromium at %s (scripts/install-chromium.sh installs Debian's): %v", exe, err)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(exe),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.WindowSize(1280, 900),
	}
	if spki != "" { // trust exactly the coordinator's self-signed certificate
		opts = append(opts, chromedp.Flag("ignore-certificate-errors-spki-list", spki))
	}
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	b := &browser{t: t}
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithListener(func(ev any) {
		b.mu.Lock()
		defer b.mu.Unlock()
		switch ev := ev.(type) {
		case *network.EventRequestWillBeSent:
			b.requests = append(b.requests, ev.Request.URL)
		case *runtime.EventConsoleAPICalled:
			if ev.Type == runtime.ConsoleAPICalledTypeError || ev.Type == runtime.ConsoleAPICalledTypeWarning {
				var parts []string
				for _, a := range ev.Args {
					parts = append(parts, string(a.Value))
				}
				b.errors = append(b.errors, fmt.Sprintf("console.%s: %s", ev.Type, strings.Join(parts, " ")))
			}
		case *runtime.EventExceptionThrown:
			b.errors = append(b.errors, fmt.Sprintf("exception: %s %+v", ev.ExceptionDetails.Text, ev.ExceptionDetails.Exception))
		case *cdplog.EventEntryAdded:
			if ev.Entry.Level == cdplog.EntryLevelError || ev.Entry.Level == cdplog.EntryLevelWarning {
				b.errors = append(b.errors, fmt.Sprintf("log %s (%s): %s %s", ev.Entry.Level, ev.Entry.Source, ev.Entry.Text, ev.Entry.URL))
			}
		}
	}))
	t.Cleanup(func() { cancel(); cancelA() })
	b.ctx = ctx
	// The first Run starts the browser; it must not carry a timeout.
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start Chromium: %v", err)
	}
	return b
}

// navigate loads u and waits for it.
func (b *browser) navigate(u string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 60*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Navigate(u)); err != nil {
		b.t.Fatalf("navigate %s: %v", u, err)
	}
}

// eval evaluates a JavaScript expression and decodes its JSON value into v.
func (b *browser) eval(expr string, v any) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 60*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`JSON.stringify(`+expr+`)`))
	if err != nil {
		b.t.Fatalf("eval %s: %v", expr, err)
	}
	if err := json.Unmarshal([]byte(s), v); err != nil {
		b.t.Fatalf("eval %s = %s: %v", expr, s, err)
	}
}

// waitFor polls a JavaScript condition until it is true.
func (b *browser) waitFor(what, cond string, timeout time.Duration) {
	b.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var ok bool
		b.eval(`!!(`+cond+`)`, &ok)
		if ok {
			return
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("waited %v for %s (%s)", timeout, what, cond)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// value is the data-value of the element with id.
func (b *browser) value(id string) string {
	b.t.Helper()
	var v string
	b.eval(fmt.Sprintf(`document.getElementById(%q).dataset.value`, id), &v)
	return v
}

func (b *browser) screenshot(name string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 60*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		b.t.Fatal(err)
	}
	p := filepath.Join(outDir(b.t), name)
	if err := os.WriteFile(p, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	return p
}

// checkClean asserts that every request stayed on loopback and that the
// console holds no error or warning.
func (b *browser) checkClean() {
	b.t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.requests) == 0 {
		b.t.Error("no requests recorded: the network listener is not working")
	}
	for _, r := range b.requests {
		u, err := url.Parse(r)
		if err != nil || (u.Scheme != "data" && u.Hostname() != "127.0.0.1") {
			b.t.Errorf("the page requested %s, which is not on this machine's loopback", r)
		}
	}
	for _, e := range b.errors {
		b.t.Errorf("console: %s", e)
	}
}

// pointsDrawn checks the last frame: one point per node, each visible one
// painted in a node colour on the canvas. It returns the node count.
func (b *browser) pointsDrawn() int {
	b.t.Helper()
	var r struct {
		Nodes, Points, Shown, Painted int
	}
	b.eval(`(() => {
		const o = window.opencluster, g = o.globe;
		const cols = new Set(Object.values(o.colors).map((h) => h.toLowerCase()));
		let painted = 0;
		const img = g.ctx.getImageData(0, 0, g.canvas.width, g.canvas.height); // one read-back
		for (const [, x, y] of g.shown) {
			const at = 4 * (Math.round(y * g.dpr) * img.width + Math.round(x * g.dpr));
			const d = img.data.subarray(at, at + 3);
			const hex = "#" + [d[0], d[1], d[2]].map((v) => v.toString(16).padStart(2, "0")).join("");
			if (cols.has(hex)) painted++;
		}
		return {nodes: o.state.nodes.size, points: g.points, shown: g.shown.length, painted};
	})()`, &r)
	if r.Points != r.Nodes {
		b.t.Errorf("the globe placed %d points for %d nodes", r.Points, r.Nodes)
	}
	if r.Shown == 0 || r.Painted < r.Shown*9/10 {
		b.t.Errorf("%d of %d points in view carry a node colour on the canvas", r.Painted, r.Shown)
	}
	return r.Nodes
}

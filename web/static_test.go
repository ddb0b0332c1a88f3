package web

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/opencluster/opencluster/protocol"
)

func TestHandlerServesPageStreamAndAPI(t *testing.T) {
	hub := NewHub(HubOptions{})
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "api "+r.URL.Path) })
	srv := httptest.NewServer(Handler(hub, api))
	defer srv.Close()
	get := func(path string) (*http.Response, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	resp, body := get("/")
	if resp.StatusCode != 200 || !strings.Contains(body, "<html") || !strings.Contains(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET /: %s %q", resp.Status, body[:min(len(body), 200)])
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "connect-src 'self'") || !strings.Contains(csp, "default-src 'none'") {
		t.Errorf("GET /: Content-Security-Policy %q does not keep the page to its own server", csp)
	}
	for _, asset := range []string{"/app.js", "/app.css"} {
		if resp, body := get(asset); resp.StatusCode != 200 || len(body) == 0 {
			t.Errorf("GET %s: %s, %d bytes", asset, resp.Status, len(body))
		}
	}
	if resp, body := get("/v1/status"); resp.StatusCode != 200 || body != "api /v1/status" {
		t.Errorf("GET /v1/status went to %q, want the API", body)
	}
	hub.Emit(protocol.Event{Type: protocol.EventNode, Node: &protocol.NodeEvent{ID: "a", State: protocol.NodeIdle}})
	r, rd := connect(t, srv.URL+"/v1/events", nil)
	defer r.Body.Close()
	if _, e, err := rd.next(); err != nil || e.Type != protocol.EventSnapshot || len(e.Snapshot.Nodes) != 1 {
		t.Fatalf("GET /v1/events: %+v %v", e, err)
	}

	// Without an API (a simulation), other paths are 404.
	srv2 := httptest.NewServer(Handler(hub, nil))
	defer srv2.Close()
	resp2, err := http.Get(srv2.URL + "/v1/ledger")
	if err != nil {
		t.Fatal(err)
	}
	resp2.Body.Close()
	if resp2.StatusCode != 404 {
		t.Errorf("GET /v1/ledger without an API: %s, want 404", resp2.Status)
	}
}

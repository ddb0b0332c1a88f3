package netclient

import (
	"context"
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencluster/opencluster/coordinator"
)

// tlsCoordinator serves /healthz over HTTP/2 with a self-signed
// certificate made the way `opencluster coordinator` makes it, and returns
// the server, its certificate file and the certificate's fingerprint.
func tlsCoordinator(t *testing.T) (*httptest.Server, string, string) {
	t.Helper()
	dir := t.TempDir()
	cfg, created, err := coordinator.LoadOrCreateTLS(dir, "", "", nil)
	if err != nil || !created {
		t.Fatalf("LoadOrCreateTLS: created %v, %v", created, err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(r.Proto))
	}))
	srv.TLS = cfg
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, filepath.Join(dir, "tls.crt"), Fingerprint(cfg.Certificates[0].Certificate[0])
}

// get fetches url with a client made by NewHTTPClient and returns the
// protocol the server saw.
func get(t *testing.T, url string, o TLSOptions) (string, error) {
	t.Helper()
	hc, err := NewHTTPClient(url, o)
	if err != nil {
		return "", err
	}
	defer hc.CloseIdleConnections()
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, url+"/healthz", nil)
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 64)
	n, _ := resp.Body.Read(buf)
	b.Write(buf[:n])
	return b.String(), nil
}

func TestTLSTrustPaths(t *testing.T) {
	srv, certFile, pin := tlsCoordinator(t)
	_, otherCert, otherPin := tlsCoordinator(t) // a different coordinator's certificate
	url := srv.URL                              // https://127.0.0.1:PORT
	localhostURL := strings.Replace(url, "127.0.0.1", "localhost", 1)
	garbage := filepath.Join(t.TempDir(), "garbage.pem")
	os.WriteFile(garbage, []byte("not a certificate\n"), 0o644)

	tests := []struct {
		name    string
		url     string
		o       TLSOptions
		wantErr string // "" means the request must succeed over HTTP/2
	}{
		{"ca file of the coordinator", url, TLSOptions{CAFile: certFile}, ""},
		{"ca file, localhost name in the certificate", localhostURL, TLSOptions{CAFile: certFile}, ""},
		{"pin of the coordinator", url, TLSOptions{Pin: pin}, ""},
		{"pin with colons and upper case", url, TLSOptions{Pin: colons(strings.ToUpper(pin))}, ""},
		{"insecure on loopback", url, TLSOptions{Insecure: true}, ""},
		{"no trust given: unknown self-signed certificate", url, TLSOptions{}, "certificate"},
		{"ca file of another coordinator", url, TLSOptions{CAFile: otherCert}, "certificate"},
		{"pin of another coordinator", url, TLSOptions{Pin: otherPin}, "does not match --pin"},
		{"malformed pin", url, TLSOptions{Pin: "abc"}, "64 hex digits"},
		{"ca file missing", url, TLSOptions{CAFile: filepath.Join(t.TempDir(), "none.pem")}, "--ca"},
		{"ca file without a certificate", url, TLSOptions{CAFile: garbage}, "no PEM certificate"},
		{"two trust options", url, TLSOptions{CAFile: certFile, Pin: pin}, "choose one"},
		{"insecure off loopback", "https://coordinator.example:8443", TLSOptions{Insecure: true}, "loopback"},
		{"plain http off loopback", "http://coordinator.example:8080", TLSOptions{}, "loopback"},
		{"plain http with a pin", "http://127.0.0.1:8080", TLSOptions{Pin: pin}, "need https"},
		{"unknown scheme", "ftp://127.0.0.1:21", TLSOptions{}, "scheme"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			proto, err := get(t, tc.url, tc.o)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("request failed: %v", err)
				}
				if proto != "HTTP/2.0" {
					t.Errorf("server saw %q, want HTTP/2.0", proto)
				}
				return
			}
			if err == nil {
				t.Fatalf("request succeeded; want an error naming %q", tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not name %q", err, tc.wantErr)
			}
		})
	}
}

// TestTLSPinIgnoresSystemRootsButNotTheLeaf: a pin must match the served
// certificate exactly; the --ca path keeps full chain and name checks.
func TestTLSPinIgnoresSystemRootsButNotTheLeaf(t *testing.T) {
	srv, certFile, _ := tlsCoordinator(t)
	hc, err := NewHTTPClient(srv.URL, TLSOptions{Pin: strings.Repeat("0", 64)})
	if err != nil {
		t.Fatal(err)
	}
	tr := hc.Transport.(*http.Transport)
	if !tr.TLSClientConfig.InsecureSkipVerify || tr.TLSClientConfig.VerifyPeerCertificate == nil {
		t.Fatal("a pinned client must check the leaf itself")
	}
	if _, err := hc.Get(srv.URL + "/healthz"); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("zero pin: %v", err)
	}
	// The ca path keeps full verification (name and chain).
	hc, err = NewHTTPClient(srv.URL, TLSOptions{CAFile: certFile})
	if err != nil {
		t.Fatal(err)
	}
	if cfg := hc.Transport.(*http.Transport).TLSClientConfig; cfg.InsecureSkipVerify || cfg.RootCAs == nil || cfg.MinVersion < tls.VersionTLS12 {
		t.Fatalf("--ca client config: skip %v, roots %v, min version %x", cfg.InsecureSkipVerify, cfg.RootCAs != nil, cfg.MinVersion)
	}
}

func colons(hex string) string {
	var b strings.Builder
	for i := 0; i < len(hex); i += 2 {
		if i > 0 {
			b.WriteByte(':')
		}
		b.WriteString(hex[i : i+2])
	}
	return b.String()
}

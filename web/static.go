package web

import (
	"embed"
	"io/fs"
	"net/http"
)

// static holds the built page (scripts/web.sh builds it from web/_ui).
//
//go:embed static
var static embed.FS

// contentPolicy lets the page load only its own files and talk only to the
// server it came from: no CDN, no map tiles, no third party.
const contentPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// Handler serves the dashboard on one mux: the page at /, its assets, and
// hub's event stream at GET /v1/events. Every other path goes to api (the
// coordinator's /v1 API), or is 404 when api is nil (a simulation).
func Handler(hub *Hub, api http.Handler) http.Handler {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.FileServerFS(sub)
	page := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", contentPolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
	mux := http.NewServeMux()
	mux.Handle("GET /{$}", page)
	mux.Handle("GET /app.js", page)
	mux.Handle("GET /app.css", page)
	mux.Handle("GET /v1/events", hub)
	if api != nil {
		mux.Handle("/", api)
	}
	return mux
}

package coordinator

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"github.com/opencluster/opencluster/internal/atomicfile"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/opencluster/opencluster/protocol"
)

// Request signing (docs/protocol.md, "HTTP API"). Every signature is
// ed25519 in standard base64 in the SignatureHeader; the signed message is
// a fixed ASCII prefix followed by the bytes named below, so a signature
// made for one purpose can never be replayed for another.
const (
	// SignatureHeader carries a signature of the body (or, for a poll,
	// of protocol.PollMessage).
	SignatureHeader = protocol.SignatureHeader
	// WorkerHeader, TimeHeader and NonceHeader identify a polling worker.
	WorkerHeader = protocol.WorkerHeader
	TimeHeader   = protocol.TimeHeader
	NonceHeader  = protocol.NonceHeader
	// PoWBitsHeader, on a pow_required refusal of a registration, is the
	// number of leading zero bits the proof of work must have.
	PoWBitsHeader = "X-OpenCluster-PoW-Bits"
	// RegisterPrefix + body: the worker's signature on POST /v1/register.
	RegisterPrefix = "opencluster register v1\n"
	// ResponsePrefix + body: the coordinator's signature on the RoundInfo
	// and RegisterResponse bodies it sends.
	ResponsePrefix = "opencluster response v1\n"
	// PollSkew is how far a poll's time may be from the coordinator's clock.
	PollSkew = 5 * time.Minute
	// MaxWait bounds ?wait= on GET /v1/round.
	MaxWait = 60 * time.Second
)

// ServerOptions tune the HTTP front end.
type ServerOptions struct {
	// RatePerSecond and Burst are each client's token bucket (clients are
	// worker ids once known, else remote IPs). 0 disables limiting.
	RatePerSecond float64
	Burst         int
	// MaxJSONBytes bounds JSON request bodies (register).
	MaxJSONBytes int64
}

// Server is the coordinator's HTTP API; it is an http.Handler.
type Server struct {
	c    *Coordinator
	opts ServerOptions
	mux  *http.ServeMux

	mu      sync.Mutex
	buckets map[string]*bucket
	// polls holds the poll nonces seen and until when they could still
	// verify, so a captured poll cannot be replayed.
	polls map[string]time.Time
}

// maxPollNonces bounds the replay cache; past it, expired nonces are
// swept, and if none expired the poll is refused as busy.
const maxPollNonces = 1 << 18

type bucket struct {
	tokens float64
	last   time.Time
}

// NewServer wraps c in the /v1 API.
func NewServer(c *Coordinator, opts ServerOptions) *Server {
	if opts.MaxJSONBytes <= 0 {
		opts.MaxJSONBytes = 64 << 10
	}
	s := &Server{c: c, opts: opts, mux: http.NewServeMux(), buckets: map[string]*bucket{}, polls: map[string]time.Time{}}
	s.mux.HandleFunc("POST /v1/register", s.register)
	s.mux.HandleFunc("GET /v1/round", s.round)
	s.mux.HandleFunc("GET /v1/blobs/{sha}", s.blob)
	s.mux.HandleFunc("POST /v1/updates", s.upload)
	s.mux.HandleFunc("POST /v1/secagg/{stage}", s.secaggPost)
	s.mux.HandleFunc("GET /v1/secagg/{stage}", s.secaggGet)
	if c.ledger != nil {
		s.mux.Handle("GET /v1/ledger", c.ledger)
	}
	s.mux.HandleFunc("GET /v1/status", s.status)
	s.mux.HandleFunc("GET /metrics", s.metrics)
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "ok\n")
	})
	return s
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// allow takes a token from key's bucket.
func (s *Server) allow(key string) bool {
	if s.opts.RatePerSecond <= 0 {
		return true
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.buckets[key]
	if b == nil {
		if len(s.buckets) > 100000 { // forget idle clients rather than grow without bound
			for k, v := range s.buckets {
				if now.Sub(v.last) > time.Minute {
					delete(s.buckets, k)
				}
			}
		}
		b = &bucket{tokens: float64(s.opts.Burst), last: now}
		s.buckets[key] = b
	}
	b.tokens = min(float64(s.opts.Burst), b.tokens+now.Sub(b.last).Seconds()*s.opts.RatePerSecond)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func writeJSON(w http.ResponseWriter, status int, v any) []byte {
	b, _ := json.Marshal(v)
	b = append(b, '\n')
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(b)
	return b
}

// writeSigned writes v as JSON with the coordinator's signature of the body.
func (s *Server) writeSigned(w http.ResponseWriter, v any) {
	b, _ := json.Marshal(v)
	b = append(b, '\n')
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set(SignatureHeader, base64.StdEncoding.EncodeToString(ed25519.Sign(s.c.key, append([]byte(ResponsePrefix), b...))))
	w.WriteHeader(http.StatusOK)
	w.Write(b)
}

func writeError(w http.ResponseWriter, err error) {
	var re *RejectError
	if errors.As(err, &re) {
		if re.Status == http.StatusTooManyRequests {
			w.Header().Set("Retry-After", "1")
		}
		writeJSON(w, re.Status, protocol.ErrorBody{Error: re.Error()})
		return
	}
	writeJSON(w, http.StatusInternalServerError, protocol.ErrorBody{Error: "internal: " + err.Error()})
}

func (s *Server) rateLimited(w http.ResponseWriter, key string) bool {
	if s.allow(key) {
		return false
	}
	s.c.M.rejected("rate_limited")
	writeError(w, reject(http.StatusTooManyRequests, "rate_limited", "too many requests from %s; retry later", key))
	return true
}

func (s *Server) register(w http.ResponseWriter, r *http.Request) {
	if s.rateLimited(w, "ip:"+remoteIP(r)) {
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.opts.MaxJSONBytes))
	if err != nil {
		writeError(w, reject(http.StatusRequestEntityTooLarge, "too_large", "register body: %v (limit %d bytes)", err, s.opts.MaxJSONBytes))
		return
	}
	var req protocol.RegisterRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, reject(http.StatusBadRequest, "malformed", "register body: %v", err))
		return
	}
	sig, err := base64.StdEncoding.DecodeString(r.Header.Get(SignatureHeader))
	if err != nil || len(sig) != ed25519.SignatureSize {
		writeError(w, reject(http.StatusUnauthorized, "bad_signature", "register: header %s must hold a base64 ed25519 signature of %q + body", SignatureHeader, RegisterPrefix))
		return
	}
	resp, err := s.c.Register(r.Context(), req, body, sig)
	if err != nil {
		var re *RejectError
		if errors.As(err, &re) && re.Code == PoWRequired {
			w.Header().Set(PoWBitsHeader, strconv.Itoa(s.c.admission.PoWBits))
		}
		writeError(w, err)
		return
	}
	s.writeSigned(w, resp)
}

// authWorker checks a signed poll's headers: worker, time within
// PollSkew, a nonce never seen before, and the signature over them, the
// method and the path (protocol.PollMessage).
func (s *Server) authWorker(r *http.Request) (string, error) {
	id, nonce := r.Header.Get(WorkerHeader), r.Header.Get(NonceHeader)
	ts, err := strconv.ParseInt(r.Header.Get(TimeHeader), 10, 64)
	if id == "" || err != nil || len(nonce) != protocol.PollNonceLen || !isHex(nonce) {
		return "", reject(http.StatusUnauthorized, "unauthenticated", "headers %s, %s (unix seconds) and %s (%d hex digits) are required", WorkerHeader, TimeHeader, NonceHeader, protocol.PollNonceLen)
	}
	now := s.c.clock.Now()
	if d := now.Sub(time.Unix(ts, 0)); d > PollSkew || d < -PollSkew {
		return "", reject(http.StatusUnauthorized, "clock_skew", "%s %d is %v from the coordinator's clock (limit %v)", TimeHeader, ts, d.Round(time.Second), PollSkew)
	}
	w, err := s.c.store.Worker(r.Context(), id)
	if errors.Is(err, ErrNotFound) {
		return "", reject(http.StatusForbidden, "unknown_worker", "worker %q is not registered", id)
	}
	if err != nil {
		return "", err
	}
	sig, err := base64.StdEncoding.DecodeString(r.Header.Get(SignatureHeader))
	if err != nil || !ed25519.Verify(w.PublicKey, protocol.PollMessage(id, ts, nonce, r.Method, r.URL.Path), sig) {
		return "", reject(http.StatusUnauthorized, "bad_signature", "poll signature of worker %q does not verify (protocol.PollMessage: id, time, nonce, method, path)", id)
	}
	// Rate-limited before its nonce is kept, so no worker can fill the
	// replay cache.
	if !s.allow("worker:" + id) {
		s.c.M.rejected("rate_limited")
		return "", reject(http.StatusTooManyRequests, "rate_limited", "too many requests from worker %s; retry later", id)
	}
	if err := s.pollOnce(id+"/"+nonce, time.Unix(ts, 0).Add(PollSkew), now); err != nil {
		return "", err
	}
	return id, nil
}

// pollOnce records a poll nonce until it expires, refusing one seen before.
func (s *Server) pollOnce(key string, expires, now time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, seen := s.polls[key]; seen {
		return reject(http.StatusUnauthorized, "replay", "poll nonce %s was already used", key)
	}
	if len(s.polls) >= maxPollNonces {
		for k, exp := range s.polls {
			if now.After(exp) {
				delete(s.polls, k)
			}
		}
		if len(s.polls) >= maxPollNonces {
			return reject(http.StatusServiceUnavailable, "busy", "too many polls in the last %v; retry later", 2*PollSkew)
		}
	}
	s.polls[key] = expires
	return nil
}

func isHex(s string) bool {
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// round is GET /v1/round?wait=30s: the worker's RoundInfo (200), or 204
// when it has nothing to do by the end of the wait.
func (s *Server) round(w http.ResponseWriter, r *http.Request) {
	id, err := s.authWorker(r)
	if err != nil {
		writeError(w, err)
		return
	}
	wait := time.Duration(0)
	if v := r.URL.Query().Get("wait"); v != "" {
		wait, err = time.ParseDuration(v)
		if err != nil || wait < 0 {
			writeError(w, reject(http.StatusBadRequest, "malformed", "wait=%q: want a duration such as 30s", v))
			return
		}
		wait = min(wait, MaxWait)
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		changed := s.c.Changed()
		info, err := s.c.Work(r.Context(), id)
		if err != nil {
			writeError(w, err)
			return
		}
		if info != nil {
			s.writeSigned(w, info)
			return
		}
		select {
		case <-changed:
			continue
		case <-timer.C:
		case <-r.Context().Done():
		}
		st := s.c.Status()
		w.Header().Set("X-OpenCluster-Round", strconv.FormatUint(st.Round, 10))
		w.Header().Set("X-OpenCluster-State", string(st.State))
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(http.StatusNoContent)
		return
	}
}

// blob serves a content-addressed blob with Range support.
func (s *Server) blob(w http.ResponseWriter, r *http.Request) {
	if s.rateLimited(w, "ip:"+remoteIP(r)) {
		return
	}
	sha := r.PathValue("sha")
	if !isHash(sha) {
		writeError(w, reject(http.StatusBadRequest, "malformed", "blob %q: want a lowercase hex SHA-256", sha))
		return
	}
	b, err := s.c.store.Blob(r.Context(), sha)
	if errors.Is(err, ErrNotFound) {
		writeError(w, reject(http.StatusNotFound, "not_found", "no blob %s", sha))
		return
	}
	if err != nil {
		writeError(w, err)
		return
	}
	f, err := s.c.blobs.open(sha)
	if err != nil {
		writeError(w, fmt.Errorf("blob %s: %w", sha, err))
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("ETag", `"`+sha+`"`)
	w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	w.Header().Set("X-OpenCluster-Kind", b.Kind)
	cw := &countingWriter{ResponseWriter: w}
	http.ServeContent(cw, r, "", b.Created, f)
	s.c.ev.served(cw.n)
}

// upload is POST /v1/updates with one binary update as the body.
func (s *Server) upload(w http.ResponseWriter, r *http.Request) {
	defer func(t0 time.Time) { s.c.M.upload.Observe(time.Since(t0).Seconds()) }(time.Now())
	if s.rateLimited(w, "ip:"+remoteIP(r)) {
		return
	}
	limit := s.c.cfg.MaxUpdateBytes
	if r.ContentLength > limit {
		s.c.M.rejected("too_large")
		writeError(w, reject(http.StatusRequestEntityTooLarge, "too_large", "update of %d bytes exceeds max_update_bytes %d", r.ContentLength, limit))
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			s.c.M.rejected("too_large")
			writeError(w, reject(http.StatusRequestEntityTooLarge, "too_large", "update body exceeds max_update_bytes %d", limit))
			return
		}
		s.c.M.rejected("malformed")
		writeError(w, reject(http.StatusBadRequest, "malformed", "reading update body: %v", err))
		return
	}
	resp, err := s.c.Submit(r.Context(), body)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.c.Status())
}

func (s *Server) metrics(w http.ResponseWriter, r *http.Request) {
	s.c.M.Handler().ServeHTTP(w, r)
}

// HTTPServer returns an http.Server for h with the timeouts a public
// endpoint needs (slow-loris headers, stuck bodies, idle connections);
// WriteTimeout leaves room for the longest long-poll.
func HTTPServer(h http.Handler, tlsCfg *tls.Config) *http.Server {
	return &http.Server{
		Handler:           h,
		TLSConfig:         tlsCfg,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       2 * time.Minute,
		WriteTimeout:      MaxWait + 2*time.Minute,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
	}
}

// LoadOrCreateTLS returns the TLS config for the API: the operator's
// certFile/keyFile when given, else DIR/tls.crt and DIR/tls.key, made on
// first start as a self-signed ECDSA P-256 certificate for 127.0.0.1, ::1
// and localhost (plus extraHosts), valid ten years. HTTP/2 is offered
// first. created says whether a certificate was made.
func LoadOrCreateTLS(dir, certFile, keyFile string, extraHosts []string) (cfg *tls.Config, created bool, err error) {
	if (certFile == "") != (keyFile == "") {
		return nil, false, errors.New("coordinator: tls: give both the certificate and the key file, or neither")
	}
	if certFile == "" {
		certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
		if _, err := os.Stat(certFile); errors.Is(err, os.ErrNotExist) {
			if err := makeSelfSigned(certFile, keyFile, extraHosts); err != nil {
				return nil, false, err
			}
			created = true
		}
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, false, fmt.Errorf("coordinator: tls %s, %s: %w", certFile, keyFile, err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}, created, nil
}

func makeSelfSigned(certFile, keyFile string, extraHosts []string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("coordinator: tls key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "opencluster coordinator", Organization: []string{"OpenCluster"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	for _, h := range extraHosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("coordinator: tls certificate: %w", err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return err
	}
	return atomicfile.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

// countingWriter counts the body bytes written (the dashboard's bytes down).
type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (w *countingWriter) Write(b []byte) (int, error) {
	n, err := w.ResponseWriter.Write(b)
	w.n += int64(n)
	return n, err
}

func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

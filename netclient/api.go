package netclient

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/opencluster/opencluster/protocol"
)

// API paths the worker calls, relative to the coordinator URL
// (docs/protocol.md, "HTTP API").
const (
	PathRegister = "/v1/register" // POST RegisterRequest (signed) -> RegisterResponse
	PathRound    = "/v1/round"    // GET ?wait=30s (signed poll) -> RoundInfo, or 204 when no work
	PathBlobs    = "/v1/blobs/"   // GET /v1/blobs/<sha256>, Range supported
	PathUpdates  = "/v1/updates"  // POST signed update -> UploadResponse
	PathLedger   = "/v1/ledger"   // GET ledger.jsonl
	PathStatus   = "/v1/status"   // GET the coordinator's round status
	PathSecAgg   = "/v1/secagg/"  // POST /v1/secagg/<stage> a signed stage message; GET its input (signed poll)
	MediaUpdate  = "application/x-opencluster-update"
)

// Request signing. Every signature is ed25519 in standard base64 in
// SignatureHeader over a fixed prefix and the bytes it covers, so one made
// for one purpose cannot be replayed for another: registration signs
// RegisterPrefix + body (proving the worker holds its key), a poll signs
// protocol.PollMessage (worker id, unix seconds, a fresh nonce, method and
// path; protocol.SignPoll sets the headers), and the coordinator signs
// ResponsePrefix + body of what it answers to both.
const (
	SignatureHeader = protocol.SignatureHeader
	WorkerHeader    = protocol.WorkerHeader
	TimeHeader      = protocol.TimeHeader
	RegisterPrefix  = "opencluster register v1\n"
	ResponsePrefix  = "opencluster response v1\n"
)

// maxJSONBody bounds every JSON answer the worker reads.
const maxJSONBody = 4 << 20

// StatusError is a non-2xx answer from the coordinator.
type StatusError struct {
	Method, URL string
	Code        int
	Message     string // the ErrorBody's error, or the start of the body
	Header      http.Header
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("netclient: %s %s: %d %s: %s", e.Method, e.URL, e.Code, http.StatusText(e.Code), e.Message)
}

// Temporary reports whether retrying the same request may succeed: server
// errors, timeouts and rate limits, not refusals of the request itself.
func (e *StatusError) Temporary() bool {
	return e.Code >= 500 || e.Code == http.StatusRequestTimeout || e.Code == http.StatusTooManyRequests
}

// retryable reports whether err is worth another attempt: network errors
// and temporary status codes, never a cancelled context.
func retryable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var se *StatusError
	if errors.As(err, &se) {
		return se.Temporary()
	}
	var pe *permanentError
	return !errors.As(err, &pe)
}

// permanentError marks a failure no retry will fix (bad data from the server).
type permanentError struct{ err error }

func (p *permanentError) Error() string { return p.err.Error() }
func (p *permanentError) Unwrap() error { return p.err }

// Client speaks the coordinator's HTTP API. Only outbound requests: it
// works behind a home router.
type Client struct {
	Base *url.URL
	HTTP *http.Client
	// UserAgent names the worker build.
	UserAgent string
	// CoordinatorKey, once known, must sign round and registration answers.
	CoordinatorKey ed25519.PublicKey
	// BytesUp and BytesDown count request and response bodies.
	BytesUp, BytesDown int64
}

// NewClient returns a client for the coordinator at base.
func NewClient(base string, hc *http.Client) (*Client, error) {
	u, err := url.Parse(strings.TrimRight(base, "/"))
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, fmt.Errorf("netclient: coordinator URL %q: want https://HOST:PORT", base)
	}
	if hc == nil {
		hc = http.DefaultClient
	}
	return &Client{Base: u, HTTP: hc, UserAgent: "opencluster-worker"}, nil
}

// url resolves a path (possibly with a query) against the base.
func (c *Client) url(p string) string {
	ref, err := url.Parse(p)
	if err != nil {
		return c.Base.String() + p
	}
	if !strings.HasPrefix(ref.Path, "/") { // relative to the API root
		ref.Path = "/" + ref.Path
	}
	u := *c.Base
	u.Path = strings.TrimRight(c.Base.Path, "/") + ref.Path
	u.RawQuery = ref.RawQuery
	return u.String()
}

// do sends one request and decodes a JSON answer into out (when non-nil).
// It returns the status code; 204 leaves out untouched.
func (c *Client) do(ctx context.Context, method, p, ctype string, body []byte, out any) (int, error) {
	return c.doH(ctx, method, p, ctype, body, nil, out)
}

// doH is do with extra request headers.
func (c *Client) doH(ctx context.Context, method, p, ctype string, body []byte, hdr map[string]string, out any) (int, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	u := c.url(p)
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return 0, err
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.UserAgent)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return 0, fmt.Errorf("netclient: %s %s: %w", method, u, err)
	}
	defer resp.Body.Close()
	c.BytesUp += int64(len(body))
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxJSONBody+1))
	c.BytesDown += int64(len(b))
	if err != nil {
		return resp.StatusCode, fmt.Errorf("netclient: %s %s: reading the answer: %w", method, u, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return resp.StatusCode, &StatusError{Method: method, URL: u, Code: resp.StatusCode, Message: errorMessage(b), Header: resp.Header}
	}
	if len(b) > maxJSONBody {
		return resp.StatusCode, &permanentError{fmt.Errorf("netclient: %s %s: answer larger than %d bytes", method, u, maxJSONBody)}
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return resp.StatusCode, nil
	}
	if raw, ok := out.(*[]byte); ok { // a binary answer (secure-aggregation inputs)
		*raw = b
		return resp.StatusCode, nil
	}
	if c.CoordinatorKey != nil && (p == PathRegister || strings.HasPrefix(p, PathRound)) {
		sig, _ := base64.StdEncoding.DecodeString(resp.Header.Get(SignatureHeader))
		if !ed25519.Verify(c.CoordinatorKey, append([]byte(ResponsePrefix), b...), sig) {
			return resp.StatusCode, fmt.Errorf("netclient: %s %s: the answer is not signed by the coordinator's key", method, u)
		}
	}
	if err := json.Unmarshal(b, out); err != nil {
		return resp.StatusCode, &permanentError{fmt.Errorf("netclient: %s %s: bad JSON answer: %w", method, u, err)}
	}
	return resp.StatusCode, nil
}

// errorMessage extracts ErrorBody.Error, or the start of a non-JSON body.
func errorMessage(b []byte) string {
	var eb protocol.ErrorBody
	if json.Unmarshal(b, &eb) == nil && eb.Error != "" {
		return eb.Error
	}
	s := strings.TrimSpace(string(b))
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

// Register introduces the worker's key (signing the request with it, to
// prove possession) and returns its id. When the coordinator asks for a
// proof of work (403 pow_required with PoWBitsHeader) it solves one, up
// to protocol.MaxPoWBits, and asks again.
func (c *Client) Register(ctx context.Context, req protocol.RegisterRequest, key ed25519.PrivateKey) (protocol.RegisterResponse, error) {
	resp, err := c.register(ctx, req, key)
	var se *StatusError
	if errors.As(err, &se) && se.Code == http.StatusForbidden && strings.HasPrefix(se.Message, PoWRequired) {
		bits, perr := strconv.Atoi(se.Header.Get(PoWBitsHeader))
		if perr != nil || bits <= 0 {
			return resp, &permanentError{fmt.Errorf("netclient: register: the coordinator asks for a proof of work but header %s is %q", PoWBitsHeader, se.Header.Get(PoWBitsHeader))}
		}
		nonce, perr := protocol.SolvePoW(ctx, req.PublicKey, bits)
		if perr != nil {
			return resp, &permanentError{fmt.Errorf("netclient: register: %w", perr)}
		}
		req.PoWNonce = nonce
		resp, err = c.register(ctx, req, key)
	}
	return resp, err
}

// PoWRequired and PoWBitsHeader: the coordinator's refusal of a
// registration without enough proof of work.
const (
	PoWRequired   = "pow_required"
	PoWBitsHeader = "X-OpenCluster-PoW-Bits"
)

func (c *Client) register(ctx context.Context, req protocol.RegisterRequest, key ed25519.PrivateKey) (protocol.RegisterResponse, error) {
	var resp protocol.RegisterResponse
	b, err := json.Marshal(req)
	if err != nil {
		return resp, err
	}
	sig := ed25519.Sign(key, append([]byte(RegisterPrefix), b...))
	hdr := map[string]string{SignatureHeader: base64.StdEncoding.EncodeToString(sig)}
	if _, err := c.doH(ctx, http.MethodPost, PathRegister, "application/json", b, hdr, &resp); err != nil {
		return resp, err
	}
	if resp.WorkerID == "" || len(resp.WorkerID) > protocol.MaxWorkerIDLen {
		return resp, &permanentError{fmt.Errorf("netclient: register: coordinator gave worker id %q (want 1..%d bytes)", resp.WorkerID, protocol.MaxWorkerIDLen)}
	}
	return resp, nil
}

// Round long-polls for work, signing the poll with key at the time now:
// it returns the round this worker should train, or ok false when the
// coordinator had none within wait. When CoordinatorKey is set, the
// answer must carry the coordinator's signature.
func (c *Client) Round(ctx context.Context, workerID string, key ed25519.PrivateKey, now time.Time, wait time.Duration) (info protocol.RoundInfo, ok bool, err error) {
	hdr := pollHeaders(workerID, key, now, PathRound)
	ctx, cancel := context.WithTimeout(ctx, wait+30*time.Second)
	defer cancel()
	q := url.Values{"wait": {wait.String()}}
	code, err := c.doH(ctx, http.MethodGet, PathRound+"?"+q.Encode(), "", nil, hdr, &info)
	if err != nil || code == http.StatusNoContent {
		return info, false, err
	}
	return info, true, nil
}

// Upload posts a signed update.
func (c *Client) Upload(ctx context.Context, body []byte) (protocol.UploadResponse, error) {
	var resp protocol.UploadResponse
	_, err := c.do(ctx, http.MethodPost, PathUpdates, MediaUpdate, body, &resp)
	return resp, err
}

// SecAggPost sends one signed secure-aggregation stage message.
func (c *Client) SecAggPost(ctx context.Context, stage int, msg []byte) error {
	_, err := c.do(ctx, http.MethodPost, PathSecAgg+strconv.Itoa(stage), "application/octet-stream", msg, nil)
	return err
}

// SecAggInput long-polls for a secure-aggregation stage's input: ok false
// when the stage had not started within wait.
func (c *Client) SecAggInput(ctx context.Context, workerID string, key ed25519.PrivateKey, now time.Time, round uint64, attempt uint32, stage int, wait time.Duration) (b []byte, ok bool, err error) {
	hdr := pollHeaders(workerID, key, now, PathSecAgg+strconv.Itoa(stage))
	ctx, cancel := context.WithTimeout(ctx, wait+30*time.Second)
	defer cancel()
	q := url.Values{"round": {strconv.FormatUint(round, 10)}, "attempt": {strconv.FormatUint(uint64(attempt), 10)}, "wait": {wait.String()}}
	code, err := c.doH(ctx, http.MethodGet, PathSecAgg+strconv.Itoa(stage)+"?"+q.Encode(), "", nil, hdr, &b)
	if err != nil || code == http.StatusNoContent {
		return nil, false, err
	}
	return b, true, nil
}

// pollHeaders signs a GET of path (relative to the API root) by workerID
// at now, with a fresh nonce (protocol.SignPoll).
func pollHeaders(workerID string, key ed25519.PrivateKey, now time.Time, path string) map[string]string {
	h := http.Header{}
	protocol.SignPoll(h, workerID, key, now.Unix(), http.MethodGet, path)
	out := map[string]string{}
	for k := range h {
		out[k] = h.Get(k)
	}
	return out
}

package protocol

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"strconv"
)

// Signed polls (GET /v1/round and GET /v1/secagg/N): a worker proves it
// holds its key with headers, since a GET has no body to sign. The signed
// message binds the worker id, the time, a fresh random nonce, the method
// and the path, so a captured poll cannot be replayed (the coordinator
// keeps the nonces it saw within the time window) nor used on another
// endpoint.
const (
	WorkerHeader    = "X-OpenCluster-Worker"
	TimeHeader      = "X-OpenCluster-Time"
	NonceHeader     = "X-OpenCluster-Nonce"
	SignatureHeader = "X-OpenCluster-Signature"
	// PollPrefix starts the signed poll message (version 2 added the
	// nonce, the method and the path).
	PollPrefix = "opencluster poll v2\n"
	// PollNonceLen is the nonce's length: 16 random bytes in lowercase hex.
	PollNonceLen = 32
)

// PollMessage is what a worker signs to poll: PollPrefix + worker id +
// "\n" + unix seconds + "\n" + nonce + "\n" + method + " " + path.
func PollMessage(workerID string, ts int64, nonce, method, path string) []byte {
	return []byte(PollPrefix + workerID + "\n" + strconv.FormatInt(ts, 10) + "\n" + nonce + "\n" + method + " " + path)
}

// SignPoll sets h's poll headers for a request with method and path by
// workerID, signed with key at unix time ts, with a fresh nonce.
func SignPoll(h http.Header, workerID string, key ed25519.PrivateKey, ts int64, method, path string) {
	var b [PollNonceLen / 2]byte
	rand.Read(b[:])
	nonce := hex.EncodeToString(b[:])
	h.Set(WorkerHeader, workerID)
	h.Set(TimeHeader, strconv.FormatInt(ts, 10))
	h.Set(NonceHeader, nonce)
	h.Set(SignatureHeader, base64.StdEncoding.EncodeToString(ed25519.Sign(key, PollMessage(workerID, ts, nonce, method, path))))
}

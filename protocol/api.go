package protocol

import (
	"encoding/json"
	"time"
)

// JSON API types shared by the coordinator and the workers. Hashes are
// lowercase hex SHA-256; public keys are in the EncodePublicKey form;
// 64-bit seeds travel as decimal strings because JSON numbers lose
// precision above 2^53. Every non-2xx response carries an ErrorBody.

// RegisterRequest is a worker's first call: it introduces its public key,
// which then verifies every update it sends.
type RegisterRequest struct {
	// PublicKey is the worker's ed25519 key ("ed25519:<base64>").
	PublicKey string `json:"public_key"`
	// Name is a display name chosen by the volunteer (optional).
	Name string `json:"name,omitempty"`
	// ClientVersion is the worker's build version.
	ClientVersion string `json:"client_version"`
	// Device describes where training runs, e.g. "cuda:0 NVIDIA RTX 4090"
	// or "cpu 16 cores"; informational, used for cohort selection.
	Device string `json:"device,omitempty"`
	// MemoryBytes is the memory available for training on that device.
	MemoryBytes int64 `json:"memory_bytes,omitempty"`
	// Region is the country the volunteer chose to be shown in on the
	// dashboard (ISO 3166-1 alpha-2, see LookupRegion), or "" to stay
	// unplaced. Opt-in: the coordinator never derives it from an address.
	Region string `json:"region,omitempty"`
	// JoinToken is the operator's join token, when the coordinator admits
	// only holders of one (admission.join_tokens).
	JoinToken string `json:"join_token,omitempty"`
	// PoWNonce answers the coordinator's registration proof of work, when
	// it asks for one (see PoWZeroBits).
	PoWNonce string `json:"pow_nonce,omitempty"`
}

// RegisterResponse gives the worker its id.
type RegisterResponse struct {
	// WorkerID goes into every update's header (1..128 bytes).
	WorkerID string `json:"worker_id"`
	// KeyID is KeyID(public key), echoed so the worker can check it.
	KeyID string `json:"key_id"`
	// CoordinatorKey is the coordinator's public key, for checking what it
	// signs (ledger entries); "ed25519:<base64>".
	CoordinatorKey string `json:"coordinator_key,omitempty"`
}

// RoundInfo tells a worker what to do in the current round.
type RoundInfo struct {
	// Round is the round id; the update's header must carry it.
	Round uint64 `json:"round"`
	// Seed drives the worker's data order and the codec (random-k indices,
	// stochastic rounding); decimal string in JSON.
	Seed uint64 `json:"seed,string"`
	// Recipe is the local training to run.
	Recipe Recipe `json:"recipe"`
	// Model names the base model (a configs/ preset or a Hugging Face id).
	Model string `json:"model"`
	// BaseSHA256 is the hash of the frozen base: of its safetensors file,
	// or, when BaseFiles is set, of BaseManifest(BaseFiles).
	BaseSHA256 string `json:"base_sha256"`
	// BaseFiles, when set, make the base a Hugging Face folder: each file
	// is the blob of its hash, saved under its name.
	BaseFiles []BaseFile `json:"base_files,omitempty"`
	// TokenizerSHA256 is the hash of the base folder's tokenizer.json: the
	// worker tokenizes its data with it. "" means byte-level.
	TokenizerSHA256 string `json:"tokenizer_sha256,omitempty"`
	// AdapterSHA256 is the hash of the current adapter to train from; the
	// update's BaseSHA256 header field must equal it.
	AdapterSHA256 string `json:"adapter_sha256"`
	// AdapterURL is where to fetch that adapter (relative to the API).
	AdapterURL string `json:"adapter_url"`
	// Shapes lists the adapter tensors in the order the update's vector
	// concatenates them.
	Shapes []Shape `json:"shapes"`
	// Deadline is when the coordinator stops accepting updates for Round.
	Deadline time.Time `json:"deadline"`
	// MaxUpdateBytes is the largest update body the coordinator accepts.
	MaxUpdateBytes int64 `json:"max_update_bytes"`
	// BaseBytes and AdapterBytes are the sizes of the base model and
	// adapter blobs: a worker downloads no more than that (0: not said;
	// the worker's own limit applies alone).
	BaseBytes    int64 `json:"base_bytes,omitempty"`
	AdapterBytes int64 `json:"adapter_bytes,omitempty"`
	// SecAgg, when present, makes this a secure-aggregation round: the
	// worker sends no update to /v1/updates but takes part in the four
	// stages at /v1/secagg/{stage} (docs/protocol.md, docs/privacy.md).
	SecAgg *SecAggRound `json:"secagg,omitempty"`
}

// SecAggRound is one worker's part of a secure-aggregation round.
type SecAggRound struct {
	// Index is the worker's position in the round's cohort (Params.keys).
	Index int `json:"index"`
	// Params are the round's secagg.Params as JSON (cohort keys, graph
	// degree, threshold, ring width, clipping and noise). Their hash binds
	// every stage message.
	Params json.RawMessage `json:"params"`
	// StageTimeout is how long the coordinator waits for each of the short
	// stages (advertise, share keys, unmask); the masked input is due by
	// Deadline.
	StageTimeout time.Duration `json:"stage_timeout"`
}

// Recipe is the local training a round asks for.
type Recipe struct {
	// Steps is the number of optimizer steps.
	Steps int `json:"steps"`
	// LR is the peak learning rate.
	LR float64 `json:"lr"`
	// BatchTokens is the number of tokens per step.
	BatchTokens int `json:"batch_tokens"`
	// MaxTokens is the data budget: at most this many of the volunteer's
	// tokens are read this round.
	MaxTokens int64 `json:"max_tokens"`
	// Codec is the compress spec for the update, e.g. "topk:0.01+int8:256".
	Codec string `json:"codec"`
	// Momentum is the error-feedback momentum (compress.State), 0 for none.
	Momentum float32 `json:"momentum"`
}

// UploadResponse answers a POSTed update.
type UploadResponse struct {
	// Accepted is true when the update will be aggregated.
	Accepted bool `json:"accepted"`
	// Round echoes the update's round.
	Round uint64 `json:"round"`
	// Reason says why an update was not accepted (stale round, late,
	// duplicate nonce, ...); empty when accepted.
	Reason string `json:"reason,omitempty"`
	// LedgerIndex is the ledger entry that records the update, when accepted.
	LedgerIndex uint64 `json:"ledger_index,omitempty"`
}

// ErrorBody is the body of every error response: {"error": "..."}.
type ErrorBody struct {
	Error string `json:"error"`
}

package coordinator

import (
	"context"
	"crypto/ed25519"
	"errors"
	"time"
)

// Store keeps the coordinator's state: workers, rounds, model versions
// (content-addressed blobs; the bytes live on disk under DIR/blobs and
// DIR/updates, the database holds their hashes), updates and the nonces
// seen. Two implementations share one SQL schema: SQLite (the default,
// DIR/coordinator.db) and PostgreSQL; MemStore keeps the same state in
// memory for the simulator. Every method is safe for concurrent use.
type Store interface {
	// RegisterWorker inserts w, or returns the worker already registered
	// with the same id (registration is idempotent: the id derives from
	// the public key).
	RegisterWorker(ctx context.Context, w Worker) (Worker, error)
	// Worker returns the worker with id, or an error wrapping ErrNotFound.
	Worker(ctx context.Context, id string) (Worker, error)
	// TouchWorker sets the worker's last-seen time.
	TouchWorker(ctx context.Context, id string, t time.Time) error
	// Workers lists the workers seen at or after since, ordered by id.
	Workers(ctx context.Context, since time.Time) ([]Worker, error)
	// WorkerIDs is Workers' ids alone: what cohort selection reads, cheap
	// enough for a million simulated workers.
	WorkerIDs(ctx context.Context, since time.Time) ([]string, error)
	// CountWorkers is the number of registered workers.
	CountWorkers(ctx context.Context) (int, error)
	// PruneWorkers deletes the workers last seen before seenBefore that
	// never sent an update (what a flood of throwaway keys leaves behind)
	// and returns how many it deleted.
	PruneWorkers(ctx context.Context, seenBefore time.Time) (int, error)

	// CreateRound inserts a new round; its id must not exist.
	CreateRound(ctx context.Context, r Round) error
	// UpdateRound overwrites the round with r.ID.
	UpdateRound(ctx context.Context, r Round) error
	// Round returns the round with id, or an error wrapping ErrNotFound.
	Round(ctx context.Context, id uint64) (Round, error)
	// LatestRound returns the round with the highest id, or ErrNotFound.
	LatestRound(ctx context.Context) (Round, error)

	// PutBlob records a blob's hash, kind and size (idempotent).
	PutBlob(ctx context.Context, b Blob) error
	// Blob returns the record for a hash, or ErrNotFound.
	Blob(ctx context.Context, sha256 string) (Blob, error)

	// AddUpdate records an update and its nonce in one transaction. A nonce
	// seen before gives ErrReplay; a second accepted update from the same
	// worker for the same round gives ErrDuplicate; neither changes state.
	AddUpdate(ctx context.Context, u UpdateRecord) error
	// Updates lists the updates recorded for (applied to) round, accepted
	// or not, in the order they were received.
	Updates(ctx context.Context, round uint64) ([]UpdateRecord, error)
	// NonceSeen reports whether a nonce (hex) was ever recorded.
	NonceSeen(ctx context.Context, nonce string) (bool, error)

	// SaveCounters stores the metrics' counter values by series name;
	// Counters returns what was stored (empty at first).
	SaveCounters(ctx context.Context, vals map[string]float64) error
	Counters(ctx context.Context) (map[string]float64, error)

	// SchemaVersion is the highest migration applied.
	SchemaVersion(ctx context.Context) (int, error)
	Close() error
}

// Errors a Store wraps.
var (
	ErrNotFound  = errors.New("not found")
	ErrReplay    = errors.New("nonce already seen")
	ErrDuplicate = errors.New("worker already has an accepted update for this round")
)

// Worker is a registered volunteer machine.
type Worker struct {
	ID         string
	PublicKey  ed25519.PublicKey
	Name       string
	Device     string
	Registered time.Time
	LastSeen   time.Time
	// Contributed counts the worker's accepted updates; a worker with none
	// is a newcomer (see Config.MaxNewPerCohort).
	Contributed int64
}

// RoundState is where a round is in its life.
type RoundState string

// Round states, in order. A round is open until its cohort is picked,
// collecting while it takes updates, aggregating once quorum or the
// deadline closed it, and closed when the new adapter is published and
// the ledger record appended.
const (
	StateOpen        RoundState = "open"
	StateCollecting  RoundState = "collecting"
	StateAggregating RoundState = "aggregating"
	StateClosed      RoundState = "closed"
)

// Round is one federated round.
type Round struct {
	ID    uint64
	State RoundState
	// Seed drives cohort selection, the workers' data order and the codec.
	Seed uint64
	// Cohort is the worker ids picked for the round, in selection order.
	Cohort []string
	// Opened is when the round was created; Started when collection began;
	// Deadline when collection stops; Closed when the round was published.
	Opened, Started, Deadline, Closed time.Time
	// BaseAdapter is the SHA-256 of the adapter the round trains from;
	// NewAdapter the one it published (empty until closed).
	BaseAdapter, NewAdapter string
	// BaseModel is the SHA-256 of the frozen base weights ("" if none).
	BaseModel string
	// OptState is the SHA-256 of the server optimizer state blob after the
	// round ("" for none); the next round starts from it.
	OptState string
	// Extensions counts deadline extensions for lack of updates.
	Extensions int
	// Note says why the round closed (quorum, deadline, restarted, ...).
	Note string
}

// Blob kinds.
const (
	BlobAdapter  = "adapter"
	BlobBase     = "base"
	BlobOptState = "optstate"
)

// Blob is a content-addressed file under DIR/blobs.
type Blob struct {
	SHA256  string
	Kind    string
	Size    int64
	Created time.Time
}

// UpdateRecord is one verified update, accepted or not. The raw bytes of
// an accepted update are kept under DIR/updates/<SHA256> so the ledger
// and the aggregate can be re-verified.
type UpdateRecord struct {
	// Round is the round the update's header names; Applied the round
	// that aggregates it (the same in this version; kept so a later one
	// can carry updates across rounds without a migration).
	Round, Applied uint64
	WorkerID       string
	SHA256         string
	Nonce          string // hex
	Bytes          int64
	Tokens         uint64
	FLOPs          float64
	EnergyWh       float64
	// Weight is the aggregation weight: tokens (capped at the data budget)
	// times the late factor.
	Weight   float64
	Norm     float64
	Late     bool
	Accepted bool
	Reason   string
	Received time.Time
	// Signature is the worker's signature from the update, base64.
	Signature string
}

package protocol

// Dashboard events: the one stream that both the live coordinator and the
// simulator emit, and that the web dashboard draws. The schema is
// documented in docs/events.md; keep the two in step. Events travel as
// Server-Sent Events, one JSON object per `data:` line, with the event's
// Seq as the SSE id so that a reconnecting viewer can resume.

// Event types.
const (
	// EventSnapshot is the first event a viewer receives: every node and the
	// round in flight, so a page can draw without history.
	EventSnapshot = "snapshot"
	// EventNode says a node joined, changed state or left.
	EventNode = "node"
	// EventPhase says the round moved to another phase.
	EventPhase = "phase"
	// EventTransfer is a model download (down) or an update upload (up).
	EventTransfer = "transfer"
	// EventRound closes a round with its figures.
	EventRound = "round"
	// EventLedger announces a new ledger record.
	EventLedger = "ledger"
	// EventSummary ends a simulation with its totals and the data-center
	// comparison.
	EventSummary = "summary"
)

// Node states, used for colours on the globe.
const (
	NodeIdle      = "idle"      // online, not in the round
	NodeOrganiser = "organiser" // organises this round (purple)
	NodeReceiving = "receiving" // downloading the model (orange)
	NodeComputing = "computing" // training locally
	NodeSending   = "sending"   // uploading its update (green)
	NodeDone      = "done"      // update accepted, waiting for the round to close
	NodeLate      = "late"      // missed the deadline (grey)
	NodeDropped   = "dropped"   // left the round without an update (grey)
	NodeOffline   = "offline"   // gone; viewers may remove it
)

// Round phases, in order. PhaseFailed replaces PhaseClosed when a round
// could not aggregate.
const (
	PhaseSelect    = "select"    // the organiser draws the cohort
	PhasePropagate = "propagate" // the cohort downloads the model
	PhaseCompute   = "compute"   // the cohort trains
	PhaseAggregate = "aggregate" // updates flow back and are combined
	PhaseClosed    = "closed"    // the new model is published
	PhaseFailed    = "failed"    // the round closed without a new model
)

// Event sources.
const (
	SourceLive = "live" // a running coordinator; T is wall-clock time
	SourceSim  = "sim"  // a simulation; T is virtual time from its start
)

// Event is one dashboard event. Type says which one of the pointer fields
// is set (Snapshot, Node, Phase, Transfer, Round, Ledger or Summary).
type Event struct {
	// Seq numbers events from 1 within one stream, with no gaps.
	Seq uint64 `json:"seq"`
	// T is the event's time in Unix milliseconds (live) or milliseconds of
	// virtual time since the simulation started (sim).
	T int64 `json:"t"`
	// Type is one of the Event* constants.
	Type string `json:"type"`

	Snapshot *Snapshot      `json:"snapshot,omitempty"`
	Node     *NodeEvent     `json:"node,omitempty"`
	Phase    *PhaseEvent    `json:"phase,omitempty"`
	Transfer *TransferEvent `json:"transfer,omitempty"`
	Round    *RoundSummary  `json:"round,omitempty"`
	Ledger   *LedgerEvent   `json:"ledger,omitempty"`
	Summary  *RunSummary    `json:"summary,omitempty"`
}

// Snapshot is the whole picture at one moment.
type Snapshot struct {
	// Source is SourceLive or SourceSim.
	Source string `json:"source"`
	// CoordinatorKey is "ed25519:<base64>" (live); the page pins it when it
	// verifies the ledger.
	CoordinatorKey string `json:"coordinator_key,omitempty"`
	// Model names the base model being fine-tuned.
	Model string `json:"model,omitempty"`
	// Nodes are every known node.
	Nodes []NodeEvent `json:"nodes"`
	// Round is the round in flight, if any.
	Round *PhaseEvent `json:"round,omitempty"`
	// History holds the closed rounds so far, oldest first (at most the
	// last 500), for the charts.
	History []RoundSummary `json:"history,omitempty"`
	// Summary is the finished simulation's summary event, if it ended
	// before the viewer connected.
	Summary *RunSummary `json:"summary,omitempty"`
}

// NodeEvent is one node's state. Live workers are placed only by the
// coarse region their owner chose (opt-in); Lat/Lon are then the region's
// centre and Placed is false for workers without one.
type NodeEvent struct {
	ID    string `json:"id"`
	State string `json:"state"`
	// Region is an ISO 3166-1 alpha-2 country code, or "" when unplaced.
	Region string  `json:"region,omitempty"`
	Placed bool    `json:"placed"`
	Lat    float64 `json:"lat,omitempty"`
	Lon    float64 `json:"lon,omitempty"`
	// Device is a short description ("RTX 4070 12 GB", "cpu 8 cores").
	Device string `json:"device,omitempty"`
	// Round is the round this state belongs to (0 when idle).
	Round uint64 `json:"round,omitempty"`
}

// PhaseEvent says which phase a round is in.
type PhaseEvent struct {
	Round uint64 `json:"round"`
	Phase string `json:"phase"`
	// Organiser is the node id that organises the round ("coordinator"
	// for a central coordinator).
	Organiser string `json:"organiser"`
	// Cohort is the number of nodes selected.
	Cohort int `json:"cohort"`
	// Started is when the round opened (same clock as Event.T).
	Started int64 `json:"started"`
	// Deadline is when the round closes at the latest (same clock).
	Deadline int64 `json:"deadline,omitempty"`
}

// TransferEvent is one model download or update upload, drawn as an arc
// between the organiser and the node.
type TransferEvent struct {
	Round uint64 `json:"round"`
	Node  string `json:"node"`
	// Direction is "down" (model to node) or "up" (update to organiser).
	Direction string `json:"direction"`
	Bytes     int64  `json:"bytes"`
	// DurationMS is how long the transfer took, when known.
	DurationMS int64 `json:"duration_ms,omitempty"`
}

// RoundSummary is a closed round's figures. Fields that a source does not
// know are omitted, never zero-filled: a null is "not measured".
type RoundSummary struct {
	Round     uint64 `json:"round"`
	Failed    bool   `json:"failed,omitempty"`
	Reason    string `json:"reason,omitempty"` // why it failed
	Organiser string `json:"organiser"`
	Selected  int    `json:"selected"`
	Completed int    `json:"completed"`
	Dropped   int    `json:"dropped"`
	Late      int    `json:"late"`
	// DurationS is the round's wall (or virtual) time from open to close.
	DurationS float64 `json:"duration_s"`
	BytesUp   int64   `json:"bytes_up"`
	BytesDown int64   `json:"bytes_down"`
	// CompressionRatio is the dense fp32 delta's bytes over the bytes up.
	CompressionRatio float64 `json:"compression_ratio,omitempty"`
	// FLOPs is the useful training work of the accepted updates.
	FLOPs float64 `json:"flops"`
	// DeliveredFLOPS is FLOPs over DurationS.
	DeliveredFLOPS float64 `json:"delivered_flops"`
	// ValLoss is the new global model's validation loss (nats/token).
	ValLoss *float64 `json:"val_loss,omitempty"`
	// EnergyKWh and CO2Kg are the round's energy and emissions;
	// EnergySource says "metered", "estimated", "simulated" or "reported"
	// (the workers' own claims, each metered or estimated on the worker;
	// a live coordinator cannot tell which), and GridGPerKWh the carbon
	// intensity used (a cohort mean, or the operator's setting).
	EnergyKWh    float64  `json:"energy_kwh"`
	CO2Kg        *float64 `json:"co2_kg,omitempty"`
	EnergySource string   `json:"energy_source"`
	GridGPerKWh  *float64 `json:"grid_g_per_kwh,omitempty"`
	// LedgerIndex is the round's ledger record, when there is a ledger.
	LedgerIndex *uint64 `json:"ledger_index,omitempty"`
}

// LedgerEvent announces a ledger record; the page fetches /v1/ledger to
// verify it.
type LedgerEvent struct {
	Index uint64 `json:"index"`
	Round uint64 `json:"round"`
	Hash  string `json:"hash"`
}

// RunSummary closes a simulation.
type RunSummary struct {
	Rounds         int     `json:"rounds"`
	Nodes          int     `json:"nodes"`
	WallS          float64 `json:"wall_s"` // virtual seconds
	FLOPs          float64 `json:"flops"`
	DeliveredFLOPS float64 `json:"delivered_flops"`
	EnergyKWh      float64 `json:"energy_kwh"`
	CO2Kg          float64 `json:"co2_kg"`
	// DataCenter is the same FLOPs on data-center accelerators.
	DataCenter *DataCenterComparison `json:"data_center,omitempty"`
}

// DataCenterComparison states what the same work costs in a data center,
// with the assumptions that produced it.
type DataCenterComparison struct {
	Accelerator string  `json:"accelerator"` // e.g. "H100 SXM"
	PeakFLOPS   float64 `json:"peak_flops"`
	Utilisation float64 `json:"utilisation"`
	PowerW      float64 `json:"power_w"` // per accelerator, with PUE applied
	PUE         float64 `json:"pue"`
	GridGPerKWh float64 `json:"grid_g_per_kwh"`
	Hours       float64 `json:"hours"` // accelerator-hours
	EnergyKWh   float64 `json:"energy_kwh"`
	CO2Kg       float64 `json:"co2_kg"`
	// Verdict is one sentence in plain words, e.g. "the volunteer network
	// used 2.3x the energy of the data center for the same FLOPs".
	Verdict string `json:"verdict"`
}

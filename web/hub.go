// Package web is the dashboard: the page (built from web/_ui, committed
// under static/ and embedded, so the binary serves it with no Node and no
// network), and the Server-Sent Events hub that both the live coordinator
// and the simulator feed with protocol.Event values (docs/events.md).
package web

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/opencluster/opencluster/protocol"
)

// Sink takes dashboard events. The Hub is one; the coordinator and the
// simulator depend on this shape only, so a test can count what they emit.
// Emit must not block for long: it is called with the emitter's locks held.
type Sink interface {
	Emit(e protocol.Event)
}

// HubOptions tune a Hub. The zero value of each field means its default.
type HubOptions struct {
	// Source is protocol.SourceLive or protocol.SourceSim.
	Source string
	// CoordinatorKey ("ed25519:<base64>") and Model go into every snapshot.
	CoordinatorKey string
	Model          string
	// Buffer is how many events may wait for one viewer before it is
	// dropped as too slow (default 1024).
	Buffer int
	// MaxViewers bounds the connected viewers; more get 503 (default 10000).
	MaxViewers int
	// WriteTimeout drops a viewer whose connection takes longer than this
	// to accept one write (default 10s).
	WriteTimeout time.Duration
	// Heartbeat is how often an idle stream gets a comment line, so that
	// proxies keep it open and dead viewers are noticed (default 15s).
	Heartbeat time.Duration
	// Now stamps events whose T is zero (default: wall-clock Unix ms).
	Now func() int64
}

// maxHistory is how many closed rounds a snapshot carries (docs/events.md).
const maxHistory = 500

// Hub numbers the events it is given, keeps the state a newly connected
// viewer needs (every node, the round in flight, the last rounds' figures,
// the run summary), and fans each event out to the connected viewers as
// Server-Sent Events at GET /v1/events. Each event is encoded once and the
// same bytes are queued for every viewer; a viewer whose queue is full is
// disconnected (its page reconnects and starts again from a snapshot), so
// memory stays bounded by MaxViewers × Buffer shared frames.
//
// A Hub is safe for concurrent use.
type Hub struct {
	opts HubOptions

	mu      sync.Mutex
	seq     uint64
	nodes   map[string]protocol.NodeEvent
	round   *protocol.PhaseEvent
	history []protocol.RoundSummary
	summary *protocol.RunSummary
	viewers map[*viewer]struct{}
	closed  bool
	dropped uint64 // viewers disconnected for being slow
}

type viewer struct {
	ch   chan []byte
	gone chan struct{} // closed when the hub drops the viewer
}

// NewHub returns an empty hub.
func NewHub(opts HubOptions) *Hub {
	if opts.Source == "" {
		opts.Source = protocol.SourceLive
	}
	if opts.Buffer <= 0 {
		opts.Buffer = 1024
	}
	if opts.MaxViewers <= 0 {
		opts.MaxViewers = 10000
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = 10 * time.Second
	}
	if opts.Heartbeat <= 0 {
		opts.Heartbeat = 15 * time.Second
	}
	if opts.Now == nil {
		opts.Now = func() int64 { return time.Now().UnixMilli() }
	}
	return &Hub{opts: opts, nodes: map[string]protocol.NodeEvent{}, viewers: map[*viewer]struct{}{}}
}

// SetCoordinatorKey sets the key later snapshots carry.
func (h *Hub) SetCoordinatorKey(key string) {
	h.mu.Lock()
	h.opts.CoordinatorKey = key
	h.mu.Unlock()
}

// Emit numbers e, applies it to the hub's state and queues it for every
// viewer. It never blocks on a viewer. A snapshot event is refused (the hub
// makes its own).
func (h *Hub) Emit(e protocol.Event) {
	if e.Type == protocol.EventSnapshot {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	h.seq++
	e.Seq = h.seq
	if e.T == 0 {
		e.T = h.opts.Now()
	}
	h.apply(&e)
	frame := encodeFrame(&e)
	for v := range h.viewers {
		select {
		case v.ch <- frame:
		default: // too slow: drop it rather than buffer without bound
			h.dropLocked(v)
			h.dropped++
		}
	}
}

// apply folds e into the snapshot state; mu is held.
func (h *Hub) apply(e *protocol.Event) {
	switch e.Type {
	case protocol.EventNode:
		if e.Node == nil {
			return
		}
		if e.Node.State == protocol.NodeOffline {
			delete(h.nodes, e.Node.ID)
		} else {
			h.nodes[e.Node.ID] = *e.Node
		}
	case protocol.EventPhase:
		if e.Phase == nil {
			return
		}
		p := *e.Phase
		h.round = &p
	case protocol.EventRound:
		if e.Round == nil {
			return
		}
		h.history = append(h.history, *e.Round)
		if len(h.history) > maxHistory {
			h.history = slices.Delete(h.history, 0, len(h.history)-maxHistory)
		}
	case protocol.EventSummary:
		if e.Summary != nil {
			s := *e.Summary
			h.summary = &s
		}
	}
}

// snapshotLocked builds the snapshot event: seq is that of the last event
// it reflects, so the next event a viewer gets is seq+1.
func (h *Hub) snapshotLocked() *protocol.Event {
	ids := make([]string, 0, len(h.nodes))
	for id := range h.nodes {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	nodes := make([]protocol.NodeEvent, len(ids))
	for i, id := range ids {
		nodes[i] = h.nodes[id]
	}
	s := &protocol.Snapshot{Source: h.opts.Source, CoordinatorKey: h.opts.CoordinatorKey, Model: h.opts.Model,
		Nodes: nodes, Round: h.round, History: slices.Clone(h.history), Summary: h.summary}
	return &protocol.Event{Seq: h.seq, T: h.opts.Now(), Type: protocol.EventSnapshot, Snapshot: s}
}

// Snapshot returns the snapshot a viewer connecting now would get.
func (h *Hub) Snapshot() protocol.Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	return *h.snapshotLocked()
}

// Viewers is the number of connected viewers.
func (h *Hub) Viewers() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.viewers)
}

// Dropped is the number of viewers disconnected for falling behind.
func (h *Hub) Dropped() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.dropped
}

// Close disconnects every viewer and refuses new ones.
func (h *Hub) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for v := range h.viewers {
		h.dropLocked(v)
	}
}

func (h *Hub) dropLocked(v *viewer) {
	delete(h.viewers, v)
	close(v.gone)
}

// encodeFrame is one SSE message: the event's seq as its id and the JSON
// on one data line (encoding/json never writes a raw newline).
func encodeFrame(e *protocol.Event) []byte {
	b, err := json.Marshal(e)
	if err != nil { // only non-finite floats can fail; name the event
		b, _ = json.Marshal(map[string]any{"seq": e.Seq, "t": e.T, "type": e.Type, "error": err.Error()})
	}
	out := make([]byte, 0, len(b)+32)
	out = append(out, "id: "...)
	out = strconv.AppendUint(out, e.Seq, 10)
	out = append(out, "\ndata: "...)
	out = append(out, b...)
	return append(out, "\n\n"...)
}

// subscribe registers a viewer and returns it with its first frame, the
// snapshot, taken under the same lock so that no event falls between.
func (h *Hub) subscribe() (*viewer, []byte, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, nil, errors.New("event stream closed")
	}
	if len(h.viewers) >= h.opts.MaxViewers {
		return nil, nil, fmt.Errorf("event stream full: %d viewers connected (the limit); retry later", len(h.viewers))
	}
	v := &viewer{ch: make(chan []byte, h.opts.Buffer), gone: make(chan struct{})}
	h.viewers[v] = struct{}{}
	return v, encodeFrame(h.snapshotLocked()), nil
}

func (h *Hub) unsubscribe(v *viewer) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.viewers[v]; ok {
		h.dropLocked(v)
	}
}

// ServeHTTP is GET /v1/events: a snapshot, then every event as it comes.
func (h *Hub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET")
		http.Error(w, "method "+r.Method+" not allowed: use GET", http.StatusMethodNotAllowed)
		return
	}
	v, first, err := h.subscribe()
	if err != nil {
		w.Header().Set("Retry-After", "5")
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	defer h.unsubscribe(v)
	rc := http.NewResponseController(w)
	hd := w.Header()
	hd.Set("Content-Type", "text/event-stream")
	hd.Set("Cache-Control", "no-store")
	hd.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	write := func(b []byte) bool {
		// Each write gets its own deadline: the server's WriteTimeout is
		// for whole responses, and this one lasts as long as the viewer.
		rc.SetWriteDeadline(time.Now().Add(h.opts.WriteTimeout))
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if !write(append([]byte("retry: 2000\n"), first...)) {
		return
	}
	beat := time.NewTicker(h.opts.Heartbeat)
	defer beat.Stop()
	for {
		select {
		case b := <-v.ch:
			if !write(b) {
				return
			}
		case <-beat.C:
			if !write([]byte(": keep-alive\n\n")) {
				return
			}
		case <-v.gone: // dropped as too slow, or the hub closed
			return
		case <-r.Context().Done():
			return
		}
	}
}

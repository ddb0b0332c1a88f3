package coordinator

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/opencluster/opencluster/coordinator/ledger"
	"github.com/opencluster/opencluster/protocol"
)

// EventSink takes the dashboard events the coordinator emits
// (docs/events.md); web.Hub is one. Emit must not block: it is called with
// the coordinator's lock held.
type EventSink interface {
	Emit(e protocol.Event)
}

// events turns the coordinator's transitions into dashboard events. What a
// live coordinator can see decides the states it shows:
//   - a worker is idle once registered or polling, and offline when it has
//     not been seen for SeenWithin;
//   - a cohort member goes computing when it takes the round (a "down"
//     transfer of the adapter is emitted with it: the coordinator cannot
//     see when the download ends and training starts), sending and then
//     done when its update is accepted (an "up" transfer), late when that
//     update came after the deadline, dropped when the round closes
//     without its update;
//   - the phases are select (the round is open, waiting for enough
//     workers), propagate (cohort drawn, members taking the round),
//     compute (every member has it, or updates are arriving), aggregate,
//     closed.
//
// Workers are placed only by the region their owner chose at registration
// (kept in memory: a restarted coordinator learns it again when each
// worker next registers). The zero value (no sink) does nothing.
type events struct {
	sink  EventSink
	clock Clock

	mu        sync.Mutex
	regions   map[string]protocol.Region // worker id -> chosen region
	devices   map[string]string
	nodes     map[string]protocol.NodeEvent // last state emitted per worker
	phase     protocol.PhaseEvent
	taken     map[string]bool // cohort members that took the current round
	bytesDown int64           // blob bytes served during the current round
	grid      float64         // g CO2 per kWh, 0: unknown
	lastSweep time.Time
}

func newEvents(sink EventSink, clock Clock, gridGPerKWh float64) *events {
	return &events{sink: sink, clock: clock, grid: gridGPerKWh, regions: map[string]protocol.Region{},
		devices: map[string]string{}, nodes: map[string]protocol.NodeEvent{}, taken: map[string]bool{}}
}

func (e *events) on() bool { return e != nil && e.sink != nil }

func (e *events) emit(ev protocol.Event) {
	ev.T = e.clock.Now().UnixMilli()
	e.sink.Emit(ev)
}

// setNode emits id's state when it changed; e.mu is held.
func (e *events) setNode(id, state string, round uint64) {
	n := protocol.NodeEvent{ID: id, State: state, Device: e.devices[id], Round: round}
	if r, ok := e.regions[id]; ok {
		n.Region, n.Placed, n.Lat, n.Lon = r.Code, true, r.Lat, r.Lon
	}
	if state == protocol.NodeIdle || state == protocol.NodeOffline {
		n.Round = 0
	}
	if old, ok := e.nodes[id]; ok && old == n {
		return
	}
	if state == protocol.NodeOffline {
		delete(e.nodes, id)
	} else {
		e.nodes[id] = n
	}
	e.emit(protocol.Event{Type: protocol.EventNode, Node: &n})
}

// registered: a worker (re)registered with the given region and device.
func (e *events) registered(id string, region protocol.Region, placed bool, device string) {
	if !e.on() {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if placed {
		e.regions[id] = region
	} else {
		delete(e.regions, id)
	}
	e.devices[id] = device
	state, round := protocol.NodeIdle, uint64(0)
	if old, ok := e.nodes[id]; ok {
		state, round = old.State, old.Round
	}
	delete(e.nodes, id) // re-emit with the new place
	e.setNode(id, state, round)
}

// seen: a worker polled; it is online.
func (e *events) seen(id string) {
	if !e.on() {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.nodes[id]; !ok {
		e.setNode(id, protocol.NodeIdle, 0)
	}
}

// sweep marks workers not seen within SeenWithin offline and the ones seen
// idle, at most every SeenWithin/4; online lists the workers seen recently.
func (e *events) sweep(now time.Time, every time.Duration, online func() ([]Worker, error)) {
	if !e.on() {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if now.Sub(e.lastSweep) < every {
		return
	}
	ws, err := online()
	if err != nil {
		return
	}
	e.lastSweep = now
	up := make(map[string]bool, len(ws))
	for _, w := range ws {
		up[w.ID] = true
		if _, ok := e.devices[w.ID]; !ok {
			e.devices[w.ID] = w.Device
		}
		if _, ok := e.nodes[w.ID]; !ok {
			e.setNode(w.ID, protocol.NodeIdle, 0)
		}
	}
	for id, n := range e.nodes {
		if !up[id] && n.Round == 0 {
			e.setNode(id, protocol.NodeOffline, 0)
		}
	}
}

// phaseFor maps a round's state to the dashboard phase.
func (e *events) phaseFor(r Round) string {
	switch r.State {
	case StateOpen:
		return protocol.PhaseSelect
	case StateCollecting:
		if len(r.Cohort) > 0 && len(e.taken) >= len(r.Cohort) {
			return protocol.PhaseCompute
		}
		return protocol.PhasePropagate
	case StateAggregating:
		return protocol.PhaseAggregate
	}
	return protocol.PhaseClosed
}

// roundChanged is called at every transition of the current round (r).
func (e *events) roundChanged(r Round) {
	if !e.on() {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.phase.Round != r.ID { // a new round: the last one's members go idle
		e.taken, e.bytesDown = map[string]bool{}, 0
		for id, n := range e.nodes {
			if n.Round != 0 && n.Round < r.ID {
				e.setNode(id, protocol.NodeIdle, 0)
			}
		}
	}
	if r.State == StateCollecting && e.phase.Round == r.ID && e.phase.Phase != protocol.PhaseSelect && e.phase.Cohort != len(r.Cohort) {
		// Restarted with a new cohort: who left it dropped out.
		in := map[string]bool{}
		for _, w := range r.Cohort {
			in[w] = true
		}
		for id, n := range e.nodes {
			if n.Round == r.ID && !in[id] && n.State != protocol.NodeDone {
				e.setNode(id, protocol.NodeDropped, r.ID)
			}
		}
	}
	e.setPhase(r)
}

// setPhase emits the round's phase when it changed; e.mu is held.
func (e *events) setPhase(r Round) {
	p := protocol.PhaseEvent{Round: r.ID, Phase: e.phaseFor(r), Organiser: "coordinator", Cohort: len(r.Cohort)}
	if !r.Started.IsZero() {
		p.Started = r.Started.UnixMilli()
	} else {
		p.Started = r.Opened.UnixMilli()
	}
	if !r.Deadline.IsZero() && r.State != StateOpen {
		p.Deadline = r.Deadline.UnixMilli()
	}
	if p == e.phase {
		return
	}
	e.phase = p
	e.emit(protocol.Event{Type: protocol.EventPhase, Phase: &p})
}

// took: a cohort member took round r; adapterBytes is what it downloads.
func (e *events) took(r Round, id string, adapterBytes int64) {
	if !e.on() {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.taken[id] {
		return
	}
	e.taken[id] = true
	e.emit(protocol.Event{Type: protocol.EventTransfer, Transfer: &protocol.TransferEvent{Round: r.ID, Node: id, Direction: "down", Bytes: adapterBytes}})
	e.setNode(id, protocol.NodeComputing, r.ID)
	e.setPhase(r)
}

// served counts blob bytes sent during the current round.
func (e *events) served(n int64) {
	if !e.on() {
		return
	}
	e.mu.Lock()
	e.bytesDown += n
	e.mu.Unlock()
}

// accepted: round r accepted id's update of the given size.
func (e *events) accepted(r Round, id string, bytes int64, late bool) {
	if !e.on() {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.taken[id] = true
	e.setNode(id, protocol.NodeSending, r.ID)
	e.emit(protocol.Event{Type: protocol.EventTransfer, Transfer: &protocol.TransferEvent{Round: r.ID, Node: id, Direction: "up", Bytes: bytes}})
	if late {
		e.setNode(id, protocol.NodeLate, r.ID)
	} else {
		e.setNode(id, protocol.NodeDone, r.ID)
	}
	e.setPhase(r)
}

// closed: round r closed with ledger record rec; ups are its updates and
// n the adapter's element count.
func (e *events) closed(r Round, rec *ledger.Record, ups []UpdateRecord, n int) {
	if !e.on() {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	s := roundSummary(r, rec, ups, n, e.grid)
	s.BytesDown = e.bytesDown
	got := map[string]bool{}
	for _, u := range ups {
		if u.Accepted {
			got[u.WorkerID] = true
		}
	}
	for _, w := range r.Cohort {
		if !got[w] {
			e.setNode(w, protocol.NodeDropped, r.ID)
		}
	}
	e.setPhase(r)
	e.emit(protocol.Event{Type: protocol.EventRound, Round: &s})
	if rec != nil {
		e.emit(protocol.Event{Type: protocol.EventLedger, Ledger: &protocol.LedgerEvent{Index: rec.Index, Round: rec.Round, Hash: rec.Hash}})
	}
}

// roundSummary computes a closed round's figures from its ledger record
// and stored updates. Bytes up count every update received (accepted or
// not); the compression ratio is the dense fp32 delta over the average
// accepted update; FLOPs and energy are the accepted updates' claims.
func roundSummary(r Round, rec *ledger.Record, ups []UpdateRecord, n int, grid float64) protocol.RoundSummary {
	s := protocol.RoundSummary{Round: r.ID, Organiser: "coordinator", Selected: len(r.Cohort), EnergySource: "reported"}
	var acceptedBytes int64
	for _, u := range ups {
		s.BytesUp += u.Bytes
		if !u.Accepted {
			continue
		}
		s.Completed++
		if u.Late {
			s.Late++
		}
		acceptedBytes += u.Bytes
		s.FLOPs += u.FLOPs
		s.EnergyKWh += u.EnergyWh / 1000
	}
	s.Dropped = max(0, s.Selected-s.Completed)
	if !r.Started.IsZero() && !r.Closed.IsZero() {
		s.DurationS = r.Closed.Sub(r.Started).Seconds()
	}
	if s.DurationS > 0 {
		s.DeliveredFLOPS = s.FLOPs / s.DurationS
	}
	if acceptedBytes > 0 {
		s.CompressionRatio = float64(4*n) * float64(s.Completed) / float64(acceptedBytes)
	}
	if grid > 0 {
		g, co2 := grid, s.EnergyKWh*grid/1000
		s.GridGPerKWh, s.CO2Kg = &g, &co2
	}
	if rec != nil {
		i := rec.Index
		s.LedgerIndex = &i
	}
	return s
}

// replay emits what a viewer of a restarted coordinator should see: the
// workers seen recently, the closed rounds on the ledger (at most the last
// 500) and the round in flight.
func (e *events) replay(ctx context.Context, c *Coordinator) {
	if !e.on() {
		return
	}
	var recs []ledger.Record
	if c.ledger != nil {
		recs = c.ledger.Records()
	}
	if len(recs) > 500 {
		recs = recs[len(recs)-500:]
	}
	for i := range recs {
		rec := &recs[i]
		r, err := c.store.Round(ctx, rec.Round)
		if err != nil {
			continue
		}
		ups, err := c.store.Updates(ctx, rec.Round)
		if err != nil {
			continue
		}
		s := roundSummary(r, rec, ups, c.n, e.grid)
		e.mu.Lock()
		e.emit(protocol.Event{Type: protocol.EventRound, Round: &s})
		e.mu.Unlock()
	}
	now := c.clock.Now()
	e.sweep(now, 0, func() ([]Worker, error) { return c.store.Workers(ctx, now.Add(-c.cfg.SeenWithin)) })
	e.roundChanged(c.cur)
}

// blobSize is the size of the blob file with the given hash, 0 if absent.
func blobSize(dir, hash string) int64 {
	fi, err := os.Stat(filepath.Join(dir, hash))
	if err != nil {
		return 0
	}
	return fi.Size()
}

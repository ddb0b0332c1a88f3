package sim

import (
	"context"
	"math"
	"time"

	"github.com/opencluster/opencluster/coordinator"
	"github.com/opencluster/opencluster/protocol"
)

// The simulator emits the dashboard events of docs/events.md with T in
// virtual milliseconds since the run's start. Nothing here runs without a
// Sink, so a run without --serve pays nothing for it.

func (s *Sim) emit(e protocol.Event) {
	e.T = int64(math.Round((s.clock.t - fromTime(s.cfg.Start)) * 1000))
	s.cfg.Sink.Emit(e)
}

// nodeEvent describes node i in state for round.
func (s *Sim) nodeEvent(i int32, state string, round uint64) protocol.NodeEvent {
	reg := s.pop.T.Regions[s.pop.Nodes[i].Region]
	n := protocol.NodeEvent{ID: s.ids[i], State: state, Placed: true, Lat: reg.Lat, Lon: reg.Lon, Device: s.pop.Describe(int(i)), Round: round}
	if len(reg.Code) == 2 {
		n.Region = reg.Code
	}
	return n
}

// setNode emits p's node moving to state.
func (s *Sim) setNode(p *part, state string) {
	if s.cfg.Sink == nil {
		return
	}
	n := s.nodeEvent(p.node, state, p.round.sum.Round)
	s.emit(protocol.Event{Type: protocol.EventNode, Node: &n})
}

func (s *Sim) transfer(p *part, dir string, bytes int64, seconds float64) {
	if s.cfg.Sink == nil {
		return
	}
	s.emit(protocol.Event{Type: protocol.EventTransfer, Transfer: &protocol.TransferEvent{Round: p.round.sum.Round, Node: s.ids[p.node],
		Direction: dir, Bytes: bytes, DurationMS: int64(math.Round(seconds * 1000))}})
}

func (s *Sim) phase(rs *roundStats, phase string, deadline float64) *protocol.PhaseEvent {
	start := fromTime(s.cfg.Start)
	ph := &protocol.PhaseEvent{Round: rs.sum.Round, Phase: phase, Organiser: rs.sum.Organiser, Cohort: rs.sum.Selected,
		Started: int64(math.Round((rs.opened - start) * 1000))}
	if deadline > 0 {
		ph.Deadline = int64(math.Round((deadline - start) * 1000))
	}
	return ph
}

func (s *Sim) emitPhase(rs *roundStats, phase string, deadline float64) {
	if s.cfg.Sink == nil {
		return
	}
	if phase == protocol.PhasePropagate && rs.organiser >= 0 {
		n := s.nodeEvent(rs.organiser, protocol.NodeOrganiser, rs.sum.Round)
		s.emit(protocol.Event{Type: protocol.EventNode, Node: &n})
	}
	s.emit(protocol.Event{Type: protocol.EventPhase, Phase: s.phase(rs, phase, deadline)})
}

// emitSnapshot opens the stream: the nodes online at the start (at most
// SnapshotNodes of them, in id order) as idle.
func (s *Sim) emitSnapshot() {
	if s.cfg.Sink == nil {
		return
	}
	snap := &protocol.Snapshot{Source: protocol.SourceSim, Model: s.cfg.Job.Model, Nodes: []protocol.NodeEvent{}}
	for i := range s.ids {
		if len(snap.Nodes) >= s.cfg.SnapshotNodes {
			break
		}
		if s.eligible[i] && s.online(i, s.clock.t) {
			snap.Nodes = append(snap.Nodes, s.nodeEvent(int32(i), protocol.NodeIdle, 0))
		}
	}
	s.emit(protocol.Event{Type: protocol.EventSnapshot, Snapshot: snap})
}

// Paced returns a sink that holds each event until the wall clock reaches
// its virtual time divided by pace (virtual seconds per real second), so
// that a viewer of --serve sees the run unfold; pace 0 passes events on
// at once. The simulation waits with it.
func Paced(ctx context.Context, sink coordinator.EventSink, pace float64) coordinator.EventSink {
	if pace <= 0 {
		return sink
	}
	return &paced{ctx: ctx, sink: sink, pace: pace, start: time.Now()}
}

type paced struct {
	ctx   context.Context
	sink  coordinator.EventSink
	pace  float64
	start time.Time
}

func (p *paced) Emit(e protocol.Event) {
	due := p.start.Add(time.Duration(float64(e.T) / p.pace * float64(time.Millisecond)))
	if d := time.Until(due); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-p.ctx.Done():
			t.Stop()
		}
	}
	p.sink.Emit(e)
}

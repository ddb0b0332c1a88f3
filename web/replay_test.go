package web

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/opencluster/opencluster/protocol"
)

func TestRecordThenReplay(t *testing.T) {
	var buf bytes.Buffer
	rec := &Recorder{W: &buf}
	rec.Emit(protocol.Event{T: 0, Type: protocol.EventNode, Node: &protocol.NodeEvent{ID: "a", State: protocol.NodeIdle, Placed: true, Lat: 1, Lon: 2}})
	rec.Emit(protocol.Event{T: 0, Type: protocol.EventSnapshot, Snapshot: &protocol.Snapshot{}})
	rec.Emit(protocol.Event{T: 40, Type: protocol.EventPhase, Phase: &protocol.PhaseEvent{Round: 1, Phase: protocol.PhaseCompute}})
	rec.Emit(protocol.Event{T: 80, Type: protocol.EventRound, Round: &protocol.RoundSummary{Round: 1, Completed: 1}})
	if rec.Err != nil {
		t.Fatal(rec.Err)
	}
	h := NewHub(HubOptions{Source: protocol.SourceSim})
	start := time.Now()
	if err := Replay(context.Background(), h, bytes.NewReader(buf.Bytes()), 1); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 75*time.Millisecond {
		t.Errorf("replay at speed 1 took %v; the recorded events span 80ms", d)
	}
	s := h.Snapshot()
	if s.Seq != 3 || len(s.Snapshot.Nodes) != 1 || s.Snapshot.Round.Phase != protocol.PhaseCompute || len(s.Snapshot.History) != 1 {
		t.Fatalf("after replay: %+v", s)
	}

	err := Replay(context.Background(), h, strings.NewReader("{\"type\":\"node\"}\nnot json\n"), 0)
	if err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("bad line: %v, want an error naming line 2", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Replay(ctx, h, bytes.NewReader(buf.Bytes()), 1); err == nil {
		t.Fatal("replay ran on after its context ended")
	}
}

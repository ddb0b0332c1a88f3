package web

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/opencluster/opencluster/protocol"
)

// sseReader reads Server-Sent Events the way a browser's EventSource
// does: fields until a blank line, "data" lines joined, comments skipped.
type sseReader struct{ sc *bufio.Scanner }

func newSSEReader(r *http.Response) *sseReader {
	sc := bufio.NewScanner(r.Body)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	return &sseReader{sc: sc}
}

// next returns the next message's id and decoded event.
func (s *sseReader) next() (string, protocol.Event, error) {
	var id string
	var data []string
	for s.sc.Scan() {
		line := s.sc.Text()
		switch {
		case line == "":
			if data == nil {
				continue
			}
			var e protocol.Event
			err := json.Unmarshal([]byte(strings.Join(data, "\n")), &e)
			return id, e, err
		case strings.HasPrefix(line, ":"):
		case strings.HasPrefix(line, "id: "):
			id = line[4:]
		case strings.HasPrefix(line, "data: "):
			data = append(data, line[6:])
		case strings.HasPrefix(line, "retry: "):
		default:
			return "", protocol.Event{}, fmt.Errorf("unexpected SSE line %q", line)
		}
	}
	if err := s.sc.Err(); err != nil {
		return "", protocol.Event{}, err
	}
	return "", protocol.Event{}, fmt.Errorf("stream ended")
}

func connect(t testing.TB, url string, hdr map[string]string) (*http.Response, *sseReader) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q, want text/event-stream", ct)
	}
	return resp, newSSEReader(resp)
}

func node(id, state string) protocol.Event {
	return protocol.Event{Type: protocol.EventNode, Node: &protocol.NodeEvent{ID: id, State: state}}
}

func TestHubSnapshotThenEventsInOrder(t *testing.T) {
	h := NewHub(HubOptions{Source: protocol.SourceSim, CoordinatorKey: "ed25519:k", Model: "tiny", Now: func() int64 { return 42 }})
	srv := httptest.NewServer(h)
	defer srv.Close()

	h.Emit(node("b", protocol.NodeIdle))
	h.Emit(node("a", protocol.NodeComputing))
	h.Emit(node("c", protocol.NodeIdle))
	h.Emit(node("c", protocol.NodeOffline)) // gone: not in the snapshot
	h.Emit(protocol.Event{Type: protocol.EventPhase, Phase: &protocol.PhaseEvent{Round: 3, Phase: protocol.PhaseCompute, Organiser: "a", Cohort: 2}})
	h.Emit(protocol.Event{T: 7, Type: protocol.EventRound, Round: &protocol.RoundSummary{Round: 2, Completed: 2}})

	resp, rd := connect(t, srv.URL, nil)
	defer resp.Body.Close()
	id, e, err := rd.next()
	if err != nil {
		t.Fatal(err)
	}
	if e.Type != protocol.EventSnapshot || e.Snapshot == nil || id != "6" || e.Seq != 6 {
		t.Fatalf("first message: id %q, %+v; want the snapshot with seq 6", id, e)
	}
	s := e.Snapshot
	if s.Source != protocol.SourceSim || s.CoordinatorKey != "ed25519:k" || s.Model != "tiny" {
		t.Errorf("snapshot header %+v", s)
	}
	if len(s.Nodes) != 2 || s.Nodes[0].ID != "a" || s.Nodes[0].State != protocol.NodeComputing || s.Nodes[1].ID != "b" {
		t.Errorf("snapshot nodes %+v, want a (computing) and b, sorted by id", s.Nodes)
	}
	if s.Round == nil || s.Round.Round != 3 || s.Round.Phase != protocol.PhaseCompute {
		t.Errorf("snapshot round %+v", s.Round)
	}
	if len(s.History) != 1 || s.History[0].Round != 2 {
		t.Errorf("snapshot history %+v", s.History)
	}

	for i := 0; i < 5; i++ {
		h.Emit(node(fmt.Sprintf("n%d", i), protocol.NodeReceiving))
	}
	for want := uint64(7); want <= 11; want++ {
		id, e, err := rd.next()
		if err != nil {
			t.Fatal(err)
		}
		if e.Seq != want || id != fmt.Sprint(want) || e.Type != protocol.EventNode || e.T != 42 {
			t.Fatalf("got id %q %+v, want node event seq %d stamped t=42", id, e, want)
		}
	}
}

func TestHubHistoryIsBounded(t *testing.T) {
	h := NewHub(HubOptions{})
	for i := 1; i <= maxHistory+20; i++ {
		h.Emit(protocol.Event{Type: protocol.EventRound, Round: &protocol.RoundSummary{Round: uint64(i)}})
	}
	hist := h.Snapshot().Snapshot.History
	if len(hist) != maxHistory || hist[0].Round != 21 || hist[len(hist)-1].Round != maxHistory+20 {
		t.Fatalf("history of %d rounds from %d to %d; want the last %d", len(hist), hist[0].Round, hist[len(hist)-1].Round, maxHistory)
	}
}

func TestHubKeepsSummaryForLateViewers(t *testing.T) {
	h := NewHub(HubOptions{Source: protocol.SourceSim})
	h.Emit(protocol.Event{Type: protocol.EventSummary, Summary: &protocol.RunSummary{Rounds: 9, Nodes: 100}})
	if s := h.Snapshot().Snapshot.Summary; s == nil || s.Rounds != 9 {
		t.Fatalf("snapshot summary %+v, want the emitted one", s)
	}
}

func TestHubReconnectGetsFreshSnapshot(t *testing.T) {
	h := NewHub(HubOptions{})
	srv := httptest.NewServer(h)
	defer srv.Close()
	h.Emit(node("a", protocol.NodeIdle))
	resp, rd := connect(t, srv.URL, nil)
	rd.next()
	h.Emit(node("a", protocol.NodeSending))
	rd.next()
	resp.Body.Close()
	h.Emit(node("b", protocol.NodeIdle))

	resp2, rd2 := connect(t, srv.URL, map[string]string{"Last-Event-ID": "2"})
	defer resp2.Body.Close()
	_, e, err := rd2.next()
	if err != nil {
		t.Fatal(err)
	}
	if e.Type != protocol.EventSnapshot || e.Seq != 3 || len(e.Snapshot.Nodes) != 2 || e.Snapshot.Nodes[0].State != protocol.NodeSending {
		t.Fatalf("after reconnect: %+v; want a snapshot at seq 3 with a (sending) and b", e)
	}
}

func TestHubDropsSlowViewer(t *testing.T) {
	h := NewHub(HubOptions{Buffer: 4})
	slow, _, err := h.subscribe()
	if err != nil {
		t.Fatal(err)
	}
	fast, _, _ := h.subscribe()
	for i := 0; i < 4; i++ {
		h.Emit(node("a", protocol.NodeIdle))
		<-fast.ch
	}
	select {
	case <-slow.gone:
		t.Fatal("dropped with a queue that still had room")
	default:
	}
	h.Emit(node("a", protocol.NodeIdle)) // the fifth: slow's queue is full
	select {
	case <-slow.gone:
	default:
		t.Fatal("a viewer with a full queue was kept, so its queue would grow without bound")
	}
	select {
	case <-fast.gone:
		t.Fatal("the viewer that kept up was dropped")
	default:
	}
	if h.Viewers() != 1 || h.Dropped() != 1 {
		t.Fatalf("viewers %d, dropped %d; want 1 and 1", h.Viewers(), h.Dropped())
	}
}

func TestHubDropsStalledConnection(t *testing.T) {
	// A real connection whose reader stops: the hub must let go of it
	// (queue full or write deadline), not grow or hang.
	h := NewHub(HubOptions{Buffer: 8, WriteTimeout: 200 * time.Millisecond})
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, rd := connect(t, srv.URL, nil)
	defer resp.Body.Close()
	rd.next()
	big := strings.Repeat("x", 64<<10)
	deadline := time.Now().Add(20 * time.Second)
	for h.Viewers() > 0 && time.Now().Before(deadline) {
		h.Emit(protocol.Event{Type: protocol.EventNode, Node: &protocol.NodeEvent{ID: "a", State: protocol.NodeIdle, Device: big}})
		time.Sleep(time.Millisecond)
	}
	if h.Viewers() != 0 {
		t.Fatal("a viewer that stopped reading is still connected after 20s of events")
	}
}

func TestHubViewerLimitAndClose(t *testing.T) {
	h := NewHub(HubOptions{MaxViewers: 1})
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, rd := connect(t, srv.URL, nil)
	defer resp.Body.Close()
	rd.next()
	r2, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	r2.Body.Close()
	if r2.StatusCode != http.StatusServiceUnavailable || r2.Header.Get("Retry-After") == "" {
		t.Fatalf("second viewer over the limit: %s, want 503 with Retry-After", r2.Status)
	}
	r3, err := http.Post(srv.URL, "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	r3.Body.Close()
	if r3.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST: %s, want 405", r3.Status)
	}
	h.Close()
	if _, _, err := rd.next(); err == nil {
		t.Fatal("stream still open after Close")
	}
	h.Emit(node("a", protocol.NodeIdle)) // after Close: ignored, no panic
}

func TestHubRefusesEmittedSnapshots(t *testing.T) {
	h := NewHub(HubOptions{})
	h.Emit(protocol.Event{Type: protocol.EventSnapshot, Snapshot: &protocol.Snapshot{Nodes: []protocol.NodeEvent{{ID: "x"}}}})
	if s := h.Snapshot(); s.Seq != 0 || len(s.Snapshot.Nodes) != 0 {
		t.Fatalf("an emitted snapshot changed the hub: %+v", s)
	}
}

func TestHubStreamSurvivesServerWriteTimeout(t *testing.T) {
	// The coordinator's http.Server has a WriteTimeout sized for long
	// polls; the event stream must outlive it.
	h := NewHub(HubOptions{Heartbeat: 50 * time.Millisecond})
	srv := httptest.NewUnstartedServer(h)
	srv.Config.WriteTimeout = 300 * time.Millisecond
	srv.Start()
	defer srv.Close()
	resp, rd := connect(t, srv.URL, nil)
	defer resp.Body.Close()
	rd.next()
	time.Sleep(600 * time.Millisecond)
	h.Emit(node("late", protocol.NodeIdle))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got := make(chan error, 1)
	go func() {
		_, e, err := rd.next()
		if err == nil && e.Node.ID != "late" {
			err = fmt.Errorf("got %+v", e)
		}
		got <- err
	}()
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("after the server's write timeout: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("no event within 5s")
	}
}

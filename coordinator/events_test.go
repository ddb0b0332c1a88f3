package coordinator

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/opencluster/opencluster/protocol"
)

// recorder is an EventSink that keeps what it is given.
type recorder struct {
	mu  sync.Mutex
	evs []protocol.Event
}

func (r *recorder) Emit(e protocol.Event) {
	r.mu.Lock()
	r.evs = append(r.evs, e)
	r.mu.Unlock()
}

// take returns the events since the last call.
func (r *recorder) take() []protocol.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.evs
	r.evs = nil
	return out
}

func (e *env) registerIn(region string) (*worker, int, string) {
	e.t.Helper()
	pub, priv, _ := ed25519.GenerateKey(nil)
	body, _ := json.Marshal(protocol.RegisterRequest{PublicKey: protocol.EncodePublicKey(pub), ClientVersion: "test", Device: "cpu 2 cores", Region: region})
	req, _ := http.NewRequest("POST", e.srv.URL+"/v1/register", bytes.NewReader(body))
	req.Header.Set(SignatureHeader, base64.StdEncoding.EncodeToString(ed25519.Sign(priv, append([]byte(RegisterPrefix), body...))))
	resp, b := e.do(req)
	var rr protocol.RegisterResponse
	json.Unmarshal(b, &rr)
	return &worker{id: rr.WorkerID, pub: pub, priv: priv}, resp.StatusCode, string(b)
}

func phases(evs []protocol.Event) []string {
	var out []string
	for _, e := range evs {
		if e.Type == protocol.EventPhase {
			out = append(out, e.Phase.Phase)
		}
	}
	return out
}

func nodeStates(evs []protocol.Event, id string) []string {
	var out []string
	for _, e := range evs {
		if e.Type == protocol.EventNode && e.Node.ID == id {
			out = append(out, e.Node.State)
		}
	}
	return out
}

func TestEventsFollowARound(t *testing.T) {
	rec := &recorder{}
	clock := &fakeClock{t: time.Unix(1_750_000_000, 0)}
	e := newEnv(t, t.TempDir(), testConfig(), clock, nil, func(o *Options) { o.Events = rec; o.GridGPerKWh = 400 })
	if got := phases(rec.take()); len(got) != 1 || got[0] != protocol.PhaseSelect {
		t.Fatalf("phases at start %v, want [select] (round 1 open, waiting for workers)", got)
	}

	if _, status, msg := e.registerIn("Atlantis"); status != 400 || !bytes.Contains([]byte(msg), []byte("bad_region")) {
		t.Fatalf("register with region Atlantis: %d %s, want 400 bad_region", status, msg)
	}
	de, _, _ := e.registerIn("de")
	br, _, _ := e.registerIn("BR")
	none, _, _ := e.registerIn("")
	evs := rec.take()
	for _, ev := range evs {
		if ev.Type != protocol.EventNode || ev.Node.State != protocol.NodeIdle || ev.T != clock.Now().UnixMilli() {
			t.Fatalf("registration emitted %+v, want idle node events stamped with the clock", ev)
		}
		n := ev.Node
		switch n.ID {
		case de.id:
			if !n.Placed || n.Region != "DE" || n.Lat < 47 || n.Lat > 55 || n.Lon < 6 || n.Lon > 15 {
				t.Errorf("worker in DE: %+v, want placed inside Germany", n)
			}
		case br.id:
			if !n.Placed || n.Region != "BR" || n.Lat > 0 || n.Lon > -35 {
				t.Errorf("worker in BR: %+v, want placed in Brazil", n)
			}
		case none.id:
			if n.Placed || n.Region != "" || n.Lat != 0 || n.Lon != 0 {
				t.Errorf("worker without a region: %+v, want unplaced", n)
			}
		}
	}
	if len(evs) != 3 {
		t.Fatalf("%d events for 3 registrations", len(evs))
	}

	ws := []*worker{de, br, none}
	e.step()
	if got := phases(rec.take()); len(got) != 1 || got[0] != protocol.PhasePropagate {
		t.Fatalf("phases after the cohort pick %v, want [propagate]", got)
	}
	var info *protocol.RoundInfo
	for _, w := range ws {
		info, _ = e.poll(w, "0s")
	}
	evs = rec.take()
	if got := phases(evs); len(got) != 1 || got[0] != protocol.PhaseCompute {
		t.Fatalf("phases once every member took the round %v, want [compute]", got)
	}
	down := 0
	var downs []*protocol.TransferEvent
	for _, ev := range evs {
		if ev.Type == protocol.EventTransfer {
			downs = append(downs, ev.Transfer)
			down++
		}
	}
	if down != 3 || len(nodeStates(evs, de.id)) != 1 || nodeStates(evs, de.id)[0] != protocol.NodeComputing {
		t.Fatalf("after the polls: %d down transfers, DE worker states %v; want 3 and [computing]", down, nodeStates(evs, de.id))
	}
	resp, blob := e.get(info.AdapterURL) // one worker's download, counted as bytes down
	if resp.StatusCode != 200 {
		t.Fatal(resp.Status)
	}
	for _, tr := range downs {
		if tr.Direction != "down" || tr.Round != 1 || tr.Bytes != int64(len(blob)) {
			t.Errorf("transfer %+v, want round 1's adapter (%d bytes) going down", tr, len(blob))
		}
	}

	var upBytes int64
	for i, w := range ws {
		body, _ := makeUpdate(t, w, info, seqDelta(e.cfg.N(), float32(i+1)), 100)
		upBytes += int64(len(body))
		if status, msg := e.upload(body); status != 200 {
			t.Fatalf("upload: %d %s", status, msg)
		}
	}
	evs = rec.take()
	if got := nodeStates(evs, br.id); len(got) != 2 || got[0] != protocol.NodeSending || got[1] != protocol.NodeDone {
		t.Errorf("BR worker states on upload %v, want [sending done]", got)
	}
	e.step()
	evs = rec.take()
	if got := phases(evs); len(got) != 4 || got[0] != protocol.PhaseAggregate || got[1] != protocol.PhaseClosed || got[2] != protocol.PhaseSelect || got[3] != protocol.PhasePropagate {
		t.Fatalf("phases at close %v, want [aggregate closed select propagate]", got)
	}
	var sum *protocol.RoundSummary
	var led *protocol.LedgerEvent
	for _, ev := range evs {
		switch ev.Type {
		case protocol.EventRound:
			sum = ev.Round
		case protocol.EventLedger:
			led = ev.Ledger
		}
	}
	last, _ := e.led.Last()
	if led == nil || led.Index != 0 || led.Round != 1 || led.Hash != last.Hash {
		t.Fatalf("ledger event %+v, want index 0 round 1 hash %s", led, last.Hash)
	}
	if sum == nil {
		t.Fatal("no round event")
	}
	if sum.Round != 1 || sum.Selected != 3 || sum.Completed != 3 || sum.Dropped != 0 || sum.BytesUp != upBytes ||
		sum.BytesDown != int64(len(blob)) || sum.FLOPs != 3e9 || sum.EnergySource != "reported" ||
		sum.LedgerIndex == nil || *sum.LedgerIndex != 0 {
		t.Fatalf("round summary %+v; want 3 of 3, %d bytes up, %d down, 3e9 FLOPs, ledger index 0", sum, upBytes, len(blob))
	}
	if want := 3 * 0.5 / 1000; sum.EnergyKWh < want*0.999 || sum.EnergyKWh > want*1.001 || sum.CO2Kg == nil || *sum.CO2Kg < want*0.4*0.999 || *sum.GridGPerKWh != 400 {
		t.Errorf("energy %v kWh, CO2 %v kg; want %v kWh and that x 0.4 kg", sum.EnergyKWh, sum.CO2Kg, want)
	}
	if ratio := float64(4*e.cfg.N()) * 3 / float64(upBytes); sum.CompressionRatio != ratio {
		t.Errorf("compression ratio %v, want %v", sum.CompressionRatio, ratio)
	}
	// Round 2 opened with the same cohort: the members were idle between.
	if got := nodeStates(evs, none.id); len(got) < 1 || got[0] != protocol.NodeIdle {
		t.Errorf("unplaced worker's states at the close %v, want idle first", got)
	}
}

func TestEventsAfterRestartReplayTheLedger(t *testing.T) {
	dir := t.TempDir()
	clock := &fakeClock{t: time.Unix(1_750_000_000, 0)}
	e := newEnv(t, dir, testConfig(), clock, nil)
	ws, info := e.startRound(3)
	for _, w := range ws {
		body, _ := makeUpdate(t, w, info, seqDelta(e.cfg.N(), 1), 50)
		e.upload(body)
	}
	e.step()
	e.close()

	rec := &recorder{}
	newEnv(t, dir, testConfig(), clock, nil, func(o *Options) { o.Events = rec })
	var rounds, nodes int
	for _, ev := range rec.take() {
		switch ev.Type {
		case protocol.EventRound:
			rounds++
			if ev.Round.Round != 1 || ev.Round.Completed != 3 || ev.Round.LedgerIndex == nil {
				t.Errorf("replayed round %+v", ev.Round)
			}
		case protocol.EventNode:
			nodes++
		}
	}
	if rounds != 1 || nodes != 3 {
		t.Fatalf("after a restart: %d round events and %d nodes, want the ledger's 1 and the 3 workers seen", rounds, nodes)
	}
}

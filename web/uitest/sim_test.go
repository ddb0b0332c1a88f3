//go:build uitest

package uitest

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/opencluster/opencluster/protocol"
	"github.com/opencluster/opencluster/web"
)

// recordedRun is a recorded simulation event stream: nodes placed in a
// few countries (and some unplaced), rounds with an organiser node, the
// model going out, training, updates coming back, some dropouts, each
// round's figures, and a closing summary with the data-center comparison.
// It stands in for `opencluster simulate --serve` until that command is
// on main; the page cannot tell the difference, since both reach it
// through web.Hub.
func recordedRun(nodes, rounds int, seed uint64) []protocol.Event {
	r := rand.New(rand.NewPCG(seed, 7))
	codes := []string{"DE", "BR", "IN", "US", "NG", "JP", "AU", "FR", "KE", "CA", "ID", "AR"}
	var evs []protocol.Event
	t := int64(0)
	add := func(dt int64, e protocol.Event) {
		t += dt
		e.T = t
		evs = append(evs, e)
	}
	ns := make([]protocol.NodeEvent, nodes)
	for i := range ns {
		n := protocol.NodeEvent{ID: fmt.Sprintf("n%04d", i), State: protocol.NodeIdle, Device: "RTX 4070 12 GB"}
		if i%5 != 4 {
			reg, _, _ := protocol.LookupRegion(codes[r.IntN(len(codes))])
			n.Region, n.Placed, n.Lat, n.Lon = reg.Code, true, reg.Lat, reg.Lon
		}
		ns[i] = n
		add(5, protocol.Event{Type: protocol.EventNode, Node: &ns[i]})
	}
	node := func(i int, state string, round uint64) {
		n := ns[i]
		n.State, n.Round = state, round
		add(20, protocol.Event{Type: protocol.EventNode, Node: &n})
	}
	loss := 3.2
	var totalFLOPs, totalKWh float64
	for round := uint64(1); round <= uint64(rounds); round++ {
		org := r.IntN(nodes)
		cohort := r.Perm(nodes)[:max(2, nodes/2)]
		start := t
		phase := func(p string) {
			add(150, protocol.Event{Type: protocol.EventPhase, Phase: &protocol.PhaseEvent{Round: round, Phase: p, Organiser: ns[org].ID, Cohort: len(cohort), Started: start}})
		}
		phase(protocol.PhaseSelect)
		node(org, protocol.NodeOrganiser, round)
		phase(protocol.PhasePropagate)
		for _, i := range cohort {
			node(i, protocol.NodeReceiving, round)
			add(30, protocol.Event{Type: protocol.EventTransfer, Transfer: &protocol.TransferEvent{Round: round, Node: ns[i].ID, Direction: "down", Bytes: 2 << 20, DurationMS: 900}})
		}
		phase(protocol.PhaseCompute)
		for _, i := range cohort {
			node(i, protocol.NodeComputing, round)
		}
		t += 1500
		phase(protocol.PhaseAggregate)
		done, dropped := 0, 0
		var up int64
		for k, i := range cohort {
			if k%7 == 6 {
				node(i, protocol.NodeDropped, round)
				dropped++
				continue
			}
			node(i, protocol.NodeSending, round)
			add(30, protocol.Event{Type: protocol.EventTransfer, Transfer: &protocol.TransferEvent{Round: round, Node: ns[i].ID, Direction: "up", Bytes: 41 << 10, DurationMS: 300}})
			node(i, protocol.NodeDone, round)
			up += 41 << 10
			done++
		}
		loss *= 0.93
		vl := loss
		flops := float64(done) * 2.4e15
		kwh := float64(done) * 0.05
		co2 := kwh * 0.4
		grid := 400.0
		totalFLOPs += flops
		totalKWh += kwh
		dur := float64(t-start) / 1000
		add(100, protocol.Event{Type: protocol.EventRound, Round: &protocol.RoundSummary{Round: round, Organiser: ns[org].ID, Selected: len(cohort),
			Completed: done, Dropped: dropped, DurationS: dur, BytesUp: up, BytesDown: int64(len(cohort)) * (2 << 20), CompressionRatio: 51.2,
			FLOPs: flops, DeliveredFLOPS: flops / dur, ValLoss: &vl, EnergyKWh: kwh, CO2Kg: &co2, EnergySource: "simulated", GridGPerKWh: &grid}})
		phase(protocol.PhaseClosed)
		for _, i := range append(cohort, org) {
			node(i, protocol.NodeIdle, 0)
		}
	}
	dcKWh := totalFLOPs / (989e12 * 0.4) / 3600 * 700 * 1.2 / 1000
	add(200, protocol.Event{Type: protocol.EventSummary, Summary: &protocol.RunSummary{Rounds: rounds, Nodes: nodes, WallS: float64(t) / 1000,
		FLOPs: totalFLOPs, DeliveredFLOPS: totalFLOPs / (float64(t) / 1000), EnergyKWh: totalKWh, CO2Kg: totalKWh * 0.4,
		DataCenter: &protocol.DataCenterComparison{Accelerator: "H100 SXM", PeakFLOPS: 989e12, Utilisation: 0.4, PowerW: 700 * 1.2, PUE: 1.2,
			GridGPerKWh: 400, Hours: totalFLOPs / (989e12 * 0.4) / 3600, EnergyKWh: dcKWh, CO2Kg: dcKWh * 0.4,
			Verdict: fmt.Sprintf("the volunteer network used %.1fx the energy of the data center for the same FLOPs", totalKWh/dcKWh)}}})
	return evs
}

func recorded(t *testing.T, evs []protocol.Event) []byte {
	var buf bytes.Buffer
	rec := &web.Recorder{W: &buf}
	for _, e := range evs {
		rec.Emit(e)
	}
	if rec.Err != nil {
		t.Fatal(rec.Err)
	}
	return buf.Bytes()
}

func TestDashboardSimulationReplay(t *testing.T) {
	const nodes, rounds = 40, 4
	evs := recordedRun(nodes, rounds, 1)
	hub := web.NewHub(web.HubOptions{Source: protocol.SourceSim, Model: "tiny"})
	srv := httptest.NewServer(web.Handler(hub, nil))
	defer srv.Close()
	defer hub.Close()

	b := newBrowser(t, "")
	b.navigate(srv.URL + "/")
	b.waitFor("the snapshot", `document.getElementById("source").dataset.value === "sim"`, 20*time.Second)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	replayed := make(chan error, 1)
	// Replayed in about 12 s: fast enough for CI, slow enough to watch.
	span := float64(evs[len(evs)-1].T)
	go func() { replayed <- web.Replay(ctx, hub, bytes.NewReader(recorded(t, evs)), span/12000) }()

	phases := map[string]bool{}
	roundsSeen := map[string]bool{}
	shot := false
	for done := false; !done; {
		select {
		case err := <-replayed:
			if err != nil {
				t.Fatal(err)
			}
			done = true
		case <-time.After(150 * time.Millisecond):
		}
		p, r := b.value("phase"), b.value("round")
		phases[p] = true
		roundsSeen[r] = true
		if !shot && p == protocol.PhaseAggregate && r == "3" {
			b.screenshot("dashboard-sim.png")
			shot = true
		}
	}
	if len(phases) < 4 || len(roundsSeen) < 3 {
		t.Errorf("the page showed phases %v over rounds %v; want the phase to change as rounds run", phases, roundsSeen)
	}

	// After the run: the page against the server's own state.
	b.waitFor("the summary", `!document.getElementById("dc-card").hidden`, 10*time.Second)
	snap := hub.Snapshot().Snapshot
	if got := b.pointsDrawn(); got != nodes || len(snap.Nodes) != nodes {
		t.Errorf("page has %d nodes, server %d; want %d", got, len(snap.Nodes), nodes)
	}
	var up, down int64
	var flops, kwh float64
	for _, r := range snap.History {
		up += r.BytesUp
		down += r.BytesDown
		flops += r.FLOPs
		kwh += r.EnergyKWh
	}
	eq := func(id string, want float64) {
		got, err := strconv.ParseFloat(b.value(id), 64)
		if err != nil || math.Abs(got-want) > 1e-9*math.Max(1, math.Abs(want)) {
			t.Errorf("panel %s = %q, server says %v", id, b.value(id), want)
		}
	}
	eq("rounds", float64(len(snap.History)))
	eq("online", float64(len(snap.Nodes)))
	eq("bytesup", float64(up))
	eq("bytesdown", float64(down))
	eq("totalflops", flops)
	eq("energy", kwh)
	eq("round", float64(snap.Round.Round))
	last := snap.History[len(snap.History)-1]
	eq("flops", last.DeliveredFLOPS)
	eq("ratio", last.CompressionRatio)
	var verdict string
	b.eval(`document.getElementById("dc-verdict").textContent`, &verdict)
	if verdict != snap.Summary.DataCenter.Verdict {
		t.Errorf("data-center verdict on the page %q, server %q", verdict, snap.Summary.DataCenter.Verdict)
	}
	var lossPoints int
	b.eval(`document.querySelectorAll("#losschart polyline").length`, &lossPoints)
	if lossPoints != 1 {
		t.Errorf("no validation-loss line drawn")
	}
	var ledgerHidden bool
	b.eval(`document.getElementById("ledger-card").hidden`, &ledgerHidden)
	if !ledgerHidden {
		t.Error("a simulation without a coordinator key shows a ledger card")
	}
	b.screenshot("dashboard-sim-end.png")
	b.checkClean()
	if os.Getenv("OPENCLUSTER_UI_KEEP") == "" && !shot {
		t.Error("no mid-round screenshot taken")
	}
}

//go:build uitest

package uitest

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/opencluster/opencluster/protocol"
	"github.com/opencluster/opencluster/web"
)

// TestBenchmarkFrames measures the page's frame rate with 10,000 nodes,
// and with 100 as the peer measured in the same run, while 200 events a
// second (state changes and transfer arcs) stream in. It reports, and
// writes to out/bench.json: frames per second counted with
// requestAnimationFrame over 5 s, and the globe's own draw time per frame
// (mean and p95), from which the frame rate the drawing alone allows
// follows. Run by `make ui-bench`; not part of `make ui-test`.
func TestBenchmarkFrames(t *testing.T) {
	type row struct {
		Nodes      int     `json:"nodes"`
		FPS        float64 `json:"fps"`
		DrawMeanMS float64 `json:"draw_mean_ms"`
		DrawP95MS  float64 `json:"draw_p95_ms"`
		EventsPerS int     `json:"events_per_s"`
	}
	var rows []row
	b := newBrowser(t, "")
	for _, n := range []int{100, 10000} {
		hub := web.NewHub(web.HubOptions{Source: protocol.SourceSim})
		srv := httptest.NewServer(web.Handler(hub, nil))
		r := rand.New(rand.NewPCG(uint64(n), 1))
		codes := []string{"DE", "BR", "IN", "US", "NG", "JP", "AU", "FR", "KE", "CA", "ID", "AR", "MX", "ZA", "EG", "TR", "PL", "VN"}
		nodes := make([]protocol.NodeEvent, n)
		for i := range nodes {
			nodes[i] = protocol.NodeEvent{ID: fmt.Sprintf("n%05d", i), State: protocol.NodeIdle}
			if i%5 != 0 {
				reg, _, _ := protocol.LookupRegion(codes[r.IntN(len(codes))])
				nodes[i].Region, nodes[i].Placed, nodes[i].Lat, nodes[i].Lon = reg.Code, true, reg.Lat, reg.Lon
			}
			hub.Emit(protocol.Event{Type: protocol.EventNode, Node: &nodes[i]})
		}
		hub.Emit(protocol.Event{Type: protocol.EventPhase, Phase: &protocol.PhaseEvent{Round: 1, Phase: protocol.PhaseCompute, Organiser: nodes[1].ID, Cohort: n / 2}})
		b.navigate(srv.URL + "/")
		b.waitFor("every node", fmt.Sprintf(`window.opencluster && window.opencluster.state.nodes.size === %d`, n), 60*time.Second)

		stop := make(chan struct{})
		const rate = 200
		go func() { // a busy round: states change, arcs fly
			tick := time.NewTicker(time.Second / rate)
			defer tick.Stop()
			states := []string{protocol.NodeReceiving, protocol.NodeComputing, protocol.NodeSending, protocol.NodeDone, protocol.NodeIdle}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				k := r.IntN(n)
				if i%2 == 0 {
					dir := "down"
					if i%4 == 0 {
						dir = "up"
					}
					hub.Emit(protocol.Event{Type: protocol.EventTransfer, Transfer: &protocol.TransferEvent{Round: 1, Node: nodes[k].ID, Direction: dir, Bytes: 1 << 20}})
				} else {
					nd := nodes[k]
					nd.State, nd.Round = states[i%len(states)], 1
					hub.Emit(protocol.Event{Type: protocol.EventNode, Node: &nd})
				}
			}
		}()
		time.Sleep(time.Second) // warm up
		var before, after struct {
			Frames int     `json:"frames"`
			T      float64 `json:"t"`
		}
		b.eval(`({frames: opencluster.globe.stats.frames, t: performance.now()})`, &before)
		time.Sleep(5 * time.Second)
		b.eval(`({frames: opencluster.globe.stats.frames, t: performance.now()})`, &after)
		var draws []float64
		b.eval(`opencluster.globe.stats.drawMs.slice(-200)`, &draws)
		close(stop)
		hub.Close()
		srv.Close()
		slices.Sort(draws)
		mean := 0.0
		for _, d := range draws {
			mean += d
		}
		mean /= float64(len(draws))
		rw := row{Nodes: n, FPS: float64(after.Frames-before.Frames) / ((after.T - before.T) / 1000), DrawMeanMS: mean,
			DrawP95MS: draws[len(draws)*95/100], EventsPerS: rate}
		rows = append(rows, rw)
		t.Logf("%6d nodes: %.1f frames/s (requestAnimationFrame), globe draw %.2f ms mean, %.2f ms p95 (%.0f frames/s of drawing alone), %d events/s",
			rw.Nodes, rw.FPS, rw.DrawMeanMS, rw.DrawP95MS, 1000/rw.DrawMeanMS, rate)
	}
	out, _ := json.MarshalIndent(rows, "", "  ")
	os.WriteFile(filepath.Join(outDir(t), "bench.json"), out, 0o644)
	b.checkClean()
}

package web

import (
	"bufio"
	"bytes"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/opencluster/opencluster/protocol"
)

// BenchmarkFanout connects 1 (the peer: the same path with no fan-out) and
// 1,000 viewers over loopback HTTP to
// one hub and emits node events at 100 per second (each a realistic
// ~150-byte frame; a live round emits a few per worker). It reports the
// delivery latency from Emit to a viewer having read the frame, p50 and p99
// over every (event, viewer) pair, the viewers dropped as too slow, and the
// Go heap in use per connected viewer (bounded: each viewer's queue holds
// shared frames, at most Buffer of them).
//
// The viewers' own readers run in the same process and share its CPUs.
//
//	go test -run '^$' -bench Fanout -benchtime 200x ./web/
func BenchmarkFanout(b *testing.B) {
	for _, n := range []int{1, 1000} {
		b.Run("viewers="+strconv.Itoa(n), func(b *testing.B) { benchFanout(b, n) })
	}
}

func benchFanout(b *testing.B, viewers int) {
	const interval = 10 * time.Millisecond
	h := NewHub(HubOptions{Buffer: 256})
	srv := httptest.NewServer(h)
	defer srv.Close()
	tr := &http.Transport{MaxIdleConnsPerHost: viewers, MaxConnsPerHost: 0}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	var mu sync.Mutex
	var lat []time.Duration
	var ready, done sync.WaitGroup
	ready.Add(viewers)
	done.Add(viewers)
	stop := make(chan struct{})
	for i := 0; i < viewers; i++ {
		go func() {
			defer done.Done()
			resp, err := client.Get(srv.URL)
			if err != nil {
				b.Error(err)
				ready.Done()
				return
			}
			defer resp.Body.Close()
			br := bufio.NewReaderSize(resp.Body, 4<<10)
			var mine []time.Duration
			first := true
			for {
				line, err := br.ReadSlice('\n')
				if err != nil {
					break
				}
				if !bytes.HasPrefix(line, []byte("data: ")) {
					continue
				}
				if first { // the snapshot
					first = false
					ready.Done()
					continue
				}
				// The event's node id carries its Emit time in ns.
				at := bytes.Index(line, []byte(`"id":"t`))
				if at < 0 {
					continue
				}
				rest := line[at+7:]
				end := bytes.IndexByte(rest, '"')
				ns, _ := strconv.ParseInt(string(rest[:end]), 10, 64)
				mine = append(mine, time.Duration(time.Now().UnixNano()-ns))
				select {
				case <-stop:
				default:
					continue
				}
				break
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	ready.Wait()
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)

	b.ResetTimer()
	tick := time.NewTicker(interval)
	for i := 0; i < b.N; i++ {
		<-tick.C
		h.Emit(protocol.Event{Type: protocol.EventNode, Node: &protocol.NodeEvent{
			ID: "t" + strconv.FormatInt(time.Now().UnixNano(), 10), State: protocol.NodeComputing,
			Region: "DE", Placed: true, Lat: 51.1, Lon: 10.4, Device: "cpu 8 cores", Round: uint64(i)}})
	}
	tick.Stop()
	time.Sleep(200 * time.Millisecond) // let the last frames arrive
	b.StopTimer()
	close(stop)
	h.Close()
	done.Wait()

	slices.Sort(lat)
	if len(lat) == 0 {
		b.Fatal("no event delivered")
	}
	q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(q(0.50), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(float64(len(lat))/float64(b.N*viewers), "delivered-frac")
	b.ReportMetric(float64(h.Dropped()), "dropped-viewers")
	b.ReportMetric(float64(int64(after.HeapInuse)-int64(before.HeapInuse))/float64(viewers)/1024, "heap-KiB/viewer")
}

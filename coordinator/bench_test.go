package coordinator

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/opencluster/opencluster/coordinator/ledger"
	"github.com/opencluster/opencluster/protocol"
)

// BenchmarkRound1000Clients runs whole rounds with 1,000 lightweight
// protocol clients against one coordinator on loopback (TLS, HTTP/2): each
// client polls for the round, signs a top-k+int8 update of a 65,536-element
// adapter and uploads it; the round closes at quorum and is aggregated.
// It reports upload latency p50/p99, updates aggregated per second and
// upload MB/s over the whole round (poll, upload, aggregation, ledger).
// Run: go test -run '^$' -bench Round1000 -benchtime 2x ./coordinator/
func BenchmarkRound1000Clients(b *testing.B) {
	const clients = 1000
	cfg := DefaultConfig()
	cfg.Shapes = []protocol.Shape{{Name: "lora_A", Dims: []int{128, 256}}, {Name: "lora_B", Dims: []int{256, 128}}}
	cfg.Recipe.Codec = "topk:0.01+int8:256"
	cfg.CohortSize, cfg.MinWorkers, cfg.MinUpdates = clients, clients, clients
	cfg.RoundTimeout = 10 * time.Minute
	dir := b.TempDir()
	store, err := OpenSQLite(context.Background(), filepath.Join(dir, "coordinator.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	led, err := ledger.Open(dir)
	if err != nil {
		b.Fatal(err)
	}
	defer led.Close()
	_, key, _ := ed25519.GenerateKey(nil)
	c, err := New(context.Background(), cfg, Options{Dir: dir, Store: store, Ledger: led, Key: key, Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(NewServer(c, ServerOptions{}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()
	client := srv.Client()
	client.Transport.(*http.Transport).MaxIdleConnsPerHost = 64

	type benchWorker struct {
		id   string
		priv ed25519.PrivateKey
	}
	ws := make([]benchWorker, clients)
	for i := range ws {
		pub, priv, _ := ed25519.GenerateKey(nil)
		body, _ := json.Marshal(protocol.RegisterRequest{PublicKey: protocol.EncodePublicKey(pub)})
		req, _ := http.NewRequest("POST", srv.URL+"/v1/register", bytes.NewReader(body))
		req.Header.Set(SignatureHeader, base64.StdEncoding.EncodeToString(ed25519.Sign(priv, append([]byte(RegisterPrefix), body...))))
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		var rr protocol.RegisterResponse
		json.NewDecoder(resp.Body).Decode(&rr)
		resp.Body.Close()
		ws[i] = benchWorker{rr.WorkerID, priv}
	}
	n := cfg.N()
	delta := make([]float32, n)
	for i := range delta {
		delta[i] = float32(i%97) * 1e-3
	}

	var lat []time.Duration
	var bytesUp int64
	var elapsed time.Duration
	b.ResetTimer()
	for it := 0; it < b.N; it++ {
		if err := c.Step(context.Background()); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		var mu sync.Mutex
		var wg sync.WaitGroup
		errs := make(chan error, clients)
		for _, w := range ws {
			wg.Add(1)
			go func() {
				defer wg.Done()
				req, _ := http.NewRequest("GET", srv.URL+"/v1/round", nil)
				protocol.SignPoll(req.Header, w.id, w.priv, time.Now().Unix(), "GET", "/v1/round")
				resp, err := client.Do(req)
				if err != nil {
					errs <- err
					return
				}
				var info protocol.RoundInfo
				err = json.NewDecoder(resp.Body).Decode(&info)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 {
					errs <- fmt.Errorf("poll: %d %v", resp.StatusCode, err)
					return
				}
				body, _ := makeUpdate(b, &worker{id: w.id, priv: w.priv}, &info, delta, 1000)
				t0 := time.Now()
				resp, err = client.Post(srv.URL+"/v1/updates", "application/octet-stream", bytes.NewReader(body))
				if err != nil {
					errs <- err
					return
				}
				msg, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				d := time.Since(t0)
				if resp.StatusCode != 200 {
					errs <- fmt.Errorf("upload: %d %s", resp.StatusCode, msg)
					return
				}
				mu.Lock()
				lat = append(lat, d)
				bytesUp += int64(len(body))
				mu.Unlock()
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
		if err := c.Step(context.Background()); err != nil { // aggregate and publish
			b.Fatal(err)
		}
		elapsed += time.Since(start)
		if st := c.Status(); st.Round != uint64(it+2) {
			b.Fatalf("round %d did not close: %+v", it+1, st)
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(q(0.5), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(float64(clients*b.N)/elapsed.Seconds(), "updates/s")
	b.ReportMetric(float64(bytesUp)/1e6/elapsed.Seconds(), "MB/s")
	b.ReportMetric(float64(bytesUp)/float64(clients*b.N), "B/update")
}

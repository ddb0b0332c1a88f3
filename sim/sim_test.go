package sim

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/opencluster/opencluster/bench"
	"github.com/opencluster/opencluster/configs"
	"github.com/opencluster/opencluster/netclient"
	"github.com/opencluster/opencluster/protocol"
)

// jobs caches testJob's results: sizing a big model's update encodes it.
var jobs sync.Map

// testJob builds the job of a configs/ preset the way `opencluster
// simulate` does.
func testJob(t testing.TB, preset, codec string, steps int) Job {
	t.Helper()
	key := fmt.Sprint(preset, codec, steps)
	if j, ok := jobs.Load(key); ok {
		return j.(Job)
	}
	c, err := configs.TrainConfig(preset)
	if err != nil {
		t.Fatal(err)
	}
	tokens := c.Train.SeqLen * c.Train.BatchSize
	j, err := NewJob(JobSpec{Name: preset, Config: c, Shapes: netclient.AdapterShapes(c.Model, c.LoRA),
		FLOPsPerToken: bench.CountStepFLOPs(c.Model, &c.LoRA, c.Train.SeqLen).PerToken, Steps: steps, TokensPerStep: tokens, Codec: codec})
	if err != nil {
		t.Fatal(err)
	}
	jobs.Store(key, j)
	return j
}

func testConfig(t testing.TB, nodes, rounds, cohort int) Config {
	t.Helper()
	tables, err := DefaultTables()
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Tables = tables
	cfg.Job = testJob(t, "llama-1b", "topk:0.01+int8:256", 20)
	cfg.Nodes, cfg.Rounds, cfg.Cohort = nodes, rounds, cohort
	return cfg
}

// runText runs cfg and returns what `simulate` prints: every round line
// and the summary.
func runText(t testing.TB, cfg Config) (string, *Result) {
	t.Helper()
	var out strings.Builder
	cfg.OnRound = func(r protocol.RoundSummary) { fmt.Fprintln(&out, RoundLine(r)) }
	res, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	WriteSummary(&out, &cfg, res)
	return out.String(), res
}

func BenchmarkScale(b *testing.B) {
	cfg := testConfig(b, 1_000_000, 100, 10_000)
	cfg.Job = testJob(b, "llama-7b", "topk:0.01+int8:256", 20)
	for i := 0; i < b.N; i++ {
		res, err := Run(context.Background(), cfg)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(res.Events)/b.Elapsed().Seconds(), "events/s")
	}
}

func BenchmarkMedium(b *testing.B) {
	cfg := testConfig(b, 100_000, 20, 1_000)
	cfg.Job = testJob(b, "llama-7b", "topk:0.01+int8:256", 20)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		res, err := Run(context.Background(), cfg)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(res.Events)/b.Elapsed().Seconds(), "events/s")
	}
}

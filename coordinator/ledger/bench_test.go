package ledger

import (
	"bytes"
	"fmt"
	"testing"
)

// benchRound is a round with n accepted updates (fake hashes and
// signatures: verifying stored updates is benchmarked separately).
func benchRound(b *testing.B, r uint64, n int) Record {
	rec, _ := testRound(b, r)
	e := rec.Updates[0]
	rec.Cohort, rec.Updates = nil, nil
	for i := range n {
		id := fmt.Sprintf("worker-%04d", i)
		e.WorkerID, e.UpdateHash, e.Accepted = id, hashOf(fmt.Sprint(r, id)), true
		rec.Cohort = append(rec.Cohort, id)
		rec.Updates = append(rec.Updates, e)
	}
	return rec
}

// BenchmarkAppend measures one sealed, fsynced append of a 16-update round.
func BenchmarkAppend(b *testing.B) {
	l, err := Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	tmpl := benchRound(b, 1, 16)
	b.ResetTimer()
	for i := range b.N {
		rec := tmpl.clone()
		rec.Round = uint64(i + 1)
		rec.AdapterBefore, rec.AdapterAfter = adapter(uint64(i)), adapter(uint64(i+1))
		if err := l.Append(&rec, coordKey); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyReader measures parsing and verifying a 100-record ledger
// of 16-update rounds; it reports records per second.
func BenchmarkVerifyReader(b *testing.B) {
	var recs []Record
	var buf bytes.Buffer
	for r := uint64(1); r <= 100; r++ {
		rec := benchRound(b, r, 16)
		var prev *Record
		if len(recs) > 0 {
			prev = &recs[len(recs)-1]
		}
		if err := Seal(&rec, prev, coordKey); err != nil {
			b.Fatal(err)
		}
		recs = append(recs, rec)
		line, _ := rec.MarshalLine()
		buf.Write(append(line, '\n'))
	}
	data := buf.Bytes()
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for range b.N {
		if _, err := VerifyReader(bytes.NewReader(data), VerifyOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(100*b.N)/b.Elapsed().Seconds(), "records/s")
}

// BenchmarkVerifyStoredUpdates measures the per-update cost of checking
// stored updates: hash, parse, ed25519 verify, field comparison.
func BenchmarkVerifyStoredUpdates(b *testing.B) {
	rec, store := testRound(b, 1)
	if err := Seal(&rec, nil, coordKey); err != nil {
		b.Fatal(err)
	}
	opts := VerifyOptions{UpdateStore: mapStore(store)}
	b.ResetTimer()
	for range b.N {
		if err := Verify([]Record{rec}, opts); err != nil {
			b.Fatal(err)
		}
	}
}

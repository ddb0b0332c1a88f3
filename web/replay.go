package web

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/opencluster/opencluster/protocol"
)

// Replay reads recorded events (one JSON protocol.Event per line, as a
// viewer receives them) from r and emits them into sink, keeping the gaps
// between their T stamps divided by speed (0 or less: no waiting). Snapshot
// events are skipped (a hub makes its own); seq numbers are the hub's. It
// returns at the end of r, when ctx ends, or at the first bad line, naming
// it.
func Replay(ctx context.Context, sink Sink, r io.Reader, speed float64) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	var prevT int64
	first := true
	for n := 1; sc.Scan(); n++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var e protocol.Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return fmt.Errorf("replay line %d: %w", n, err)
		}
		if e.Type == "" {
			return fmt.Errorf("replay line %d: no event type", n)
		}
		if e.Type == protocol.EventSnapshot {
			continue
		}
		if !first && speed > 0 && e.T > prevT {
			t := time.NewTimer(time.Duration(float64(e.T-prevT) * float64(time.Millisecond) / speed))
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
		}
		first, prevT = false, e.T
		if err := ctx.Err(); err != nil {
			return err
		}
		sink.Emit(e)
	}
	return sc.Err()
}

// Recorder is a Sink that writes each event as one JSON line, for Replay.
type Recorder struct {
	W   io.Writer
	Err error // the first write error
}

// Emit writes e.
func (r *Recorder) Emit(e protocol.Event) {
	if r.Err != nil {
		return
	}
	b, err := json.Marshal(e)
	if err == nil {
		_, err = r.W.Write(append(b, '\n'))
	}
	r.Err = err
}

package sim

import "time"

// event is one thing that happens at a virtual time. Events at the same
// time run in the order they were scheduled (seq), so a run is the same
// whatever the heap's internal order.
type event struct {
	t    float64 // seconds since the Unix epoch, virtual
	seq  uint64
	kind uint8
	node int32
	part uint32 // the node's participation this event belongs to
}

// Event kinds.
const (
	evTick        uint8 = iota // step the coordinator (deadline, waiting for workers)
	evDownOwn                  // the node's own link has the adapter
	evDownDone                 // the organiser's uplink delivered it too: train
	evComputeDone              // local steps done: upload
	evUpOwn                    // the node's own link sent the update
	evArrive                   // the organiser's downlink delivered it: Accept
	evDrop                     // the node went offline or failed
	evWindow                   // the next availability window from a trace
)

// queue is a binary min-heap of events by (t, seq), written out rather
// than through container/heap to keep events unboxed: a million-node run
// pushes millions of them.
type queue struct {
	h   []event
	seq uint64
}

func (q *queue) less(i, j int) bool {
	a, b := &q.h[i], &q.h[j]
	return a.t < b.t || (a.t == b.t && a.seq < b.seq)
}

func (q *queue) push(e event) {
	q.seq++
	e.seq = q.seq
	q.h = append(q.h, e)
	i := len(q.h) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !q.less(i, p) {
			break
		}
		q.h[i], q.h[p] = q.h[p], q.h[i]
		i = p
	}
}

func (q *queue) pop() event {
	top := q.h[0]
	last := len(q.h) - 1
	q.h[0] = q.h[last]
	q.h = q.h[:last]
	i := 0
	for {
		l, r, m := 2*i+1, 2*i+2, i
		if l < last && q.less(l, m) {
			m = l
		}
		if r < last && q.less(r, m) {
			m = r
		}
		if m == i {
			return top
		}
		q.h[i], q.h[m] = q.h[m], q.h[i]
		i = m
	}
}

func (q *queue) len() int { return len(q.h) }

// virtualClock is the coordinator's Clock: it reads the simulation's time.
type virtualClock struct{ t float64 }

func (c *virtualClock) Now() time.Time { return toTime(c.t) }

// toTime converts virtual seconds to a time, rounding to the nanosecond
// the same way on every machine.
func toTime(t float64) time.Time {
	s := int64(t)
	return time.Unix(s, int64((t-float64(s))*1e9)).UTC()
}

func fromTime(t time.Time) float64 { return float64(t.Unix()) + float64(t.Nanosecond())/1e9 }

package budget

import (
	"math"
	"time"
)

// thermal regulates one temperature against its limit. It has two parts:
//
//   - a soft regulator that turns the temperature into a power budget (W)
//     for the duty-cycler: a PI controller on the predicted steady-state
//     temperature T + tau*dT/dt, aimed at limit - margin, so the work slows
//     down as the limit nears instead of bouncing off it;
//   - a hard stop: above the limit the worker pauses, and resumes only below
//     limit - hysteresis.
//
// The proportional gain is scaled by the measured busy power so the loop
// gain is about one for a card whose full load heats it ~50 C above ambient.
type thermal struct {
	name             string
	limit, hyst, tau float64
	hot              bool
	temp             float64
	hist             []tempPoint
	integ            float64 // W
	lastU            float64 // W, the last budget before it was turned into +Inf
	budget           float64 // W, +Inf when not limiting
	primed           bool
}

type tempPoint struct {
	t time.Time
	c float64
}

const (
	thermalMarginC = 1.0  // aim this far below the limit
	thermalGainC   = 50.0 // assumed full-load temperature rise (C) for the gain
	slopeWindowS   = 20.0 // seconds of history for dT/dt
)

func newThermal(name string, limit, hyst, tau float64) thermal {
	return thermal{name: name, limit: limit, hyst: hyst, tau: tau, budget: math.Inf(1), temp: math.NaN()}
}

func (th *thermal) update(now time.Time, temp, dt, pBusy, pIdle float64) {
	th.temp = temp
	if th.limit <= 0 || !finite(temp) {
		th.budget = math.Inf(1)
		return
	}
	wasHot := th.hot
	if temp > th.limit {
		th.hot = true
	} else if th.hot && temp < th.limit-th.hyst {
		th.hot = false
	}
	th.hist = append(th.hist, tempPoint{now, temp})
	i := 0
	for i < len(th.hist) && now.Sub(th.hist[i].t).Seconds() > slopeWindowS {
		i++
	}
	th.hist = th.hist[i:]
	if !finite(pBusy) || pBusy <= 0 {
		th.budget = math.Inf(1)
		return
	}
	lo := 0.0
	if finite(pIdle) {
		lo = min(pIdle, pBusy)
	}
	if !th.primed {
		th.integ, th.primed = pBusy, true
	}
	pred := temp + th.tau*th.slope()
	e := th.limit - thermalMarginC - pred
	kp := pBusy / thermalGainC
	ki := kp / th.tau
	switch {
	case th.hot && !wasHot:
		// The regulator let it overshoot: whatever it allowed was too much.
		th.integ = lo + 0.5*(min(th.integ, th.lastU)-lo)
	case th.hot:
		// Cooling in a hard pause says nothing about the sustainable
		// power; freeze the integrator so it does not wind up.
	default:
		th.integ += ki * e * dt
	}
	u := th.integ + kp*e
	if u > pBusy {
		u = pBusy
		th.integ = min(th.integ, pBusy)
	}
	if u < lo {
		u = lo
		th.integ = max(th.integ, lo-kp*e)
	}
	th.integ = max(min(th.integ, pBusy), lo-pBusy)
	th.lastU = u
	if u >= pBusy {
		th.budget = math.Inf(1)
	} else {
		th.budget = u
	}
}

// slope is the least-squares dT/dt over the history, C/s.
func (th *thermal) slope() float64 {
	n := len(th.hist)
	if n < 3 {
		return 0
	}
	t0 := th.hist[0].t
	span := th.hist[n-1].t.Sub(t0).Seconds()
	if span < 2 {
		return 0
	}
	var sx, sy, sxx, sxy float64
	for _, p := range th.hist {
		x := p.t.Sub(t0).Seconds()
		sx += x
		sy += p.c
		sxx += x * x
		sxy += x * p.c
	}
	fn := float64(n)
	den := fn*sxx - sx*sx
	if den <= 0 {
		return 0
	}
	return (fn*sxy - sx*sy) / den
}

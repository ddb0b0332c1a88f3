package sim

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Dist is a one-dimensional distribution given on the command line or in
// a population config:
//
//	const:V              always V
//	uniform:LO,HI        uniform on [LO, HI]
//	lognormal:MEDIAN,S   exp(N(ln MEDIAN, S^2)): MEDIAN is the median, S the
//	                     standard deviation of the logarithm
//
// Draws are clamped to [Min, Max] when those are set (ParseDist sets them
// from the field's valid range).
type Dist struct {
	Kind     string
	A, B     float64
	Min, Max float64
}

// ParseDist reads spec for the named field, whose draws must lie in
// [lo, hi]; an error names the field and what is wrong.
func ParseDist(field, spec string, lo, hi float64) (Dist, error) {
	bad := func(format string, a ...any) (Dist, error) {
		return Dist{}, fmt.Errorf("%s %q: %s", field, spec, fmt.Sprintf(format, a...))
	}
	kind, args, _ := strings.Cut(strings.TrimSpace(spec), ":")
	var xs []float64
	for _, a := range strings.Split(args, ",") {
		if strings.TrimSpace(a) == "" {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(a), 64)
		if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
			return bad("%q is not a finite number", a)
		}
		xs = append(xs, v)
	}
	d := Dist{Kind: kind, Min: lo, Max: hi}
	want := map[string]int{"const": 1, "uniform": 2, "lognormal": 2}
	n, ok := want[kind]
	if !ok {
		return bad("want const:V, uniform:LO,HI or lognormal:MEDIAN,SIGMA")
	}
	if len(xs) != n {
		return bad("%s takes %d number(s), got %d", kind, n, len(xs))
	}
	d.A = xs[0]
	if n == 2 {
		d.B = xs[1]
	}
	switch kind {
	case "const":
		if d.A < lo || d.A > hi {
			return bad("%g is out of range [%g, %g]", d.A, lo, hi)
		}
	case "uniform":
		if d.A > d.B || d.A < lo || d.B > hi {
			return bad("want %g <= LO <= HI <= %g", lo, hi)
		}
	case "lognormal":
		if d.A <= 0 || d.A < lo || d.A > hi {
			return bad("median %g must be > 0 and in [%g, %g]", d.A, lo, hi)
		}
		if d.B < 0 || d.B > 5 {
			return bad("sigma %g must be in [0, 5]", d.B)
		}
	}
	return d, nil
}

// MustDist is ParseDist for specs written in the code.
func MustDist(field, spec string, lo, hi float64) Dist {
	d, err := ParseDist(field, spec, lo, hi)
	if err != nil {
		panic(err)
	}
	return d
}

// Draw draws one value from r.
func (d Dist) Draw(r *stream) float64 {
	var v float64
	switch d.Kind {
	case "const":
		v = d.A
	case "uniform":
		v = d.A + (d.B-d.A)*r.float()
	case "lognormal":
		v = d.A * math.Exp(d.B*r.norm())
	}
	return math.Min(math.Max(v, d.Min), d.Max)
}

// Median is the distribution's median.
func (d Dist) Median() float64 {
	switch d.Kind {
	case "uniform":
		return (d.A + d.B) / 2
	}
	return d.A
}

func (d Dist) String() string {
	switch d.Kind {
	case "const":
		return fmt.Sprintf("const:%g", d.A)
	case "":
		return ""
	}
	return fmt.Sprintf("%s:%g,%g", d.Kind, d.A, d.B)
}

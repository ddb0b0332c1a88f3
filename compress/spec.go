// Package compress shrinks the dense fp32 update a worker sends back after a
// round (the LoRA adapter delta) and expands it again on the coordinator.
//
// A Codec is a two-stage pipeline, written as a short spec string:
//
//	dense                 every entry as fp32 (4 bytes each; the baseline)
//	topk:0.01             the 1% largest magnitudes, with delta-varint indices
//	topk:0.01+int8:256    the same, values stochastically rounded to int8,
//	                      one fp32 scale per 256 values
//	randk:0.02+q4:64      2% of the entries drawn from the seed (indices do
//	                      not travel), values in 4 bits, one scale per 64
//	int8:128              every entry, int8 with one scale per 128
//	randk:0.05+int16:256  5% drawn from the seed, values in 16 bits (nearly
//	                      lossless), one scale per 256
//
// The first stage (the sparsifier) picks which entries travel; the second
// (the quantizer) codes their values. Top-k is meant to be used with error
// feedback (State): what is not sent this round is kept and added to the
// next one, so nothing is lost, only delayed. Random-k and the stochastic
// quantizers are unbiased: averaged over seeds, the decoded vector equals the
// input (for random-k with the ":scaled" option).
//
// Everything is deterministic given the input and the seed: the same call
// on any machine produces the same bytes.
package compress

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ErrSpec is wrapped by every error about a malformed codec spec.
var ErrSpec = errors.New("bad codec spec")

// ErrCorrupt is wrapped by every error about a malformed payload.
var ErrCorrupt = errors.New("corrupt payload")

// MaxN is the largest vector a codec handles; indices travel as uint32.
const MaxN = 1<<31 - 1

// Sparsifier is the first stage: which entries travel.
type Sparsifier uint8

const (
	Dense Sparsifier = iota // every entry, in index order; no indices travel
	TopK                    // the k largest magnitudes; sorted indices travel
	RandK                   // k entries drawn from the seed; only the seed travels
)

// Quantizer is the second stage: how the values that travel are coded.
type Quantizer uint8

const (
	FP32  Quantizer = iota // 4 bytes per value, exact
	Int8                   // stochastic rounding to -127..127, fp32 scale per block
	Q4                     // stochastic rounding to -7..7 in a nibble, fp32 scale per block
	Int16                  // stochastic rounding to -32767..32767, fp32 scale per block
)

// Default block sizes when a spec names a quantizer without one.
const (
	DefaultInt8Block = 256
	// DefaultInt16Block is int16's: a scale per 256 values costs 0.125
	// bits each, as for int8.
	DefaultInt16Block = 256
	DefaultQ4Block    = 64
)

// Codec describes a pipeline. The zero value is "dense" (plain fp32).
type Codec struct {
	Sparsifier Sparsifier
	// Fraction is k/n for TopK and RandK, in (0, 1]. K rounds it to the
	// nearest integer and keeps at least one entry.
	Fraction float64
	// Scaled (RandK only) makes the decoder multiply values by n/k so the
	// decoded vector is an unbiased estimate of the input. It cannot be
	// combined with error feedback, which already accounts for every entry.
	Scaled bool
	// Quantizer codes the values; Block is the number of values sharing
	// one fp32 scale (a power of two in [16, 4096]) for Int8, Int16 and Q4.
	Quantizer Quantizer
	Block     int
}

// Parse reads a spec such as "topk:0.01+int8:256" (see the package doc).
// Stages are joined by '+', arguments by ':'. The sparsifier comes first and
// may be omitted (dense); the quantizer may be omitted (fp32).
func Parse(spec string) (Codec, error) {
	var c Codec
	bad := func(format string, args ...any) (Codec, error) {
		return Codec{}, fmt.Errorf("compress: codec spec %q: %s: %w", spec, fmt.Sprintf(format, args...), ErrSpec)
	}
	if spec == "" {
		return bad("empty")
	}
	if len(spec) > 128 {
		return bad("longer than 128 bytes")
	}
	stages := strings.Split(spec, "+")
	if len(stages) > 2 {
		return bad("more than two stages")
	}
	sawSparse, sawQuant := false, false
	for _, st := range stages {
		parts := strings.Split(st, ":")
		name, args := parts[0], parts[1:]
		switch name {
		case "dense", "topk", "randk":
			if sawSparse || sawQuant {
				return bad("stage %q must come first and only once", name)
			}
			sawSparse = true
			if name == "dense" {
				if len(args) != 0 {
					return bad("dense takes no arguments")
				}
				continue
			}
			c.Sparsifier = TopK
			if name == "randk" {
				c.Sparsifier = RandK
			}
			if len(args) < 1 || len(args) > 2 {
				return bad("%s wants a fraction, e.g. %s:0.01", name, name)
			}
			f, err := strconv.ParseFloat(args[0], 64)
			if err != nil || math.IsNaN(f) || f <= 0 || f > 1 {
				return bad("%s fraction %q: want a number in (0, 1]", name, args[0])
			}
			c.Fraction = f
			if len(args) == 2 {
				if name != "randk" || args[1] != "scaled" {
					return bad("%s option %q: only randk takes one, \"scaled\"", name, args[1])
				}
				c.Scaled = true
			}
		case "fp32", "int8", "int16", "q4":
			if sawQuant {
				return bad("more than one quantizer")
			}
			sawQuant = true
			switch name {
			case "fp32":
				if len(args) != 0 {
					return bad("fp32 takes no arguments")
				}
				continue
			case "int8":
				c.Quantizer, c.Block = Int8, DefaultInt8Block
			case "int16":
				c.Quantizer, c.Block = Int16, DefaultInt16Block
			case "q4":
				c.Quantizer, c.Block = Q4, DefaultQ4Block
			}
			if len(args) > 1 {
				return bad("%s wants at most a block size, e.g. %s:128", name, name)
			}
			if len(args) == 1 {
				b, err := strconv.Atoi(args[0])
				if err != nil || !validBlock(b) {
					return bad("%s block %q: want a power of two in [16, 4096]", name, args[0])
				}
				c.Block = b
			}
		default:
			return bad("unknown stage %q (want dense, topk, randk, fp32, int8, int16 or q4)", name)
		}
	}
	return c, nil
}

// MustParse is Parse for specs known at compile time; it panics on error.
func MustParse(spec string) Codec {
	c, err := Parse(spec)
	if err != nil {
		panic(err)
	}
	return c
}

func validBlock(b int) bool { return b >= 16 && b <= 4096 && b&(b-1) == 0 }

// Validate reports whether c is a pipeline Parse could have produced.
func (c Codec) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("compress: codec %+v: %s: %w", c, fmt.Sprintf(format, args...), ErrSpec)
	}
	switch c.Sparsifier {
	case Dense:
		if c.Fraction != 0 || c.Scaled {
			return bad("dense takes no fraction or scaling")
		}
	case TopK, RandK:
		if math.IsNaN(c.Fraction) || c.Fraction <= 0 || c.Fraction > 1 {
			return bad("fraction %v: want (0, 1]", c.Fraction)
		}
		if c.Scaled && c.Sparsifier != RandK {
			return bad("only randk can be scaled")
		}
	default:
		return bad("unknown sparsifier %d", c.Sparsifier)
	}
	switch c.Quantizer {
	case FP32:
		if c.Block != 0 {
			return bad("fp32 takes no block size")
		}
	case Int8, Int16, Q4:
		if !validBlock(c.Block) {
			return bad("block %d: want a power of two in [16, 4096]", c.Block)
		}
	default:
		return bad("unknown quantizer %d", c.Quantizer)
	}
	return nil
}

// String is the canonical spec: Parse(c.String()) == c.
func (c Codec) String() string {
	var s string
	switch c.Sparsifier {
	case TopK:
		s = "topk:" + strconv.FormatFloat(c.Fraction, 'g', -1, 64)
	case RandK:
		s = "randk:" + strconv.FormatFloat(c.Fraction, 'g', -1, 64)
		if c.Scaled {
			s += ":scaled"
		}
	}
	var q string
	switch c.Quantizer {
	case Int8:
		q = "int8:" + strconv.Itoa(c.Block)
	case Int16:
		q = "int16:" + strconv.Itoa(c.Block)
	case Q4:
		q = "q4:" + strconv.Itoa(c.Block)
	}
	switch {
	case s == "" && q == "":
		return "dense"
	case s == "":
		return q
	case q == "":
		return s
	}
	return s + "+" + q
}

// K is the number of entries that travel for a vector of n elements.
func (c Codec) K(n int) int {
	if c.Sparsifier == Dense || n <= 0 {
		return max(n, 0)
	}
	k := int(math.Round(c.Fraction * float64(n)))
	return min(max(k, 1), n)
}

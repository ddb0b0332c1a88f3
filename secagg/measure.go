package secagg

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"runtime"
	"sync"
	"time"
)

// RoundCost is what one in-process round cost: the bytes each client sent
// and the server's own compute. MeasureRound fills it for the bench.
type RoundCost struct {
	Cohort, Degree, Threshold, Length int
	Bits                              uint
	// Upload is the mean bytes a surviving client sent in each stage.
	Upload [NumStages]float64
	// UploadTotal is their sum: everything a client uploads in a round.
	UploadTotal float64
	// Unmasked is the same client's upload without secure aggregation but
	// with the same encoding: the packed Bits-bit vector with a message
	// header, the claims and a signature.
	Unmasked int
	// ServerTime is the time the server spent in its own calls (verifying,
	// routing, closing stages, unmasking), measured on one goroutine.
	ServerTime time.Duration
	Survivors  int
}

// MeasureRound runs one round of n clients with vectors of length values
// (quantBits per value, the neighbour graph sized for dropout), in which a
// fraction dropAfterMasking of the clients vanish after sending their
// masked input: their self-masks must then come from their neighbours'
// shares. The clients run in parallel on every core; the server's calls
// are timed on their own.
func MeasureRound(n, length int, quantBits uint, dropout, dropAfterMasking float64) (RoundCost, error) {
	keys := make([]ed25519.PublicKey, n)
	privs := make([]ed25519.PrivateKey, n)
	for i := range keys {
		pub, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return RoundCost{}, err
		}
		keys[i], privs[i] = pub, priv
	}
	p, err := NewParams(1, 7, keys, length, 1, quantBits, 0)
	if err != nil {
		return RoundCost{}, err
	}
	if err := p.Tolerate(dropout); err != nil {
		return RoundCost{}, err
	}
	srv, err := NewServer(p)
	if err != nil {
		return RoundCost{}, err
	}
	clients := make([]*Client, n)
	for i := range clients {
		if clients[i], err = NewClient(p, i, privs[i], rand.Reader); err != nil {
			return RoundCost{}, err
		}
	}
	input := make([]uint32, length)
	for i := range input {
		input[i] = uint32(i) & ringMask(p.Bits)
	}
	drop := map[int]bool{}
	for i := 0; i < int(dropAfterMasking*float64(n)); i++ {
		drop[i*n/max(1, int(dropAfterMasking*float64(n)))] = true // spread over the ring
	}
	cost := RoundCost{Cohort: n, Degree: p.Degree, Threshold: p.Threshold, Length: length, Bits: p.Bits,
		Unmasked: headerSize + claimsSize + packedSize(length, p.Bits) + ed25519.SignatureSize}
	claims := Claims{Tokens: 20480, FLOPs: 1e12, EnergyWh: 0.5} // what a round's message carries besides the vector
	var serverTime time.Duration
	timed := func(f func() error) error {
		t0 := time.Now()
		err := f()
		serverTime += time.Since(t0)
		return err
	}
	sent := make([][NumStages]int, n)
	for stage := StageAdvertise; stage <= StageUnmask; stage++ {
		var inputs [][]byte
		var routed [][]Routed
		var survivors []int
		var confirms [][]byte
		if err := timed(func() error {
			switch stage {
			case StageShareKeys:
				inputs = make([][]byte, n)
				for i := range inputs {
					inputs[i] = EncodeAdverts(srv.AdvertsFor(i))
				}
			case StageMasked:
				routed = make([][]Routed, n)
				for i := range routed {
					routed[i] = srv.SharesFor(i)
				}
			case StageConfirm:
				survivors = srv.Survivors()
			case StageUnmask:
				confirms = srv.Confirmations()
			}
			return nil
		}); err != nil {
			return cost, err
		}
		msgs := make([][]byte, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		work := make(chan int)
		for range runtime.NumCPU() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range work {
					c := clients[i]
					switch stage {
					case StageAdvertise:
						msgs[i], errs[i] = c.Advertise()
					case StageShareKeys:
						adv, err := DecodeAdverts(inputs[i], n)
						if err == nil {
							msgs[i], err = c.ShareKeys(adv)
						}
						errs[i] = err
					case StageMasked:
						msgs[i], errs[i] = c.MaskedInput(routed[i], input, claims)
					case StageConfirm:
						if !drop[i] {
							msgs[i], errs[i] = c.Confirm(survivors)
						}
					case StageUnmask:
						if !drop[i] {
							msgs[i], errs[i] = c.Unmask(confirms)
						}
					}
				}
			}()
		}
		for i := range n {
			work <- i
		}
		close(work)
		wg.Wait()
		for i, e := range errs {
			if e != nil {
				return cost, fmt.Errorf("client %d, stage %d: %w", i, stage, e)
			}
		}
		if err := timed(func() error {
			for i, m := range msgs {
				if m == nil {
					continue
				}
				sent[i][stage-1] = len(m)
				if err := srv.Receive(m); err != nil {
					return err
				}
			}
			return srv.Close()
		}); err != nil {
			return cost, err
		}
	}
	if err := timed(func() error {
		_, count, err := srv.Finish()
		cost.Survivors = count
		return err
	}); err != nil {
		return cost, err
	}
	cost.ServerTime = serverTime
	var k int
	for i := range sent {
		if drop[i] {
			continue
		}
		k++
		for s := range NumStages {
			cost.Upload[s] += float64(sent[i][s])
		}
	}
	for s := range NumStages {
		cost.Upload[s] /= float64(k)
		cost.UploadTotal += cost.Upload[s]
	}
	return cost, nil
}

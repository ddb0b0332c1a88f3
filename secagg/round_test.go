package secagg

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"slices"
	"testing"
)

// detReader is a deterministic stream for tests (AES-CTR of a seed).
func detReader(seed uint64) io.Reader {
	key := make([]byte, 32)
	binary.LittleEndian.PutUint64(key, seed)
	b, _ := aes.NewCipher(key)
	return cipher.StreamReader{S: cipher.NewCTR(b, make([]byte, 16)), R: zeroReader{}}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// cohort makes n signing keys and the round params.
func cohort(t testing.TB, n, length int, quantBits uint, mu float64) (*Params, []ed25519.PrivateKey) {
	t.Helper()
	rnd := detReader(uint64(n)*7919 + uint64(length))
	keys := make([]ed25519.PublicKey, n)
	privs := make([]ed25519.PrivateKey, n)
	for i := range keys {
		pub, priv, err := ed25519.GenerateKey(rnd)
		if err != nil {
			t.Fatal(err)
		}
		keys[i], privs[i] = pub, priv
	}
	p, err := NewParams(42, 0xfeedface, keys, length, 1.0, quantBits, mu)
	if err != nil {
		t.Fatal(err)
	}
	return p, privs
}

// drops says which clients go silent before sending each stage's message.
type drops [NumStages + 1][]int

// round runs the protocol in-process. inputs[i] is client i's ring vector.
// It returns the server (for its transcript) and Finish's result.
func round(t testing.TB, p *Params, privs []ed25519.PrivateKey, inputs [][]uint32, d drops) (*Server, []uint32, int, error) {
	t.Helper()
	n := len(p.Keys)
	srv, err := NewServer(p)
	if err != nil {
		t.Fatal(err)
	}
	clients := make([]*Client, n)
	for i := range clients {
		if clients[i], err = NewClient(p, i, privs[i], detReader(uint64(1000+i))); err != nil {
			t.Fatal(err)
		}
	}
	gone := map[int]bool{}
	live := func(st int) []int {
		for _, i := range d[st] {
			gone[i] = true
		}
		var out []int
		for i := range n {
			if !gone[i] {
				out = append(out, i)
			}
		}
		return out
	}
	send := func(i int, m []byte, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		if err := srv.Receive(m); err != nil {
			t.Fatalf("server refused client %d: %v", i, err)
		}
	}
	for _, i := range live(1) {
		m, err := clients[i].Advertise()
		send(i, m, err)
	}
	if err := srv.Close(); err != nil {
		return srv, nil, 0, err
	}
	for _, i := range live(2) {
		m, err := clients[i].ShareKeys(srv.AdvertsFor(i))
		if errors.Is(err, ErrTooFewSurvivors) {
			gone[i] = true
			continue
		}
		send(i, m, err)
	}
	if err := srv.Close(); err != nil {
		return srv, nil, 0, err
	}
	for _, i := range live(3) {
		if !slices.Contains(srv.Completed(StageShareKeys), i) {
			continue
		}
		m, err := clients[i].MaskedInput(srv.SharesFor(i), inputs[i], testClaims(i))
		send(i, m, err)
	}
	if err := srv.Close(); err != nil {
		return srv, nil, 0, err
	}
	for _, i := range live(StageConfirm) {
		if !slices.Contains(srv.Survivors(), i) {
			continue
		}
		m, err := clients[i].Confirm(srv.Survivors())
		send(i, m, err)
	}
	if err := srv.Close(); err != nil {
		return srv, nil, 0, err
	}
	for _, i := range live(StageUnmask) {
		if !slices.Contains(srv.Completed(StageConfirm), i) {
			continue
		}
		m, err := clients[i].Unmask(srv.Confirmations())
		send(i, m, err)
	}
	if err := srv.Close(); err != nil {
		return srv, nil, 0, err
	}
	sum, count, err := srv.Finish()
	return srv, sum, count, err
}

// testClaims is what client i claims in the test rounds.
func testClaims(i int) Claims {
	return Claims{Tokens: uint64(1000 + i), FLOPs: 1e9 * float64(i+1), EnergyWh: 0.25 * float64(i)}
}

func randomInputs(p *Params, seed uint64) [][]uint32 {
	r := newSeededRand(seed, "test inputs")
	out := make([][]uint32, len(p.Keys))
	for i := range out {
		out[i] = make([]uint32, p.Length)
		for j := range out[i] {
			out[i][j] = uint32(r.uint64()) & ringMask(p.Bits)
		}
	}
	return out
}

// plainSum is the reference: the ring sum of the survivors' inputs,
// computed directly.
func plainSum(p *Params, inputs [][]uint32, survivors []int) []uint32 {
	out := make([]uint32, p.Length)
	for _, i := range survivors {
		for j, v := range inputs[i] {
			out[j] = (out[j] + v) & ringMask(p.Bits)
		}
	}
	return out
}

func TestRoundSumIsExact(t *testing.T) {
	for _, n := range []int{3, 12, 40} {
		p, privs := cohort(t, n, 257, 8, 0)
		in := randomInputs(p, uint64(n))
		srv, sum, count, err := round(t, p, privs, in, drops{})
		if err != nil {
			t.Fatalf("n=%d: %v", n, err)
		}
		all := make([]int, n)
		for i := range all {
			all[i] = i
		}
		if count != n || !slices.Equal(sum, plainSum(p, in, all)) {
			t.Fatalf("n=%d: unmasked sum differs from the plain sum of inputs (count %d)", n, count)
		}
		for i := range n {
			if c, ok := srv.Claims(i); !ok || c != testClaims(i) {
				t.Fatalf("n=%d: client %d's claims read back as %+v (%v), sent %+v", n, i, c, ok, testClaims(i))
			}
		}
		// Recompute from the stored transcript gives the same sum.
		var stages [NumStages][][]byte
		for st := range stages {
			stages[st] = srv.Messages(st + 1)
		}
		again, _, err := Recompute(p, stages)
		if err != nil || !slices.Equal(again, sum) {
			t.Fatalf("n=%d: recompute from transcript: %v", n, err)
		}
		// And through the stored form.
		b, err := srv.ServerTranscript().MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var tr Transcript
		if err := tr.UnmarshalBinary(b); err != nil {
			t.Fatal(err)
		}
		again, _, err = Recompute(tr.Params, tr.Stages)
		if err != nil || !slices.Equal(again, sum) {
			t.Fatalf("n=%d: recompute from the stored transcript: %v", n, err)
		}
		// A flipped bit anywhere in a stored masked vector is caught.
		tr.Stages[2][0][headerSize] ^= 1
		if _, _, err := Recompute(tr.Params, tr.Stages); !errors.Is(err, ErrMessage) {
			t.Fatalf("n=%d: tampered stored masked vector: %v", n, err)
		}
	}
}

// With n = 40 (degree k, threshold t = k/2+1) any k-t dropouts are always
// tolerated. The test drops the worst ones: all from client 0's
// neighbourhood, at each stage in turn. MinSurvivors is 27.
func TestDropoutsRecoveredUpToThreshold(t *testing.T) {
	n := 40
	p, privs := cohort(t, n, 64, 8, 0)
	if p.Degree != DefaultDegree(40) || p.Threshold != p.Degree/2+1 || p.MinSurvivors != 27 {
		t.Fatalf("params: degree %d threshold %d min survivors %d", p.Degree, p.Threshold, p.MinSurvivors)
	}
	g, _ := Neighbours(p.Seed, n, p.Degree)
	worst := g[0][:p.Degree-p.Threshold]
	in := randomInputs(p, 7)
	for st := 1; st <= NumStages; st++ {
		var d drops
		d[st] = worst
		srv, sum, count, err := round(t, p, privs, in, d)
		if err != nil {
			t.Fatalf("%d dropouts before stage %d: %v", len(worst), st, err)
		}
		surv := srv.Survivors()
		if !slices.Contains(surv, 0) {
			t.Fatalf("stage %d: client 0 lost with only k-t neighbours gone", st)
		}
		if count != len(surv) || !slices.Equal(sum, plainSum(p, in, surv)) {
			t.Fatalf("stage %d: sum of %d survivors differs from the plain sum", st, count)
		}
	}
	// k-t dropouts spread over all four stages.
	srv, sum, _, err := round(t, p, privs, in, drops{1: {1}, 2: {5, 6}, 3: {9, 10}, 4: {20}})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(sum, plainSum(p, in, srv.Survivors())) {
		t.Fatal("mixed dropouts: wrong sum")
	}
}

func (p *Params) neighboursOf(u int) []int {
	g, err := Neighbours(p.Seed, len(p.Keys), p.Degree)
	if err != nil {
		panic(err)
	}
	return g[u]
}

func seq(lo, hi int) []int {
	var out []int
	for i := lo; i < hi; i++ {
		out = append(out, i)
	}
	return out
}

func TestTooManyDropoutsFailCleanly(t *testing.T) {
	n := 40
	p, privs := cohort(t, n, 64, 8, 0)
	in := randomInputs(p, 9)
	for st := 1; st <= StageConfirm; st++ {
		var d drops
		d[st] = seq(0, n-p.MinSurvivors+1) // one more than tolerated
		_, sum, _, err := round(t, p, privs, in, d)
		if !errors.Is(err, ErrTooFewSurvivors) || sum != nil {
			t.Fatalf("stage %d: %d dropouts: got err %v, sum %v; want ErrTooFewSurvivors and no sum", st, len(d[st]), err, sum != nil)
		}
	}
	// A client with fewer than threshold neighbours left refuses to share.
	c, _ := NewClient(p, 0, privs[0], detReader(1))
	if _, err := c.Advertise(); err != nil {
		t.Fatal(err)
	}
	var few [][]byte
	for _, v := range p.neighboursOf(0)[:p.Threshold-2] {
		o, _ := NewClient(p, v, privs[v], detReader(uint64(v)))
		m, _ := o.Advertise()
		few = append(few, m)
	}
	if _, err := c.ShareKeys(few); !errors.Is(err, ErrTooFewSurvivors) {
		t.Fatalf("share keys with %d adverts: got %v, want ErrTooFewSurvivors", len(few), err)
	}
	// During unmask: drop all but threshold-1 of some client's neighbours.
	var d drops
	d[StageUnmask] = p.neighboursOf(0)[:p.Degree-p.Threshold+2] // its own share plus t-2 left
	_, sum, _, err := round(t, p, privs, in, d)
	if !errors.Is(err, ErrTooFewSurvivors) || sum != nil {
		t.Fatalf("unmask with too few of client 0's neighbours: got %v, want ErrTooFewSurvivors and no sum", err)
	}
}

// Each masked vector, as the server stores it, must look uniform in Z_2^b
// even when every input is zero: a chi-square test of the top 4 bits of
// every element over all stored vectors.
func TestMaskedVectorsLookUniform(t *testing.T) {
	n := 12
	p, privs := cohort(t, n, 4096, 8, 0)
	in := make([][]uint32, n)
	for i := range in {
		in[i] = make([]uint32, p.Length) // all zeros: as far from uniform as it gets
	}
	srv, _, _, err := round(t, p, privs, in, drops{})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range srv.Messages(StageMasked) {
		_, y, err := parseMasked(m[headerSize:len(m)-ed25519.SignatureSize], p)
		if err != nil {
			t.Fatal(err)
		}
		var counts [16]float64
		for _, v := range y {
			counts[v>>(p.Bits-4)]++
		}
		exp := float64(len(y)) / 16
		chi := 0.0
		for _, c := range counts {
			chi += (c - exp) * (c - exp) / exp
		}
		// 15 degrees of freedom: P(chi2 > 45) < 1e-4.
		if chi > 45 {
			t.Fatalf("masked vector not uniform: chi2 = %.1f over 16 buckets", chi)
		}
		// And the low bit: half ones.
		ones := 0
		for _, v := range y {
			ones += int(v & 1)
		}
		if z := math.Abs(float64(ones)-float64(len(y))/2) / math.Sqrt(float64(len(y))/4); z > 4.5 {
			t.Fatalf("low bit biased: z = %.1f", z)
		}
	}
}

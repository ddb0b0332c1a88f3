package secagg

import (
	"bytes"
	"crypto/ecdh"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/cloudflare/circl/group"
)

// Server is the coordinator's side of a round. It verifies and keeps every
// message, routes what each client needs, and in the end removes the masks.
// It never sees a share in the clear before the unmask stage, and never
// sees an individual input at all: what it stores (Messages) is exactly
// what `ledger verify` needs to recompute the sum (Recompute).
//
// Use: Receive the stage's messages, Close the stage (which fails with
// ErrTooFewSurvivors when fewer than MinSurvivors clients completed it),
// hand out AdvertsFor / SharesFor / Survivors, and after the unmask stage
// call Finish.
type Server struct {
	p     *Params
	hash  [32]byte
	neigh [][]int
	stage int // the stage now accepting messages; 5 when finished
	msgs  [NumStages + 1]map[int][]byte

	adverts map[int]advert
	shares  map[int]map[int][]byte // sender -> recipient -> ciphertext
	masked  map[int][]uint32
	claims  map[int]Claims
	reveals map[int][]revealed
}

// NewServer starts the server side of the round described by p.
func NewServer(p *Params) (*Server, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	g, err := Neighbours(p.Seed, len(p.Keys), p.Degree)
	if err != nil {
		return nil, err
	}
	s := &Server{p: p, hash: p.Hash(), neigh: g, stage: StageAdvertise,
		adverts: map[int]advert{}, shares: map[int]map[int][]byte{},
		masked: map[int][]uint32{}, claims: map[int]Claims{}, reveals: map[int][]revealed{}}
	for i := range s.msgs {
		s.msgs[i] = map[int][]byte{}
	}
	return s, nil
}

// Stage is the stage now accepting messages (StageAdvertise..StageUnmask),
// or 5 once the stages are closed.
func (s *Server) Stage() int { return s.stage }

// Receive checks one client message for the current stage and keeps it.
// Messages for another round, parameters or stage, from outside the cohort
// or from a client that did not complete the previous stage, badly signed,
// malformed, or repeated, are refused with ErrMessage (or ErrStage once the
// stage is closed); a refused message changes nothing.
func (s *Server) Receive(msg []byte) error {
	if s.stage > StageUnmask {
		return fmt.Errorf("secagg: server: message after the round's stages closed: %w", ErrStage)
	}
	h, body, err := openMessage(s.p, s.hash, s.stage, msg)
	if err != nil {
		return err
	}
	u := h.sender
	bad := func(format string, args ...any) error {
		return fmt.Errorf("secagg: server: %s message from client %d: %s: %w", stageNames[s.stage], u, fmt.Sprintf(format, args...), ErrMessage)
	}
	if _, dup := s.msgs[s.stage][u]; dup {
		return bad("a second one (replayed)")
	}
	if s.stage > StageAdvertise {
		if _, ok := s.msgs[s.stage-1][u]; !ok {
			return bad("the client did not complete the %s stage", stageNames[s.stage-1])
		}
	}
	switch s.stage {
	case StageAdvertise:
		a, err := parseAdvert(body)
		if err != nil {
			return bad("%v", err)
		}
		if _, err := ecdh.X25519().NewPublicKey(a.cPub); err != nil {
			return bad("share key: %v", err)
		}
		if _, err := ecdh.X25519().NewPublicKey(a.sPub); err != nil {
			return bad("mask key: %v", err)
		}
		s.adverts[u] = a
	case StageShareKeys:
		sh, err := parseShareKeys(body, len(s.p.Keys))
		if err != nil {
			return bad("%v", err)
		}
		// Exactly one share for each advertised neighbour.
		want := s.advertisedNeighbours(u)
		if len(sh) != len(want) {
			return bad("%d shares for %d advertised neighbours", len(sh), len(want))
		}
		for _, v := range want {
			if _, ok := sh[v]; !ok {
				return bad("no share for advertised neighbour %d", v)
			}
		}
		s.shares[u] = sh
	case StageMasked:
		c, y, err := parseMasked(body, s.p)
		if err != nil {
			return bad("%v", err)
		}
		s.masked[u], s.claims[u] = y, c
	case StageConfirm:
		// The client confirms exactly the survivor list this server sent.
		if !bytes.Equal(body, survivorHash(s.Survivors())) {
			return bad("it confirms a survivor list other than the one sent")
		}
	case StageUnmask:
		rs, err := parseUnmask(body, len(s.p.Keys))
		if err != nil {
			return bad("%v", err)
		}
		// u reveals about exactly the neighbours whose shares it was sent,
		// and the kind the survivor list calls for.
		want := append(s.sharersTo(u), u) // its neighbours' and its own
		if len(rs) != len(want) {
			return bad("%d shares revealed, %d expected", len(rs), len(want))
		}
		for _, r := range rs {
			if !slices.Contains(want, r.about) {
				return bad("a share about %d, which did not share with it", r.about)
			}
			_, survived := s.masked[r.about]
			if survived != (r.kind == kindSelfMask) {
				return bad("the wrong kind of share about %d", r.about)
			}
		}
		s.reveals[u] = rs
	}
	s.msgs[s.stage][u] = slices.Clone(msg)
	return nil
}

// advertisedNeighbours are u's neighbours that completed stage 1, sorted.
func (s *Server) advertisedNeighbours(u int) []int {
	var out []int
	for _, v := range s.neigh[u] {
		if _, ok := s.adverts[v]; ok {
			out = append(out, v)
		}
	}
	return out
}

// sharersTo are u's neighbours that completed stage 2 (and so sent u a
// share), sorted: the neighbours u masks with.
func (s *Server) sharersTo(u int) []int {
	var out []int
	for _, v := range s.neigh[u] {
		if sh, ok := s.shares[v]; ok {
			if _, ok := sh[u]; ok {
				out = append(out, v)
			}
		}
	}
	return out
}

// Close ends the current stage. It fails with ErrTooFewSurvivors, and the
// round is over, when fewer than MinSurvivors clients completed it.
func (s *Server) Close() error {
	if s.stage > StageUnmask {
		return fmt.Errorf("secagg: server: close after the last stage: %w", ErrStage)
	}
	need := s.p.MinSurvivors
	if s.stage == StageUnmask {
		need = s.p.Threshold // Finish checks each secret's shares
	}
	if got := len(s.msgs[s.stage]); got < need {
		return fmt.Errorf("secagg: %s stage: %d of %d clients completed it, fewer than the %d required: %w",
			stageNames[s.stage], got, len(s.p.Keys), need, ErrTooFewSurvivors)
	}
	s.stage++
	return nil
}

// Completed lists the clients whose message for stage st was accepted.
func (s *Server) Completed(st int) []int {
	if st < StageAdvertise || st > StageUnmask {
		return nil
	}
	out := make([]int, 0, len(s.msgs[st]))
	for u := range s.msgs[st] {
		out = append(out, u)
	}
	slices.Sort(out)
	return out
}

// AdvertsFor is what client u needs for stage 2: its neighbours' stage-1
// messages, as they were signed.
func (s *Server) AdvertsFor(u int) [][]byte {
	var out [][]byte
	for _, v := range s.advertisedNeighbours(u) {
		out = append(out, s.msgs[StageAdvertise][v])
	}
	return out
}

// SharesFor is what client u needs for stage 3: the encrypted shares
// addressed to it.
func (s *Server) SharesFor(u int) []Routed {
	var out []Routed
	for _, v := range s.sharersTo(u) {
		out = append(out, Routed{From: v, Ciphertext: s.shares[v][u]})
	}
	return out
}

// Claims returns what client u claimed in its masked-input message
// (tokens, FLOPs, energy), and whether that message arrived. The claims of
// a message from before claims existed are zero.
func (s *Server) Claims(u int) (Claims, bool) {
	_, ok := s.masked[u]
	return s.claims[u], ok
}

// Survivors is what every client needs for stage 4: the clients whose
// masked input arrived.
func (s *Server) Survivors() []int { return s.Completed(StageMasked) }

// Confirmations is what every client needs for stage 5: the survivors'
// signed confirmations of the survivor list. A client unmasks only when
// enough of them confirm the very list it was sent, so a server cannot
// tell some clients that a neighbour dropped and others that it survived.
func (s *Server) Confirmations() [][]byte { return s.Messages(StageConfirm) }

// Messages returns every accepted message of stage st, by sender order.
// With the params, they are the round's whole transcript.
func (s *Server) Messages(st int) [][]byte {
	var out [][]byte
	for _, u := range s.Completed(st) {
		out = append(out, s.msgs[st][u])
	}
	return out
}

// Transcript is the SHA-256 over the stage's accepted messages in sender
// order (each as its own SHA-256), bound to the params hash: the value the
// ledger records for the stage.
func (s *Server) Transcript(st int) [32]byte {
	h := sha256.New()
	h.Write([]byte("opencluster secagg v1 transcript"))
	h.Write(s.hash[:])
	h.Write([]byte{byte(st)})
	for _, u := range s.Completed(st) {
		var b [4]byte
		binary.LittleEndian.PutUint32(b[:], uint32(u))
		h.Write(b[:])
		m := sha256.Sum256(s.msgs[st][u])
		h.Write(m[:])
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// Finish removes every mask and returns the ring sum of the survivors'
// inputs and how many there were. The unmask stage must be closed. If any
// survivor's self-mask seed or any dropped client's mask key cannot be
// rebuilt from Threshold consistent shares, it returns ErrTooFewSurvivors
// (or ErrMessage for shares that do not match the advertised keys) and no
// sum: a partial unmasking is never returned.
func (s *Server) Finish() ([]uint32, int, error) {
	if s.stage != StageUnmask+1 {
		return nil, 0, fmt.Errorf("secagg: server: finish before the unmask stage closed: %w", ErrStage)
	}
	survivors := s.Survivors()
	mask := ringMask(s.p.Bits)
	sum := make([]uint32, s.p.Length)
	for _, u := range survivors {
		for i, v := range s.masked[u] {
			sum[i] = (sum[i] + v) & mask
		}
	}
	// Shares revealed about each client, by kind.
	type pile struct {
		holders []int
		values  []group.Scalar
	}
	piles := map[int]*pile{}
	for _, u := range s.Completed(StageUnmask) {
		for _, r := range s.reveals[u] {
			v, err := parseScalar(r.value)
			if err != nil {
				return nil, 0, fmt.Errorf("secagg: unmask: client %d's share about %d: %v: %w", u, r.about, err, ErrMessage)
			}
			p := piles[r.about]
			if p == nil {
				p = &pile{}
				piles[r.about] = p
			}
			p.holders = append(p.holders, u)
			p.values = append(p.values, v)
		}
	}
	rebuild := func(v int, what string) (group.Scalar, error) {
		p := piles[v]
		if p == nil {
			p = &pile{}
		}
		sec, err := recoverSecret(p.holders, p.values, s.p.Threshold)
		if err != nil {
			if len(p.holders) < s.p.Threshold {
				return nil, fmt.Errorf("secagg: unmask: %s of client %d: %d shares, %d needed: %w", what, v, len(p.holders), s.p.Threshold, ErrTooFewSurvivors)
			}
			return nil, fmt.Errorf("secagg: unmask: %s of client %d: %v: %w", what, v, err, ErrMessage)
		}
		return sec, nil
	}
	for _, u := range survivors {
		beta, err := rebuild(u, "self-mask seed")
		if err != nil {
			return nil, 0, err
		}
		if betaCommitment(beta) != [32]byte(s.adverts[u].betaCommit) {
			return nil, 0, fmt.Errorf("secagg: unmask: self-mask seed of client %d does not match its commitment (a share was altered): %w", u, ErrMessage)
		}
		if err := addMask(sum, s.p.Bits, -1, scalarBytes(beta), labelSelfMask, selfInfo(s.hash, u)); err != nil {
			return nil, 0, err
		}
	}
	for _, v := range s.Completed(StageShareKeys) {
		if _, ok := s.masked[v]; ok {
			continue
		}
		// v shared keys and then dropped: remove the masks its surviving
		// neighbours added for it.
		var partners []int
		for _, w := range s.neigh[v] {
			if _, ok := s.masked[w]; ok {
				if _, shared := s.shares[v][w]; shared {
					partners = append(partners, w)
				}
			}
		}
		if len(partners) == 0 {
			continue
		}
		sigma, err := rebuild(v, "mask key")
		if err != nil {
			return nil, 0, err
		}
		key, err := xKey(sigma)
		if err != nil {
			return nil, 0, err
		}
		if !slices.Equal(key.PublicKey().Bytes(), s.adverts[v].sPub) {
			return nil, 0, fmt.Errorf("secagg: unmask: mask key of client %d does not match its advertised key (a share was altered): %w", v, ErrMessage)
		}
		for _, w := range partners {
			pub, err := ecdh.X25519().NewPublicKey(s.adverts[w].sPub)
			if err != nil {
				return nil, 0, err
			}
			secret, err := key.ECDH(pub)
			if err != nil {
				return nil, 0, err
			}
			// w added +PRG if w < v, -PRG otherwise; take it back out.
			sign := -1
			if w > v {
				sign = +1
			}
			if err := addMask(sum, s.p.Bits, sign, secret, labelPairMask, pairInfo(s.hash, w, v)); err != nil {
				return nil, 0, err
			}
		}
	}
	return sum, len(survivors), nil
}

// Recompute replays a stored round: the params and the accepted messages
// of each stage (Messages(1..NumStages)) through a fresh Server, and returns the
// sum it unmasks to. `ledger verify` uses it to check that the stored sum
// is what the stored masked vectors and unmask transcript give.
func Recompute(p *Params, stages [NumStages][][]byte) ([]uint32, int, error) {
	s, err := NewServer(p)
	if err != nil {
		return nil, 0, err
	}
	for st, msgs := range stages {
		for i, m := range msgs {
			if err := s.Receive(m); err != nil {
				return nil, 0, fmt.Errorf("stored %s message %d: %w", stageNames[st+1], i, err)
			}
		}
		if err := s.Close(); err != nil {
			return nil, 0, err
		}
	}
	return s.Finish()
}
